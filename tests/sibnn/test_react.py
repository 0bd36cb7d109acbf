"""The ReAct unit (RPReLU, ReActNet-18), the torchvision-layout ResNet-34 teacher and their small digits models."""
import pytest
import torch
from torch import nn

from sibnn.infer import ExportError, pack_model
from sibnn.infer.runtime import PackedModel
from sibnn.infer.export import export_program
from sibnn.layers import BinaryConv2d, binary_layers
from sibnn.models import create_model, model_info
from sibnn.models.react import RPReLU, ReActUnit
from sibnn.quant import SiBinarize
from tests.sibnn.test_infer import randomize, run_with_bits

def _rprelu_with(shift_in, slope, shift_out) -> RPReLU:
    m = RPReLU(len(slope))
    with torch.no_grad():
        m.shift_in.bias.copy_(torch.tensor(shift_in).view(1, -1, 1, 1))
        m.prelu.weight.copy_(torch.tensor(slope))
        m.shift_out.bias.copy_(torch.tensor(shift_out).view(1, -1, 1, 1))
    return m


def test_rprelu_starts_as_reactnet_shifts_zero_slope_one_quarter():
    m = RPReLU(3)
    zeros = torch.zeros(1, 3, 1, 1)
    assert torch.equal(m.shift_in.bias, zeros) and torch.equal(m.shift_out.bias, zeros)
    assert torch.equal(m.prelu.weight, torch.full((3,), 0.25))


def test_rprelu_forward_and_gradients_match_reactnet_code():
    """Numbers from running a transcription of liuzechun/ReActNet ``resnet/2_step2/birealnet.py`` (``BasicBlock``:
    ``move1`` LearnableBias → ``prelu`` nn.PReLU → ``move2`` LearnableBias) on these values. Two inputs land exactly
    on 0 after the first shift: PReLU's gradient there is the slope's (x > 0 is the identity branch)."""
    m = _rprelu_with([0.5, -0.25], [0.25, -0.5], [0.1, -0.2])
    x = torch.tensor([[[[-1.5, -0.5, 0.75]], [[-2.0, 0.25, 1.0]]]], requires_grad=True)
    g = torch.tensor([[[[1.0, -2.0, 0.5]], [[3.0, -1.0, 2.0]]]])
    out = m(x)
    out.backward(g)
    torch.testing.assert_close(out.flatten(), torch.tensor([-0.15, 0.1, 1.35, 0.925, -0.2, 0.55]))
    torch.testing.assert_close(x.grad.flatten(), torch.tensor([0.25, -0.5, 0.5, -1.5, 0.5, 2.0]))
    torch.testing.assert_close(m.shift_in.bias.grad.flatten(), torch.tensor([0.25, 1.0]))
    torch.testing.assert_close(m.prelu.weight.grad, torch.tensor([-1.0, -6.75]))
    torch.testing.assert_close(m.shift_out.bias.grad.flatten(), torch.tensor([-0.5, 4.0]))


def _order(model, x):
    """Leaf kinds in the order forward calls them; a binary conv's own binarizer counts before it."""
    order, handles = [], []
    names = {BinaryConv2d: "bconv", nn.Conv2d: "conv", nn.Linear: "fc", nn.BatchNorm2d: "bn", nn.MaxPool2d: "pool",
             nn.AvgPool2d: "avgpool", nn.AdaptiveAvgPool2d: "gap", nn.PReLU: "prelu", nn.ReLU: "relu",
             SiBinarize: "binarize"}
    for m in model.modules():
        if type(m) in names:
            handles.append(m.register_forward_hook(lambda mod, i, o, k=names[type(m)]: order.append(k)))
    shifts = [m for m in model.modules() if type(m).__name__ == "ChannelShift"]
    for s in shifts:
        handles.append(s.register_forward_hook(lambda mod, i, o: order.append("shift")))
    with torch.no_grad():
        model.eval()(x)
    for h in handles:
        h.remove()
    return order


def test_react_unit_is_binarize_conv_bn_add_then_rprelu_with_no_bn_before_the_binarizer():
    """[code] ReActNet ``BasicBlock.forward``: move0 → binary_activation → binary_conv → bn1 → + residual → move1 →
    prelu → move2; move0 + binary_activation is the binarizer (Si-BNN here: its θ is the shift). The downsampling
    shortcut is avgpool → conv1×1 → BN (``BiRealNet._make_layer``), added after the main path's BN."""
    unit = create_model("resnet18_react", "sibnn").stages[1][0]
    assert isinstance(unit, ReActUnit)
    assert _order(unit, torch.randn(2, 64, 8, 8)) == ["binarize", "bconv", "bn", "avgpool", "conv", "bn",
                                                      "shift", "prelu", "shift"]
    plain = create_model("resnet18_react", "sibnn").stages[0][1]
    assert _order(plain, torch.randn(2, 64, 8, 8)) == ["binarize", "bconv", "bn", "shift", "prelu", "shift"]


def test_resnet18_react_whole_forward_order_has_fp_stem_and_head_without_relu():
    order = _order(create_model("resnet18_react", "sibnn", num_classes=10), torch.randn(1, 3, 32, 32))
    main, rprelu = ["binarize", "bconv", "bn"], ["shift", "prelu", "shift"]
    unit, down = main + rprelu, main + ["avgpool", "conv", "bn"] + rprelu
    assert order == ["conv", "bn", "pool"] + unit * 4 + (down + unit * 3) * 3 + ["gap", "fc"]
    assert "relu" not in order


def test_resnet18_react_counts_16_binary_3x3_convs_and_reactnet18_parameters():
    """16 units of one binary 3×3 conv; FP stem 7×7, three 1×1 downsample convs (stride 1: the avgpool strides),
    FC. 11,701,032 parameters in full precision = ReActNet's ``birealnet18()`` (11,704,424, counted from a
    transcription of its code) less its 3,392 ``move0`` shifts, which here belong to the binarizer: ``rsign`` adds
    exactly those back, Si-BNN adds θ and s (2 × 3,392)."""
    model = create_model("resnet18_react", "fp")
    bconvs = [m for m in model.modules() if isinstance(m, BinaryConv2d)]
    assert len(bconvs) == 16 and all(m.kernel_size == 3 for m in bconvs)
    fp = [m for m in model.modules() if type(m) is nn.Conv2d]
    assert [m.kernel_size for m in fp] == [(7, 7), (1, 1), (1, 1), (1, 1)] and all(m.stride == (1, 1) for m in fp[1:])
    assert sum(isinstance(m, RPReLU) for m in model.modules()) == 16
    n = sum(p.numel() for p in model.parameters())
    assert n == 11_701_032
    assert sum(p.numel() for p in create_model("resnet18_react", "sibnn").parameters()) == n + 2 * 3392
    assert sum(p.numel() for p in create_model("resnet18_react", "rsign").parameters()) == n + 3392


def test_resnet34_fp_is_torchvision_resnet34():
    """torchvision ``resnet34()``: 21,797,672 parameters at 1000 classes; 32 3×3 convs (ReLU before each, identity
    where the block's input is already ReLU'd), BN after every conv, stride-2 1×1 downsample convs."""
    model = create_model("resnet34", "fp")
    assert sum(p.numel() for p in model.parameters()) == 21_797_672
    assert [len(getattr(model, f"layer{i}")) for i in (1, 2, 3, 4)] == [3, 4, 6, 3]
    assert sum(isinstance(m, BinaryConv2d) for m in model.modules()) == 32
    assert all(not m.binary_weight and isinstance(m.act, nn.ReLU) for _, m in binary_layers(model))
    down = [m for m in model.modules() if type(m) is nn.Conv2d and m.kernel_size == (1, 1)]
    assert [m.stride for m in down] == [(2, 2)] * 3
    keys = set(model.state_dict())
    assert {"conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer2.0.downsample.0.weight",
            "layer4.2.bn2.weight", "fc.weight", "fc.bias"} <= keys


def test_resnet34_block_is_relu_placed_as_torchvision_in_fp_and_relu_free_when_binary():
    block_fp = create_model("resnet34", "fp").layer1[0]
    assert _order(block_fp, torch.randn(2, 64, 8, 8)) == ["relu", "bconv", "bn", "relu", "bconv", "bn", "relu"]
    block_bin = create_model("resnet34", "sibnn").layer1[0]
    assert _order(block_bin, torch.randn(2, 64, 8, 8)) == ["binarize", "bconv", "bn", "binarize", "bconv", "bn"]
    assert not any(isinstance(m, nn.ReLU) for m in create_model("resnet34", "sign").modules())


# test_models.py runs every arch with sibnn / sign / fp / sibnn_layer; here ReActNet's own binarizer, and every
# parameter's gradient (RPReLU's included) on the two small models
@pytest.mark.parametrize("arch,binarizer", [(a, b) for a in ("digits_react", "digits_resnet")
                                            for b in ("sibnn", "fp", "rsign")] + [("resnet18_react", "rsign")])
def test_new_models_run_forward_and_backward_on_a_small_input(arch, binarizer):
    torch.manual_seed(0)
    info = model_info(arch)
    size = 8 if info.dataset == "digits" else 32
    model = create_model(arch, binarizer, num_classes=5)
    out = model(torch.randn(4, info.in_channels, size, size))
    assert out.shape == (4, 5) and torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
    for name, m in model.named_modules():
        if isinstance(m, RPReLU):
            for p in m.parameters():
                assert p.grad.abs().sum() > 0, name


def test_digits_react_is_small_and_made_of_react_units():
    model = create_model("digits_react", "sibnn")
    units = [m for m in model.modules() if isinstance(m, ReActUnit)]
    assert len(units) == 4 and sum(isinstance(m, BinaryConv2d) for m in model.modules()) == 4
    assert sum(p.numel() for p in model.parameters()) < 100_000


def _randomize_rprelu(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, RPReLU):
                m.shift_in.bias.copy_(torch.randn(m.shift_in.bias.shape, generator=g) * 0.5)
                m.prelu.weight.copy_(torch.randn(m.prelu.weight.shape, generator=g) * 0.5)  # slopes of both signs
                m.shift_out.bias.copy_(torch.randn(m.shift_out.bias.shape, generator=g) * 0.5)
    return model


@pytest.mark.parametrize("arch,kw,size,ch", [("digits_react", {"width": 20}, 8, 1), ("resnet18_react", {}, 32, 3),
                                             ("digits_resnet", {"width": 20}, 8, 1)])
@pytest.mark.parametrize("backend", ["fast", "reference"])
def test_packed_react_and_standard_resnets_reproduce_every_bit_and_the_logits(arch, kw, size, ch, backend):
    torch.manual_seed(3)
    model = _randomize_rprelu(randomize(create_model(arch, num_classes=10, in_channels=ch, **kw), 3), 4)
    x = torch.randn(2, ch, size, size)
    ref, ref_bits = run_with_bits(model, x)
    program, tensors, _ = export_program(model)
    out, bits = PackedModel(program, tensors, {}, {}, backend=backend)(x, return_bits=True)
    assert list(bits) == list(ref_bits)
    for name, b in ref_bits.items():
        assert 0.02 < b.float().mean() < 0.98, f"{name}: trivial thresholds make the test vacuous"
        assert torch.equal(bits[name].to(b.dtype), b), f"{name}: {(bits[name] != b).sum()} bits differ"
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    if arch.endswith("react"):
        assert sum(op["op"] == "relu" for op in program) == 2 * 4 * (1 if arch == "digits_react" else 4)


@pytest.mark.parametrize("arch", ("digits_react", "digits_resnet"))
def test_exporter_refuses_non_binary_activations_of_the_new_models(arch):
    info = model_info(arch)
    with pytest.raises(ExportError, match="packed inference needs Si-BNN"):
        pack_model(create_model(arch, "fp", in_channels=info.in_channels).eval())


def test_reactnet_optimiser_grouping_as_their_train_py_would_apply_it():
    """liuzechun/ReActNet ``resnet/*/train.py``: weight decay on every parameter with ``p.ndimension() == 4`` or
    ``'conv'`` in its name, none on the rest. So RPReLU's two shifts ((1, C, 1, 1), ``LearnableBias``) are decayed,
    its PReLU slope (C,) is not; BN, the FC and the downsample BN are not. Pinned here on our module shapes (the
    shifts keep their shape) so a recipe that copies the rule gets the same split."""
    model = create_model("resnet18_react", "fp")
    decayed = {n for n, p in model.named_parameters() if p.ndimension() == 4 or "conv" in n}
    unit = "stages.0.1."
    assert {unit + "act.shift_in.bias", unit + "act.shift_out.bias", unit + "conv.weight"} <= decayed
    assert unit + "act.prelu.weight" not in decayed and unit + "bn.weight" not in decayed
    assert "head.2.weight" not in decayed and "stem.0.weight" in decayed
