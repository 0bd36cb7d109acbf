"""Helpers of bench/gpu_e2e.sh (one end-to-end run of jobs.run on a GPU machine, or its --dry-run on a CPU).

    python bench/e2e.py data OUT --classes C --per-class P --val-per-class V [--unique U]
    python bench/e2e.py spec --data OUT --epochs E --batch B --image-size S --gpus G [--seeds K] [--compile] [--amp]
    python bench/e2e.py images-per-s --mlflow-uri URI --experiment-id ID
    python bench/e2e.py watch-gpus --address ADDR --out FILE --seconds T

``data`` writes a synthetic ImageNet in the folder layout (``OUT/train/<wnid>/*.JPEG``, ``OUT/val/...``) from U
distinct ~500×375 JPEGs (sibnn.data.synthetic), every further file a hard link to one of them: 64k files in
seconds (decoding costs the same whether or not bytes repeat; the files share the page cache). ``images-per-s``
reads each trial's per-epoch ``images_per_s`` back from MLflow. ``watch-gpus`` samples how much of the cluster's
GPU the running trials hold (Ray's available resources), for the packing check.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def write_data(out: Path, classes: int, per_class: int, val_per_class: int, unique: int) -> None:
    import numpy as np

    from sibnn.data.synthetic import encode_jpeg, synthetic_image, wnid

    rng = np.random.default_rng(0)
    pool = out / "_pool"
    pool.mkdir(parents=True, exist_ok=True)
    files = []
    for u in range(unique):   # a few distinct images per class
        f = pool / f"{u}.JPEG"
        f.write_bytes(encode_jpeg(synthetic_image(u % classes, classes, rng)))
        files.append(f)
    per_label = {c: [f for u, f in enumerate(files) if u % classes == c] for c in range(classes)}
    for split, n in (("train", per_class), ("val", val_per_class)):
        for c in range(classes):
            d = out / split / wnid(c)
            d.mkdir(parents=True, exist_ok=True)
            src = per_label[c]
            for i in range(n):
                dst = d / f"{wnid(c)}_{split}_{i}.JPEG"
                if not dst.exists():
                    os.link(src[i % len(src)], dst)
    print(f"{classes} classes x {per_class} train + {val_per_class} val images under {out} ({unique} distinct)")


def spec(a) -> dict:
    classes = len([d for d in (Path(a.data) / "train").iterdir() if d.is_dir()])
    per_class = len(list(next((Path(a.data) / "train").iterdir()).iterdir()))
    return {
        "name": f"e2e-{a.image_size}px", "description": "bench/gpu_e2e.sh",
        "dataset": {"kind": "synthetic", "root": str(a.data), "format": "folder", "policy": "rrc",
                    "image_size": a.image_size, "synthetic_classes": classes, "synthetic_per_class": per_class},
        "grid": {"arch": ["resnet18"], "binarizer": ["sibnn"], "seed": list(range(a.seeds))},
        "recipe": {"epochs": a.epochs, "batch_size": a.batch, "amp": a.amp, "channels_last": a.amp,
                   "compile": a.compile},
        "resources": {"workers_per_trial": 1, "gpus_per_worker": a.gpus, "cpus_per_worker": a.cpus},
    }


def images_per_s(uri: str, experiment_id: str) -> int:
    from jobs import tracking

    c = tracking.client(uri)
    runs = tracking.trial_runs(c, experiment_id)
    if not runs:
        print(f"no trial runs of {experiment_id} in {uri}")
        return 1
    for run in runs:
        hist = sorted(c.get_metric_history(run.info.run_id, "images_per_s"), key=lambda m: m.step)
        rates = [m.value for m in hist]
        steady = rates[1:] or rates
        print(f"run {run.info.run_id} ({run.info.status}): images/s per epoch "
              f"{', '.join(f'{r:.0f}' for r in rates)}; epochs 2.. mean {sum(steady) / max(1, len(steady)):.0f}")
    return 0


def watch_gpus(address: str, out: Path, seconds: float, resource: str = "GPU") -> None:
    import ray

    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    total = ray.cluster_resources().get(resource, 0.0)
    peak, t0 = 0.0, time.time()
    while time.time() - t0 < seconds:
        used = total - ray.available_resources().get(resource, 0.0)
        if used > peak:
            peak = used
            out.write_text(f"{resource} in use at once: {peak:g} of {total:g}\n")
        time.sleep(0.2)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("data")
    d.add_argument("out", type=Path)
    d.add_argument("--classes", type=int, required=True)
    d.add_argument("--per-class", type=int, required=True)
    d.add_argument("--val-per-class", type=int, required=True)
    d.add_argument("--unique", type=int, default=256)
    s = sub.add_parser("spec")
    s.add_argument("--data", required=True)
    s.add_argument("--epochs", type=int, required=True)
    s.add_argument("--batch", type=int, required=True)
    s.add_argument("--image-size", type=int, required=True)
    s.add_argument("--gpus", type=float, required=True)
    s.add_argument("--cpus", type=float, default=1)
    s.add_argument("--seeds", type=int, default=1)
    s.add_argument("--compile", action="store_true")
    s.add_argument("--amp", action="store_true", help="bf16 autocast and channels_last")
    m = sub.add_parser("images-per-s")
    m.add_argument("--mlflow-uri", required=True)
    m.add_argument("--experiment-id", required=True)
    w = sub.add_parser("watch-gpus")
    w.add_argument("--address", required=True)
    w.add_argument("--out", type=Path, required=True)
    w.add_argument("--seconds", type=float, required=True)
    w.add_argument("--resource", default="GPU")
    a = p.parse_args(argv)
    if a.cmd == "data":
        write_data(a.out, a.classes, a.per_class, a.val_per_class, max(a.unique, a.classes))
    elif a.cmd == "spec":
        print(json.dumps(spec(a)))
    elif a.cmd == "images-per-s":
        return images_per_s(a.mlflow_uri, a.experiment_id)
    else:
        watch_gpus(a.address, a.out, a.seconds, a.resource)
    return 0


if __name__ == "__main__":
    sys.exit(main())
