"""The next layer's threshold fused into the binary conv's epilogue: the kernel's bits equal ``threshold_pack`` of
the float output it stores, and the packed ResNet runs every threshold after the first inside a conv step while
still reproducing the trained model's binary activations bit for bit."""
from __future__ import annotations

import math

import pytest
import torch

from sibnn.infer import PackedModel, kernels, pack_model
from sibnn.infer import reference as R
from sibnn.models import create_model
from tests.sibnn.test_infer import randomize, run_with_bits

pytestmark = pytest.mark.skipif(kernels.library() is None, reason="the C kernels cannot be built here")


def bits(*shape, p=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(*shape, generator=g) < p).to(torch.uint8)


def _signs(cout: int, kind: str, g: torch.Generator) -> torch.Tensor:
    if kind == "plus":
        return torch.ones(cout)
    if kind == "minus":
        return -torch.ones(cout)
    return torch.where(torch.rand(cout, generator=g) < 0.5, -1.0, 1.0)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("signs", ["plus", "minus", "mixed"])
@pytest.mark.parametrize("shape", [  # (n, cin, h, w, cout, k, stride, pad)
    (1, 64, 10, 10, 64, 3, 1, 1),
    (2, 128, 7, 7, 128, 3, 2, 1),     # stride 2, 16 rows (a row-tile remainder), batch 2
    (1, 256, 5, 5, 256, 3, 1, 1),
    (1, 64, 9, 9, 256, 1, 1, 0),      # 1×1
    (1, 64, 6, 6, 96, 3, 1, 1),       # a half-filled last word (its upper 32 bits stay 0)
    (1, 64, 6, 6, 48, 3, 2, 1),       # a lone 16-channel column tile
])
def test_fused_threshold_bits_equal_threshold_pack_of_the_stored_output(shape, signs, residual, threads):
    n, cin, h, w, cout, k, stride, pad = shape
    a, u = bits(n, h, w, cin, seed=cin), bits(cout, k, k, cin, seed=cout)
    pa, pu = R.pack_bits(a), R.pack_bits(u)
    g = torch.Generator().manual_seed(cout + stride)
    scale, shift = torch.randn(cout, generator=g) * 0.1, torch.randn(cout, generator=g)
    ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    res = (torch.randn(n, cout, ho, wo, generator=g).contiguous(memory_format=torch.channels_last)
           if residual else None)
    sign = _signs(cout, signs, g)
    T = torch.randn(cout, generator=g)
    T[3], T[5] = math.inf, -math.inf                   # constant channels: never / always on
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        blocked = kernels.block_weights(pu)
        plain = kernels.binary_conv2d(pa, cin, pu, k, stride, pad, blocked, (scale, shift, res))
        out, got = kernels.binary_conv2d(pa, cin, pu, k, stride, pad, blocked, (scale, shift, res), (sign, T))
        expect = kernels.threshold_pack(out, sign, T)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(out, plain)                     # the float output is unchanged by the fusion
    assert got.shape == (n, ho, wo, R.words(cout)) and got.dtype == torch.int64
    assert torch.equal(got, expect)
    assert torch.equal(got, R.threshold_pack(out, sign, T))
    b = R.unpack_bits(got, cout)
    assert b[..., 3].sum() == 0 and b[..., 5].all()
    assert 0.05 < b.float().mean() < 0.95              # not vacuous
    # ties: with T equal to stored outputs, sign·x >= T must hold where sign = +1 (>=, not >)
    T2 = (out.permute(0, 2, 3, 1).reshape(-1, cout)[0] * sign).contiguous()
    _, tie = kernels.binary_conv2d(pa, cin, pu, k, stride, pad, blocked, (scale, shift, res), (sign, T2))
    assert torch.equal(tie, kernels.threshold_pack(out, sign, T2)) and R.unpack_bits(tie, cout)[0, 0, 0].all()


def test_fused_threshold_without_epilogue_and_its_channel_rule():
    pa, pu = R.pack_bits(bits(1, 5, 5, 64)), R.pack_bits(bits(32, 3, 3, 64, seed=1))
    sign, T = torch.ones(32), torch.zeros(32)
    out, got = kernels.binary_conv2d(pa, 64, pu, 3, 1, 1, None, None, (sign, T))
    assert torch.equal(got, R.threshold_pack(out, sign, T))
    pu20 = R.pack_bits(bits(20, 3, 3, 64))
    with pytest.raises(ValueError):
        kernels.binary_conv2d(pa, 64, pu20, 3, 1, 1, None, None, (torch.ones(20), torch.zeros(20)))


def test_portable_build_fuses_the_threshold_the_same_way(monkeypatch, tmp_path):
    monkeypatch.setenv("SIBNN_INFER_PORTABLE", "1")
    monkeypatch.setenv("SIBNN_CACHE", str(tmp_path))
    monkeypatch.setattr(kernels, "_lib", kernels._build())
    assert kernels.backend() == "c-scalar"
    pa, pu = R.pack_bits(bits(2, 7, 7, 128, seed=4)), R.pack_bits(bits(96, 3, 3, 128, seed=5))
    g = torch.Generator().manual_seed(6)
    scale, shift, sign = torch.randn(96, generator=g) * 0.1, torch.randn(96, generator=g), _signs(96, "mixed", g)
    res = torch.randn(2, 96, 4, 4, generator=g).contiguous(memory_format=torch.channels_last)
    T = torch.randn(96, generator=g)
    T[0] = math.inf
    for threads in (1, 2):
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            out, got = kernels.binary_conv2d(pa, 128, pu, 3, 2, 1, None, (scale, shift, res), (sign, T))
        finally:
            torch.set_num_threads(old)
        assert torch.equal(got, R.threshold_pack(out, sign, T))


def _threshold_steps(packed: PackedModel) -> list[str]:
    """Names of the thresholds that still run as steps of their own."""
    ops = {op["name"]: op for op in packed.program}
    return [name for name, *_ in packed._steps if ops[name]["op"] == "threshold"]


def test_resnet18_runs_every_threshold_but_the_first_in_a_conv_epilogue(monkeypatch):
    packed = pack_model(randomize(create_model("resnet18", num_classes=10), 0))
    thresholds = [op["name"] for op in packed.program if op["op"] == "threshold"]
    assert len(thresholds) == 16
    assert _threshold_steps(packed) == thresholds[:1]  # the one after the stem's pooling
    fused = [s for s in packed._steps if not isinstance(s[2], str)]
    assert len(fused) == 15 and all(s[3]["op"] == "threshold" for s in fused)
    monkeypatch.setenv("SIBNN_INFER_FUSE_THRESHOLD", "0")
    plain = PackedModel(packed.program, packed.tensors, packed.config, packed.meta)
    assert _threshold_steps(plain) == thresholds
    assert len(plain._steps) == len(packed._steps) + 15
    slow = PackedModel(packed.program, packed.tensors, packed.config, packed.meta, backend="reference")
    assert _threshold_steps(slow) == thresholds


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_fused_model_reproduces_every_binary_activation(arch, seed, monkeypatch):
    torch.manual_seed(seed)
    model = randomize(create_model(arch, num_classes=10), seed)
    x = torch.randn(2, 3, 32, 32)
    ref, ref_bits = run_with_bits(model, x)
    packed = pack_model(model)
    assert any(not isinstance(s[2], str) for s in packed._steps) or arch != "resnet18"
    profile = {}
    out, got = packed(x, return_bits=True, profile=profile)
    assert list(got) == list(ref_bits)
    for name, b in ref_bits.items():
        assert torch.equal(got[name].to(b.dtype), b), f"{name}: {(got[name] != b).sum()} bits differ"
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert list(profile) == [s[0] for s in packed._steps]
    monkeypatch.setenv("SIBNN_INFER_FUSE_THRESHOLD", "0")
    plain = PackedModel(packed.program, packed.tensors, packed.config, packed.meta)
    out_plain, bits_plain = plain(x, return_bits=True)
    assert list(bits_plain) == list(got) and all(torch.equal(bits_plain[k], got[k]) for k in got)
    assert torch.equal(out_plain, out)
