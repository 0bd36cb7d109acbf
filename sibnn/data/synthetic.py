"""A small synthetic ImageNet: real JPEG files, ImageNet-like sizes, whose class can be read back from the pixels.

    python -m sibnn.data.synthetic --out DIR --classes K --per-class N [--val-per-class M] [--webdataset] [--seed S]

writes ``DIR/train/<wnid>/*.JPEG`` and ``DIR/val/<wnid>/*.JPEG`` (the layout ``ImageNetLoader(fmt="folder")``
reads), and with ``--webdataset`` also ``DIR/wds/{train,val}/shard-NNNNNN.{tar,idx}`` plus ``DIR/wds/classes.txt``
(the layout ``ImageNetLoader(fmt="webdataset")`` reads, see ``sibnn.data.imagenet``).

Why the class survives the pipeline: each image is one flat colour plus fine per-pixel noise. The colour encodes
the class as three base-L digits, one per RGB channel, on levels spaced ~215/(L-1) apart. Random crops, flips and
resizing keep the mean colour of any region, JPEG keeps it to within a few units, and the fine noise averages out,
so ``decode_label`` recovers the class of every sample, and a network learns it in a few steps.
"""
from __future__ import annotations

import argparse
import io
import math
from pathlib import Path

import numpy as np
import torch

from sibnn.catalog import IMAGENET_MEAN, IMAGENET_STD

_LOW, _HIGH = 20.0, 235.0   # stay clear of 0 and 255 so noise and JPEG ringing are never clipped one-sidedly
_NOISE = 12                 # ± per-pixel noise amplitude: texture for the codec, averages out over any crop


def levels_per_channel(num_classes: int) -> int:
    """The smallest L with L**3 ≥ num_classes (at least 2)."""
    L = max(2, math.ceil(round(num_classes ** (1 / 3), 9)))
    while L ** 3 < num_classes:
        L += 1
    return L


def class_colour(label: int, num_classes: int) -> tuple[float, float, float]:
    """The RGB colour (0–255) that encodes ``label``: its base-L digits, one per channel."""
    L = levels_per_channel(num_classes)
    digits = (label % L, (label // L) % L, label // (L * L))
    step = (_HIGH - _LOW) / (L - 1)
    return tuple(_LOW + d * step for d in digits)


def wnid(label: int) -> str:
    """An ImageNet-style folder name; sorted order equals label order, as in ImageNet."""
    return f"n{label:08d}"


def synthetic_image(label: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """One HWC uint8 image around 500×375 (landscape or portrait), flat class colour plus fine noise."""
    w, h = int(rng.integers(400, 561)), int(rng.integers(300, 421))
    if rng.random() < 0.25:
        w, h = h, w
    colour = np.array(class_colour(label, num_classes), dtype=np.float32)
    noise = rng.integers(-_NOISE, _NOISE + 1, size=(h, w, 3)).astype(np.float32)
    return np.clip(colour + noise, 0, 255).astype(np.uint8)


def encode_jpeg(img: np.ndarray, quality: int = 90) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def decode_label(images: torch.Tensor, num_classes: int, normalized: bool = True) -> torch.Tensor:
    """Recover the class of each image from its pixels.

    ``images``: (N, 3, H, W) or (3, H, W), any float dtype and memory layout, normalised with the ImageNet mean/std
    (``normalized=True``, what ``ImageNetLoader`` yields) or raw 0–255 values. Returns int64 labels, shape (N,).
    """
    x = images.float()
    if x.dim() == 3:
        x = x.unsqueeze(0)
    colour = x.mean(dim=(2, 3))                                          # (N, 3): mean over the crop
    if normalized:
        colour = (colour * torch.tensor(IMAGENET_STD) + torch.tensor(IMAGENET_MEAN)) * 255.0
    L = levels_per_channel(num_classes)
    digits = ((colour - _LOW) / ((_HIGH - _LOW) / (L - 1))).round().clamp(0, L - 1).long()
    return digits[:, 0] + L * digits[:, 1] + L * L * digits[:, 2]


def write_synthetic_imagenet(out: str | Path, classes: int, per_class: int, val_per_class: int | None = None,
                             webdataset: bool = False, seed: int = 0, shard_size: int = 64) -> Path:
    """Write the synthetic dataset (see the module docstring) and return ``out``. Existing files are overwritten."""
    from sibnn.data.prepare import write_webdataset   # the same shard writer the real-data preparation uses

    out = Path(out)
    val_per_class = max(1, per_class // 5) if val_per_class is None else val_per_class
    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("val", val_per_class)):
        samples = []
        for label in range(classes):
            d = out / split / wnid(label)
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                path = d / f"{wnid(label)}_{i}.JPEG"
                path.write_bytes(encode_jpeg(synthetic_image(label, classes, rng)))
                samples.append((path, label))
        if webdataset:
            # Train shards are shuffled (the webdataset reader only shuffles within a buffer); val stays sorted.
            order = rng.permutation(len(samples)) if split == "train" else np.arange(len(samples))
            write_webdataset([samples[i] for i in order], out / "wds" / split, shard_size)
    if webdataset:
        (out / "wds" / "classes.txt").write_text("".join(wnid(k) + "\n" for k in range(classes)))
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m sibnn.data.synthetic", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--per-class", type=int, default=20, help="train images per class")
    p.add_argument("--val-per-class", type=int, default=None, help="val images per class (default per-class/5)")
    p.add_argument("--webdataset", action="store_true", help="also write webdataset shards with DALI indexes")
    p.add_argument("--shard-size", type=int, default=64, help="samples per webdataset shard")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    out = write_synthetic_imagenet(a.out, a.classes, a.per_class, a.val_per_class, a.webdataset, a.seed,
                                   a.shard_size)
    print(f"wrote {a.classes} classes × ({a.per_class} train + {a.val_per_class or max(1, a.per_class // 5)} val) "
          f"images to {out}")


if __name__ == "__main__":
    main()
