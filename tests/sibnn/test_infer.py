"""sibnn.infer: packed Si-BNN inference equals the trained model in eval mode, bit for bit (issue 7)."""
from __future__ import annotations

import math
import struct

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sibnn.infer import (ExportError, binary_activations, PackedFormatError, PackedModel, export_model, kernels, pack_model,
                         reference as R)
from sibnn.infer.__main__ import main as cli
from sibnn.infer.export import fold_threshold
from sibnn.models import create_model
from sibnn.models.resnet import BinaryConvUnit
from sibnn.quant import SiBinarize


def randomize(model: nn.Module, seed: int) -> nn.Module:
    """Non-trivial thresholds everywhere: random BN statistics, γ of both signs, θ, and s including s < 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.1)
                m.weight.copy_(torch.randn(n, generator=g))
                m.bias.copy_(torch.randn(n, generator=g) * 0.5)
            if isinstance(m, SiBinarize):
                m.theta.copy_(torch.randn(m.theta.shape, generator=g) * 0.5)
                m.scale.copy_(torch.randn(m.scale.shape, generator=g).abs() + 0.2)
                m.scale[::7] *= -1
    return model.eval()


run_with_bits = binary_activations


# (arch, builder kwargs, input size, channels): small inputs; channel counts 16·k and 100 exercise partial words.
SMALL = {
    "digits_cnn": ({"width": 20}, 8, 1),
    "mlp": ({"input_size": 8, "hidden": 100}, 8, 1),
    "vgg_small": ({"width": 24}, 32, 3),
    "alexnet": ({}, 67, 3),
    "vgg_variant": ({}, 32, 3),
    "resnet18": ({}, 32, 3),
    "resnet50": ({}, 32, 3),
}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("arch", sorted(SMALL))
def test_packed_model_reproduces_every_binary_activation_and_the_logits(arch, seed):
    kw, size, ch = SMALL[arch]
    torch.manual_seed(seed)
    model = randomize(create_model(arch, num_classes=10, in_channels=ch, **kw), seed)
    x = torch.randn(2, ch, size, size)
    ref, ref_bits = run_with_bits(model, x)
    out, bits = pack_model(model)(x, return_bits=True)
    assert list(bits) == list(ref_bits)
    for name, b in ref_bits.items():
        assert 0.02 < b.float().mean() < 0.98, f"{name}: trivial thresholds make the test vacuous"
        assert torch.equal(bits[name].to(b.dtype), b), f"{name}: {(bits[name] != b).sum()} bits differ"
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["alexnet", "resnet50"])
def test_reference_backend_runs_the_same_program_to_the_same_result(arch):
    kw, size, ch = SMALL[arch]
    model = randomize(create_model(arch, num_classes=10, **kw), 5)
    packed = pack_model(model)
    slow = PackedModel(packed.program, packed.tensors, packed.config, packed.meta, backend="reference")
    x = torch.randn(1, ch, size, size)
    (a, bits_a), (b, bits_b) = packed(x, return_bits=True), slow(x, return_bits=True)
    assert all(torch.equal(bits_a[k], bits_b[k]) for k in bits_a)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_full_size_resnet18_thresholds_are_exact_and_end_to_end_bits_agree_to_float_rounding():
    """At 224 px each of the 16 folded comparisons, fed the training model's own input, gives its bits exactly.
    End to end the residual stream carries float rounding (the folded affines round differently from conv → BN),
    so a handful of activations that sit within rounding of their threshold may flip — fewer than the training
    model flips against itself when run on a channels_last input (see docs/benchmarks.md)."""
    model = randomize(create_model("resnet18"), 3)
    x = torch.randn(1, 3, 224, 224)
    inputs = {}
    hooks = [u.register_forward_hook(lambda mod, i, o, n=n: inputs.__setitem__(n + ".conv", i[0].detach()))
             for n, u in model.named_modules() if isinstance(u, BinaryConvUnit)]
    ref, ref_bits = run_with_bits(model, x)
    for h in hooks:
        h.remove()
    packed = pack_model(model)
    thresholds = {op["layer"]: op for op in packed.program if op["op"] == "threshold"}
    assert len(thresholds) == 16
    for name, op in thresholds.items():
        xin = inputs[name].contiguous(memory_format=torch.channels_last)
        got = R.unpack_bits(kernels.threshold_pack(xin, packed.tensors[op["sign"]], packed.tensors[op["T"]]),
                            xin.shape[1]).permute(0, 3, 1, 2)
        assert torch.equal(got.to(ref_bits[name].dtype), ref_bits[name]), name
    out, bits = packed(x, return_bits=True)
    flipped = sum(int((bits[k].to(v.dtype) != v).sum()) for k, v in ref_bits.items())
    total = sum(v.numel() for v in ref_bits.values())
    assert flipped <= 1e-3 * total
    assert (out - ref).abs().max() <= 0.01 * ref.abs().max()


# -- arithmetic and kernels ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("L", [1, 63, 64, 65, 130])
def test_pack_bits_round_trip_and_little_endian_bit_order(L):
    bits = torch.randint(0, 2, (3, L), dtype=torch.uint8)
    packed = R.pack_bits(bits)
    assert packed.shape == (3, (L + 63) // 64)
    assert torch.equal(R.unpack_bits(packed, L), bits)
    one = torch.zeros(1, L, dtype=torch.uint8)
    one[0, L - 1] = 1
    word = R.pack_bits(one)[0, (L - 1) // 64].item()
    assert word & ((1 << 64) - 1) == 1 << ((L - 1) % 64)


@pytest.mark.parametrize("cin,cout,k,stride,pad", [(70, 33, 3, 1, 1), (64, 64, 3, 2, 1), (130, 17, 5, 1, 2),
                                                   (5, 3, 1, 1, 0), (96, 40, 3, 2, 0)])
def test_binary_conv_equals_conv_of_zero_one_inputs_with_pm1_weights(cin, cout, k, stride, pad):
    a = torch.randint(0, 2, (2, cin, 9, 7))
    u = torch.randint(0, 2, (cout, cin, k, k))
    expect = F.conv2d(a.double(), (2 * u - 1).double(), stride=stride, padding=pad).float()
    pa, pu = R.pack_bits(a.permute(0, 2, 3, 1)), R.pack_bits(u.permute(0, 2, 3, 1))
    assert torch.equal(R.binary_conv2d(pa, cin, pu, k, stride, pad), expect)
    assert torch.equal(kernels.binary_conv2d(pa, cin, pu, k, stride, pad), expect)


@pytest.mark.parametrize("n,features,cout", [(1, 100, 10), (5, 1000, 70), (4, 64, 16)])
def test_binary_linear_equals_matmul_of_zero_one_inputs_with_pm1_weights(n, features, cout):
    a, u = torch.randint(0, 2, (n, features)), torch.randint(0, 2, (cout, features))
    expect = (a.double() @ (2 * u - 1).double().T).float()
    assert torch.equal(R.binary_linear(R.pack_bits(a), features, R.pack_bits(u)), expect)
    assert torch.equal(kernels.binary_linear(R.pack_bits(a), features, R.pack_bits(u)), expect)


def test_threshold_pack_kernel_matches_reference_including_constant_channels():
    x = torch.randn(2, 130, 3, 5).contiguous(memory_format=torch.channels_last)
    sign = torch.where(torch.rand(130) < 0.5, -1.0, 1.0)
    T = torch.randn(130)
    T[3], T[4] = math.inf, -math.inf
    got = kernels.threshold_pack(x, sign, T)
    assert torch.equal(got, R.threshold_pack(x, sign, T))
    b = R.unpack_bits(got, 130)
    assert b[..., 3].sum() == 0 and b[..., 4].all()


def test_portable_build_without_march_native_gives_the_same_results(monkeypatch, tmp_path):
    monkeypatch.setenv("SIBNN_INFER_PORTABLE", "1")
    monkeypatch.setenv("SIBNN_CACHE", str(tmp_path))
    monkeypatch.setattr(kernels, "_lib", kernels._build())
    assert kernels.backend() == "c-scalar"
    a, u = torch.randint(0, 2, (1, 9, 9, 100)), torch.randint(0, 2, (20, 3, 3, 100))
    pa, pu = R.pack_bits(a), R.pack_bits(u)
    assert torch.equal(kernels.binary_conv2d(pa, 100, pu, 3, 2, 1), R.binary_conv2d(pa, 100, pu, 3, 2, 1))


def test_folded_threshold_decides_like_the_real_formula_on_both_sides_of_it():
    """γ < 0, s < 0, s = 0 and γ = 0 included: at T and at the float32 just below it the folded comparison agrees
    with (A·x + B − θ)·s ≥ 0 evaluated exactly."""
    g = torch.Generator().manual_seed(0)
    A = torch.randn(200, generator=g, dtype=torch.float64)
    B, theta = torch.randn(200, generator=g, dtype=torch.float64), torch.randn(200, generator=g, dtype=torch.float64)
    s = torch.randn(200, generator=g, dtype=torch.float64)
    s[0], A[1] = 0.0, 0.0
    sign, T = fold_threshold(A, B, theta, s)
    finite = T.isfinite()
    for x in (T, torch.nextafter(T, torch.full_like(T, -math.inf)), torch.nextafter(T, torch.full_like(T, math.inf))):
        xs = torch.where(finite, x * sign, torch.randn(200, generator=g).float())  # x such that sign·x is probed
        exact = (A * xs.double() + B - theta) * s >= 0
        assert torch.equal(sign * xs >= T, exact)
    assert T[0] == -math.inf                     # s = 0: y = 0 ≥ 0, always 1
    assert (sign[s * A < 0] == -1).all()


# -- files and errors ---------------------------------------------------------------------------------------------

def test_file_round_trip_keeps_program_config_and_logits(tmp_path):
    model = randomize(create_model("vgg_small", width=16), 0)
    path = tmp_path / "m.sibnn"
    cfg = {"arch": "vgg_small", "binarizer": "sibnn", "rho": 0.3, "num_classes": 10, "in_channels": 3}
    size = export_model(model, path, config=cfg)
    assert size == path.stat().st_size
    loaded, packed = PackedModel.load(path), pack_model(model, cfg)
    assert loaded.config == cfg and loaded.program == packed.program
    assert all(torch.equal(loaded.tensors[k], v) for k, v in packed.tensors.items())
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded(x), packed(x))


def test_int8_full_precision_layers_shrink_the_file_and_keep_the_prediction_close(tmp_path):
    model = randomize(create_model("resnet18", num_classes=100), 1)
    f32, i8 = export_model(model, tmp_path / "a"), export_model(model, tmp_path / "b", fp_dtype="int8")
    assert i8 < 0.8 * f32
    x = torch.randn(2, 3, 32, 32)
    ref, q = PackedModel.load(tmp_path / "a")(x), PackedModel.load(tmp_path / "b")(x)
    assert F.cosine_similarity(ref, q).min() > 0.9


def test_unknown_file_version_is_a_clear_error(tmp_path):
    path = tmp_path / "m.sibnn"
    export_model(randomize(create_model("digits_cnn"), 0), path)
    raw = bytearray(path.read_bytes())
    raw[8:12] = struct.pack("<I", 99)
    path.write_bytes(bytes(raw))
    with pytest.raises(PackedFormatError, match="version 99 is not supported"):
        PackedModel.load(path)
    (tmp_path / "junk").write_bytes(b"not a model at all")
    with pytest.raises(PackedFormatError, match="not a packed Si-BNN model"):
        PackedModel.load(tmp_path / "junk")


@pytest.mark.parametrize("binarizer,word", [("sign", "sign"), ("fp", "full-precision")])
def test_sign_and_fp_binarizers_are_refused_by_name(binarizer, word):
    with pytest.raises(ExportError, match=f"features.3.*{word}"):
        pack_model(create_model("alexnet", binarizer))


def test_cli_exports_a_checkpoint_and_predicts(tmp_path, capsys):
    model = randomize(create_model("digits_cnn"), 4)
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "config": {"arch": "digits_cnn", "binarizer": "sibnn", "rho": 0.3,
                                                        "num_classes": 10, "in_channels": 1}}, ckpt)
    assert cli(["export", str(ckpt), "--out", str(tmp_path / "m.sibnn")]) == 0
    x = torch.randn(3, 1, 8, 8)
    torch.save(x, tmp_path / "x.pt")
    capsys.readouterr()
    assert cli(["predict", str(tmp_path / "m.sibnn"), str(tmp_path / "x.pt"), "--topk", "1", "--json"]) == 0
    import json
    rows = json.loads(capsys.readouterr().out)
    assert [r["classes"][0] for r in rows] == model(x).argmax(1).tolist()
    assert cli(["predict", str(tmp_path / "missing.sibnn"), str(tmp_path / "x.pt")]) == 2
    assert cli(["export", str(ckpt), "--out", str(tmp_path / "q.sibnn"), "--int8"]) == 0
    capsys.readouterr()
    assert cli(["bench", str(tmp_path / "q.sibnn"), "--repeats", "2", "--batch", "4"]) == 0
    line = capsys.readouterr().out
    assert "int8 FP layers" in line and "batch 1 " in line and "batch 4 " in line


def _maxpool_signs(packed):
    return [op.get("sign") for op in packed.program if op["op"] == "maxpool"]


@pytest.mark.parametrize("arch", ["alexnet", "vgg_variant"])
def test_bn_after_max_pool_folds_after_the_pool_and_stays_bit_exact(arch):
    """METHOD.md §3 (HWGQ order): max-pool → BN. A BN after the pool composes into the next threshold after the
    pool, so no pool needs a per-channel direction even with γ < 0; the same model with the BN moved before the pool
    (the old order) needs one (max(γx) = γ·min(x) for γ < 0). Both export bit-exactly."""
    kw, size, ch = SMALL[arch]
    torch.manual_seed(0)
    model = randomize(create_model(arch, num_classes=10, **kw), 4)
    bns = [m for m in model.features if isinstance(m, nn.BatchNorm2d)]
    assert all((bn.weight < 0).any() for bn in bns), "γ < 0 somewhere in every BN (what needs the direction)"
    x = torch.randn(2, ch, size, size)
    packed = pack_model(model)
    assert _maxpool_signs(packed) and all(s is None for s in _maxpool_signs(packed))
    ref_bits, got_bits = run_with_bits(model, x)[1], packed(x, return_bits=True)[1]
    assert list(got_bits) == list(ref_bits)
    for name, b in ref_bits.items():
        assert torch.equal(got_bits[name].to(b.dtype), b), name
    # the old order: every "pool → BN" swapped to "BN → pool"
    mods = list(model.features)
    for i in range(len(mods) - 1):
        if isinstance(mods[i], nn.MaxPool2d) and isinstance(mods[i + 1], nn.BatchNorm2d):
            mods[i], mods[i + 1] = mods[i + 1], mods[i]
    model.features = nn.Sequential(*mods)
    old = pack_model(model)
    assert any(s is not None for s in _maxpool_signs(old))
    ref, ref_bits = run_with_bits(model, x)
    out, bits = old(x, return_bits=True)
    assert all(torch.equal(bits[n].to(b.dtype), b) for n, b in ref_bits.items())
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("weight_grad", ["authors", "ste", "xnornet", "bireal", "irnet"])
def test_si_bnn_activations_pack_exactly_with_every_weight_rule_its_layer_computes(weight_grad):
    """The exporter packs the binary weights the layer's own rule computes (IR-Net's standardised, power-of-two
    scaled signs; Bi-Real's α from the unclamped W), so every rule's model gives the same bits and logits packed."""
    torch.manual_seed(0)
    model = randomize(create_model("digits_cnn", num_classes=10, in_channels=1, width=20, weight_grad=weight_grad), 0)
    with torch.no_grad():  # latent weights beyond ±1 and off-centre: the rules differ there
        for m in model.modules():
            if hasattr(m, "binary_weight") and m.binary_weight:
                m.weight.mul_(torch.rand(m.weight.shape[0], *([1] * (m.weight.dim() - 1))) * 3).add_(0.1)
    x = torch.randn(2, 1, 8, 8)
    ref, ref_bits = run_with_bits(model, x)
    out, bits = pack_model(model)(x, return_bits=True)
    for name, b in ref_bits.items():
        assert torch.equal(bits[name].to(b.dtype), b), f"{name}: {(bits[name] != b).sum()} bits differ"
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_a_layer_whose_weights_are_not_plus_minus_alpha_per_filter_is_refused():
    from sibnn.infer.export import pack_binary_weight

    model = create_model("digits_cnn", num_classes=10, in_channels=1, width=20)
    layer = next(m for m in model.modules() if getattr(m, "binary_weight", False))
    layer.quantized_weight = lambda: layer.weight  # real-valued weights in a binary layer's place
    with pytest.raises(ExportError, match="not give ±α per output filter"):
        pack_binary_weight(layer)
