"""θ/s before a binary linear layer (docs/fidelity.md row 21): one θ and one s per input feature, θ = 0, s = 1.

The authors' script has only a 2-D module (``GradientScale2D(in_channels)``: θ, s of shape (C, 1, 1) before each
binary 3×3 conv of ResNet-18, whose one linear layer is full precision). Per-feature θ/s before a binary linear
layer (AlexNet fc6/fc7, VGG-Variant's fcs, the MLPs, VGG-small, digits_cnn) is this project's extension of it.
"""
import pytest
import torch

from sibnn.layers import BinaryLinear
from sibnn.models import create_model
from sibnn.quant import SiBinarize

# the binary linear layers' (in_features, out_features), in forward order, per METHOD.md §3
LINEARS = {
    "alexnet": [(256 * 6 * 6, 4096), (4096, 4096)],
    "vgg_variant": [(512 * 7 * 7, 4096), (4096, 4096)],
}


def _binary_linears(model):
    return [m for m in model.modules() if isinstance(m, BinaryLinear)]


@pytest.mark.parametrize("arch", ["alexnet", "vgg_variant", "mlp", "mlp_small", "vgg_small", "digits_cnn"])
def test_every_binary_linear_has_per_feature_theta_zero_and_scale_one(arch):
    with torch.no_grad():
        layers = _binary_linears(create_model(arch, "sibnn"))
    assert layers, f"{arch} has binary linear layers"
    if arch in LINEARS:
        assert [(m.in_features, m.out_features) for m in layers] == LINEARS[arch]
    for m in layers:
        assert isinstance(m.act, SiBinarize) and not m.act.per_layer
        assert m.act.channels == m.in_features
        assert m.act.theta.shape == m.act.scale.shape == (m.in_features,)
        assert torch.equal(m.act.theta.detach(), torch.zeros(m.in_features))
        assert torch.equal(m.act.scale.detach(), torch.ones(m.in_features))


def test_each_input_feature_is_thresholded_by_its_own_theta_and_scale():
    layer = BinaryLinear(3, 2, "sibnn", rho=0.3)
    with torch.no_grad():
        layer.act.theta.copy_(torch.tensor([0.0, 10.0, -10.0]))   # feature 1 always 0, feature 2 always 1
        layer.act.scale.copy_(torch.tensor([1.0, 1.0, 2.0]))
    x = torch.tensor([[0.5, 0.5, 0.5], [-0.5, 9.0, -9.0]], requires_grad=True)
    b = layer.act(x)
    assert b.tolist() == [[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]]
    b.sum().backward()
    # window −ρ < (x − θ)·s < 1 per feature: (0.5, −9.5, 21) and (−0.5, −1, 2) are outside except feature 0's 0.5
    assert x.grad.tolist() == [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    assert layer.act.theta.grad.tolist() == [-1.0, 0.0, 0.0]


def test_per_layer_ablation_shares_one_theta_and_scale_before_a_linear_layer_too():
    layer = BinaryLinear(5, 4, "sibnn_layer")
    assert layer.act.per_layer and layer.act.theta.shape == layer.act.scale.shape == (1,)
