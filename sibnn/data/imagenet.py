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

* ``"paper"`` (the authors' journal recipe): images pre-resized to short side 256 (``sibnn.data.prepare``); train =
  random ``image_size`` crop (224, 227 for AlexNet) + horizontal flip, decoded with the fused ROI decoder so only
  the crop window is decoded; val = resize short side to 256, centre ``image_size`` crop.
* ``"rrc"``: RandomResizedCrop (area 8–100 %, aspect 3/4–4/3) fused into the decoder
  (``decoders.image_random_crop``), resize to ``image_size``, flip; val as above.

Both end in ``crop_mirror_normalize``: ImageNet mean/std, fp32 or fp16 (bf16 is converted from fp32 by torch: DALI
has no bf16), NCHW, or NHWC memory returned as an NCHW-shaped channels_last tensor.

Sharding (``shard_id``/``num_shards``, one shard per rank):

* train: every rank reads the same global permutation of the dataset (DALI's ``shuffle_after_epoch`` with a seed
  shared by all ranks; webdataset: the tar order is shuffled and samples are mixed in a buffer) and takes its own
  contiguous slice; slices are padded, by repeating a slice's last sample, to ``len(loader)`` full batches on every
  rank. So every rank runs the same number of steps, every sample is seen at least once per epoch, and at most
  ``batch_size`` samples per rank are seen twice. The order of epoch ``e`` depends only on ``(seed, e)``: the
  pipeline is rebuilt for each epoch (``set_epoch``, like DistributedSampler), which costs well under a second.
* val: no shuffle, each rank keeps a fixed contiguous slice (sizes differ by at most one) and **padded samples are
  dropped before a batch is yielded**, so summing correct predictions and counts over ranks counts every
  validation sample exactly once. Consequently ranks may run a different number of val batches (``len(loader)``
  is this rank's count): do not issue a collective per val batch, reduce once at the end.

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

import torch

from sibnn.data.small import DatasetError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VAL_RESIZE = 256                     # METHOD.md §4: evaluate on the centre crop of the short-side-256 image
RRC_AREA = (0.08, 1.0)               # RandomResizedCrop defaults (torchvision, Inception)
RRC_ASPECT = (3 / 4, 4 / 3)
POLICIES = ("paper", "rrc")
FORMATS = ("folder", "webdataset")
SPLITS = ("train", "val")
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
_READER = "Reader"                   # the reader's name, so DALI's iterator can read its epoch size and shards


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


def _parse_wds_index(path: Path) -> list[tuple[str, int, int]]:
    """Per sample of one DALI index (v1.2): (key, offset, size) of its JPEG component."""
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
        out.append((jpg[2].partition(".")[0], jpg[0], jpg[1]))
    if len(out) != int(lines[0].split()[1]):
        raise DatasetError(f"{path}: header says {lines[0].split()[1]} samples, found {len(out)}")
    return out


def _list_webdataset(root: Path, split: str) -> _Listing:
    split_dir = _check_root(root, split)
    tars = sorted(split_dir.glob("*.tar"))
    if not tars:
        raise DatasetError(f"no webdataset shards (*.tar) in {split_dir}")
    keys, jpeg_at, indexes = [], [], []
    for t in tars:
        idx = t.with_suffix(".idx")
        if not idx.is_file():
            raise DatasetError(f"{t} has no DALI index {idx.name}: run `wds2idx {t} {idx}` or "
                               "`python -m sibnn.data.prepare --webdataset`")
        indexes.append(str(idx))
        for key, off, size in _parse_wds_index(idx):
            keys.append(key)
            jpeg_at.append((str(t), off, size))
    if not keys:
        raise DatasetError(f"the webdataset shards in {split_dir} hold no samples")
    classes_txt = root / "classes.txt"
    if classes_txt.is_file():
        classes = [c for c in classes_txt.read_text().split() if c]
    else:   # no class list: count the labels once (one small read per sample)
        classes = [str(k) for k in range(1 + max(_wds_labels(indexes)))]
    return _Listing(classes, keys, tars=[str(t) for t in tars], indexes=indexes, jpeg_at=jpeg_at)


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


def imagenet_pipeline(listing: _Listing, *, train: bool, policy: str, image_size: int, batch_size: int,
                      shard_id: int, num_shards: int, device_id: int | None, num_threads: int,
                      shuffle_seed: int, aug_seed: int, fp16: bool, channels_last: bool, return_source: bool):
    """Build the DALI pipeline for one rank: read → decode (+ fused crop) → resize → crop/flip/normalise."""
    from nvidia.dali import fn, pipeline_def, types

    decoder = "cpu" if device_id is None else "mixed"
    # Readers pad each rank's slice with its last sample to whole, equal-sized batches (pad_last_batch); for val
    # the iterator then drops the padding. Train slices move between ranks and epochs (stick_to_shard=False) over
    # one global shuffle per epoch; val slices stay put so each rank validates the same samples every time.
    sharding = dict(name=_READER, shard_id=shard_id, num_shards=num_shards, pad_last_batch=True,
                    stick_to_shard=not train)

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=aug_seed)
    def pipe():
        if listing.files is not None:
            # labels = sample index: the class is looked up on the host, and tests can identify every sample.
            jpegs, labels = fn.readers.file(files=listing.files, labels=list(range(len(listing))),
                                            shuffle_after_epoch=train,
                                            shuffle_after_epoch_seed=shuffle_seed if train else None, **sharding)
        else:
            jpegs, labels = fn.readers.webdataset(
                paths=listing.tars, index_paths=listing.indexes, ext=["jpg;jpeg", "cls"],
                missing_component_behavior="error", random_shuffle=train, seed=(shuffle_seed + shard_id) % 2**31,
                shuffle_after_epoch=train, shuffle_after_epoch_seed=shuffle_seed if train else None, **sharding)
            labels = fn.pad(labels, fill_value=0, shape=[12])   # ASCII digits, fixed width for the iterator
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
        if return_source:
            # "path:offset:member" for webdataset samples; fixed width so it batches as a dense tensor
            source = fn.pad(fn.get_property(jpegs, key="source_info"), fill_value=0, shape=[1024])
            return images, labels, source
        return images, labels

    return pipe()


def _parse_ascii_labels(b: torch.Tensor) -> torch.Tensor:
    """(N, W) uint8 ASCII digits, zero-padded (a trailing newline is tolerated) → (N,) int64."""
    b = b.long()
    value = torch.zeros(b.shape[0], dtype=torch.int64)
    for col in b.unbind(1):
        digit = (col >= 48) & (col <= 57)
        value = torch.where(digit, value * 10 + (col - 48), value)
    return value


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
                 channels_last: bool = False, return_index: bool = False):
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

        self._listing = (_list_folder if fmt == "folder" else _list_webdataset)(self.root, split)
        self.classes = self._listing.classes
        self.num_classes = len(self.classes)
        self.num_samples = len(self._listing)
        self.sample_keys = self._listing.keys
        if self._listing.labels is not None:
            self._class_of = torch.tensor(self._listing.labels, dtype=torch.int64)
        if fmt == "webdataset" and return_index:
            self._index_of = {(t, off): i for i, (t, off, _) in enumerate(self._listing.jpeg_at)}

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
        self._midway = False   # an iteration started and not finished: the reader is mid-epoch

    # -- epoch bookkeeping ------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return math.ceil(self.samples_per_shard / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Select epoch ``epoch``'s order and crops (train; val has a fixed order): the same (seed, epoch) gives the
        same batches on every run. Like DistributedSampler, iterating does not advance the epoch by itself."""
        self.epoch = epoch

    def close(self) -> None:
        """Release the DALI pipeline (and its GPU memory); the next iteration builds a new one."""
        self._iter = self._pipe = None

    def _build(self) -> None:
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        self.close()   # free the old pipeline first: two live GPU pipelines would double the memory
        mix = (self.seed * 1_000_003 + self.epoch * 7_919) % (2 ** 31 - 1)
        self._pipe = imagenet_pipeline(
            self._listing, train=self.train, policy=self.policy, image_size=self.image_size,
            batch_size=self.batch_size, shard_id=self.shard_id, num_shards=self.num_shards,
            device_id=self.device_id, num_threads=self.num_threads,
            shuffle_seed=mix,                                           # the same on every rank: one permutation
            aug_seed=(mix * 31 + self.shard_id * 104_729) % (2 ** 31 - 1),   # different crops on each rank
            fp16=self.dtype == torch.float16, channels_last=self.channels_last,
            return_source=self.return_index and self.fmt == "webdataset")
        outputs = ["images", "labels"] + (["source"] if self.return_index and self.fmt == "webdataset" else [])
        # FILL keeps the reader's padding (full, equal batches on every rank); PARTIAL cuts it off (val).
        policy = LastBatchPolicy.FILL if self.train else LastBatchPolicy.PARTIAL
        self._iter = DALIGenericIterator(self._pipe, outputs, reader_name=_READER, last_batch_policy=policy,
                                         auto_reset=True, prepare_first_batch=False)

    # -- iteration --------------------------------------------------------------------------------------------

    def __iter__(self):
        # Train: a new pipeline per epoch, so the order is a function of (seed, epoch). Val: one pipeline, reused,
        # unless the previous pass was abandoned half-way (its reader would resume mid-epoch).
        if self.train or self._iter is None or self._midway:
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

    def _convert(self, out: dict) -> tuple[torch.Tensor, ...]:
        images = out["images"]
        if self.channels_last:
            images = images.permute(0, 3, 1, 2)   # NHWC memory viewed as NCHW: torch's channels_last format
        if self.dtype == torch.bfloat16:
            images = images.to(torch.bfloat16)     # keeps the memory format
        raw = out["labels"]
        if self.fmt == "folder":
            index = raw.view(-1).long().cpu()
            labels = self._class_of[index]
        else:
            labels = _parse_ascii_labels(raw.cpu())
            if self.return_index:
                index = torch.tensor([self._source_index(bytes(row.tolist())) for row in out["source"].cpu()],
                                     dtype=torch.int64)
        labels = labels.to(self.device, non_blocking=True)
        if self.return_index:
            return images, labels, index.to(self.device)
        return images, labels

    def _source_index(self, raw: bytes) -> int:
        tar, off, _member = raw.rstrip(b"\0").decode().rsplit(":", 2)
        return self._index_of[(tar, int(off))]

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
