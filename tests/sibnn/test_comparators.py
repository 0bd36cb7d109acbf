"""The comparators' binarizers and weight rules (sibnn.comparators) against their authors' published code.

Every expected number below was computed by running a faithful transcription of the named authors' function on
the literal inputs here (float64; written and run outside the project, only its results are embedded). Where this
project decides a tie differently (sign(0): the authors' ``torch.sign`` gives 0, every rule here gives +1, see
docs/fidelity.md), the test says so and checks the +1 instead.
"""
import pytest
import torch

from sibnn import catalog
from sibnn.comparators import (EDESchedule, EDESign, RSign, approx_sign, bireal_weight, ede_values, irnet_weight,
                               set_epoch_progress_, xnor_sign, xnornet_weight)
from sibnn.layers import BinaryConv2d, BinaryLinear, binary_layers, clamp_latent_weights_, set_weight_grad_
from sibnn.models import create_model
from sibnn.quant import binarize_weight, binarize_weight_reference, make_activation

D = torch.float64
COMPARATORS = ("xnornet_nok", "bireal", "rsign", "irnet")
COMPARATOR_RULES = ("xnornet", "bireal", "irnet")

# inputs: activations (2, 3, 2, 2) with the window edges ±1, 0 and ±0.999 in them, and an upstream gradient
X = [-1.5, -1.0, -0.999, -0.75, -0.5, -0.25, -0.01, 0.0, 0.01, 0.2, 0.5, 0.999,
     1.0, 1.25, -2.0, 0.6, -0.6, 0.3, -0.3, 0.9, -0.9, 2.5, 0.05, -0.05]
G = [0.3, -1.2, 0.7, 0.5, -0.4, 1.1, 0.9, -0.8, 0.6, -0.2, 1.3, -0.7,
     0.4, 0.8, -1.1, 0.25, -0.35, 0.45, 1.5, -0.55, 0.65, -0.15, 0.95, -1.05]
# weights: a (3, 2, 2, 2) conv filter bank (|W| > 1 in places, one exact 0) and ∂L/∂W_b; linear: the first 12 as (3, 4)
W = [0.4, -1.3, 0.2, 0.9, -0.6, 1.6, -0.1, 0.05, 0.7, -0.2, 0.3, -0.8,
     -1.1, 0.15, 0.5, -0.45, 1.2, -0.9, 0.35, 0.0, -0.3, 0.6, -0.75, 0.25]
GW = [0.5, -0.3, 1.2, 0.1, -0.9, 0.4, 0.7, -1.1, 0.2, 0.6, -0.5, 0.8,
      -0.4, 1.0, -0.2, 0.3, 0.9, -0.7, 0.15, -0.6, 1.3, -0.25, 0.45, -0.85]
# a (2, 2, 2, 2) bank whose first filter is skewed, so IR-Net's power-of-two scale is 1/2 there
W2 = [3.0, 0.1, 0.0, -0.1, 0.05, 0.0, 0.02, -0.03, 0.4, -0.4, 0.4, -0.4, 0.4, -0.4, 0.4, -0.41]


def t64(v, *shape):
    return torch.tensor(v, dtype=D).view(*shape)


def close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def code_with_ties_at_plus_one(authors_out, x):
    """The authors' forward with sign(0) = 0 replaced by this project's +1 (only where the input is exactly 0)."""
    return torch.where(x == 0, torch.ones_like(authors_out), authors_out)


def run(fn, x, *params):
    x = x.clone().requires_grad_()
    y = fn(x)
    (y * t64(G, 2, 3, 2, 2)).sum().backward()
    return y.detach(), x.grad


# -- activations ----------------------------------------------------------------------------------------------------

# jiecaoyu/XNOR-Net-PyTorch ImageNet/networks/model_list/alexnet.py (and CIFAR_10/models/nin.py) BinActive
XNOR_ACT_OUT = [
    -1.0, -1.0, -1.0, -1.0, -1.0, -1.0,
    -1.0, 0.0, 1.0, 1.0, 1.0, 1.0,
    1.0, 1.0, -1.0, 1.0, -1.0, 1.0,
    -1.0, 1.0, -1.0, 1.0, 1.0, -1.0,
]
XNOR_ACT_GRAD = [
    0.0, 0.0, 0.7, 0.5, -0.4, 1.1,
    0.9, -0.8, 0.6, -0.2, 1.3, -0.7,
    0.0, 0.0, 0.0, 0.25, -0.35, 0.45,
    1.5, -0.55, 0.65, 0.0, 0.95, -1.05,
]


def test_xnor_sign_is_binactive_with_its_open_window_and_no_activation_scale():
    x = t64(X, 2, 3, 2, 2)
    y, gx = run(xnor_sign, x)
    close(y, code_with_ties_at_plus_one(t64(XNOR_ACT_OUT, 2, 3, 2, 2), x))
    close(gx, t64(XNOR_ACT_GRAD, 2, 3, 2, 2))
    assert gx.view(-1)[1] == 0 and gx.view(-1)[12] == 0, "x = ±1 lies outside BinActive's window"
    assert set(y.unique().tolist()) == {-1.0, 1.0}  # no K: the codes are ±1, not ±mean|x|


# liuzechun/Bi-Real-net pytorch_implementation/BiReal18_34/birealnet.py BinaryActivation
BIREAL_ACT_OUT = [
    -1.0, -1.0, -1.0, -1.0, -1.0, -1.0,
    -1.0, 0.0, 1.0, 1.0, 1.0, 1.0,
    1.0, 1.0, -1.0, 1.0, -1.0, 1.0,
    -1.0, 1.0, -1.0, 1.0, 1.0, -1.0,
]
BIREAL_ACT_GRAD = [
    0.0, 0.0, 0.0014000000000000679, 0.25, -0.4000000000000001, 1.6500000000000004,
    1.7820000000000003, -1.6, 1.188, -0.31999999999999995, 1.3000000000000003, -0.0014000000000000679,
    0.0, 0.0, 0.0, 0.19999999999999998, -0.28, 0.63,
    2.0999999999999996, -0.10999999999999993, 0.1299999999999999, 0.0, 1.8049999999999997, -1.9949999999999999,
]


def test_approx_sign_is_bireal_binary_activation():
    x = t64(X, 2, 3, 2, 2)
    y, gx = run(approx_sign, x)
    close(y, code_with_ties_at_plus_one(t64(BIREAL_ACT_OUT, 2, 3, 2, 2), x))
    close(gx, t64(BIREAL_ACT_GRAD, 2, 3, 2, 2))
    assert gx.view(-1)[7] == 2 * G[7], "the slope at 0 is 2 (the [0, 1) piece)"


# liuzechun/ReActNet resnet/2_step2/birealnet.py LearnableBias (bias = [0.25, -0.5, 0]) then BinaryActivation
RSIGN_BIAS = [0.25, -0.5, 0.0]
RSIGN_OUT = [
    -1.0, -1.0, -1.0, -1.0, -1.0, -1.0,
    -1.0, -1.0, 1.0, 1.0, 1.0, 1.0,
    1.0, 1.0, -1.0, 1.0, -1.0, -1.0,
    -1.0, 1.0, -1.0, 1.0, 1.0, -1.0,
]
RSIGN_GRAD_X = [
    0.0, -0.6000000000000001, 0.35139999999999993, 0.5, 0.0, 0.5499999999999999,
    0.8819999999999999, -0.8000000000000002, 1.188, -0.31999999999999995, 1.3000000000000003, -0.0014000000000000679,
    0.0, 0.0, 0.0, 0.07499999999999998, 0.0, 0.7200000000000001,
    0.5999999999999996, -0.6600000000000001, 0.1299999999999999, 0.0, 1.8049999999999997, -1.9949999999999999,
]
RSIGN_GRAD_B = [
    0.3263999999999998, 1.2919999999999994, 2.1065999999999994,
]


def test_rsign_is_reactnet_learnable_bias_then_approx_sign_with_the_shift_gradient():
    act = RSign(3).double()
    assert torch.equal(act.bias, torch.zeros(3, dtype=D)), "LearnableBias starts at 0"
    with torch.no_grad():
        act.bias.copy_(torch.tensor(RSIGN_BIAS))
    x = t64(X, 2, 3, 2, 2)
    y, gx = run(act, x)
    close(y, code_with_ties_at_plus_one(t64(RSIGN_OUT, 2, 3, 2, 2), x + act.bias.detach().view(1, 3, 1, 1)))
    close(gx, t64(RSIGN_GRAD_X, 2, 3, 2, 2))
    close(act.bias.grad, t64(RSIGN_GRAD_B, 3))


def test_rsign_shifts_each_feature_of_a_linear_input():
    act = RSign(3).double()
    with torch.no_grad():
        act.bias.copy_(torch.tensor(RSIGN_BIAS))
    x = torch.tensor([[-0.2, 0.45, 0.0]], dtype=D)  # + b = [0.05, -0.05, 0]
    assert act(x).tolist() == [[1.0, -1.0, 1.0]]
    with pytest.raises(ValueError, match=r"RSign\(3\) got 4 channels"):
        act(torch.zeros(1, 4, dtype=D))


# htqin/IR-Net CIFAR-10/VGG-Small/main.py Log_UP (T_min = 0.1, T_max = 10, per epoch) and, at epochs 0, 2, 3 of 4,
# */modules/binaryfunction.py BinaryQuantize
IRNET_ACT_OUT_E0 = [
    -1.0, -1.0, -1.0, -1.0, -1.0, -1.0,
    -1.0, 0.0, 1.0, 1.0, 1.0, 1.0,
    1.0, 1.0, -1.0, 1.0, -1.0, 1.0,
    -1.0, 1.0, -1.0, 1.0, 1.0, -1.0,
]
IRNET_ACT_GRAD_E0 = [
    0.2933499738336507, -1.1880795486640279, 0.6930602115726915, 0.4971980132718926, -0.399001664278924, 1.0993127863364405,
    0.8999991000005733, -0.8, 0.5999994000003821, -0.19992002132611586, 1.2967554089065028, -0.6930602115726915,
    0.39602651622134266, 0.7876290643954448, -1.057147280019049, 0.24910215557515633, -0.3487430178052188, 0.4495952428640726,
    1.4986508095469087, -0.5455689469111602, 0.6447633008950074, -0.14100222706365775, 0.9499762503951199, -1.0499737504367115,
]
IRNET_ACT_GRAD_E2 = [
    0.05421199167709457, -0.5039692099368314, 0.29443004662731476, 0.2982929041406657, -0.314579093186371, 1.0340163336870158,
    0.89991000599966, -0.8, 0.5999400039997733, -0.1922085965932233, 1.0223820528557057, -0.29443004662731476,
    0.16798973664561045, 0.22433189294434613, -0.07771590733848088, 0.1778944406468057, -0.24905221690552798, 0.41181163282198313,
    1.3727054427399437, -0.26780454863158787, 0.316496284746422, -0.003988834002474078, 0.9476289527329894, -1.0473793688101463,
]
IRNET_ACT_GRAD_E3 = [
    0.00028776376863572225, -0.027099845849984344, 0.015908179312211623, 0.05413257847657661, -0.19712895039275, 1.9690874017871274,
    2.8432057749595656, -2.529822158813477, 1.8954705166397101, -0.4343010950950076, 0.6406690887764375, -0.015908179312211623,
    0.009033281949994781, 0.0037276099347449197, -4.466947768832716e-05, 0.06802226546678429, -0.095231171653498, 0.645489104584498,
    2.1516303486149937, -0.023305087430854195, 0.027542376054645865, -2.578412298835536e-07, 2.9302939466485256, -3.2387459410325814,
]


@pytest.mark.parametrize("epochs,expected", [
    # (epoch, t, k) from Log_UP and `k = 1 / t if t < 1 else 1`, t in float32 as the script makes it
    (4, [(0, 0.10000000149011612, 10.0), (2, 1.0, 1.0), (3, 3.1622776985168457, 1.0)]),
    (10, [(0, 0.10000000149011612, 10.0), (5, 1.0, 1.0), (9, 6.309573650360107, 1.0)]),
])
def test_ede_schedule_at_the_first_middle_and_last_epoch_is_irnets(epochs, expected):
    for epoch, t, k in expected:
        assert ede_values(epoch, epochs) == (t, k)
    with pytest.raises(ValueError, match="epochs >= 1"):
        ede_values(0, 0)


@pytest.mark.parametrize("epoch,grad", [(0, IRNET_ACT_GRAD_E0), (2, IRNET_ACT_GRAD_E2), (3, IRNET_ACT_GRAD_E3)])
def test_ede_sign_is_irnet_binary_quantize_at_each_epochs_t_and_k(epoch, grad):
    act = EDESign()
    act.set_epoch_progress(epoch, 4)
    x = t64(X, 2, 3, 2, 2)
    y, gx = run(act, x)
    close(y, code_with_ties_at_plus_one(t64(IRNET_ACT_OUT_E0, 2, 3, 2, 2), x))
    close(gx, t64(grad, 2, 3, 2, 2))


def test_ede_starts_at_irconv2d_init_and_set_epoch_progress_reaches_every_schedule_in_a_model():
    model = create_model("digits_cnn", "irnet", weight_grad="irnet")
    schedules = [m for m in model.modules() if isinstance(m, EDESchedule)]
    assert len(schedules) == 2 * len(binary_layers(model))  # one for each layer's activations, one for its weights
    assert all((float(s.t), float(s.k)) == (0.10000000149011612, 10.0) for s in schedules)
    assert set_epoch_progress_(model, 9, 10) is model
    assert all((float(s.t), float(s.k)) == (6.309573650360107, 1.0) for s in schedules)
    assert not any(k.endswith((".t", ".k")) for k in model.state_dict()), "t, k follow the epoch: not checkpointed"


# -- weights --------------------------------------------------------------------------------------------------------

# jiecaoyu/XNOR-Net-PyTorch MNIST/util.py BinOp (CIFAR_10/util.py: the same conv branch): meancenterConvParams,
# clampConvParams (PROJECTED), binarizeConvParams (WB), restore + updateBinaryGradWeight with grad = GW (GRAD)
XNOR_W_CONV_PROJECTED = [
    0.5, -1.0, 0.15000000000000002, 0.425, -0.5, 1.0,
    -0.15000000000000002, -0.42500000000000004, 0.9, -0.175, -0.10000000000000003, -0.17500000000000004,
    -0.9, 0.175, 0.09999999999999998, 0.175, 0.75, -0.75,
    0.55, -0.125, -0.75, 0.75, -0.55, 0.125,
]
XNOR_W_CONV_WB = [
    0.51875, -0.51875, 0.51875, 0.51875, -0.51875, 0.51875,
    -0.51875, -0.51875, 0.3375, -0.3375, -0.3375, -0.3375,
    -0.3375, 0.3375, 0.3375, 0.3375, 0.54375, -0.54375,
    0.54375, -0.54375, -0.54375, 0.54375, -0.54375, 0.54375,
]
XNOR_W_CONV_GRAD = [
    2.9375, -2.5225, 4.390000000000001, 2.1075, -3.7675, 2.7300000000000004,
    -0.4475, -4.1825, 0.67, 0.41000000000000003, -1.0750000000000002, 0.68,
    -0.9400000000000001, 1.75, 0.13, 0.805, 1.7074999999999998, -1.2724999999999997,
    0.07624999999999998, -1.055, 3.0774999999999997, -0.79375, 1.2287499999999998, -2.09875,
]
XNOR_W_LINEAR_PROJECTED = [
    0.35, -1.0, 0.15, 0.85, -0.8375, 1.0,
    -0.3375, -0.1875, 0.7, -0.19999999999999998, 0.30000000000000004, -0.8,
]
XNOR_W_LINEAR_WB = [
    0.5875, -0.5875, 0.5875, 0.5875, -0.590625, 0.590625,
    -0.590625, -0.590625, 0.5, -0.5, 0.5, -0.5,
]
XNOR_W_LINEAR_GRAD = [
    2.4562500000000003, -2.1037500000000002, 3.69, 1.75125, -2.8696875, 1.9837500000000001,
    -0.03468750000000026, -3.2240625, -0.9749999999999999, 2.175, -2.0250000000000004, 2.4749999999999996,
]


@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_xnornet_rule_is_binop_projection_binarization_and_gradient(kind):
    if kind == "conv":
        layer, shape, w0, g, exp = BinaryConv2d(2, 3, 2, binarizer="sign"), (3, 2, 2, 2), W, GW, (
            XNOR_W_CONV_PROJECTED, XNOR_W_CONV_WB, XNOR_W_CONV_GRAD)
    else:
        layer, shape, w0, g, exp = BinaryLinear(4, 3, binarizer="sign"), (3, 4), W[:12], GW[:12], (
            XNOR_W_LINEAR_PROJECTED, XNOR_W_LINEAR_WB, XNOR_W_LINEAR_GRAD)
    layer = layer.double()
    layer.weight_grad = "xnornet"
    with torch.no_grad():
        layer.weight.copy_(t64(w0, *shape))
    clamp_latent_weights_(layer)  # the engine's step after each optimiser step: here centre, then clamp
    close(layer.weight.detach(), t64(exp[0], *shape))
    wb = layer.quantized_weight()
    close(wb.detach(), t64(exp[1], *shape))
    (wb * t64(g, *shape)).sum().backward()
    close(layer.weight.grad, t64(exp[2], *shape))


def test_xnornet_rule_is_not_the_sibnn_authors_rule():
    # SiBNN's util.py was derived from XNOR-Net-PyTorch's, but updateBinaryGradWeight_new dropped the α factor and
    # the n·(1 − 1/C) scale: a different gradient on the same weights
    w = t64(XNOR_W_CONV_PROJECTED, 3, 2, 2, 2)
    grads = {}
    for rule in ("authors", "xnornet"):
        wl = w.clone().requires_grad_()
        (binarize_weight(wl, rule) * t64(GW, 3, 2, 2, 2)).sum().backward()
        grads[rule] = wl.grad
    assert not torch.allclose(grads["authors"], grads["xnornet"])


# liuzechun/Bi-Real-net pytorch_implementation/BiReal18_34/birealnet.py HardBinaryConv.forward (the same function
# in liuzechun/ReActNet resnet/2_step2/birealnet.py), weights W, loss Σ W_b ⊙ GW
BIREAL_W_WB = [
    0.64375, -0.64375, 0.64375, 0.64375, -0.64375, 0.64375,
    -0.64375, 0.64375, 0.525, -0.525, 0.525, -0.525,
    -0.525, 0.525, 0.525, -0.525, 0.54375, -0.54375,
    0.54375, 0.0, -0.54375, 0.54375, -0.54375, 0.54375,
]
BIREAL_W_GRAD = [
    0.5, 0.0, 1.2, 0.1, -0.9, 0.0,
    0.7, -1.1, 0.2, 0.6, -0.5, 0.8,
    0.0, 1.0, -0.2, 0.3, 0.0, -0.7,
    0.15, -0.6, 1.3, -0.25, 0.45, -0.85,
]


def test_bireal_rule_is_hardbinaryconv_and_differs_from_ste_above_one():
    w = t64(W, 3, 2, 2, 2).requires_grad_()
    wb = bireal_weight(w)
    (wb * t64(GW, 3, 2, 2, 2)).sum().backward()
    alpha = w.detach().abs().mean((1, 2, 3), keepdim=True).expand_as(w)
    close(wb.detach(), torch.where(w.detach() == 0, alpha, t64(BIREAL_W_WB, 3, 2, 2, 2)))  # sign(0) = +1 here
    close(w.grad, t64(BIREAL_W_GRAD, 3, 2, 2, 2))
    # "ste" computes α from clamp(W): the same rule only while the latent weights stay in [−1, 1]
    assert not torch.allclose(binarize_weight_reference(w.detach(), "ste"), wb.detach())
    inside = w.detach().clamp(-1, 1)
    close(binarize_weight(inside, "bireal"), binarize_weight_reference(inside, "ste"))


def test_bireal_rule_on_a_linear_layer_is_the_conv_rule_per_row():
    w = t64(W[:12], 3, 4)
    close(bireal_weight(w), bireal_weight(w.view(3, 4, 1, 1)).view(3, 4))


# htqin/IR-Net ImageNet/ResNet18/1w1a/models/modules/ir_1w1a.py IRConv2d.forward (weights part, with
# binaryfunction.py BinaryQuantize) at Log_UP's t, k of epochs 0 and 2 of 4 (W) and 3 of 4 (W2), loss Σ W_b ⊙ GW
IRNET_W_WB_E0 = [
    1.0, -1.0, 1.0, 1.0, -1.0, 1.0,
    -1.0, -1.0, 1.0, -1.0, 1.0, -1.0,
    -1.0, 1.0, 1.0, -1.0, 1.0, -1.0,
    1.0, -1.0, -1.0, 1.0, -1.0, 1.0,
]
IRNET_W_GRAD_E0 = [
    0.3816862972820911, 0.1390717809637887, 1.2510306585923499, -0.2634038967554334, -0.8105489649074621, -0.2041692348497388,
    0.7999939964473732, -1.2936606367729686, 0.053012519490591825, 0.5780692238673428, -1.084642261621409, 0.8059539597829761,
    -1.0832379881187317, 1.2449197035241808, -0.590497511192213, 0.0764223542672623, 0.8899434343698662, -0.8041776032808763,
    0.0700796865309472, -0.9118259290203446, 1.8780922621871028, -0.5639770960690643, 0.7748722295054826, -1.3330069842231134,
]
IRNET_W_GRAD_E2 = [
    0.3715852971030858, 0.03622263426804212, 1.2306525506033457, -0.159158436812006, -0.5501003126543003, -0.2515467530664479,
    0.6542349666454709, -1.3318899460871902, -0.1268683470626225, 0.615436466981866, -0.7842113649511518, 0.09327316814579739,
    -0.5092518610550048, 1.0596392709405467, -0.3725827971675145, 0.024565464168083695, 0.3940064055557644, -0.3171804450178166,
    0.27164690750699744, -0.8117773027196102, 1.4471674537306989, -0.07911383141001188, 0.14554067293367906, -1.0502898605797009,
]
IRNET_W2_WB_E3 = [
    0.5, -0.5, -0.5, -0.5, -0.5, -0.5,
    -0.5, -0.5, 1.0, -1.0, 1.0, -1.0,
    1.0, -1.0, 1.0, -1.0,
]
IRNET_W2_GRAD_E3 = [
    0.011057107519973845, -0.23090438039204259, 0.6166384467897812, 0.03788426300764111, -0.5697026711652257, 0.21056665441515865,
    0.3985298546609882, -0.4740692748362748, 0.033502058099744554, -0.004982510020057437, -0.021852016117884114, 0.011423448926382113,
    -0.013944291229651455, 0.027829407872821635, 0.0018711585468138801, -0.033847256078169165,
]


@pytest.mark.parametrize("case", ["W e0", "W e2", "W2 e3"])
def test_irnet_rule_is_libra_pb_with_ede_through_the_standardisation(case):
    w0, shape, epoch, wb_exp, g_exp = {
        "W e0": (W, (3, 2, 2, 2), 0, IRNET_W_WB_E0, IRNET_W_GRAD_E0),
        "W e2": (W, (3, 2, 2, 2), 2, IRNET_W_WB_E0, IRNET_W_GRAD_E2),  # the forward does not depend on t
        "W2 e3": (W2, (2, 2, 2, 2), 3, IRNET_W2_WB_E3, IRNET_W2_GRAD_E3),  # scale 2^-1 on its first filter
    }[case]
    ede = EDESchedule()
    ede.set_epoch_progress(epoch, 4)
    w = t64(w0, *shape).requires_grad_()
    wb = binarize_weight(w, "irnet", ede)
    (wb * t64(GW[:len(w0)], *shape)).sum().backward()
    close(wb.detach(), t64(wb_exp, *shape))
    close(w.grad, t64(g_exp, *shape))


def test_irnet_rule_needs_its_schedule_and_its_linear_form_is_the_conv_form_per_row():
    with pytest.raises(ValueError, match="needs the EDE schedule"):
        binarize_weight(torch.randn(3, 4), "irnet")
    ede = EDESchedule()
    w = t64(W[:12], 3, 4)
    close(irnet_weight(w, ede.t, ede.k), irnet_weight(w.view(3, 4, 1, 1), ede.t, ede.k).view(3, 4))


# -- latent weights, composability -----------------------------------------------------------------------------------

@pytest.mark.parametrize("rule", catalog.WEIGHT_GRADS)
def test_clamp_latent_weights_follows_each_rules_code(rule):
    model = create_model("digits_cnn", weight_grad=rule)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1000)  # well beyond [−1, 1] in every layer
    before = [m.weight.detach().clone() for _, m in binary_layers(model)]
    clamp_latent_weights_(model)
    for (_, m), w0 in zip(binary_layers(model), before):
        after = m.weight.detach()
        if catalog.LATENT_PROJECTION[rule] == "clamp":  # the SiBNN script's clampConvParams
            assert torch.equal(after, w0.clamp(-1, 1))
        elif rule == "xnornet":  # meancenterConvParams, then clampConvParams
            assert torch.equal(after, (w0 - w0.mean(1, keepdim=True)).clamp(-1, 1))
        else:  # Bi-Real / ReActNet / IR-Net: no clamp in their training scripts
            assert torch.equal(after, w0) and after.abs().max() > 1
    assert catalog.LATENT_PROJECTION == {"authors": "clamp", "ste": "clamp", "xnornet": "center_clamp",
                                         "bireal": "none", "irnet": "none"}


@pytest.mark.parametrize("binarizer", COMPARATORS)
@pytest.mark.parametrize("rule", ("authors",) + COMPARATOR_RULES)
def test_every_comparator_binarizer_trains_in_a_model_with_any_weight_rule(binarizer, rule):
    torch.manual_seed(0)
    model = create_model("digits_cnn", binarizer, weight_grad=rule)
    assert {m.weight_grad for _, m in binary_layers(model)} == {rule}
    model(torch.randn(8, 1, 8, 8)).logsumexp(1).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for _, m in binary_layers(model) for p in m.parameters())


def test_the_catalog_lists_each_comparator_with_its_authors_weight_rule_and_as_not_packable():
    pairs = {b: catalog.BINARIZERS[b].authors_weight_grad for b in COMPARATORS}
    assert pairs == {"xnornet_nok": "xnornet", "bireal": "bireal", "rsign": "bireal", "irnet": "irnet"}
    assert not any(catalog.BINARIZERS[b].packable or catalog.takes_rho(b) for b in COMPARATORS)
    assert catalog.WEIGHT_GRADS[:2] == ("authors", "ste") and catalog.WEIGHT_GRAD_DEFAULT == "authors"
    assert [type(make_activation(b, 4)).__name__ for b in COMPARATORS] == ["XnorSign", "ApproxSign", "RSign",
                                                                           "EDESign"]


def test_the_weight_rule_is_chosen_independently_and_only_irnet_carries_a_schedule():
    model = create_model("digits_cnn", "bireal", weight_grad="irnet")
    layers = [m for _, m in binary_layers(model)]
    assert all(isinstance(m.weight_ede, EDESchedule) for m in layers)
    set_weight_grad_(model, "bireal")
    assert not any("weight_ede" in m._modules for m in layers)
    with pytest.raises(ValueError, match="unknown weight_grad 'xnor'"):
        layers[0].weight_grad = "xnor"


def test_irnet_gives_the_same_gradients_under_torch_compile_after_its_schedule_moves():
    # the EDE buffers are updated in place, so the compiled graph reads the new t, k (one case: ~30 s on 2 cores)
    torch.manual_seed(0)
    model = create_model("digits_cnn", "irnet", weight_grad="irnet")
    compiled = torch.compile(model, backend="aot_eager")
    x = torch.randn(4, 1, 8, 8)
    per_epoch = []
    for epoch in (0, 6):
        set_epoch_progress_(model, epoch, 8)
        grads = []
        for m in (model, compiled):
            model.zero_grad()
            m(x).logsumexp(1).sum().backward()
            grads.append([p.grad.clone() for p in model.parameters()])
        for a, b in zip(*grads):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        per_epoch.append(grads[1])
    assert not all(torch.allclose(a, b) for a, b in zip(*per_epoch)), "the compiled graph saw the new t, k"


def test_comparators_keep_bf16_activations_exact_codes():
    x = torch.randn(2, 3, 4, 4).to(torch.bfloat16)
    for b in COMPARATORS:
        y = make_activation(b, 3)(x)
        assert y.dtype == torch.bfloat16 and set(y.float().unique().tolist()) <= {-1.0, 1.0}
