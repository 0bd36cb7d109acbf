"""Every architecture × binarizer builds, runs forward and backward, and keeps the right layers full precision."""
import pytest
import torch
from torch import nn

from sibnn.layers import BinaryConv2d, BinaryLayer, BinaryLinear, binary_layers, clamp_latent_weights_
from sibnn.models import create_model, list_models, model_info
from sibnn.quant import SiBinarize, SignBinarize

SMALL_INPUT = {"resnet18": 32, "resnet50": 32, "alexnet": 99, "vgg_variant": 32, "mlp": 28, "mlp_small": 28,
               "vgg_small": 32, "digits_cnn": 8, "resnet18_react": 32, "resnet34": 32, "digits_react": 8,
               "digits_resnet": 8}
# (binary convs, binary linears, fp convs, fp linears) per METHOD.md §3
LAYOUT = {
    "resnet18": (16, 0, 1 + 3, 1),      # stem + 3 downsample 1×1
    "resnet50": (48, 0, 1 + 4, 1),      # stem + 4 downsample 1×1 (the first stage changes width too)
    "alexnet": (4, 2, 1, 1),            # conv2–5, fc6–7 binary; conv1, fc8 FP
    "vgg_variant": (9, 2, 1, 1),
    "mlp": (0, 2, 0, 2),
    "mlp_small": (0, 2, 0, 2),
    "vgg_small": (5, 2, 1, 1),
    "digits_cnn": (2, 1, 1, 1),
    "resnet18_react": (16, 0, 1 + 3, 1),  # ReActNet-18: stem + 3 downsample 1×1
    "resnet34": (32, 0, 1 + 3, 1),        # torchvision ResNet-34: every 3×3 conv binary (identity in fp)
    "digits_react": (4, 0, 1 + 1, 1),
    "digits_resnet": (4, 0, 1 + 1, 1),
}


def test_registry_lists_every_required_architecture():
    assert set(list_models()) >= {"resnet18", "alexnet", "vgg_variant", "resnet50", "mlp", "vgg_small", "digits_cnn"}
    assert set(SMALL_INPUT) == set(list_models())


def _count(model):
    bconv = sum(isinstance(m, BinaryConv2d) for m in model.modules())
    blin = sum(isinstance(m, BinaryLinear) for m in model.modules())
    fconv = sum(type(m) is nn.Conv2d for m in model.modules())
    flin = sum(type(m) is nn.Linear for m in model.modules())
    return bconv, blin, fconv, flin


@pytest.mark.parametrize("arch", sorted(SMALL_INPUT))
@pytest.mark.parametrize("binarizer", ["sibnn", "sign", "fp", "sibnn_layer"])
def test_every_arch_and_binarizer_runs_forward_and_backward(arch, binarizer):
    torch.manual_seed(0)
    info = model_info(arch)
    model = create_model(arch, binarizer, rho=0.3, num_classes=7)
    # batch 4: with 2 samples a BatchNorm1d outputs exactly ±1, the open ends of the window, and no gradient flows
    x = torch.randn(4, info.in_channels, SMALL_INPUT[arch], SMALL_INPUT[arch])
    out = model(x)
    assert out.shape == (4, 7) and torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    layers = binary_layers(model)
    assert layers, "every model has binary layers"
    for name, layer in layers:
        assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0, name
        assert layer.binary_weight == (binarizer != "fp")
        if binarizer.startswith("sibnn"):
            assert isinstance(layer.act, SiBinarize)
            assert layer.act.theta.grad is not None, name
        elif binarizer == "sign":
            assert isinstance(layer.act, SignBinarize)
        else:
            assert isinstance(layer.act, nn.ReLU)


@pytest.mark.parametrize("arch", sorted(LAYOUT))
def test_full_precision_layers_follow_method(arch):
    assert _count(create_model(arch, "sibnn", num_classes=10)) == LAYOUT[arch]


def test_resnet18_has_exactly_16_binary_3x3_convs_and_fp_stem_downsample_fc():
    model = create_model("resnet18")
    bconvs = [m for m in model.modules() if isinstance(m, BinaryConv2d)]
    assert len(bconvs) == 16 and all(m.kernel_size == 3 for m in bconvs)
    fp = [m for m in model.modules() if type(m) is nn.Conv2d]
    assert [m.kernel_size for m in fp] == [(7, 7), (1, 1), (1, 1), (1, 1)]
    assert all(m.stride == (1, 1) for m in fp[1:]), "downsample 1×1 convs have stride 1 (avgpool does the stride)"
    assert isinstance(model.head[-1], nn.Linear) and model.head[-1].out_features == 1000


def test_imagenet_models_produce_1000_logits_at_paper_resolution():
    with torch.no_grad():
        for arch in ("alexnet", "resnet18"):
            info = model_info(arch)
            model = create_model(arch).eval()
            out = model(torch.randn(1, 3, info.input_size, info.input_size))
            assert out.shape == (1, 1000)
    assert model_info("alexnet").input_size == 227


def test_alexnet_feature_map_is_6x6x256_at_227():
    model = create_model("alexnet").eval()
    with torch.no_grad():
        f = model.features(torch.randn(1, 3, 227, 227))
    assert f.shape == (1, 256, 6, 6)


def test_vgg_variant_feature_map_is_7x7x512_at_224():
    model = create_model("vgg_variant").eval()
    with torch.no_grad():
        f = model.features(torch.randn(1, 3, 224, 224))
    assert f.shape == (1, 512, 7, 7)


def _forward_order(model, x):
    """Module kinds in the order forward calls them (hooks on leaf modules), binary layers by weight type."""
    order, handles = [], []
    names = {BinaryConv2d: "bconv", BinaryLinear: "bfc", nn.Conv2d: "conv", nn.Linear: "fc", nn.MaxPool2d: "pool",
             nn.BatchNorm2d: "bn", nn.BatchNorm1d: "bn", nn.ReLU: "relu"}
    for m in model.modules():
        if type(m) in names:
            handles.append(m.register_forward_hook(lambda mod, i, o, k=names[type(m)]: order.append(k)))
    with torch.no_grad():
        model.eval()(x)
    for h in handles:
        h.remove()
    return order


def test_alexnet_forward_order_is_hwgq_pool_before_bn():
    """METHOD.md §3 / HWGQ alex-hwgq-3ne-clip-poly-320k deploy.prototxt: conv1 → pool → BN, conv2 → pool → BN,
    conv3 → BN, conv4 → BN, conv5 → pool → BN, fc6 → BN, fc7 → BN → ReLU → fc8; the binarizers (inside the binary
    layers, not ReLUs) are counted separately. No ReLU after conv1."""
    order = _forward_order(create_model("alexnet", num_classes=10), torch.randn(1, 3, 99, 99))
    assert order == ["conv", "pool", "bn", "bconv", "pool", "bn", "bconv", "bn", "bconv", "bn", "bconv", "pool", "bn",
                     "bfc", "bn", "bfc", "bn", "relu", "fc"]


def test_vgg_variant_forward_order_is_hwgq_third_conv_pool_then_bn():
    """METHOD.md §3 / HWGQ vgg-hwgq-3ne-clip-poly-640k: conv1 → ReLU → pool → BN; per stage [bconv → BN] ×2, then
    bconv → pool → BN (no BN between the third conv and its pool); fc → BN, fc → BN → ReLU → fc."""
    order = _forward_order(create_model("vgg_variant", num_classes=10), torch.randn(1, 3, 32, 32))
    stage = ["bconv", "bn", "bconv", "bn", "bconv", "pool", "bn"]
    assert order == ["conv", "relu", "pool", "bn"] + stage * 3 + ["bfc", "bn", "bfc", "bn", "relu", "fc"]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in create_model("vgg_variant").modules()) == 1 + 9


@pytest.mark.parametrize("arch", sorted(SMALL_INPUT))
def test_default_init_is_the_authors_normal_one_over_fan_in_for_every_conv_and_fc(arch):
    """[code] main_sibnn_learn.py: normal_(0, 1.0/c), c = elements of one output filter, binary and FP layers;
    BN γ = 1, β = 0. Checked per layer by the sample std (layers with few weights get a wider tolerance)."""
    torch.manual_seed(0)
    model = create_model(arch, num_classes=10)
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear, BinaryLayer)):
            w = m.weight.detach()
            fan_in = w[0].numel()
            sigma = 1.0 / fan_in
            tol = 4 / (2 * w.numel()) ** 0.5  # ~4 standard errors of a sample std
            assert abs(w.std().item() / sigma - 1) < max(tol, 0.02), (name, w.std().item(), sigma)
            assert abs(w.mean().item()) < 5 * sigma / w.numel() ** 0.5 + 1e-12, name
            if getattr(m, "bias", None) is not None:
                assert torch.equal(m.bias, torch.zeros_like(m.bias)), name
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            assert torch.equal(m.weight, torch.ones_like(m.weight)) and torch.equal(m.bias, torch.zeros_like(m.bias))


def test_torch_init_ablation_and_weight_grad_are_selected_by_create_model():
    torch.manual_seed(0)
    model = create_model("vgg_small", num_classes=10, init="torch", weight_grad="ste")
    w = model.classifier[1].weight  # BinaryLinear 8192 → 1024: kaiming-uniform(a=√5) = U(±1/√fan_in)
    bound = 1 / 8192 ** 0.5
    assert w.abs().max() <= bound and abs(w.std().item() - bound / 3 ** 0.5) < 0.02 * bound
    assert {m.weight_grad for _, m in binary_layers(model)} == {"ste"}
    assert {m.weight_grad for _, m in binary_layers(create_model("digits_cnn"))} == {"authors"}
    for _, layer in binary_layers(model):
        assert not hasattr(layer, "bias") or layer.bias is None
    with pytest.raises(ValueError, match="unknown weight_grad 'sign'"):
        create_model("digits_cnn", weight_grad="sign")
    with pytest.raises(ValueError, match="unknown init 'xavier'"):
        create_model("digits_cnn", init="xavier")


def test_binary_layer_uses_its_weight_grad_rule():
    grads = {}
    for rule in ("authors", "ste"):
        torch.manual_seed(1)
        model = create_model("digits_cnn", weight_grad=rule)
        model(torch.randn(8, 1, 8, 8)).logsumexp(1).sum().backward()
        grads[rule] = binary_layers(model)[-1][1].weight.grad.clone()
    assert not torch.allclose(grads["authors"], grads["ste"], rtol=1e-3)


def test_clamp_latent_weights_keeps_binary_weights_in_unit_interval_only():
    model = create_model("digits_cnn")
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(50)
    fp_first = model.features[0].weight.detach().clone()
    clamp_latent_weights_(model)
    for _, layer in binary_layers(model):
        assert layer.weight.abs().max() <= 1.0
    assert torch.equal(model.features[0].weight, fp_first), "full-precision layers are not clamped"


def test_create_model_errors_name_the_bad_argument():
    with pytest.raises(ValueError, match="unknown arch 'resnet19'"):
        create_model("resnet19")
    with pytest.raises(ValueError, match="unknown binarizer"):
        create_model("resnet18", binarizer="ternary")
    with pytest.raises(ValueError, match="rho"):
        create_model("resnet18", rho=-0.1)


def test_model_forward_works_with_bf16_autocast_and_channels_last():
    model = create_model("resnet18", num_classes=10).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    out.float().sum().backward()
    assert torch.isfinite(out.float()).all()
    assert all(isinstance(m, BinaryLayer) for _, m in binary_layers(model))
