"""sibnn.infer.kernels: the direct binary convolution / linear kernels equal ``reference.py`` exactly, over the
shapes that pick different code paths (register-tile row/column remainders, batch 1–5 GEMVs, small and odd word
counts, strides, paddings, kernel sizes, output channels not a multiple of 16, the fused epilogue)."""
from __future__ import annotations

import pytest
import torch

from sibnn.infer import kernels
from sibnn.infer import reference as R

pytestmark = pytest.mark.skipif(kernels.library() is None, reason="the C kernels cannot be built here")


def bits(*shape, p=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(*shape, generator=g) < p).to(torch.uint8)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("batch", [1, 2, 3, 5, 7, 13])
@pytest.mark.parametrize("features,out", [(64, 16), (100, 24), (300, 48), (1000, 40), (2048, 100)])
def test_binary_linear_is_exact(batch, features, out, threads):
    a, u = bits(batch, features, seed=batch), bits(out, features, seed=features)
    pa, pu = R.pack_bits(a), R.pack_bits(u)
    expect = R.binary_linear(pa, features, pu)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = kernels.binary_linear(pa, features, pu)
        got_blocked = kernels.binary_linear(pa, features, pu, kernels.block_weights(pu))
    finally:
        torch.set_num_threads(old)
    assert got.shape == expect.shape and torch.equal(got, expect)
    assert torch.equal(got_blocked, expect)


CONV = [  # (n, cin, h, w, cout, k, stride, pad)
    (1, 64, 9, 9, 64, 3, 1, 1),      # Cw = 1
    (2, 128, 7, 6, 48, 3, 1, 1),     # Cw = 2, three column blocks (one 32-channel tile + one 16)
    (1, 96, 11, 11, 40, 5, 1, 2),    # Cw = 2 with a partial word, Co not a multiple of 16, pad 2
    (1, 200, 8, 8, 33, 3, 2, 1),     # Cw = 4 (odd bits), stride 2
    (1, 320, 5, 7, 16, 3, 1, 0),     # Cw = 5, pad 0, a single column block
    (3, 64, 8, 8, 20, 1, 1, 0),      # 1×1
    (1, 3, 23, 23, 24, 11, 4, 2),    # 11×11 stride 4, 3 channels
    (1, 512, 7, 7, 64, 3, 1, 1),     # Cw = 8, 49 rows (row-tile remainder)
    (2, 64, 5, 5, 16, 5, 2, 2),      # stride 2, pad 2, batch 2
    (1, 70, 4, 4, 32, 5, 1, 1),      # kernel larger than the input (padding makes it fit)
]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", CONV)
def test_binary_conv2d_is_exact(shape, threads):
    n, cin, h, w, cout, k, stride, pad = shape
    a, u = bits(n, h, w, cin, p=0.4, seed=cin), bits(cout, k, k, cin, seed=cout)
    pa, pu = R.pack_bits(a), R.pack_bits(u)
    expect = R.binary_conv2d(pa, cin, pu, k, stride, pad)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = kernels.binary_conv2d(pa, cin, pu, k, stride, pad)
        got_blocked = kernels.binary_conv2d(pa, cin, pu, k, stride, pad, kernels.block_weights(pu))
    finally:
        torch.set_num_threads(old)
    assert got.shape == expect.shape and torch.equal(got, expect)
    assert torch.equal(got_blocked, expect)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("shape", [(1, 64, 10, 10, 64, 3, 1, 1), (2, 128, 7, 7, 48, 3, 2, 1),
                                   (1, 256, 5, 5, 16, 1, 1, 0)])
def test_fused_epilogue_is_one_fma_then_the_add(shape, residual, threads):
    n, cin, h, w, cout, k, stride, pad = shape
    a, u = bits(n, h, w, cin, seed=1), bits(cout, k, k, cin, seed=2)
    pa, pu = R.pack_bits(a), R.pack_bits(u)
    m = R.binary_conv2d(pa, cin, pu, k, stride, pad)
    g = torch.Generator().manual_seed(3)
    scale, shift = torch.randn(cout, generator=g), torch.randn(cout, generator=g)
    res = torch.randn(m.shape, generator=g).contiguous(memory_format=torch.channels_last) if residual else None
    # the kernel's rounding: fma(m, scale, shift) (exact product, one rounding), then + residual
    expect = (m.double() * scale.double().view(1, -1, 1, 1) + shift.double().view(1, -1, 1, 1)).float()
    if residual:
        expect = expect + res
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = kernels.binary_conv2d(pa, cin, pu, k, stride, pad, kernels.block_weights(pu), (scale, shift, res))
    finally:
        torch.set_num_threads(old)
    assert torch.equal(got, expect)


def test_fused_epilogue_needs_whole_blocks():
    pa, pu = R.pack_bits(bits(1, 4, 4, 64)), R.pack_bits(bits(20, 3, 3, 64))
    with pytest.raises(ValueError):
        kernels.binary_conv2d(pa, 64, pu, 3, 1, 1, None, (torch.ones(20), torch.zeros(20), None))


def test_bgemm_ignores_padding_rows():
    a, u = bits(6, 200), bits(40, 200, seed=1)
    pa, pu = R.pack_bits(a), R.pack_bits(u)
    got = kernels._bgemm(pa, 5, kernels.block_weights(pu), 40)
    assert torch.equal(got, R.binary_linear(pa[:5], 200, pu))
