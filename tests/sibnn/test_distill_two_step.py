"""ReActNet's recipe pieces: the linear schedule, the react recipes and their weight-decay groups, label smoothing,
the distribution loss and a frozen teacher, two-step training (real weights, then binary from them), and the epoch
progress hook.

The ReActNet sources cited are github liuzechun/ReActNet at a6cd08d (2021-11-11)."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sibnn.engine import Distill, distribution_loss, fit, set_epoch_progress, train_one_epoch, unwrap
from sibnn.layers import BinaryConv2d, binary_layers
from sibnn.models import create_model
from sibnn.recipe import build_optimizer, build_scheduler, get_recipe, lr_factor, param_groups
from sibnn.train import parse_args, trial_config
from sibnn.trial import CheckpointError, TrialConfig, build_trial, load_checkpoint, model_from_checkpoint

CPU = torch.device("cpu")


# ------------------------------------------------------------------------------------------------ schedule, recipes

def test_linear_schedule_is_reactnets_per_epoch_lambda_stepped_before_each_epoch():
    """resnet/1_step1/train.py:90 ``LambdaLR(optimizer, lambda step: 1.0 - step/args.epochs)`` and :181
    ``scheduler.step()`` at the top of every epoch: epoch e trains at 1 − (e + 1)/E, the last one at 0."""
    r = get_recipe("react1", epochs=4)
    spe = 10
    assert lr_factor(r, 0, spe) == pytest.approx(0.75)           # step 0: already one decrement in
    assert lr_factor(r, 19, spe) == pytest.approx(0.5)           # constant within an epoch
    assert lr_factor(r, 20, spe) == pytest.approx(0.25)          # half-way (epoch 2 of 4)
    assert lr_factor(r, 4 * spe - 1, spe) == 0.0                 # the last step: lr 0
    # The same lrs as their loop, driven through torch's own LambdaLR stepped once per epoch.
    ref_opt = torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=r.lr)
    ref = torch.optim.lr_scheduler.LambdaLR(ref_opt, lambda step: 1.0 - step / r.epochs)
    expected = []
    for _ in range(r.epochs):
        ref_opt.step()  # (no gradient: nothing moves; keeps torch's step-order check quiet)
        ref.step()
        expected += [ref_opt.param_groups[0]["lr"]] * spe
    opt = build_optimizer(nn.Linear(2, 2), r)
    sched = build_scheduler(opt, r, spe)
    ours = []
    for _ in range(r.epochs * spe):
        ours.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert ours == pytest.approx(expected)
    assert ours[0] == pytest.approx(2.5e-3 * 0.75) and ours[-1] == 0.0


def test_linear_iter_schedule_decays_to_zero_per_iteration():
    r = get_recipe("react1", epochs=4, schedule="linear_iter")
    spe = 10
    assert lr_factor(r, 0, spe) == 1.0
    assert lr_factor(r, 20, spe) == pytest.approx(0.5)
    assert lr_factor(r, 39, spe) == pytest.approx(1 / 40)
    assert lr_factor(r, 1, spe) < lr_factor(r, 0, spe), "per iteration, not per epoch"


def test_react_recipes_carry_the_reactnet_scripts_values():
    """resnet/1_step1/run.sh:4 ``--batch_size=512 --learning_rate=2.5e-3 --epochs=128 --weight_decay=1e-5``;
    resnet/2_step2/run.sh:6 the same with ``--weight_decay=0``; train.py:85-88 ``torch.optim.Adam`` with default
    betas (``--momentum`` unused)."""
    r1, r2 = get_recipe("react1"), get_recipe("react2")
    assert (r1.lr, r1.weight_decay, r1.schedule, r1.epochs, r1.batch_size, r1.betas, r1.decay_groups) == (
        2.5e-3, 1e-5, "linear", 128, 512, (0.9, 0.999), "conv_and_shifts")
    assert (r2.lr, r2.weight_decay, r2.schedule, r2.epochs, r2.batch_size, r2.decay_groups) == (
        2.5e-3, 0.0, "linear", 128, 512, "conv_and_shifts")
    assert get_recipe("aaai").decay_groups == get_recipe("tnnls").decay_groups == "except_thresholds"
    opt = build_optimizer(create_model("digits_cnn"), r1)
    assert isinstance(opt, torch.optim.Adam) and opt.defaults["betas"] == (0.9, 0.999)


@pytest.mark.parametrize("arch, binarizer", [("resnet18_react", "rsign"), ("resnet18_react", "fp"),
                                             ("digits_react", "rsign")])
def test_react_weight_decay_follows_reactnets_rule_on_the_react_models(arch, binarizer):
    """resnet/1_step1/train.py:79-88: decay on ``p.ndimension() == 4 or 'conv' in pname``, Adam's default 0 on the
    rest. On our ReAct models that rule, read literally on our names, picks the conv kernels, RPReLU's (1, C, 1, 1)
    shifts and RSign's shift (inside ``*.conv.act``): the same set the recipe picks by type and shape."""
    model = create_model(arch, binarizer, num_classes=10)
    opt = build_optimizer(model, get_recipe("react1"))
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert len(decay) == sum(1 for _ in model.parameters())
    theirs = {n for n, p in model.named_parameters() if p.ndimension() == 4 or "conv" in n}
    ours = {n for n, p in model.named_parameters() if decay[id(p)] == 1e-5}
    assert ours == theirs
    assert {n for n, p in model.named_parameters() if decay[id(p)] not in (0.0, 1e-5)} == set()
    assert any("shift_in" in n for n in ours) and any(n.endswith("prelu.weight") for n, _ in model.named_parameters()
                                                      if n not in ours)
    if binarizer == "rsign":
        assert any(n.endswith("conv.act.bias") for n in ours)


@pytest.mark.parametrize("arch", ["resnet18", "digits_cnn"])
def test_react_weight_decay_never_reaches_theta_and_s_or_non_conv_parameters(arch):
    """On the Si-BNN models the rule decays the 4-D conv kernels only: BN, the FC, binary linear weights and θ, s
    (whose names contain 'conv' in resnet18, where ReActNet's name test would have caught them) get 0."""
    model = create_model(arch, "sibnn", num_classes=10)
    opt = build_optimizer(model, get_recipe("react1"))
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        assert decay[id(p)] == (1e-5 if p.dim() == 4 else 0.0), name
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, BinaryConv2d))]
    assert {id(m.weight) for m in convs} == {i for i, wd in decay.items() if wd > 0}
    groups = {g["name"]: g for g in param_groups(model, 1e-5, "conv_and_shifts")}
    assert set(groups) == {"decayed", "binarizer", "undecayed"} and groups["binarizer"]["weight_decay"] == 0.0
    with pytest.raises(ValueError, match="unknown decay_groups 'bn'"):
        param_groups(model, 1e-5, "bn")


# ----------------------------------------------------------------------------------------------------------- losses

def _one_batch_linear():
    model = nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
    x = torch.tensor([[2.0, 0.0], [0.5, 0.5]])  # logits [2, 0, −2] and [0.5, 0.5, −0.5]
    y = torch.tensor([0, 2])
    return model, x, y


def test_label_smoothing_changes_the_training_loss_as_cross_entropys_formula_says():
    """loss = (1 − ε)·(−log p_y) + ε·mean_c(−log p_c), mean over the batch (F.cross_entropy's label_smoothing)."""
    model, x, y = _one_batch_linear()
    logits = [[2.0, 0.0, -2.0], [0.5, 0.5, -0.5]]
    eps = 0.1
    expected = 0.0
    for row, target in zip(logits, y.tolist()):
        log_z = math.log(sum(math.exp(v) for v in row))
        nll = [log_z - v for v in row]
        expected += ((1 - eps) * nll[target] + eps * sum(nll) / 3) / 2
    plain = sum(math.log(sum(math.exp(v) for v in row)) - row[t] for row, t in zip(logits, y.tolist())) / 2
    opt = torch.optim.Adam(model.parameters(), lr=0.0)
    smoothed = train_one_epoch(model, [(x, y)], opt, device=CPU, label_smoothing=eps)["train_loss"]
    unsmoothed = train_one_epoch(model, [(x, y)], opt, device=CPU)["train_loss"]
    assert smoothed == pytest.approx(expected, rel=1e-6)
    assert unsmoothed == pytest.approx(plain, rel=1e-6)
    assert abs(smoothed - unsmoothed) > 0.05
    # evaluation stays plain CE
    from sibnn.engine import evaluate
    assert evaluate(model, [(x, y)], device=CPU)["val_loss"] == pytest.approx(plain, rel=1e-6)


def test_distribution_loss_is_soft_target_cross_entropy_with_kls_gradient():
    """Student logits 0 (p_s = 1/3 each); teacher logits [0, 0, ln 2] (p_t = [¼, ¼, ½]) and 0 (p_t = ⅓ each).
    Loss per row = −Σ p_t log p_s = ln 3 for both rows; KL = ln 3 − H(p_t) = ln 3 − 1.5 ln 2 for row 1, 0 for row 2.
    Gradient = (p_s − p_t)/N: row 1 [1/12, 1/12, −1/6]/2, row 2 zero."""
    s = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([[0.0, 0.0, math.log(2)], [0.0, 0.0, 0.0]], dtype=torch.float64)
    loss = distribution_loss(s, t)
    assert loss.item() == pytest.approx(math.log(3), rel=1e-12)
    loss.backward()
    assert torch.allclose(s.grad, torch.tensor([[1 / 24, 1 / 24, -1 / 12], [0.0, 0.0, 0.0]], dtype=torch.float64))
    kl = F.kl_div(F.log_softmax(s, 1), F.softmax(t, 1), reduction="batchmean")
    assert kl.item() == pytest.approx((math.log(3) - 1.5 * math.log(2)) / 2, rel=1e-12)
    # On random logits: the same gradient as KL's, the value KL's + the teacher's mean entropy.
    torch.manual_seed(0)
    s = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    t = torch.randn(5, 7, dtype=torch.float64) * 2
    ce = distribution_loss(s, t)
    (g_ce,) = torch.autograd.grad(ce, s)
    kl = F.kl_div(F.log_softmax(s, 1), F.softmax(t, 1), reduction="batchmean")
    (g_kl,) = torch.autograd.grad(kl, s)
    assert torch.allclose(g_ce, g_kl, atol=1e-14)
    entropy = -(F.softmax(t, 1) * F.log_softmax(t, 1)).sum(1).mean()
    assert ce.item() == pytest.approx((kl + entropy).item(), rel=1e-12)
    assert ce.item() == pytest.approx(F.cross_entropy(s, F.softmax(t, 1)).item(), rel=1e-12)


def _digit_batches(n_batches=3, batch=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 1, 8, 8, generator=g), torch.randint(0, 10, (batch,), generator=g))
            for _ in range(n_batches)]


@pytest.mark.parametrize("ce_weight", [0.0, 0.5])
def test_teacher_is_frozen_and_the_loss_is_the_distribution_loss_plus_weighted_ce(ce_weight):
    torch.manual_seed(0)
    student = create_model("digits_cnn", "sibnn")
    teacher = create_model("digits_cnn", "fp")
    teacher.train()  # the engine must put it in eval mode itself
    before = copy.deepcopy(teacher.state_dict())
    batches = _digit_batches()
    x, y = batches[0]
    ref_student = copy.deepcopy(student).train()
    with torch.no_grad():
        s_logits = ref_student(x)
        t_logits = copy.deepcopy(teacher).eval()(x)
    expected = distribution_loss(s_logits, t_logits) + ce_weight * F.cross_entropy(s_logits, y)
    opt = build_optimizer(student, get_recipe("aaai"))
    first = train_one_epoch(student, batches, opt, device=CPU, teacher=teacher, distill=Distill(ce_weight),
                            max_steps=1)
    assert first["train_loss"] == pytest.approx(expected.item(), rel=1e-5)
    train_one_epoch(student, batches, opt, device=CPU, teacher=teacher, distill=Distill(ce_weight))
    assert not teacher.training and all(not m.training for m in teacher.modules())
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    after = teacher.state_dict()
    for k, v in before.items():  # weights and BatchNorm running statistics alike
        assert torch.equal(v, after[k]), k
    in_optimizer = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not in_optimizer & {id(p) for p in teacher.parameters()}


# --------------------------------------------------------------------------------------------- epoch progress hook

class _Progress(nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = []

    def set_epoch_progress(self, epoch, epochs):
        self.calls.append((epoch, epochs))

    def forward(self, x):
        return x


class _Wrapper(nn.Module):  # stands in for DDP: the engine unwraps ``.module``
    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module(x)


def test_fit_tells_every_module_with_set_epoch_progress_the_epoch_before_it_runs():
    torch.manual_seed(0)
    inner, deep = _Progress(), _Progress()
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10), inner, nn.Sequential(deep))
    seen_at_epoch = []
    orig = inner.set_epoch_progress
    inner.set_epoch_progress = lambda e, n: (orig(e, n), seen_at_epoch.append(len(state_epochs)))
    state_epochs = []
    batches = _digit_batches(2, 8)
    state = fit(_Wrapper(model), batches, batches, get_recipe("aaai", epochs=3), device=CPU,
                on_epoch=lambda epoch, m, st: state_epochs.append(epoch))
    assert inner.calls == deep.calls == [(0, 3), (1, 3), (2, 3)]
    assert seen_at_epoch == [0, 1, 2], "called at the start of each epoch, before its on_epoch"
    assert state.epoch == 3
    plain = _Progress()
    set_epoch_progress(nn.Sequential(plain), 4, 10)
    assert plain.calls == [(4, 10)]


# ---------------------------------------------------------------------------------------------- two-step training

def _tiny(**kw):
    base = dict(dataset="digits", batch_size=64, train_size=256, seed=0)
    base.update(kw)
    return TrialConfig(**base)


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    """Step 1: binary activations, real weights (react1, 2 epochs: lr ½·2.5e-3, then 0 as the script has it)."""
    t = build_trial(_tiny(recipe="react1", epochs=2, weights="real"), device=CPU)
    init = {k: v.clone() for k, v in unwrap(t.model).state_dict().items()}
    state = t.fit()
    path = tmp_path_factory.mktemp("two_step") / "stage1.pt"
    torch.save(t.checkpoint(state), path)
    return t, init, path


def test_stage_one_trains_real_weights_with_binary_activations(stage1):
    t, init, path = stage1
    layers = binary_layers(t.model)
    assert layers and all(not layer.binary_weight for _, layer in layers)
    for name, layer in layers:
        w = layer.weight.detach()
        assert torch.equal(layer.quantized_weight(), layer.weight), name
        assert not torch.equal(w, init[f"{name}.weight"]), f"{name} trained"
        # not ±α: a filter of ±α has one magnitude, these have one per weight
        assert w[0].abs().unique().numel() > 2, name
    cfg = load_checkpoint(path)["config"]
    assert (cfg["weights"], cfg["init_from"], cfg["teacher"], cfg["ce_weight"], cfg["label_smoothing"]) == (
        "real", None, None, 0.0, 0.0)
    rebuilt = model_from_checkpoint(path)
    assert all(not layer.binary_weight for _, layer in binary_layers(rebuilt))
    x = next(iter(t.val))[0][:8]
    t.model.eval()
    with torch.no_grad():
        assert torch.equal(rebuilt(x), t.model(x))


def test_stage_two_starts_from_stage_one_weights_binarized_and_trains_binary(stage1):
    _, _, path = stage1
    t = build_trial(_tiny(recipe="react2", epochs=2, init_from=str(path)), device=CPU)
    stage1_weights = load_checkpoint(path)["model"]
    for k, v in unwrap(t.model).state_dict().items():
        assert torch.equal(v, stage1_weights[k]), k
    assert all(layer.binary_weight for _, layer in binary_layers(t.model))
    binarized = model_from_checkpoint(path)
    for _, layer in binary_layers(binarized):
        layer.binary_weight = True  # the stage-1 model with its weights binarized
    x = next(iter(t.val))[0][:8]
    t.model.eval()
    with torch.no_grad():
        assert torch.equal(t.model(x), binarized(x))
        real = model_from_checkpoint(path)(x)
    assert not torch.allclose(real, binarized(x)), "binarizing the weights changes the forward"
    state = t.fit()
    for name, layer in binary_layers(t.model):
        assert layer.weight.abs().max() <= 1.0, f"{name}: clamped once binary"
        q = layer.quantized_weight().detach()
        assert torch.equal(q.abs(), q.abs().amax(dim=tuple(range(1, q.dim())), keepdim=True).expand_as(q)), name
    cfg = t.checkpoint(state)["config"]
    assert (cfg["weights"], cfg["init_from"], cfg["teacher"]) == ("binary", str(path), None)


def test_init_from_a_checkpoint_of_another_model_names_the_mismatched_keys(stage1):
    _, _, path = stage1
    with pytest.raises(CheckpointError, match=r"init_from .*missing in the checkpoint: .*net\.") as e:
        build_trial(_tiny(arch="mlp_small", epochs=1, init_from=str(path)), device=CPU)
    assert "not in the model: classifier.1.act.scale, " in str(e.value) and "more)" in str(e.value)


def test_distilled_run_uses_a_frozen_teacher_from_a_checkpoint(stage1, tmp_path):
    fp = build_trial(_tiny(binarizer="fp", epochs=1), device=CPU)
    teacher_path = tmp_path / "teacher.pt"
    torch.save(fp.checkpoint(fp.fit()), teacher_path)
    t = build_trial(_tiny(recipe="react1", epochs=2, weights="real", teacher=str(teacher_path)), device=CPU)
    teacher = t.teacher
    assert teacher is not None and not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    assert not {id(p) for g in t.optimizer.param_groups for p in g["params"]} & {id(p) for p in teacher.parameters()}
    before = copy.deepcopy(teacher.state_dict())
    # The first step's loss is the distribution loss against the teacher's outputs (ce_weight 0: ReActNet's).
    x, y = next(iter(t.train))
    with torch.no_grad():
        expected = distribution_loss(copy.deepcopy(t.model).train()(x), teacher(x))
    student = copy.deepcopy(t.model)
    first = train_one_epoch(student, [(x, y)], build_optimizer(student, t.recipe), device=CPU, teacher=teacher,
                            distill=Distill(t.config.ce_weight))
    assert first["train_loss"] == pytest.approx(expected.item(), rel=1e-5)
    assert abs(first["train_loss"] - F.cross_entropy(copy.deepcopy(t.model).train()(x), y).item()) > 1e-3
    state = t.fit()
    assert len(state.history) == 2 and math.isfinite(state.history[-1]["train_loss"])
    for k, v in before.items():
        assert torch.equal(v, teacher.state_dict()[k]), k
    cfg = t.checkpoint(state)["config"]
    assert (cfg["teacher"], cfg["ce_weight"], cfg["weights"]) == (str(teacher_path), 0.0, "real")
    # A teacher with another number of classes is refused before training.
    bad = torch.load(teacher_path, weights_only=False)
    bad["config"]["num_classes"] = 5
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="5 classes"):
        build_trial(_tiny(epochs=1, teacher=str(tmp_path / "bad.pt")), device=CPU)


# --------------------------------------------------------------------------------------------- config validation

@pytest.mark.parametrize("kw, match", [
    (dict(weights="ternary"), "unknown weights 'ternary'"),
    (dict(label_smoothing=1.0), "label_smoothing"),
    (dict(label_smoothing=-0.1), "label_smoothing"),
    (dict(ce_weight=-1.0, teacher=None), "ce_weight"),
    (dict(ce_weight=0.5), "ce_weight=0.5 .*no teacher"),
])
def test_bad_training_loss_options_are_refused_naming_the_field(kw, match):
    with pytest.raises(ValueError, match=match):
        TrialConfig(**kw)


@pytest.mark.parametrize("field", ["teacher", "init_from"])
def test_a_missing_checkpoint_file_is_refused_before_training(field, tmp_path):
    with pytest.raises(CheckpointError, match=f"{field}: no checkpoint file at .*nope.pt"):
        TrialConfig(**{field: str(tmp_path / "nope.pt")})


def test_the_cli_flags_become_the_trial_fields(stage1):
    _, _, path = stage1
    cfg = trial_config(parse_args(["--weights", "real", "--init-from", str(path), "--teacher", str(path),
                                   "--ce-weight", "0.25", "--label-smoothing", "0.1", "--recipe", "react2"]))
    assert (cfg.weights, cfg.init_from, cfg.teacher, cfg.ce_weight, cfg.label_smoothing, cfg.recipe) == (
        "real", str(path), str(path), 0.25, 0.1, "react2")
    default = trial_config(parse_args([]))
    assert (default.weights, default.init_from, default.teacher, default.ce_weight, default.label_smoothing) == (
        "binary", None, None, 0.0, 0.0)
