"""sibnn.infer.fpops: the float kernels between binary layers, and int8 full-precision layers' arithmetic."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sibnn.infer import PackedModel, fpops, pack_model
from sibnn.models import create_model
from tests.sibnn.test_infer import randomize, run_with_bits


@pytest.mark.parametrize("size,k,s,p", [(7, 3, 2, 1), (8, 3, 2, 1), (13, 3, 2, 0), (6, 2, 2, 0), (55, 3, 2, 0),
                                        (9, 5, 3, 2), (10, 3, 1, 1)])
@pytest.mark.parametrize("ceil_mode", [False, True])
def test_pool_out_is_pytorchs_output_size(size, k, s, p, ceil_mode):
    y = F.max_pool2d(torch.zeros(1, 1, size, size), k, s, p, ceil_mode=ceil_mode)
    assert fpops.pool_out(size, k, s, p, ceil_mode) == y.shape[-1]


@pytest.mark.parametrize("channels", [64, 20, 96])
@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_maxpool_with_direction_and_affine_equals_pytorch(channels, ceil_mode, dtype):
    g = torch.Generator().manual_seed(channels)
    x = torch.randn(2, channels, 13, 11, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
    sign = torch.where(torch.rand(channels, generator=g) < 0.3, -1.0, 1.0)
    a, b = torch.randn(channels, generator=g), torch.randn(channels, generator=g)
    xf = x.float()
    pooled = sign.view(1, -1, 1, 1) * F.max_pool2d(xf * sign.view(1, -1, 1, 1), 3, 2, 1, ceil_mode=ceil_mode)
    got = fpops.maxpool_affine(x, [3, 3], [2, 2], [1, 1], ceil_mode, sign)
    assert torch.equal(got, pooled)                                     # a max is exact
    assert (sign < 0).any() and not torch.equal(pooled, F.max_pool2d(xf, 3, 2, 1, ceil_mode=ceil_mode))
    got = fpops.maxpool_affine(x, [3, 3], [2, 2], [1, 1], ceil_mode, sign, a, b)
    torch.testing.assert_close(got, pooled * a.view(1, -1, 1, 1) + b.view(1, -1, 1, 1), rtol=1e-6, atol=1e-6)
    assert got.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("rows", [1, 3, 5])
@pytest.mark.parametrize("k", [100, 4096])
def test_int8_linear_reads_int8_weights_like_the_dequantised_float_layer(rows, k):
    g = torch.Generator().manual_seed(rows * k)
    q = torch.randint(-127, 128, (37, k), generator=g, dtype=torch.int8)
    scale, bias = torch.rand(37, generator=g) * 0.01, torch.randn(37, generator=g)
    x = torch.randn(rows, k, generator=g)
    ref = F.linear(x.double(), q.double() * scale.double()[:, None], bias.double()).float()
    torch.testing.assert_close(fpops.linear_i8(x, q, scale, bias), ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fpops.linear_i8(x, q, scale), ref - bias, rtol=1e-4, atol=1e-4)


def test_int8_compute_choice_and_its_override(monkeypatch):
    monkeypatch.delenv("SIBNN_INFER_INT8_COMPUTE", raising=False)
    assert fpops.int8_compute() == ("bfloat16" if fpops.bf16_available() else "float32")
    monkeypatch.setenv("SIBNN_INFER_INT8_COMPUTE", "float32")
    assert fpops.int8_compute() == "float32"
    assert fpops.int8_compute("bfloat16") == "bfloat16"
    with pytest.raises(ValueError, match="int8 compute must be"):
        fpops.int8_compute("fp8")


@pytest.mark.parametrize("arch,size", [("resnet18", 64), ("alexnet", 99)])
def test_int8_layers_in_either_arithmetic_stay_close_to_the_trained_model(arch, size):
    """int8 weights change the first layer's output by quantisation (and bfloat16 by 8-bit rounding), so a few
    binary activations next to their thresholds flip; the bulk, and the logits, must follow the float model."""
    torch.manual_seed(0)
    model = create_model(arch, num_classes=10)
    # The authors' init (σ = 1/fan_in) leaves the first conv's outputs ~√fan_in times smaller than the order-1 BN
    # statistics ``randomize`` sets, so hardly any activation sits near a threshold and int8 rounding would flip
    # none; σ = 1/√fan_in puts them on the thresholds' scale, as in a trained model.
    with torch.no_grad():
        first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        first.weight.mul_(first.weight[0].numel() ** 0.5)
    model = randomize(model, 4)
    x = torch.randn(2, 3, size, size)
    ref, ref_bits = run_with_bits(model, x)
    exact = pack_model(model)
    q = pack_model(model, fp_dtype="int8")
    for compute in ("float32", "bfloat16"):
        packed = PackedModel(q.program, q.tensors, q.config, q.meta, int8_compute=compute)
        out, bits = packed(x, return_bits=True)
        flipped = sum(int((bits[k].to(v.dtype) != v).sum()) for k, v in ref_bits.items())
        total = sum(v.numel() for v in ref_bits.values())
        assert 0 < flipped < 0.05 * total, (compute, flipped, total)
        assert F.cosine_similarity(out, ref).min() > 0.95, compute
    torch.testing.assert_close(exact(x), ref, rtol=1e-5, atol=1e-5)
