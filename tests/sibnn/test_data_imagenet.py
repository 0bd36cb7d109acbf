"""ImageNetLoader (DALI, CPU mode) over a small synthetic ImageNet: shapes, normalisation, labels, sharding, errors.

The data: 4 classes × 6 train + 3 val real JPEGs (~500×375), resized to short side 256 by ``sibnn.data.prepare``
(the paper's protocol) and also packed as webdataset shards. Every image's class can be read from its pixels
(``decode_label``), and ``return_index=True`` identifies every sample, so coverage is checked sample by sample.
"""
from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sibnn.data.imagenet import IMAGENET_MEAN, IMAGENET_STD, ImageNetLoader
from sibnn.data.prepare import prepare
from sibnn.data.small import DatasetError
from sibnn.data.synthetic import decode_label, write_synthetic_imagenet

CLASSES, PER_CLASS, VAL_PER_CLASS = 4, 6, 3
N_TRAIN, N_VAL = CLASSES * PER_CLASS, CLASSES * VAL_PER_CLASS


@pytest.fixture(scope="session")
def data(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("imagenet")
    raw = write_synthetic_imagenet(base / "raw", CLASSES, PER_CLASS, VAL_PER_CLASS, webdataset=True, seed=1,
                                   shard_size=5)
    prepare(raw, base / "prep", webdataset=True, shard_size=7, workers=1, progress=False)
    return {"raw": raw, "folder": base / "prep", "webdataset": base / "prep" / "wds"}


def loader(data, split="train", fmt="folder", **kw) -> ImageNetLoader:
    kw = {"batch_size": 4, "device": "cpu", "num_threads": 2, "return_index": True, **kw}
    return ImageNetLoader(data[fmt], split, fmt=fmt, **kw)


def run_epoch(ld: ImageNetLoader):
    """All batches of one epoch as (images, labels, indices) lists."""
    xs, ys, ids = [], [], []
    for x, y, i in ld:
        xs.append(x), ys.append(y), ids.append(i)
    return xs, ys, ids


# ------------------------------------------------------------------------------------------------ tensors

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("policy", ["paper", "rrc"])
def test_train_batches_have_the_requested_shape_dtype_and_int64_labels(data, dtype, policy):
    ld = loader(data, policy=policy, dtype=dtype, batch_size=5)
    xs, ys, _ = run_epoch(ld)
    assert len(xs) == len(ld) == 5   # ceil(24 / 5): padded to full batches
    for x, y in zip(xs, ys):
        assert x.shape == (5, 3, 224, 224) and x.dtype == dtype and x.device.type == "cpu"
        assert y.shape == (5,) and y.dtype == torch.int64


def test_alexnet_crop_size_227_is_honoured_in_train_and_val(data):
    for split in ("train", "val"):
        x, _, _ = next(iter(loader(data, split, image_size=227)))
        assert x.shape[-2:] == (227, 227)


def test_val_images_are_normalised_with_imagenet_mean_and_std(data):
    """Per-channel means of the centre crop equal PIL's resize+crop of the same file, normalised by hand."""
    ld = loader(data, "val", batch_size=N_VAL)
    x, _, idx = next(iter(ld))
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    for k in (0, 5, 11):
        im = Image.open(data["folder"] / "val" / ld.classes[k // VAL_PER_CLASS] / f"{ld.sample_keys[idx[k]]}.JPEG")
        w, h = im.size
        s = 256 / min(w, h)
        im = im.convert("RGB").resize((round(w * s), round(h * s)), Image.Resampling.BILINEAR)
        left, top = (im.width - 224) // 2, (im.height - 224) // 2
        ref = torch.tensor(np.asarray(im.crop((left, top, left + 224, top + 224))), dtype=torch.float32)
        ref = (ref.permute(2, 0, 1) / 255 - mean) / std
        assert torch.allclose(x[k].mean(dim=(1, 2)), ref.mean(dim=(1, 2)), atol=0.02)
        # fine noise survives as per-pixel spread: the output is not a constant, and is roughly in ref's range
        assert abs(x[k].std().item() - ref.std().item()) < 0.05


def test_channels_last_gives_nhwc_memory_with_the_same_values(data):
    a, _, _ = next(iter(loader(data, "val")))
    b, _, _ = next(iter(loader(data, "val", channels_last=True)))
    assert b.shape == a.shape == (4, 3, 224, 224)
    assert b.is_contiguous(memory_format=torch.channels_last) and not b.is_contiguous()
    assert b.stride() == (224 * 224 * 3, 1, 224 * 3, 3)
    assert torch.equal(a, b)


def test_bf16_channels_last_keeps_the_memory_format(data):
    x, _, _ = next(iter(loader(data, "val", channels_last=True, dtype=torch.bfloat16)))
    assert x.dtype == torch.bfloat16 and x.is_contiguous(memory_format=torch.channels_last)


# ------------------------------------------------------------------------------------------------ labels

@pytest.mark.parametrize("fmt", ["folder", "webdataset"])
@pytest.mark.parametrize("split,policy", [("train", "paper"), ("train", "rrc"), ("val", "paper")])
def test_every_label_matches_the_image_content_and_its_class_folder(data, fmt, split, policy):
    ld = loader(data, split, fmt, policy=policy)
    assert ld.num_classes == CLASSES and ld.classes == [f"n{k:08d}" for k in range(CLASSES)]
    xs, ys, ids = run_epoch(ld)
    x, y, idx = torch.cat(xs), torch.cat(ys), torch.cat(ids)
    assert torch.equal(decode_label(x, CLASSES), y)
    truth = torch.tensor([int(ld.sample_keys[i].split("_")[0][1:]) for i in idx])  # key "n0000000k_j" → k
    assert torch.equal(y, truth)
    assert len(set(y.tolist())) == CLASSES   # every class shows up: the check above is not vacuous


# ------------------------------------------------------------------------------------------------ sharding

@pytest.mark.parametrize("fmt", ["folder", "webdataset"])
def test_train_shards_cover_every_sample_each_epoch_with_equal_full_batches(data, fmt):
    shards, batch = 5, 4   # 24 samples → 5 per shard → padded to 8: 2 full batches per rank, 16 padded in all
    for epoch in (0, 1):
        seen, orders = Counter(), []
        for r in range(shards):
            ld = loader(data, "train", fmt, shard_id=r, num_shards=shards, batch_size=batch, policy="rrc")
            ld.set_epoch(epoch)
            _, ys, ids = run_epoch(ld)
            assert len(ids) == len(ld) == 2 and all(len(i) == batch for i in ids)
            seen.update(torch.cat(ids).tolist())
            orders.append(torch.cat(ids).tolist())
        assert set(seen) == set(range(N_TRAIN))           # the union covers the dataset
        assert sum(seen.values()) == shards * 2 * batch   # and the rest is padding
        assert max(seen.values()) <= 1 + batch            # each rank repeats at most its last sample
        if epoch == 0:
            first = orders
    assert orders != first   # epoch 1 is a different permutation


@pytest.mark.parametrize("fmt", ["folder", "webdataset"])
@pytest.mark.parametrize("shards,batch", [(5, 2), (3, 4), (1, 5)])
def test_val_shards_count_every_sample_exactly_once(data, fmt, shards, batch):
    all_ids, total = [], 0
    for r in range(shards):
        ld = loader(data, "val", fmt, shard_id=r, num_shards=shards, batch_size=batch)
        for epoch in range(2):   # the same slice every epoch
            xs, ys, ids = run_epoch(ld)
            assert len(ids) == len(ld) and all(0 < len(i) <= batch for i in ids)
            if epoch == 0:
                first = torch.cat(ids).tolist()
        assert torch.cat(ids).tolist() == first
        all_ids += first
        total += ld.samples_per_shard
    assert sorted(all_ids) == list(range(N_VAL)) and total == N_VAL


def test_folder_and_webdataset_yield_the_same_samples(data):
    # val: same samples in the same order, and the same pixels (prepare packs the very same JPEG files)
    a = [loader(data, "val", fmt, batch_size=N_VAL) for fmt in ("folder", "webdataset")]
    (xa, ya, ia), (xb, yb, ib) = (next(iter(ld)) for ld in a)
    assert [a[0].sample_keys[i] for i in ia] == [a[1].sample_keys[i] for i in ib]
    assert torch.equal(ya, yb) and torch.equal(xa, xb)
    # train: the same set of samples, the same key → label mapping
    pairs = []
    for fmt in ("folder", "webdataset"):
        ld = loader(data, "train", fmt, batch_size=N_TRAIN)
        _, ys, ids = run_epoch(ld)
        pairs.append(sorted(zip((ld.sample_keys[i] for i in torch.cat(ids)), torch.cat(ys).tolist())))
    assert pairs[0] == pairs[1] and len(pairs[0]) == N_TRAIN


@pytest.mark.parametrize("fmt", ["folder", "webdataset"])
def test_same_seed_gives_the_same_order_and_crops_and_another_seed_does_not(data, fmt):
    def epoch(seed, e=0):
        ld = loader(data, "train", fmt, seed=seed, policy="rrc")
        ld.set_epoch(e)
        xs, _, ids = run_epoch(ld)
        return torch.cat(xs), torch.cat(ids).tolist()

    x1, o1 = epoch(3)
    x2, o2 = epoch(3)
    assert o1 == o2 and torch.equal(x1, x2)
    assert epoch(4)[1] != o1
    assert epoch(3, e=1)[1] != o1


def test_reiterating_after_a_break_restarts_the_epoch(data):
    ld = loader(data, "val", batch_size=2)
    it = iter(ld)
    next(it)
    del it   # abandoned half-way
    _, _, ids = run_epoch(ld)
    assert torch.cat(ids).tolist() == list(range(N_VAL))


# ------------------------------------------------------------------------------------------------ errors

def test_missing_root_is_named(tmp_path):
    with pytest.raises(DatasetError, match=r"ImageNet root .*nowhere does not exist"):
        ImageNetLoader(tmp_path / "nowhere", "train", 4, device="cpu")


def test_missing_split_folder_is_named(data, tmp_path):
    shutil.copytree(data["folder"] / "train", tmp_path / "train")
    with pytest.raises(DatasetError, match=r"has no val/ folder"):
        ImageNetLoader(tmp_path, "val", 4, device="cpu")


def test_empty_class_folders_are_listed(data, tmp_path):
    shutil.copytree(data["folder"] / "train", tmp_path / "train")
    (tmp_path / "train" / "n00000099").mkdir()
    with pytest.raises(DatasetError, match=r"1 empty class folder\(s\): n00000099"):
        ImageNetLoader(tmp_path, "train", 4, device="cpu")


def test_split_without_images_is_reported(tmp_path):
    (tmp_path / "train" / "n01").mkdir(parents=True)
    (tmp_path / "train" / "n01" / "notes.txt").write_text("no images here")
    with pytest.raises(DatasetError, match=r"no images \(\*\.JPEG"):
        ImageNetLoader(tmp_path, "train", 4, device="cpu")


def test_split_without_class_folders_is_reported(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(DatasetError, match=r"has no class folders"):
        ImageNetLoader(tmp_path, "train", 4, device="cpu")


@pytest.mark.parametrize("corruption", ["truncated", "not_a_jpeg"])
def test_corrupt_image_raises_dataset_error_naming_the_file(data, tmp_path, corruption):
    shutil.copytree(data["folder"] / "val", tmp_path / "val")
    victim = sorted((tmp_path / "val" / "n00000002").iterdir())[1]
    good = victim.read_bytes()
    victim.write_bytes(good[: len(good) // 3] if corruption == "truncated" else b"this is not an image" * 10)
    ld = ImageNetLoader(tmp_path, "val", 4, device="cpu", num_threads=1)
    with pytest.raises(DatasetError, match=rf"cannot decode .*{victim.name}"):
        list(ld)


def test_webdataset_shard_without_index_is_named(data, tmp_path):
    shutil.copytree(data["webdataset"], tmp_path / "wds")
    idx = sorted((tmp_path / "wds" / "val").glob("*.idx"))[0]
    idx.unlink()
    with pytest.raises(DatasetError, match=rf"has no DALI index {idx.name}"):
        ImageNetLoader(tmp_path / "wds", "val", 4, device="cpu", fmt="webdataset")


def test_webdataset_split_without_shards_is_reported(tmp_path):
    (tmp_path / "val").mkdir()
    with pytest.raises(DatasetError, match=r"no webdataset shards"):
        ImageNetLoader(tmp_path, "val", 4, device="cpu", fmt="webdataset")


def test_paper_policy_rejects_images_smaller_than_the_crop(tmp_path):
    d = tmp_path / "train" / "n00000000"
    d.mkdir(parents=True)
    Image.new("RGB", (200, 150), (120, 30, 200)).save(d / "small.JPEG")
    with pytest.raises(DatasetError, match=r"crops 224 px but .*small\.JPEG has a short side of 150"):
        ImageNetLoader(tmp_path, "train", 4, device="cpu", policy="paper")


def test_paper_policy_warns_about_images_not_resized_to_256(data):
    with pytest.warns(UserWarning, match=r"pre-resized to short side 256"):
        ImageNetLoader(data["raw"], "train", 4, device="cpu", policy="paper")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpu_mode_without_a_gpu_says_so():
    with pytest.raises(DatasetError, match=r"no CUDA device"):
        ImageNetLoader("/does/not/matter", "train", 4, device="gpu")


def test_bad_arguments_are_value_errors(data):
    with pytest.raises(ValueError, match="policy"):
        loader(data, policy="autoaugment")
    with pytest.raises(ValueError, match="shard_id 3 out of range"):
        loader(data, shard_id=3, num_shards=3)


# ------------------------------------------------------------------------------------------------ GPU

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available() is False)")
@pytest.mark.parametrize("fmt", ["folder", "webdataset"])
def test_gpu_mode_yields_cuda_tensors_whose_labels_match_the_pixels(data, fmt):
    for split, policy in (("train", "rrc"), ("train", "paper"), ("val", "paper")):
        ld = ImageNetLoader(data[fmt], split, 4, device="cuda:0", policy=policy, fmt=fmt, dtype=torch.bfloat16,
                            channels_last=True, return_index=True)
        n = 0
        for x, y, i in ld:
            assert x.device.type == y.device.type == "cuda" and x.dtype == torch.bfloat16
            assert x.is_contiguous(memory_format=torch.channels_last)
            assert torch.equal(decode_label(x.cpu(), CLASSES), y.cpu())
            n += len(i)
        assert n == ld.samples_per_shard


# ------------------------------------------------------------------------------------------------ one pipeline per run

@pytest.mark.parametrize("fmt", ["folder", "webdataset"])
def test_one_pipeline_serves_every_epoch_and_a_restart_at_an_epoch_boundary_sees_the_same_order(data, fmt):
    shards = 3

    def ranks(epochs, start=0):
        """Per epoch, per rank: the sample order; and whether each rank kept one pipeline for all its epochs."""
        orders, kept = {}, []
        for r in range(shards):
            ld = loader(data, "train", fmt, shard_id=r, num_shards=shards, batch_size=3, seed=5, policy="rrc")
            pipes = set()
            for e in range(start, start + epochs):
                ld.set_epoch(e)
                _, ys, ids = run_epoch(ld)
                pipes.add(id(ld._pipe))
                orders.setdefault(e, []).append(torch.cat(ids).tolist())
            kept.append(len(pipes) == 1)
        return orders, kept

    full, kept = ranks(4)
    assert all(kept)                                   # epochs 0..3 on one pipeline per rank
    for e, per_rank in full.items():
        flat = [i for o in per_rank for i in o]
        assert set(flat[:N_TRAIN]) == set(range(N_TRAIN))        # ranks cover the split …
        assert len(set(flat[:N_TRAIN])) == N_TRAIN               # … disjointly (the tail is padding)
    assert len({tuple(map(tuple, full[e])) for e in full}) == 4  # a new permutation every epoch
    resumed, _ = ranks(2, start=2)                     # a run restarted at the boundary of epoch 2
    assert resumed[2] == full[2] and resumed[3] == full[3]


@pytest.mark.slow
def test_worker_processes_read_the_same_batches_as_the_main_process(data):
    def epoch(py_workers):
        ld = loader(data, "train", "webdataset", batch_size=5, seed=2, policy="paper", py_workers=py_workers)
        ld.set_epoch(1)
        xs, ys, ids = run_epoch(ld)
        return torch.cat(ys).tolist(), torch.cat(ids).tolist()

    assert epoch(2) == epoch(0)
