"""Recipes (optimiser groups, schedules), metrics (top-k, sparsity, θ/Δ) and the model summary."""
import math

import pytest
import torch
from torch import nn

from sibnn.layers import BinaryConv2d
from sibnn.metrics import SparsityMeter, binarizer_stats, topk_correct
from sibnn.models import create_model
from sibnn.quant import SiBinarize
from sibnn.recipe import RECIPES, build_optimizer, build_scheduler, get_recipe, lr_factor, param_groups
from sibnn.summary import summarize


@pytest.mark.parametrize("recipe", ["aaai", "tnnls"])
@pytest.mark.parametrize("arch", ["resnet18", "alexnet", "digits_cnn"])
def test_every_parameter_decays_except_theta_and_scale(recipe, arch):
    """[paper] "we set the weight decay of Δ and θ to zero"; every other parameter (BN γ/β, biases) decays —
    checked per parameter in the optimiser each recipe builds."""
    model = create_model(arch, num_classes=10)
    r = get_recipe(recipe)
    opt = build_optimizer(model, r)
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert len(decay) == sum(1 for _ in model.parameters())
    kinds = set()
    for mname, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if isinstance(module, SiBinarize):
                assert decay[id(p)] == 0.0, f"{mname}.{pname}"
                kinds.add("binarizer")
            else:
                assert decay[id(p)] == r.weight_decay > 0, f"{mname}.{pname}"
                kinds.add(type(module).__name__ + "." + pname)
    assert "binarizer" in kinds and any(k.startswith("BatchNorm") and k.endswith(".bias") for k in kinds)
    assert any(k.endswith(".weight") and "BatchNorm" in k for k in kinds)
    binarizer_ids = {id(p) for m in model.modules() if isinstance(m, SiBinarize) for p in m.parameters()}
    groups = {g["name"]: g for g in param_groups(model, 1e-6)}
    assert {id(p) for p in groups["binarizer"]["params"]} == binarizer_ids


def test_recipes_by_name_carry_the_paper_settings():
    aaai, tnnls = get_recipe("aaai"), get_recipe("tnnls")
    assert (aaai.lr, aaai.weight_decay, aaai.schedule, aaai.milestones, aaai.epochs) == (1e-3, 1e-6, "step",
                                                                                       (0.4, 0.8), 100)
    assert (tnnls.lr, tnnls.weight_decay, tnnls.schedule) == (1e-3, 1e-5, "cosine")
    opt = build_optimizer(create_model("digits_cnn"), aaai)
    assert isinstance(opt, torch.optim.Adam) and opt.defaults["betas"] == (0.9, 0.999)
    with pytest.raises(ValueError, match="unknown recipe 'sgd'"):
        get_recipe("sgd")
    assert set(RECIPES) == {"aaai", "tnnls", "react1", "react2"}


def test_aaai_schedule_divides_by_ten_at_40_and_80_percent_of_epochs():
    r = get_recipe("aaai", epochs=100)
    spe = 10
    assert lr_factor(r, 39 * spe + 9, spe) == 1.0
    assert lr_factor(r, 40 * spe, spe) == pytest.approx(0.1)
    assert lr_factor(r, 79 * spe + 9, spe) == pytest.approx(0.1)
    assert lr_factor(r, 80 * spe, spe) == pytest.approx(0.01)
    r10 = get_recipe("aaai", epochs=10)
    assert [lr_factor(r10, e * spe, spe) for e in range(10)] == pytest.approx([1] * 4 + [0.1] * 4 + [0.01] * 2)


def test_tnnls_schedule_is_cosine_per_iteration_and_scheduler_steps_the_lr():
    r = get_recipe("tnnls", epochs=2)
    spe = 5
    model = nn.Linear(3, 3)
    opt = build_optimizer(model, r)
    sched = build_scheduler(opt, r, spe)
    lrs = []
    for _ in range(2 * spe):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [1e-3 * 0.5 * (1 + math.cos(math.pi * i / 10)) for i in range(10)]
    assert lrs == pytest.approx(expected)
    assert lrs[1] < lrs[0], "cosine decays within the first epoch, per iteration"


def test_topk_correct_counts_hits():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.05, 0.15], [0.2, 0.3, 0.5]])
    target = torch.tensor([1, 2, 0])
    assert topk_correct(logits, target, (1, 2, 5)) == [1, 2, 3]


def test_sparsity_meter_counts_zeros_out_of_each_binarizer_over_a_whole_pass():
    model = nn.Sequential(BinaryConv2d(2, 3, 1, binarizer="sibnn"))
    with torch.no_grad():
        model[0].act.theta.copy_(torch.tensor([0.0, 10.0]))  # channel 1 is always 0
    x1 = torch.tensor([1.0, -1.0, 1.0, -1.0]).view(1, 1, 2, 2).repeat(1, 2, 1, 1)  # ch0: half zeros
    x2 = torch.ones(1, 2, 2, 2)                                                       # ch0: no zeros
    model.eval()
    with SparsityMeter(model) as meter:
        model(x1)
        model(x2)
    # zeros: x1 → 2 (ch0) + 4 (ch1), x2 → 0 + 4 ; total 16 activations
    assert meter.per_layer() == {"0": 10 / 16}
    assert meter.mean() == 10 / 16
    model(x1)  # after the context, hooks are gone
    assert meter.total["0"] == 16


def test_sign_binarizer_has_zero_sparsity_and_no_theta_stats():
    model = create_model("digits_cnn", "sign").eval()
    with SparsityMeter(model) as meter, torch.no_grad():
        model(torch.randn(4, 1, 8, 8))
    assert meter.mean() == 0.0 and len(meter.per_layer()) == 3
    assert binarizer_stats(model) == {}


def test_binarizer_stats_report_mean_theta_and_delta():
    model = create_model("digits_cnn", "sibnn")
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, SiBinarize):
                m.theta.fill_(0.5)
                m.scale.fill_(4.0)
    stats = binarizer_stats(model)
    assert stats["theta_mean"] == pytest.approx(0.5) and stats["delta_mean"] == pytest.approx(0.25)


def test_summary_counts_binary_and_fp_params_macs_and_packed_size():
    model = create_model("digits_cnn", "sibnn", width=4)
    s = summarize(model, (1, 1, 8, 8))
    kinds = [r.kind for r in s.rows]
    assert kinds == ["fp conv", "binary conv", "binary conv", "binary linear", "fp linear"]
    conv2 = s.rows[1]
    assert conv2.binary_params == 8 * 4 * 9 and conv2.binary_macs == 8 * 8 * 8 * (4 * 9)
    assert s.rows[0].fp_macs == 4 * 8 * 8 * 9
    binary = 8 * 4 * 9 + 16 * 8 * 9 + 256 * 64
    fp_total = sum(p.numel() for p in model.parameters()) - binary
    assert s.totals["binary_params"] == binary and s.totals["fp_params"] == fp_total
    assert s.totals["packed_bytes"] == math.ceil((binary + 32 * fp_total) / 8)
    assert s.totals["journal_bytes"] == math.ceil((binary + 8 * fp_total) / 8)
    assert "binary layers: 3" in str(s)


def test_summary_of_fp_baseline_has_no_binary_params():
    s = summarize(create_model("digits_cnn", "fp"), (1, 1, 8, 8))
    assert s.totals["binary_params"] == 0 and s.compression == pytest.approx(1.0)


def test_resnet18_summary_packs_to_a_few_megabytes():
    s = summarize(create_model("resnet18"), (1, 3, 224, 224))
    assert s.totals["binary_layers"] == 16
    assert 2_500_000 < s.totals["packed_bytes"] < 6_000_000  # FP stem/downsample/FC dominate: ≈ 3.4 MB
    assert s.totals["fp32_bytes"] > 40_000_000


@pytest.mark.parametrize("arch, size, journal_mb", [("alexnet", 227, 11.5), ("resnet18", 224, 2.0)])
def test_journal_storage_convention_lands_near_the_journal_figures(arch, size, journal_mb):
    """TNNLS: AlexNet ≈ 11.5 MB, ResNet-18 ≈ 2 MB with 1 bit per binary weight + 8 bits per fp parameter."""
    s = summarize(create_model(arch), (1, 3, size, size))
    mb = s.totals["journal_bytes"] / 1e6
    assert mb == pytest.approx(journal_mb, rel=0.1)
    assert s.totals["packed_bytes"] > s.totals["journal_bytes"]  # fp parameters at 32 bits are larger
    assert "journal convention" in str(s)
