"""Images per second of the DALI ImageNet pipeline (sibnn.data.ImageNetLoader) against a plain PIL + DataLoader one.

    python bench/data.py [--data DIR] [--images N] [--batch-size B] [--threads T] [--seconds S]
                         [--policies rrc,paper] [--device cpu|gpu]
    python bench/data.py --epochs-check [--images N] [--epochs E] [--device cpu|gpu]


Both pipelines read the same JPEG files, use T threads (DALI) or T worker processes (DataLoader), and do the same
work per image: decode, crop, resize to 224 (rrc), flip, normalise, batch. ``rrc`` reads ImageNet-sized images
(~500×375), ``paper`` reads the same images pre-resized to short side 256 (METHOD.md §4). Without ``--data`` the
script writes synthetic JPEGs under a temporary folder (a few hundred distinct images, copied to N files).
``--device gpu`` measures the DALI GPU pipeline alone (nvJPEG / hardware decoder). Throughput counts whole epochs
after a short warm-up, so it includes the step from one epoch to the next.

``--epochs-check`` compares epochs 2..E of an N-image split with one epoch of an (E−1)·N-image split (same images,
rrc, one loader each, the first epoch / first batches as warm-up): with one pipeline per run the two agree, a
loader that restarts its pipeline every epoch pays the restart E−1 times.
"""
from __future__ import annotations

import argparse
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sibnn.data.imagenet import IMAGENET_MEAN, IMAGENET_STD, ImageNetLoader  # noqa: E402
from sibnn.data.prepare import resize_short_side  # noqa: E402
from sibnn.data.synthetic import encode_jpeg, synthetic_image, wnid  # noqa: E402

CLASSES = 16
UNIQUE = 256   # distinct images; the rest are copies (decode cost does not depend on whether bytes repeat)


def make_data(out: Path, images: int, kinds=("raw", "prep")) -> Path:
    """``out/raw/train/<wnid>/*.JPEG`` (~500×375) and ``out/prep/train/...`` (short side 256), ``images`` each."""
    rng = np.random.default_rng(0)
    pool = []
    for u in range(min(UNIQUE, images)):
        raw = encode_jpeg(synthetic_image(u % CLASSES, CLASSES, rng))
        pool.append((raw, resize_short_side(raw)))
    for i in range(images):
        label = i % CLASSES
        raw, prep = pool[i % len(pool)]
        for kind, data in (("raw", raw), ("prep", prep)):
            if kind not in kinds:
                continue
            d = out / kind / "train" / wnid(label)
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{wnid(label)}_{i}.JPEG").write_bytes(data)
    return out


# ---------------------------------------------------------------------------------------- PIL + DataLoader baseline

class PILImageFolder(torch.utils.data.Dataset):
    """What a plain PyTorch pipeline does per image, written out (torchvision's RandomResizedCrop algorithm)."""

    def __init__(self, root: Path, policy: str, size: int = 224):
        self.files = sorted((root / "train").glob("*/*.JPEG"))
        classes = sorted({f.parent.name for f in self.files})
        self.labels = [classes.index(f.parent.name) for f in self.files]
        self.policy, self.size = policy, size
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def __len__(self):
        return len(self.files)

    def _rrc_box(self, w: int, h: int) -> tuple[int, int, int, int]:
        area = w * h
        for _ in range(10):
            target = area * random.uniform(0.08, 1.0)
            ratio = math.exp(random.uniform(math.log(3 / 4), math.log(4 / 3)))
            cw, ch = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
            if 0 < cw <= w and 0 < ch <= h:
                x, y = random.randint(0, w - cw), random.randint(0, h - ch)
                return x, y, x + cw, y + ch
        s = min(w, h)
        return (w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s

    def __getitem__(self, i):
        from PIL import Image

        im = Image.open(self.files[i]).convert("RGB")
        w, h = im.size
        if self.policy == "rrc":
            im = im.resize((self.size, self.size), Image.Resampling.BILINEAR, box=self._rrc_box(w, h))
        else:
            x, y = random.randint(0, w - self.size), random.randint(0, h - self.size)
            im = im.crop((x, y, x + self.size, y + self.size))
        if random.random() < 0.5:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        x = torch.from_numpy(np.array(im)).permute(2, 0, 1).float().div_(255)
        return (x - self.mean) / self.std, self.labels[i]


def pil_batches(root: Path, policy: str, batch_size: int, threads: int):
    ds = PILImageFolder(root, policy)
    dl = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=threads,
                                     persistent_workers=threads > 0, drop_last=False)
    while True:
        for x, _ in dl:
            yield x.shape[0]


def dali_batches(root: Path, policy: str, batch_size: int, threads: int, device: str):
    ld = ImageNetLoader(root, "train", batch_size, device=device, policy=policy, num_threads=threads)
    epoch = 0
    while True:
        ld.set_epoch(epoch)
        for x, _ in ld:
            yield x.shape[0]
        epoch += 1


def epoch_check(data: Path, images: int, epochs: int, batch: int, threads: int, device: str) -> tuple[float, float]:
    """img/s of epochs 2..E of ``images`` images, and of one epoch of (E−1)·images images (first 3 batches = warm-up)."""
    short, long = data / "short", data / "long"
    make_data(short, images, kinds=("raw",))
    make_data(long, images * (epochs - 1), kinds=("raw",))

    def rate(root: Path, first_epoch_is_warmup: bool) -> float:
        ld = ImageNetLoader(root / "raw", "train", batch, device=device, policy="rrc", num_threads=threads)
        n, t0 = 0, None
        for epoch in range(epochs if first_epoch_is_warmup else 1):
            ld.set_epoch(epoch)
            for k, (x, _) in enumerate(ld):
                if t0 is None and (epoch >= 1 or (not first_epoch_is_warmup and k >= 3)):
                    if device == "gpu":
                        torch.cuda.synchronize()
                    t0 = time.perf_counter()
                if t0 is not None:
                    n += x.shape[0]
        if device == "gpu":
            torch.cuda.synchronize()
        return n / (time.perf_counter() - t0)

    return rate(short, True), rate(long, False)


def measure(batches, seconds: float, warmup: int = 3) -> float:
    for _ in range(warmup):
        next(batches)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        n += next(batches)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=None, help="folder with raw/ and prep/ roots (default: synthetic)")
    p.add_argument("--images", type=int, default=None, help="synthetic images (default 2048 cpu, 16384 gpu)")
    p.add_argument("--batch-size", type=int, default=None, help="default 64 cpu, 256 gpu")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--seconds", type=float, default=15.0, help="measured time per row")
    p.add_argument("--policies", default="rrc,paper")
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--epochs-check", action="store_true", help="epochs 2..E against one long epoch (see above)")
    p.add_argument("--epochs", type=int, default=7, help="--epochs-check: E")
    a = p.parse_args(argv)
    if a.epochs_check:
        images = a.images or 256
        batch = a.batch_size or 32
        with tempfile.TemporaryDirectory(prefix="sibnn-bench-epochs-") as tmp:
            many, one = epoch_check(Path(tmp), images, a.epochs, batch, a.threads, a.device)
        print(f"device={a.device} threads={a.threads} batch={batch} rrc, {images} images x epochs 2..{a.epochs} "
              f"vs one epoch of {images * (a.epochs - 1)} images")
        print("\n| epochs 2..E img/s | one long epoch img/s | ratio |\n|---|---|---|")
        print(f"| {many:.0f} | {one:.0f} | {many / one:.3f} |")
        return
    gpu = a.device == "gpu"
    images = a.images or (16384 if gpu else 2048)
    batch = a.batch_size or (256 if gpu else 64)
    tmp = None
    if a.data is None:
        tmp = tempfile.TemporaryDirectory(prefix="sibnn-bench-data-")
        t = time.perf_counter()
        a.data = make_data(Path(tmp.name), images)
        print(f"wrote {images} synthetic JPEGs (+ their short-side-256 copies) in {time.perf_counter() - t:.0f} s")
    print(f"device={a.device} threads={a.threads} batch={batch} images={images} seconds/row={a.seconds:g}")
    rows = []
    for policy in a.policies.split(","):
        root = a.data / ("raw" if policy == "rrc" else "prep")
        dali = measure(dali_batches(root, policy, batch, a.threads, a.device), a.seconds)
        base = None if gpu else measure(pil_batches(root, policy, batch, a.threads), a.seconds)
        rows.append((policy, dali, base))
    name = "DALI GPU" if gpu else "DALI CPU"
    print(f"\n| policy | {name} img/s | PIL + DataLoader img/s | ratio |\n|---|---|---|---|")
    for policy, dali, base in rows:
        b = f"{base:.0f}" if base else "–"
        r = f"{dali / base:.2f}×" if base else "–"
        print(f"| {policy} | {dali:.0f} | {b} | {r} |")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
