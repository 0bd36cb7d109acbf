"""ImageNet-format data through NVIDIA DALI: decode and augment on the GPU (or on CPU threads), sharded by rank.

Two on-disk formats, one loader (``ImageNetLoader``):

* ``fmt="folder"``: ``root/train/<wnid>/*.JPEG`` and ``root/val/<wnid>/*.JPEG``. Class index = position of the
  wnid in the sorted train class folders (torchvision ImageFolder's rule; val uses the train mapping, so a val
  folder that lacks a class still gets the right indices). The file list is built here, sorted, and handed to DALI
  explicitly, so order and labels never depend on directory-listing order.
* ``fmt="webdataset"``: ``root/train/*.tar`` and ``root/val/*.tar``, each tar with its DALI index next to it
  (``shard-000000.tar`` + ``shard-000000.idx``, format v1.2, as written by ``python -m sibnn.data.prepare
  --webdataset`` or DALI's ``wds2idx``), and ``root/classes.txt`` (one wnid per line, line k = class k; optional,
  without it the labels are scanned once to count classes). A sample is ``<key>.jpg`` (JPEG bytes) + ``<key>.cls``
  (class index as ASCII digits). Shards are read in sorted name order. ``prepare`` writes this layout under
  ``OUT/wds``, so the webdataset root is ``OUT/wds`` while the folder root is ``OUT``.

Augmentation (METHOD.md §4), selected by ``policy``:

* ``"paper"`` (the authors' script, docs/fidelity.md row 20): train = random ``image_size`` crop (224, 227 for
  AlexNet) + horizontal flip of the image as stored, no resize (``main_sibnn_learn.py``: ``RandomCrop`` +
  ``RandomHorizontalFlip``), decoded with the fused ROI decoder so only the crop window is decoded; val = resize
  short side to 256, centre ``image_size`` crop (the script: ``CenterCrop`` of the stored image). The script's
  crops assume images resized beforehand, to a size it does not state; here they are stored at short side 256
  (METHOD.md §4) by ``sibnn.data.prepare`` [choice, standing in for the authors' unpublished preparation], which
  makes the val resize a no-op. On images stored at full size the train crop is a 224 window of the full image (a
  warning says so) while val still resizes to 256 first.
* ``"rrc"``: RandomResizedCrop (area 8–100 %, aspect 3/4–4/3) fused into the decoder
  (``decoders.image_random_crop``), resize to ``image_size``, flip; val as above.

Both end in ``crop_mirror_normalize``: ImageNet mean/std, fp32 or fp16 (bf16 is converted from fp32 by torch: DALI
has no bf16), NCHW, or NHWC memory returned as an NCHW-shaped channels_last tensor.

Sharding (``shard_id``/``num_shards``, one shard per rank) and order: one DALI pipeline per run. Its input is an
``external_source`` callback (``EpochSource``) that hands DALI the bytes of batch i of epoch e; the callback ends each
epoch and DALI's iterator starts the next on the same pipeline, so epochs follow each other without a rebuild.

* train: every rank draws the same global permutation of the dataset for (seed, epoch) and takes its own contiguous
  slice; the permutation is extended cyclically so every rank gets ``len(loader)`` full batches. So every rank runs
  the same number of steps, every sample is seen at least once per epoch, at most ``num_shards × batch_size``
  samples twice, and ranks are disjoint otherwise. The order of epoch ``e`` depends only on ``(seed, e)``: a run
  restarted at an epoch boundary (a new loader, ``set_epoch(k)``) reads what an uninterrupted run reads in epoch
  ``k``, on every rank, without saving any loader state [choice: DALI's own ``shuffle_after_epoch`` reshuffles
  from a state that lives in each rank's pipeline, which a restart would have to save per rank through DALI
  checkpoints; the training loops resume from (seed, epoch) alone]. The crops come from the pipeline's seed, fixed
  per (seed, rank, first epoch of the pipeline): a resumed run sees the same images in other random crops.
* val: no shuffle, each rank keeps a fixed contiguous slice (sizes differ by at most one) and **padded samples are
  dropped before a batch is yielded**, so summing correct predictions and counts over ranks counts every
  validation sample exactly once. Consequently ranks may run a different number of val batches (``len(loader)``
  is this rank's count): do not issue a collective per val batch, reduce once at the end.

Reading the bytes is Python work: ``py_workers`` processes (DALI's parallel external source, default 4 in GPU mode,
0 = the training process itself in CPU mode) do it off the training process.

GPU mode: DALI ``device_id`` = the local CUDA index, JPEG decoding ``mixed`` (nvJPEG / the hardware decoder), the
rest on the GPU, batches arrive as CUDA tensors. CPU mode: ``device_id=None``, CPU operators only (needs no driver).
"""
from __future__ import annotations

import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sibnn import catalog
from sibnn.catalog import DATA_FORMATS, IMAGENET_MEAN, IMAGENET_STD, POLICIES
from sibnn.data.small import DatasetError

VAL_RESIZE = catalog.EVAL_RESIZE    # METHOD.md §4: val = centre crop of the short-side-256 image (fidelity row 20)
RRC_AREA = (0.08, 1.0)               # RandomResizedCrop defaults (torchvision, Inception)
RRC_ASPECT = (3 / 4, 4 / 3)
FORMATS = DATA_FORMATS
SPLITS = ("train", "val")
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


# ------------------------------------------------------------------------------------------------- dataset listing

@dataclass
class _Listing:
    """What is known about a split before any image is decoded."""
    classes: list[str]                # wnids; index = class
    keys: list[str]                   # per sample: file stem / webdataset key (identity across formats)
    files: list[str] | None = None    # folder: absolute paths, per sample
    labels: list[int] | None = None   # folder: class per sample
    tars: list[str] | None = None     # webdataset: archives and their DALI indexes
    indexes: list[str] | None = None
    jpeg_at: list[tuple[str, int, int]] | None = None   # webdataset: (tar, offset, size) of each sample's JPEG
    cls_at: list[tuple[str, int, int]] | None = None    # webdataset: (tar, offset, size) of each sample's class

    def __len__(self) -> int:
        return len(self.keys)


def _check_root(root: Path, split: str) -> Path:
    if not root.is_dir():
        raise DatasetError(f"ImageNet root {root} does not exist or is not a directory")
    d = root / split
    if not d.is_dir():
        raise DatasetError(f"ImageNet root {root} has no {split}/ folder (expected {d})")
    return d


def _list_folder(root: Path, split: str) -> _Listing:
    split_dir = _check_root(root, split)
    class_dir = root / "train" if (root / "train").is_dir() else split_dir
    classes = sorted(d.name for d in class_dir.iterdir() if d.is_dir())
    if not classes:
        raise DatasetError(f"{class_dir} has no class folders (expected {class_dir}/<wnid>/*.JPEG)")
    index = {c: k for k, c in enumerate(classes)}
    files, labels, empty = [], [], []
    for d in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        if d.name not in index:
            raise DatasetError(f"{d} is not a train class (no folder {class_dir / d.name})")
        imgs = sorted(str(p) for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not imgs:
            empty.append(d.name)
        files += imgs
        labels += [index[d.name]] * len(imgs)
    if not files:
        raise DatasetError(f"no images (*.JPEG, *.jpg, *.png) in the class folders of {split_dir}")
    if empty:
        shown = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        raise DatasetError(f"{split_dir}: {len(empty)} empty class folder(s): {shown}")
    return _Listing(classes, [Path(f).stem for f in files], files=files, labels=labels)


def _parse_wds_index(path: Path) -> list[tuple[str, int, int, int, int]]:
    """Per sample of one DALI index (v1.2): (key, offset, size) of its JPEG, (offset, size) of its class."""
    lines = path.read_text().splitlines()
    if not lines or not lines[0].startswith("v1.2 "):
        raise DatasetError(f"{path} is not a DALI webdataset index (first line should be 'v1.2 <count>')")
    out = []
    for n, line in enumerate(lines[1:], 2):
        f = line.split()
        comps = {f[i]: (int(f[i + 1]), int(f[i + 2]), f[i + 3]) for i in range(0, len(f) - 3, 4)}
        jpg = comps.get("jpg") or comps.get("jpeg")
        if jpg is None or "cls" not in comps:
            raise DatasetError(f"{path}:{n}: sample has no jpg and cls components ({line[:80]!r})")
        out.append((jpg[2].partition(".")[0], jpg[0], jpg[1], comps["cls"][0], comps["cls"][1]))
    if len(out) != int(lines[0].split()[1]):
        raise DatasetError(f"{path}: header says {lines[0].split()[1]} samples, found {len(out)}")
    return out


def _list_webdataset(root: Path, split: str) -> _Listing:
    split_dir = _check_root(root, split)
    tars = sorted(split_dir.glob("*.tar"))
    if not tars:
        raise DatasetError(f"no webdataset shards (*.tar) in {split_dir}")
    keys, jpeg_at, cls_at, indexes = [], [], [], []
    for t in tars:
        idx = t.with_suffix(".idx")
        if not idx.is_file():
            raise DatasetError(f"{t} has no DALI index {idx.name}: run `wds2idx {t} {idx}` or "
                               "`python -m sibnn.data.prepare --webdataset`")
        indexes.append(str(idx))
        for key, off, size, coff, csize in _parse_wds_index(idx):
            keys.append(key)
            jpeg_at.append((str(t), off, size))
            cls_at.append((str(t), coff, csize))
    if not keys:
        raise DatasetError(f"the webdataset shards in {split_dir} hold no samples")
    classes_txt = root / "classes.txt"
    if classes_txt.is_file():
        classes = [c for c in classes_txt.read_text().split() if c]
    else:   # no class list: count the labels once (one small read per sample)
        classes = [str(k) for k in range(1 + max(_wds_labels(indexes)))]
    return _Listing(classes, keys, tars=[str(t) for t in tars], indexes=indexes, jpeg_at=jpeg_at, cls_at=cls_at)


def _wds_labels(indexes: list[str]) -> list[int]:
    labels = []
    for idx in indexes:
        tar = Path(idx).with_suffix(".tar")
        with open(tar, "rb") as f:
            for line in Path(idx).read_text().splitlines()[1:]:
                fields = line.split()
                i = fields.index("cls")
                f.seek(int(fields[i + 1]))
                labels.append(int(f.read(int(fields[i + 2]))))
    return labels


def _read_sample_jpeg(listing: _Listing, i: int) -> bytes:
    if listing.files is not None:
        return Path(listing.files[i]).read_bytes()
    tar, off, size = listing.jpeg_at[i]
    with open(tar, "rb") as f:
        f.seek(off)
        return f.read(size)


def _looks_broken(data: bytes) -> bool:
    """Cheap test for the usual corruptions: not a JPEG/PNG at all, or a JPEG cut short (no end-of-image marker)."""
    if data[:3] == b"\xff\xd8\xff":
        return b"\xff\xd9" not in data[-64:]   # some encoders leave a few bytes of padding after EOI
    return data[:8] != b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------------------------------- the pipeline

def _resolve_device(device: str) -> int | None:
    """``"auto"|"cpu"|"gpu"|"cuda"|"cuda:N"`` → DALI ``device_id`` (None = CPU only)."""
    d = str(device)
    if d == "auto":
        d = "gpu" if torch.cuda.is_available() else "cpu"
    if d == "cpu":
        return None
    if d in ("gpu", "cuda") or d.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DatasetError(f"device={device!r} asks for the DALI GPU pipeline, but torch sees no CUDA device "
                               "(torch.cuda.is_available() is False); use device='cpu' or 'auto'")
        n = int(d.split(":")[1]) if ":" in d else torch.cuda.current_device()
        if not 0 <= n < torch.cuda.device_count():
            raise DatasetError(f"device={device!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
        return n
    raise ValueError(f"device must be 'auto', 'cpu', 'gpu' or 'cuda:N', got {device!r}")


class EpochSource:
    """The batches of one rank, epoch after epoch, for DALI's ``fn.external_source`` (batch mode, ``batch_info``).

    Batch ``i`` of epoch ``start_epoch + info.epoch_idx`` as (JPEG bytes, class, sample index) per sample;
    ``StopIteration`` ends an epoch and DALI starts the next one on the same pipeline. The order is a function of
    ``(seed, epoch)`` only (:meth:`order`), so a run restarted at epoch ``k`` on a new pipeline reads exactly what
    an uninterrupted one reads in epoch ``k``, on every rank, with no per-rank state to save. Picklable: DALI's
    parallel mode runs it in worker processes (``py_num_workers``).
    """

    def __init__(self, listing: _Listing, *, train: bool, batch_size: int, shard_id: int, num_shards: int,
                 seed: int, samples_per_shard: int, start_epoch: int = 0):
        self.files, self.jpeg_at, self.cls_at, self.labels = (listing.files, listing.jpeg_at, listing.cls_at,
                                                              listing.labels)
        self.n, self.train, self.batch_size = len(listing), train, batch_size
        self.shard_id, self.num_shards, self.seed = shard_id, num_shards, seed
        self.samples_per_shard, self.start_epoch = samples_per_shard, start_epoch
        self._cached: tuple[int, np.ndarray] | None = None

    def order(self, epoch: int) -> np.ndarray:
        """This rank's sample indices for ``epoch``; −1 marks val padding (dropped by the loader).

        train: one permutation of the whole split per (seed, epoch), the same on every rank, extended cyclically to
        ``num_shards × samples_per_shard`` (whole, equal batches) and cut into contiguous per-rank slices: the
        slices are disjoint over the first ``n`` positions and cover the split, the padding repeats at most
        ``num_shards × batch_size`` samples. val: the fixed contiguous slice ``[⌊r·n/s⌋, ⌊(r+1)·n/s⌋)``, padded
        with −1 to whole batches.
        """
        if self.train:
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            total = self.samples_per_shard * self.num_shards
            full = np.resize(perm, total)   # cyclic repeat: the padding re-reads the epoch's first samples
            return full[self.shard_id * self.samples_per_shard:(self.shard_id + 1) * self.samples_per_shard]
        lo, hi = self.shard_id * self.n // self.num_shards, (self.shard_id + 1) * self.n // self.num_shards
        idx = np.arange(lo, hi, dtype=np.int64)
        return np.concatenate([idx, np.full(-len(idx) % self.batch_size, -1, dtype=np.int64)])

    def _read(self, i: int) -> tuple[np.ndarray, int]:
        if self.files is not None:
            return np.fromfile(self.files[i], dtype=np.uint8), self.labels[i]
        tar, off, size = self.jpeg_at[i]
        ctar, coff, csize = self.cls_at[i]
        with open(tar, "rb") as f:
            f.seek(off)
            data = np.frombuffer(f.read(size), dtype=np.uint8)
            f.seek(coff)
            label = int(f.read(csize).strip() or b"0")
        return data, label

    def __call__(self, info):
        epoch = self.start_epoch + info.epoch_idx
        if self._cached is None or self._cached[0] != epoch:
            self._cached = (epoch, self.order(epoch))
        idx = self._cached[1][info.iteration * self.batch_size:(info.iteration + 1) * self.batch_size]
        if len(idx) == 0:
            raise StopIteration
        jpegs, labels = [], []
        real = idx[idx >= 0]
        for i in idx:   # val padding decodes the slice's last real sample (or sample 0) and is dropped later
            data, label = self._read(int(i) if i >= 0 else int(real[-1]) if len(real) else 0)
            jpegs.append(data)
            labels.append(np.array([label], dtype=np.int64))
        return jpegs, labels, [np.array([i], dtype=np.int64) for i in idx]


def imagenet_pipeline(source: EpochSource, *, train: bool, policy: str, image_size: int, batch_size: int,
                      device_id: int | None, num_threads: int, aug_seed: int, fp16: bool, channels_last: bool,
                      py_workers: int = 0):
    """Build the DALI pipeline for one rank: bytes from ``source`` → decode (+ fused crop) → resize →
    crop/flip/normalise. It lives for the whole run: each epoch ends with the source's ``StopIteration``."""
    from nvidia.dali import fn, pipeline_def, types

    decoder = "cpu" if device_id is None else "mixed"
    extra = dict(py_num_workers=py_workers, py_start_method="spawn") if py_workers else {}

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=aug_seed,
                  **extra)
    def pipe():
        jpegs, labels, index = fn.external_source(source=source, num_outputs=3, batch=True, batch_info=True,
                                                  parallel=bool(py_workers), dtype=[types.UINT8, types.INT64,
                                                                                    types.INT64])
        mirror = fn.random.coin_flip(probability=0.5) if train else 0
        if train and policy == "rrc":
            images = fn.decoders.image_random_crop(jpegs, device=decoder, output_type=types.RGB,
                                                   random_area=list(RRC_AREA), random_aspect_ratio=list(RRC_ASPECT),
                                                   num_attempts=100)
            images = fn.resize(images, resize_x=image_size, resize_y=image_size)
            crop = {}
        elif train:   # paper: a random image_size window of the short-side-256 image, decoded alone (ROI decode)
            images = fn.decoders.image_crop(jpegs, device=decoder, output_type=types.RGB,
                                            crop=(image_size, image_size),
                                            crop_pos_x=fn.random.uniform(range=(0.0, 1.0)),
                                            crop_pos_y=fn.random.uniform(range=(0.0, 1.0)))
            crop = {}
        else:
            images = fn.decoders.image(jpegs, device=decoder, output_type=types.RGB)
            images = fn.resize(images, resize_shorter=VAL_RESIZE)
            crop = dict(crop=(image_size, image_size), crop_pos_x=0.5, crop_pos_y=0.5)
        images = fn.crop_mirror_normalize(
            images, dtype=types.FLOAT16 if fp16 else types.FLOAT, output_layout="HWC" if channels_last else "CHW",
            mean=[255 * m for m in IMAGENET_MEAN], std=[255 * s for s in IMAGENET_STD], mirror=mirror, **crop)
        return images, labels, index

    return pipe()


# ------------------------------------------------------------------------------------------------------ the loader

class ImageNetLoader:
    """Batches ``(images, labels)`` of ImageNet-format data for one rank (see the module docstring).

    ``images``: (B, 3, image_size, image_size) normalised, ``dtype``, channels_last memory if asked, on the loader's
    device; ``labels``: (B,) int64 on the same device. ``len()`` = batches this rank yields per epoch, known up front.
    Attributes: ``num_samples`` (whole split), ``num_classes``, ``classes`` (wnids), ``samples_per_shard`` (real
    samples this rank sees per epoch, padding excluded for val and included for train), ``device``.
    ``return_index=True`` adds a third item, the (B,) int64 sample indices, for checking coverage; ``sample_keys[i]``
    is sample i's file stem (= webdataset key).
    """

    def __init__(self, root: str | Path, split: str, batch_size: int, shard_id: int = 0, num_shards: int = 1,
                 device: str = "auto", policy: str = "paper", image_size: int = 224, fmt: str = "folder",
                 seed: int = 0, num_threads: int | None = None, dtype: torch.dtype = torch.float32,
                 channels_last: bool = False, return_index: bool = False, py_workers: int | None = None):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        if fmt not in FORMATS:
            raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"dtype must be torch.float32, float16 or bfloat16, got {dtype}")
        if not 0 <= shard_id < num_shards:
            raise ValueError(f"shard_id {shard_id} out of range for {num_shards} shards")
        if batch_size < 1 or not 1 <= image_size <= VAL_RESIZE:
            raise ValueError(f"need batch_size ≥ 1 and 1 ≤ image_size ≤ {VAL_RESIZE}")
        self.device_id = _resolve_device(device)
        self.device = torch.device("cpu" if self.device_id is None else f"cuda:{self.device_id}")
        self.root, self.split, self.fmt, self.policy = Path(root), split, fmt, policy
        self.train = split == "train"
        self.batch_size, self.image_size, self.seed = batch_size, image_size, seed
        self.shard_id, self.num_shards = shard_id, num_shards
        self.dtype, self.channels_last, self.return_index = dtype, channels_last, return_index
        if num_threads is None:   # one rank per GPU shares the node's cores; CPU mode takes them all
            cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
            num_threads = max(1, cpus // max(1, torch.cuda.device_count())) if self.device_id is not None else cpus
        self.num_threads = num_threads
        # Reading the bytes is Python work: in GPU mode worker processes keep it off the training process's GIL.
        self.py_workers = (4 if self.device_id is not None else 0) if py_workers is None else py_workers

        self._listing = (_list_folder if fmt == "folder" else _list_webdataset)(self.root, split)
        self.classes = self._listing.classes
        self.num_classes = len(self.classes)
        self.num_samples = len(self._listing)
        self.sample_keys = self._listing.keys

        n, s = self.num_samples, num_shards
        if self.train:   # every shard padded to the largest one, rounded up to whole batches (DALI's rule)
            self.samples_per_shard = math.ceil(math.ceil(n / s) / batch_size) * batch_size
        else:            # DALI's contiguous slices: [⌊r·n/s⌋, ⌊(r+1)·n/s⌋)
            self.samples_per_shard = (shard_id + 1) * n // s - shard_id * n // s
        if self.samples_per_shard == 0:
            raise DatasetError(f"{split} split has {n} samples, fewer than the {s} shards")
        if policy == "paper" and self.train:
            self._check_pre_resized()

        self.epoch = 0
        self._pipe = self._iter = None
        self._next = None      # the epoch the live pipeline yields next (None: no pipeline)
        self._midway = False   # an iteration started and not finished: the pipeline is mid-epoch

    # -- epoch bookkeeping ------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return math.ceil(self.samples_per_shard / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Select epoch ``epoch``'s order (train; val has a fixed order): the same (seed, epoch) gives the same
        samples on every rank and every run, also on a loader created fresh at ``epoch`` (a resumed run). Like
        DistributedSampler, iterating does not advance the epoch by itself."""
        self.epoch = epoch

    def close(self) -> None:
        """Release the DALI pipeline (and its GPU memory); the next iteration builds a new one."""
        self._iter = self._pipe = self._next = None

    def _build(self) -> None:
        from nvidia.dali.plugin.pytorch import DALIGenericIterator

        self.close()   # free the old pipeline first: two live GPU pipelines would double the memory
        self._source = EpochSource(self._listing, train=self.train, batch_size=self.batch_size,
                                   shard_id=self.shard_id, num_shards=self.num_shards, seed=self.seed,
                                   samples_per_shard=self.samples_per_shard, start_epoch=self.epoch)
        mix = (self.seed * 1_000_003 + self.epoch * 7_919) % (2 ** 31 - 1)
        self._pipe = imagenet_pipeline(
            self._source, train=self.train, policy=self.policy, image_size=self.image_size,
            batch_size=self.batch_size, device_id=self.device_id, num_threads=self.num_threads,
            aug_seed=(mix * 31 + self.shard_id * 104_729) % (2 ** 31 - 1),   # different crops on each rank
            fp16=self.dtype == torch.float16, channels_last=self.channels_last, py_workers=self.py_workers)
        if self.py_workers:
            self._pipe.start_py_workers()
        # The source ends each epoch (StopIteration); auto_reset starts the next one on the same pipeline.
        self._iter = DALIGenericIterator(self._pipe, ["images", "labels", "index"], auto_reset=True,
                                         prepare_first_batch=False)
        self._next = self.epoch

    # -- iteration --------------------------------------------------------------------------------------------

    def __iter__(self):
        # One pipeline per run: built on the first iteration and kept while epochs follow each other (train: the
        # next epoch, val: the same slice again). Rebuilt when the asked-for epoch is not the one it yields next
        # (set_epoch jumped, or was not called), or when the previous pass was abandoned half-way.
        want = self.epoch if self.train else 0
        if self._iter is None or self._midway or self._next != want:
            self._build()
        self._midway = True
        try:
            for out in self._iter:
                batch = self._convert(out[0])
                if batch[0].shape[0] == 0:   # val: a batch made only of padding (ranks with the shorter slice)
                    continue
                yield batch
        except RuntimeError as e:
            self.close()
            err = self._decode_error(e)
            if err is e:
                raise
            raise err from e
        self._midway = False
        if self.train:
            self._next = want + 1

    def _convert(self, out: dict) -> tuple[torch.Tensor, ...]:
        images = out["images"]
        if self.channels_last:
            images = images.permute(0, 3, 1, 2)   # NHWC memory viewed as NCHW: torch's channels_last format
        if self.dtype == torch.bfloat16:
            images = images.to(torch.bfloat16)     # keeps the memory format
        labels, index = out["labels"].view(-1).long(), out["index"].view(-1).long()
        if not self.train and bool((index < 0).any()):   # val padding: never counted
            keep = index >= 0
            images, labels, index = images[keep.to(images.device)], labels[keep], index[keep]
        labels = labels.to(self.device, non_blocking=True)
        if self.return_index:
            return images, labels, index.to(self.device)
        return images, labels

    def _decode_error(self, e: RuntimeError) -> Exception:
        """Turn DALI's decode failure into a DatasetError that names the file."""
        msg = str(e)
        if "decode" not in msg.lower() and "nvimagecodec" not in msg.lower():
            return e
        m = re.search(r"Failed to decode sample #?\d* ?: ?(\S+)", msg)
        if m:
            return DatasetError(f"cannot decode image {m.group(1)}: the file is corrupt or not an image")
        # The decoder did not say which file: find it (cheap header/trailer checks, only on this error path).
        bad = [i for i in range(self.num_samples) if _looks_broken(_read_sample_jpeg(self._listing, i))]
        if bad:
            names = [self._sample_name(i) for i in bad[:5]]
            return DatasetError(f"cannot decode {len(bad)} image(s), corrupt or not images: {', '.join(names)}")
        return DatasetError(f"DALI could not decode an image of {self.root / self.split}: {msg.splitlines()[-1]}")

    def _sample_name(self, i: int) -> str:
        if self._listing.files is not None:
            return self._listing.files[i]
        return f"{self._listing.jpeg_at[i][0]}:{self.sample_keys[i]}.jpg"

    def _check_pre_resized(self) -> None:
        """The paper policy crops 224/227 from short-side-256 images; check a few so a raw ImageNet is noticed."""
        from PIL import Image
        import io

        step = max(1, self.num_samples // 8)
        for i in range(0, self.num_samples, step):
            try:
                with Image.open(io.BytesIO(_read_sample_jpeg(self._listing, i))) as im:
                    short = min(im.size)
            except Exception:   # noqa: BLE001 - unreadable files are reported by the decoder, with their name
                continue
            if short < self.image_size:
                raise DatasetError(f"policy 'paper' crops {self.image_size} px but {self._sample_name(i)} has a "
                                   f"short side of {short} px: resize with `python -m sibnn.data.prepare` first")
            if short != VAL_RESIZE:
                warnings.warn(f"policy 'paper' expects images pre-resized to short side {VAL_RESIZE} (METHOD.md §4), "
                              f"{self._sample_name(i)} has {short}: run `python -m sibnn.data.prepare`",
                              stacklevel=3)
                return
