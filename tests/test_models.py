"""Every architecture × binarizer builds, runs forward and backward, and keeps the right layers full precision."""
import pytest
import torch
from torch import nn

from sibnn.layers import BinaryConv2d, BinaryLayer, BinaryLinear, binary_layers, clamp_latent_weights_
from sibnn.models import create_model, list_models, model_info
from sibnn.quant import SiBinarize, SignBinarize

SMALL_INPUT = {"resnet18": 32, "resnet50": 32, "alexnet": 99, "vgg_variant": 32, "mlp": 28, "mlp_small": 28,
               "vgg_small": 32, "digits_cnn": 8}
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


def test_binary_layers_have_no_bias_and_fp_init_is_normal_fan_in():
    torch.manual_seed(0)
    model = create_model("vgg_small", num_classes=10)
    for _, layer in binary_layers(model):
        assert not hasattr(layer, "bias") or layer.bias is None
    w = model.classifier[1].weight  # BinaryLinear 8192 → 1024
    assert abs(w.std().item() - (1 / 8192) ** 0.5) < 0.05 * (1 / 8192) ** 0.5


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
