"""The fused Si-BNN binarizer (sibnn.fused) against a float32 reference of METHOD.md §1.

Forward bit for bit, gradients (∂x, ∂θ, ∂s) to float rounding, for float32 and bf16 inputs, (N, C) / NCHW /
channels_last, per channel and per layer, with inputs placed exactly on the window edges y ∈ {−ρ, 0, 1}. The torch
path runs here; the Triton kernels run the same tests in Triton's interpreter (TRITON_INTERPRET=1, a subprocess)
and on a GPU (bench/gpu_e2e.sh).
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from sibnn.fused import HAVE_TRITON, _use_triton, si_binarize_fused
from sibnn.quant import SiBinarize, si_binarize

RHO = 0.25
DEVICE = torch.device(os.environ.get("SIBNN_FUSED_DEVICE", "cpu"))   # bench/gpu_e2e.sh sets cuda
CASES = [((6, 12), "2d"), ((3, 8, 5, 6), "nchw"), ((3, 8, 5, 6), "cl")]


def reference(x, theta, scale, rho):
    """§1 in float32, written out: b = 1[y ≥ 0]; the gradient of y = (x − θ)·s on the window −ρ < y < 1."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    y = (x.float() - theta.float().view(shape)) * scale.float().view(shape)
    b = (y >= 0).float()
    return b + (y - y.detach()) * ((y > -rho) & (y < 1)).float()


def inputs(shape, layout, dtype, per_layer, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = 1 if per_layer else shape[1]
    theta = torch.full((c,), 0.25)
    scale = torch.full((c,), 4.0)
    if not per_layer:   # distinct per channel, exactly representable so the edges below stay exact
        theta = theta + torch.arange(c) * 0.125
        scale = scale * (1 + (torch.arange(c) % 2))
    x = torch.randn(shape, generator=g)
    # put a quarter of the values exactly on the edges y = −ρ, 0, 1 of their channel
    th_b = theta.view((1, -1) + (1,) * (x.dim() - 2)).expand_as(x)
    s_b = scale.view((1, -1) + (1,) * (x.dim() - 2)).expand_as(x)
    edge = torch.randint(0, 4, shape, generator=g)
    for k, yv in enumerate((-RHO, 0.0, 1.0), 1):
        x = torch.where(edge == k, th_b + yv / s_b, x)
    x = x.to(dtype)
    if layout == "cl":
        x = x.contiguous(memory_format=torch.channels_last)
    grad = torch.randn(shape, generator=g).to(dtype)
    return x.to(DEVICE), theta.to(DEVICE), scale.to(DEVICE), grad.to(DEVICE)


def run(fn, x, theta, scale, grad):
    x = x.detach().clone().requires_grad_()
    th, s = theta.clone().requires_grad_(), scale.clone().requires_grad_()
    out = fn(x, th, s, RHO)
    out.backward(grad.to(out.dtype))
    return out.detach(), x.grad, th.grad, s.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("per_layer", [False, True])
@pytest.mark.parametrize("shape,layout", CASES)
def test_fused_matches_the_float32_reference(shape, layout, per_layer, dtype):
    x, theta, scale, grad = inputs(shape, layout, dtype, per_layer)
    assert _use_triton(x) == (os.environ.get("SIBNN_EXPECT_TRITON") == "1")   # the path under test
    assert x.device.type == DEVICE.type
    b, gx, gth, gs = run(si_binarize_fused, x, theta, scale, grad)
    rb, rgx, rgth, rgs = run(reference, x, theta, scale, grad)
    assert b.dtype == dtype and torch.equal(b.float(), rb)                     # bit for bit, edges included
    assert 0 < rb.mean() < 1
    # ∂x is s·g·w rounded once to x's dtype (Triton's interpreter truncates to bf16: one unit in the last place)
    tol = dict(rtol=0, atol=0) if dtype == torch.float32 else dict(rtol=2 ** -7, atol=0)
    torch.testing.assert_close(gx, rgx.to(dtype), **tol)
    assert (gx != 0).any() and (gx == 0).any()                                 # the window cuts somewhere
    torch.testing.assert_close(gth, rgth, rtol=1e-5, atol=1e-5)                 # sums: another order of adds
    torch.testing.assert_close(gs, rgs, rtol=1e-5, atol=1e-5)
    if layout == "cl":
        assert gx.is_contiguous(memory_format=torch.channels_last)


def test_sibinarize_module_runs_the_fused_op_and_agrees_with_the_reference_module(monkeypatch):
    import sibnn.fused

    torch.manual_seed(0)
    x = torch.randn(4, 6, 5, 5)
    fused, ref = SiBinarize(6), SiBinarize(6)
    assert fused.fused is None   # auto: the fused op on the CPU and on CUDA with Triton, the reference elsewhere
    calls = []
    monkeypatch.setattr(sibnn.fused._SiBinarize, "apply", lambda *a, f=sibnn.fused._SiBinarize.apply: (
        calls.append(1), f(*a))[1])
    fused.fused, ref.fused = True, False
    for m in (fused, ref):
        with torch.no_grad():
            m.theta.copy_(torch.linspace(-0.5, 0.5, 6))
            m.scale.copy_(torch.linspace(0.5, 2.0, 6))
    outs = []
    for m in (fused, ref):
        xi = x.clone().requires_grad_()
        y = m(xi)
        (y * torch.arange(y.numel()).view_as(y).float().sin()).sum().backward()
        outs.append((y.detach(), xi.grad, m.theta.grad, m.scale.grad))
    assert len(calls) == 1       # the fused module went through the fused op, the reference module did not
    assert torch.equal(outs[0][0], outs[1][0])
    for a, b in zip(outs[0][1:], outs[1][1:]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(outs[1][0], si_binarize(x, ref.theta, ref.scale, ref.rho).detach())


def test_sibinarize_auto_runs_the_fused_op_on_cpu_and_the_reference_when_told(monkeypatch):
    import sibnn.fused

    calls = []
    monkeypatch.setattr(sibnn.fused._SiBinarize, "apply", lambda *a, f=sibnn.fused._SiBinarize.apply: (
        calls.append(1), f(*a))[1])
    m, x = SiBinarize(4), torch.randn(2, 4, 3, 3)
    assert m.fused is None
    auto = m(x)
    assert calls == [1]          # auto on the CPU: the fused op (measured faster there, docs/benchmarks.md)
    m.fused = False
    assert torch.equal(m(x), auto) and calls == [1]   # the reference, named by fused=False: same values


def test_fused_op_compiles_into_one_graph_with_its_backward():
    torch._dynamo.reset()
    x, theta, scale, grad = inputs((2, 8, 4, 4), "cl", torch.float32, False)

    @torch.compile(fullgraph=True, backend="aot_eager")   # fullgraph: a graph break is an error
    def step(x, th, s):
        return (si_binarize_fused(x, th, s, RHO) * grad).sum()

    xr, th, s = x.clone().requires_grad_(), theta.clone().requires_grad_(), scale.clone().requires_grad_()
    step(xr, th, s).backward()
    _, gx, gth, gs = run(reference, x, theta, scale, grad)
    torch.testing.assert_close(xr.grad, gx)
    torch.testing.assert_close(th.grad, gth, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s.grad, gs, rtol=1e-5, atol=1e-5)


def test_bad_shapes_are_value_errors():
    with pytest.raises(ValueError, match="shape"):
        si_binarize_fused(torch.zeros(2, 3, 4), torch.zeros(3), torch.ones(3), RHO)
    with pytest.raises(ValueError, match="theta"):
        si_binarize_fused(torch.zeros(2, 3), torch.zeros(2), torch.ones(2), RHO)


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_TRITON, reason="Triton kernels (CUDA code): need triton, which CUDA builds of torch "
                                           "ship; on a CPU install `pip install triton==3.9.0` runs them here")
def test_triton_kernels_pass_the_same_tests_in_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1", "SIBNN_EXPECT_TRITON": "1"}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k",
                        "matches_the_float32_reference"], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "12 passed" in r.stdout
