"""Prepare ILSVRC-2012 for training: resize every image to short side 256, optionally pack webdataset shards.

    python -m sibnn.data.prepare --src ILSVRC2012 --out DIR [--webdataset --shard-size N] [--workers W]

Resizing once, offline, to short side 256 is the paper's protocol (METHOD.md §4: crops are taken from images
pre-resized to short side 256); it also makes each JPEG ~4× smaller and so decoding ~3× cheaper every epoch.

Input (``--src``):
  * ``train/<wnid>/*.JPEG`` (the standard train layout);
  * ``val/<wnid>/*.JPEG`` (val already sorted into class folders), or flat ``val/*.JPEG`` together with a labels
    file (``--val-labels FILE``, default ``src/LOC_val_solution.csv`` or ``src/val_labels.txt`` when present) in one
    of two formats: Kaggle's ``LOC_val_solution.csv`` (header ``ImageId,PredictionString``; the first word of
    ``PredictionString`` is the wnid), or plain text with one ``<file name or stem> <wnid>`` pair per line
    (whitespace or comma separated; ``#`` starts a comment). Every wnid must be a train class.

Output (``--out``): ``train/<wnid>/<stem>.JPEG`` and ``val/<wnid>/<stem>.JPEG`` (the layout
``ImageNetLoader(fmt="folder")`` reads), and with ``--webdataset`` also ``wds/{train,val}/shard-NNNNNN.tar`` +
``.idx`` (DALI index, format v1.2) and ``wds/classes.txt`` (``ImageNetLoader(fmt="webdataset")``, root ``DIR/wds``).
Train shards hold a seeded shuffle of the samples, because the webdataset reader only shuffles within a buffer.

Resumable: every file is written to a temporary name and renamed when complete, so an existing output is a complete
one and a second run skips it (an interrupted run leaves at most stray ``*.tmp*`` files, which are ignored).
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import sys
import tarfile
from pathlib import Path

IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png"}
SHORT_SIDE = 256


# ---------------------------------------------------------------------------------------------------- file writes

def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` so that ``path`` either does not exist or is complete (rename is atomic on POSIX)."""
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def resize_short_side(data: bytes, short_side: int = SHORT_SIDE, quality: int = 90) -> bytes:
    """Decode a JPEG (or PNG), resize so the shorter side is exactly ``short_side`` px, re-encode as RGB JPEG."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        w, h = im.size
        scale = short_side / min(w, h)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        # draft() lets libjpeg decode at 1/2, 1/4 or 1/8 scale (never below the target): much faster, same result
        # after the antialiased resize below.
        im.draft("RGB", size)
        im = im.convert("RGB")   # ImageNet has a few CMYK and greyscale JPEGs and one PNG named .JPEG
        if im.size != size:
            im = im.resize(size, Image.Resampling.BICUBIC, reducing_gap=None)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=quality)
        return buf.getvalue()


# ------------------------------------------------------------------------------------------------ webdataset shards

def sample_key(path: Path) -> str:
    # webdataset splits key and extension at the first dot of the member name, so the key must have none.
    return path.stem.replace(".", "_")


def write_wds_index(tar_path: Path, idx_path: Path) -> int:
    """Write DALI's webdataset index (format v1.2, as DALI's ``wds2idx`` tool writes it) for ``tar_path``.

    Line 1: ``v1.2 <num_samples>``; then one line per sample: ``<ext> <data offset> <size> <member name>`` for each
    of its components, where a sample is a run of consecutive members with the same key. Returns the sample count.
    """
    samples: list[list[str]] = []
    last_key = None
    with tarfile.open(tar_path) as tf:
        for m in tf:
            if not m.isfile():
                continue
            key, _, ext = m.name.partition(".")
            if key != last_key:
                samples.append([])
                last_key = key
            samples[-1].append(f"{ext} {m.offset_data} {m.size} {m.name}")
    atomic_write_bytes(idx_path, (f"v1.2 {len(samples)}\n" + "".join(" ".join(s) + "\n" for s in samples)).encode())
    return len(samples)


def write_shard(job: tuple[Path, list[tuple[Path, int]]]) -> int:
    """Pack one shard: ``<key>.jpg`` (the JPEG bytes) and ``<key>.cls`` (the label as ASCII digits) per sample."""
    tar_path, samples = job
    idx_path = tar_path.with_suffix(".idx")
    if tar_path.exists() and idx_path.exists():
        return 0   # both are written atomically, index last: the shard is complete
    tmp = tar_path.with_name(f"{tar_path.name}.tmp{os.getpid()}")
    with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tf:
        for path, label in samples:
            key = sample_key(Path(path))
            for ext, payload in (("jpg", Path(path).read_bytes()), ("cls", str(label).encode())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(payload)
                info.mode = 0o644
                tf.addfile(info, io.BytesIO(payload))
    os.replace(tmp, tar_path)
    write_wds_index(tar_path, idx_path)
    return len(samples)


def write_webdataset(samples: list[tuple[Path, int]], out_dir: str | Path, shard_size: int,
                     workers: int = 1, progress: bool = False) -> list[Path]:
    """Pack ``(jpeg path, label)`` samples, in the given order, into ``out_dir/shard-NNNNNN.{tar,idx}``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(out_dir / f"shard-{i // shard_size:06d}.tar", samples[i:i + shard_size])
            for i in range(0, len(samples), shard_size)]
    _run_parallel(write_shard, jobs, workers, progress, f"shards {out_dir.name}")
    return [j[0] for j in jobs]


# ---------------------------------------------------------------------------------------------------- the dataset

def _images_in(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _read_val_labels(path: Path) -> dict[str, str]:
    """File stem → wnid, from Kaggle's LOC_val_solution.csv or a ``<file> <wnid>`` text file."""
    text = path.read_text()
    labels: dict[str, str] = {}
    if text.startswith("ImageId,PredictionString"):
        for row in csv.DictReader(io.StringIO(text)):
            labels[Path(row["ImageId"]).stem] = row["PredictionString"].split()[0]
        return labels
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#")[0].replace(",", " ").split()
        if not line:
            continue
        if len(line) != 2:
            raise SystemExit(f"{path}:{n}: expected '<file> <wnid>', got {' '.join(line)!r}")
        labels[Path(line[0]).stem] = line[1]
    return labels


def list_jobs(src: Path, out: Path, val_labels: Path | None) -> tuple[list[tuple[Path, Path]], list[str]]:
    """(source, destination) pairs for every image of both splits, and the sorted train classes."""
    train = src / "train"
    if not train.is_dir():
        raise SystemExit(f"{train} not found: expected the ILSVRC-2012 train layout train/<wnid>/*.JPEG")
    classes = sorted(d.name for d in train.iterdir() if d.is_dir())
    if not classes:
        raise SystemExit(f"{train} has no class folders")
    jobs = [(p, out / "train" / c / (p.stem + ".JPEG")) for c in classes for p in _images_in(train / c)]

    val = src / "val"
    if val.is_dir():
        folders = sorted(d.name for d in val.iterdir() if d.is_dir())
        if folders:
            jobs += [(p, out / "val" / c / (p.stem + ".JPEG")) for c in folders for p in _images_in(val / c)]
        else:
            if val_labels is None:
                val_labels = next((p for p in (src / "LOC_val_solution.csv", src / "val_labels.txt")
                                   if p.is_file()), None)
            if val_labels is None:
                raise SystemExit(f"{val} is flat (no class folders): pass --val-labels FILE mapping file → wnid")
            labels = _read_val_labels(val_labels)
            known = set(classes)
            for p in _images_in(val):
                wnid = labels.get(p.stem)
                if wnid is None:
                    raise SystemExit(f"{p.name} has no entry in {val_labels}")
                if wnid not in known:
                    raise SystemExit(f"{val_labels}: {p.name} is labelled {wnid!r}, which is not a train class")
                jobs.append((p, out / "val" / wnid / (p.stem + ".JPEG")))
    return jobs, classes


def _resize_job(job: tuple[Path, Path, int, int]) -> str | None:
    """Resize one image; returns an error message instead of raising, so one bad file does not stop the run."""
    src, dst, short_side, quality = job
    if dst.exists():
        return None
    try:
        data = resize_short_side(src.read_bytes(), short_side, quality)
    except Exception as e:  # noqa: BLE001 - any decode failure is reported per file at the end
        return f"{src}: {e}"
    dst.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(dst, data)
    return None


def _run_parallel(fn, jobs, workers: int, progress: bool, desc: str) -> list:
    from tqdm import tqdm

    if workers <= 1 or len(jobs) <= 1:
        return [fn(j) for j in tqdm(jobs, desc=desc, disable=not progress)]
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(workers) as pool:
        it = pool.imap_unordered(fn, jobs, chunksize=max(1, min(64, len(jobs) // (workers * 8))))
        return list(tqdm(it, total=len(jobs), desc=desc, disable=not progress))


def prepare(src: str | Path, out: str | Path, *, webdataset: bool = False, shard_size: int = 1000,
            workers: int | None = None, short_side: int = SHORT_SIDE, quality: int = 90,
            val_labels: str | Path | None = None, seed: int = 0, progress: bool = True) -> dict:
    """Resize (and optionally pack) ILSVRC-2012 from ``src`` into ``out``; see the module docstring.

    Returns counts: ``resized`` (new files written), ``skipped`` (already there), ``failed`` (list of messages).
    """
    import numpy as np

    src, out = Path(src), Path(out)
    workers = workers or os.cpu_count() or 1
    jobs, classes = list_jobs(src, out, Path(val_labels) if val_labels else None)
    todo = [(s, d, short_side, quality) for s, d in jobs if not d.exists()]
    errors = [e for e in _run_parallel(_resize_job, todo, workers, progress, "resize") if e]
    stats = {"resized": len(todo) - len(errors), "skipped": len(jobs) - len(todo), "failed": errors}
    if webdataset and not errors:
        index = {c: k for k, c in enumerate(classes)}
        rng = np.random.default_rng(seed)
        for split in ("train", "val"):
            samples = [(d, index[d.parent.name]) for s, d in jobs if d.parent.parent.name == split]
            if split == "train":
                samples = [samples[i] for i in rng.permutation(len(samples))]
            if samples:
                write_webdataset(samples, out / "wds" / split, shard_size, workers, progress)
        atomic_write_bytes(out / "wds" / "classes.txt", "".join(c + "\n" for c in classes).encode())
    return stats


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m sibnn.data.prepare", description=__doc__.split("\n")[0])
    p.add_argument("--src", required=True, help="ILSVRC-2012 root holding train/ and val/")
    p.add_argument("--out", required=True, help="output root")
    p.add_argument("--webdataset", action="store_true", help="also pack webdataset shards under OUT/wds")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per webdataset shard")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--short-side", type=int, default=SHORT_SIDE)
    p.add_argument("--quality", type=int, default=90, help="JPEG quality of the resized images")
    p.add_argument("--val-labels", default=None, help="labels file for a flat val/ folder (see --help text)")
    p.add_argument("--seed", type=int, default=0, help="seed of the train shard shuffle")
    a = p.parse_args(argv)
    stats = prepare(a.src, a.out, webdataset=a.webdataset, shard_size=a.shard_size, workers=a.workers,
                    short_side=a.short_side, quality=a.quality, val_labels=a.val_labels, seed=a.seed)
    print(f"resized {stats['resized']}, already done {stats['skipped']}, failed {len(stats['failed'])}")
    if stats["failed"]:
        for msg in stats["failed"][:20]:
            print("  unreadable:", msg, file=sys.stderr)
        sys.exit("some images could not be read; fix or remove them and rerun (finished files are kept)")


if __name__ == "__main__":
    main()
