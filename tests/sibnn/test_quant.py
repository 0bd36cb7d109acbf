"""SiBinarize, SignBinarize and the weight binarizer against METHOD.md §1–§2, computed by hand here."""
import pytest
import torch

from sibnn.quant import SiBinarize, SignBinarize, binarize_weight, make_activation


def _channel_view(p, x):
    return p.view(1, -1) if x.dim() == 2 else p.view(1, -1, 1, 1)


def _expected_si(x, theta, scale, rho, grad_out):
    """Reference forward and gradients written from METHOD.md §1's definitions, elementwise, without autograd."""
    t, s = _channel_view(theta, x), _channel_view(scale, x)
    y = (x - t) * s
    out = (y >= 0).float()
    inside = ((y > -rho) & (y < 1)).float()
    g = grad_out * inside                      # ∂L/∂y
    dims = [0] + list(range(2, x.dim()))
    gx = s * g
    gtheta = -(s * g).sum(dim=dims)
    gscale = ((x - t) * g).sum(dim=dims)
    return out, gx, gtheta, gscale


@pytest.mark.parametrize("rho", [0.0, 0.1, 0.3, 0.75, 1.0])
@pytest.mark.parametrize("shape", [(7, 5), (3, 4, 6, 5)])
def test_si_binarize_forward_and_three_gradients_match_method(rho, shape):
    g = torch.Generator().manual_seed(int(rho * 100) + len(shape))
    x = (torch.randn(shape, generator=g) * 1.5).requires_grad_()
    c = shape[1]
    b = SiBinarize(c, rho)
    with torch.no_grad():
        b.theta.copy_(torch.randn(c, generator=g) * 0.3)
        b.scale.copy_(torch.rand(c, generator=g) + 0.5)
    grad_out = torch.randn(shape, generator=g)
    out = b(x)
    out.backward(grad_out)
    exp_out, exp_gx, exp_gt, exp_gs = _expected_si(x.detach(), b.theta.detach(), b.scale.detach(), rho, grad_out)
    assert torch.equal(out, exp_out)
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(x.grad, exp_gx)
    torch.testing.assert_close(b.theta.grad, exp_gt)
    torch.testing.assert_close(b.scale.grad, exp_gs)


def test_si_binarize_window_is_open_at_both_ends_and_ties_go_to_one():
    b = SiBinarize(1, rho=0.5)  # θ = 0, s = 1, so y = x
    x = torch.tensor([[-0.5], [-0.4999], [0.0], [0.9999], [1.0], [-2.0], [3.0]], requires_grad=True)
    out = b(x)
    out.sum().backward()
    assert out.flatten().tolist() == [0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0]
    # gradient 1·s inside −ρ < y < 1 only: the edges −ρ and 1 themselves pass nothing
    assert x.grad.flatten().tolist() == [0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]


def test_si_binarize_window_scales_with_delta_in_input_units():
    # s = 2 (Δ = 0.5), θ = 1, ρ = 0.3: the window in input units is (θ − ρΔ, θ + Δ) = (0.85, 1.5)
    b = SiBinarize(1, rho=0.3)
    with torch.no_grad():
        b.theta.fill_(1.0)
        b.scale.fill_(2.0)
    x = torch.tensor([[0.84], [0.86], [1.49], [1.51]], requires_grad=True)
    b(x).sum().backward()
    assert x.grad.flatten().tolist() == [0.0, 2.0, 2.0, 0.0]
    torch.testing.assert_close(b.delta, torch.tensor([0.5]))


def test_per_layer_variant_has_one_theta_and_one_scale_shared_by_all_channels():
    b = SiBinarize(6, rho=0.3, per_layer=True)
    assert b.theta.shape == (1,) and b.scale.shape == (1,)
    x = torch.randn(4, 6, 3, 3, requires_grad=True)
    out = b(x)
    exp_out, exp_gx, exp_gt, exp_gs = _expected_si(x.detach(), b.theta.detach(), b.scale.detach(), 0.3,
                                                   torch.ones_like(x))
    out.sum().backward()
    assert torch.equal(out, exp_out)
    torch.testing.assert_close(b.theta.grad, exp_gt.sum().view(1))
    torch.testing.assert_close(b.scale.grad, exp_gs.sum().view(1))


def test_si_binarize_parameters_start_at_theta_zero_and_delta_one():
    b = SiBinarize(3)
    assert b.theta.tolist() == [0.0, 0.0, 0.0] and b.scale.tolist() == [1.0, 1.0, 1.0] and b.rho == 0.3


def test_si_binarize_rejects_rho_outside_unit_interval_and_wrong_rank():
    with pytest.raises(ValueError, match="rho"):
        SiBinarize(3, rho=1.5)
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        SiBinarize(3)(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="channels"):
        SiBinarize(3)(torch.zeros(2, 4))


def test_si_binarize_output_is_exactly_binary_in_bf16():
    b = SiBinarize(8)
    x = torch.randn(16, 8, dtype=torch.bfloat16)
    out = b(x)
    assert out.dtype == torch.bfloat16
    assert set(out.unique().float().tolist()) <= {0.0, 1.0}


def test_sign_binarize_maps_zero_to_plus_one_with_closed_hardtanh_window():
    x = torch.tensor([-2.0, -1.0, -0.3, 0.0, 0.5, 1.0, 1.5], requires_grad=True)
    out = SignBinarize()(x.view(1, -1))
    out.sum().backward()
    assert out.flatten().tolist() == [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0]
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]


def test_weight_binarizer_is_alpha_sign_per_output_channel():
    w = torch.tensor([[0.5, -0.25, 0.0, -1.0], [2.0, 0.1, -0.1, -0.3]], requires_grad=True)
    wb = binarize_weight(w)
    # α over the latent weight read in [−1, 1]: row 0 → (0.5+0.25+0+1)/4, row 1 → (1+0.1+0.1+0.3)/4
    a0, a1 = 1.75 / 4, 1.5 / 4
    expected = torch.tensor([[a0, -a0, a0, -a0], [a1, a1, -a1, -a1]])
    torch.testing.assert_close(wb, expected)
    wb.backward(torch.full_like(wb, 3.0))
    # authors' rule, n = 4: 3·(1 − 1/4) where |W| ≤ 1, plus sign(W)·mean(sign(W)·3) = 0 (two + and two − per row)
    assert w.grad.tolist() == [[2.25, 2.25, 2.25, 2.25], [0.0, 2.25, 2.25, 2.25]]


def test_weight_binarizer_ste_ablation_is_the_masked_straight_through_gradient():
    w = torch.tensor([[0.5, -0.25, 0.0, -1.0], [2.0, 0.1, -0.1, -0.3]], requires_grad=True)
    wb = binarize_weight(w, grad="ste")
    torch.testing.assert_close(wb, binarize_weight(w.detach()))  # same forward value as the default
    wb.backward(torch.full_like(wb, 3.0))
    # straight through sign, masked where |W| > 1
    assert w.grad.tolist() == [[3.0, 3.0, 3.0, 3.0], [0.0, 3.0, 3.0, 3.0]]


def test_weight_binarizer_rejects_unknown_gradient_rule():
    with pytest.raises(ValueError, match="unknown weight gradient 'xnor'"):
        binarize_weight(torch.randn(2, 3), grad="xnor")


def _authors_weight_grad(w, g):
    """METHOD.md §2 transcribed literally, without autograd (the authors' ``updateBinaryGradWeight_new``):
    ∂L/∂W = g·1[|W| ≤ 1]·(1 − 1/n) + sign(W)·mean_o(sign(W) ⊙ g), n = elements of one output filter."""
    n = w[0].numel()
    sign = torch.where(w >= 0, 1.0, -1.0).to(w.dtype)
    inside = (w.abs() <= 1).to(w.dtype)
    dims = tuple(range(1, w.dim()))
    return g * inside * (1 - 1 / n) + sign * (sign * g).mean(dim=dims, keepdim=True)


@pytest.mark.parametrize("shape", [(8, 3, 3, 3), (16, 8, 1, 1), (4, 5, 5, 5), (10, 7), (1, 33)])
def test_authors_weight_gradient_equals_the_rule_transcribed_from_method(shape):
    gen = torch.Generator().manual_seed(sum(shape))
    w = (torch.randn(shape, generator=gen, dtype=torch.float64) * 0.8).requires_grad_()  # some |W| > 1
    g = torch.randn(shape, generator=gen, dtype=torch.float64)
    assert (w.abs() > 1).any() or w.numel() < 20
    binarize_weight(w).backward(g)
    expected = _authors_weight_grad(w.detach(), g)
    torch.testing.assert_close(w.grad, expected, rtol=1e-12, atol=1e-12)
    # and it is a different rule from the straight-through ablation (the α path)
    w2 = w.detach().clone().requires_grad_()
    binarize_weight(w2, grad="ste").backward(g)
    assert not torch.allclose(w2.grad, expected, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("layer", ["conv", "linear"])
def test_authors_weight_gradient_through_a_real_layer_matches_the_rule(layer):
    """g = ∂L/∂W_b taken from the conv/linear op itself; the latent weight's gradient follows the rule."""
    gen = torch.Generator().manual_seed(3)
    if layer == "conv":
        w = torch.randn(6, 4, 3, 3, generator=gen).requires_grad_()
        x = torch.randn(2, 4, 7, 7, generator=gen)
        op = lambda wb: torch.nn.functional.conv2d(x, wb, padding=1)  # noqa: E731
    else:
        w = torch.randn(5, 12, generator=gen).requires_grad_()
        x = torch.randn(3, 12, generator=gen)
        op = lambda wb: torch.nn.functional.linear(x, wb)  # noqa: E731
    target = torch.randn_like(op(binarize_weight(w.detach())))
    wb = binarize_weight(w)
    wb.retain_grad()
    ((op(wb) - target) ** 2).sum().backward()
    torch.testing.assert_close(w.grad, _authors_weight_grad(w.detach(), wb.grad), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("grad", ["authors", "ste"])
def test_weight_binarizer_gradients_survive_torch_compile(grad):
    w = torch.nn.Parameter(torch.randn(6, 4, 3, 3))
    x = torch.randn(2, 4, 6, 6)

    def f(w):
        return torch.nn.functional.conv2d(x, binarize_weight(w, grad)).square().sum()

    f(w).backward()
    eager = w.grad.clone()
    w.grad = None
    torch.compile(f, backend="aot_eager")(w).backward()
    torch.testing.assert_close(w.grad, eager)


def test_si_binarize_compares_in_float32_under_bf16_autocast():
    """θ = 0.30078125 + 2⁻¹⁰ lies between two bf16 values; x = 0.30078125 (a bf16 value) is below it. Rounding θ
    to bf16 would give θ = 0.30078125 and b = 1; the float32 comparison gives b = 0."""
    theta_val = 0.30078125 + 2 ** -10
    assert torch.tensor(theta_val).bfloat16().float().item() != theta_val  # bf16 cannot represent θ
    b = SiBinarize(2)
    with torch.no_grad():
        b.theta.copy_(torch.tensor([theta_val, -theta_val]))
        b.scale.copy_(torch.tensor([1.0, 3.0]))
    x = torch.tensor([[0.30078125, -0.30078125 - 2 ** -9]]).bfloat16()
    lin = torch.nn.Linear(2, 2, bias=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = b(x)
        y = lin(out)  # autocast region: the next layer still gets bf16
    assert out.dtype == torch.bfloat16 and y.dtype == torch.bfloat16
    # channel 0: x < θ → 0 (bf16 θ would round down onto x → 1); channel 1: x < θ → 0 (−θ rounds up to −0.30078125)
    assert out.float().tolist() == [[0.0, 0.0]]
    x_hi = torch.tensor([[0.30078125 + 2 ** -8, -0.30078125 + 2 ** -8]]).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert b(x_hi).float().tolist() == [[1.0, 1.0]]
    # the bf16 result equals the float32 binarizer on the same (exactly widened) input
    assert torch.equal(b(x.float()), out.float())


def test_weight_binarizer_alpha_is_per_output_channel_for_conv_filters():
    w = torch.randn(5, 3, 3, 3).clamp(-1, 1)
    wb = binarize_weight(w)
    alpha = w.abs().mean(dim=(1, 2, 3))
    torch.testing.assert_close(wb.abs(), alpha.view(5, 1, 1, 1).expand_as(wb))
    assert torch.equal(torch.sign(wb), torch.where(w >= 0, 1.0, -1.0))


def test_weight_binarizer_leaves_latent_weight_untouched():
    w = torch.nn.Parameter(torch.randn(4, 4) * 2)
    before = w.detach().clone()
    binarize_weight(w).sum().backward()
    assert torch.equal(w.detach(), before)


def test_make_activation_gives_each_binarizer_and_rejects_unknown():
    assert isinstance(make_activation("sibnn", 4), SiBinarize)
    assert make_activation("sibnn_layer", 4).per_layer
    assert isinstance(make_activation("sign", 4), SignBinarize)
    assert isinstance(make_activation("fp", 4), torch.nn.ReLU)
    with pytest.raises(ValueError, match="unknown binarizer 'xnor'"):
        make_activation("xnor", 4)


def test_si_binarize_works_under_torch_compile():
    b = SiBinarize(4, rho=0.3)
    x = torch.randn(8, 4, 5, 5, requires_grad=True)
    eager = b(x)
    eager.sum().backward()
    g_eager = (x.grad.clone(), b.theta.grad.clone(), b.scale.grad.clone())
    x.grad = None
    b.zero_grad()
    compiled = torch.compile(b, backend="aot_eager")(x)
    compiled.sum().backward()
    assert torch.equal(compiled, eager)
    for a, e in zip((x.grad, b.theta.grad, b.scale.grad), g_eager):
        torch.testing.assert_close(a, e)


# --- binarize_weight as one custom op (torch.ops.sibnn.binarize_weight) against the detach-trick reference ---


@pytest.mark.parametrize("grad", ["authors", "ste"])
@pytest.mark.parametrize("shape,layout", [((8, 3, 3, 3), "contiguous"), ((16, 8, 3, 3), "channels_last"),
                                          ((16, 8, 3, 3), "mixed"), ((10, 7), "contiguous")])
def test_weight_op_equals_the_detach_trick_reference(grad, shape, layout):
    """Same forward value bit for bit and the same gradient as ``binarize_weight_reference`` (float64, |W| > 1
    present), also for channels_last weights and a gradient whose layout differs from the weight's."""
    from sibnn.quant import binarize_weight_reference

    gen = torch.Generator().manual_seed(len(shape) + shape[0])
    w0 = torch.randn(shape, generator=gen, dtype=torch.float64) * 0.8
    g = torch.randn(shape, generator=gen, dtype=torch.float64)
    assert (w0.abs() > 1).any()
    if layout != "contiguous":
        w0 = w0.to(memory_format=torch.channels_last)
    if layout == "channels_last":
        g = g.to(memory_format=torch.channels_last)
    w, w_ref = w0.clone().requires_grad_(), w0.clone().requires_grad_()
    out, ref = binarize_weight(w, grad), binarize_weight_reference(w_ref, grad)
    assert torch.equal(out, ref)
    out.backward(g)
    ref.backward(g)
    torch.testing.assert_close(w.grad, w_ref.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("zero", [0.0, -0.0])
def test_authors_weight_gradient_uses_sign_zero_plus_one_and_handles_an_all_zero_filter(zero):
    """At W = ±0 the α path takes sign(0) = +1 (as the forward does); a filter of zeros has α = 0 and still gets
    sign(W)·mean_o(sign(W) ⊙ g) = mean_o(g)."""
    w = torch.tensor([[zero, 0.5, -0.5, 0.2], [zero, zero, 0.0, 0.0], [1.5, -2.0, 0.25, -0.75]],
                     dtype=torch.float64, requires_grad=True)
    g = torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, -2.0, 0.5, 4.5], [1.0, -2.0, 3.0, 5.0]], dtype=torch.float64)
    wb = binarize_weight(w)
    assert (torch.signbit(wb) == torch.tensor([[0, 0, 1, 0], [0, 0, 0, 0], [0, 1, 0, 1]], dtype=torch.bool)).all()
    wb.backward(g)
    # row 0: t = (1 + 2 − 3 + 4)/4 = 1 → 0.75·g + sign·1; row 1: t = 4/4 = 1 → 0.75·g + 1; row 2: masked where |W| > 1
    assert w.grad[0].tolist() == [1.75, 2.5, 1.25, 4.0]
    assert w.grad[1].tolist() == [1.75, -0.5, 1.375, 4.375]
    torch.testing.assert_close(w.grad, _authors_weight_grad(w.detach(), g), rtol=1e-12, atol=1e-12)


def test_weight_op_passes_torch_library_opcheck():
    """The custom op's fake (meta) kernel, autograd registration and schema agree with its real kernel."""
    w = (torch.randn(6, 4, 3, 3) * 0.7).requires_grad_()
    for grad in ("authors", "ste"):
        torch.library.opcheck(torch.ops.sibnn.binarize_weight.default, (w, grad))
    g, wb = torch.randn(6, 4, 3, 3), binarize_weight(w.detach())
    torch.library.opcheck(torch.ops.sibnn.binarize_weight_backward.default, (g, w.detach(), wb, "authors"))


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_weight_binarizer_compiles_in_one_graph(backend):
    """``fullgraph=True``: no graph break around the weight op, for both rules; values and gradients as eager."""
    lin = torch.nn.Parameter(torch.randn(5, 12) * 0.6)
    conv = torch.nn.Parameter(torch.randn(6, 4, 3, 3) * 0.6)
    x, xl = torch.randn(2, 4, 6, 6), torch.randn(3, 12)

    def f(conv, lin, grad):
        a = torch.nn.functional.conv2d(x, binarize_weight(conv, grad)).square().sum()
        return a + torch.nn.functional.linear(xl, binarize_weight(lin, grad)).square().sum()

    for grad in ("authors", "ste"):
        f(conv, lin, grad).backward()
        eager = (conv.grad.clone(), lin.grad.clone())
        conv.grad = lin.grad = None
        torch.compile(f, backend=backend, fullgraph=True)(conv, lin, grad).backward()
        for got, exp in zip((conv.grad, lin.grad), eager):
            torch.testing.assert_close(got, exp, rtol=1e-5, atol=1e-5)
        conv.grad = lin.grad = None


def test_authors_weight_gradient_under_bf16_autocast_keeps_fp32_latent_weights():
    """Under bf16 autocast the latent weight and its gradient stay float32 and the gradient follows the rule for the
    g = ∂L/∂W_b the bf16 conv hands back."""
    w = (torch.randn(6, 4, 3, 3) * 0.7).requires_grad_()
    x = torch.randn(2, 4, 7, 7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        wb = binarize_weight(w)
        wb.retain_grad()
        y = torch.nn.functional.conv2d(x, wb, padding=1)
    assert wb.dtype == torch.float32 and y.dtype == torch.bfloat16
    y.float().square().sum().backward()
    assert w.grad.dtype == torch.float32
    torch.testing.assert_close(w.grad, _authors_weight_grad(w.detach(), wb.grad), rtol=1e-5, atol=1e-6)
