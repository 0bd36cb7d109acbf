"""Run an experiment spec as a Ray job: ``python -m jobs.run --spec spec.json --experiment-id ID``.

The service submits exactly this command. The spec is validated before Ray is touched (exit 2, the offending
fields named). Ray: ``RAY_ADDRESS`` when set (a job entrypoint always has it), otherwise a local Ray is started.
MLflow: ``--mlflow-uri`` or ``MLFLOW_TRACKING_URI``. Checkpoints and Tune state: ``--storage-path`` or
``SIBNN_STORAGE_PATH``: a folder every node sees, or an object-store URI (``s3://bucket/prefix``, ``gs://...``) that
Ray Train resolves with pyarrow on each node (credentials and endpoint from the node's environment: the AWS SDK's
``AWS_*`` variables, ``AWS_ENDPOINT_URL_S3`` for S3-compatible stores). Running it again with the same experiment
id resumes, from wherever the storage is.
SIGTERM (``ray job stop``) marks the MLflow runs KILLED and exits; checkpoints already written stay.
Exit status: 0 all trials succeeded, 1 some failed, 2 bad input, 143 cancelled.
"""
from __future__ import annotations

import argparse
import base64
import os
import re
import signal
import sys
import threading
from pathlib import Path

from jobs.presets import PRESETS, preset
from jobs.settings import DATA_ROOTS_ENV, JobSettings
from jobs.spec import ExperimentSpec, SpecError, parse_spec
from sibnn.data.small import EMBEDDED_DATASETS

EXIT_FAILED, EXIT_BAD_INPUT, EXIT_CANCELLED = 1, 2, 143
SIGTERM_DEADLINE_S = 2.5  # Ray's stop_job waits a few seconds before SIGKILL
EXPERIMENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


class InputError(Exception):
    """Bad input a user can fix: printed as one line, exit status 2."""


def load_spec(args) -> ExperimentSpec:
    if args.preset:
        return preset(args.preset, root=args.root)
    if args.spec_json:
        return parse_spec(args.spec_json)
    if args.spec_b64:
        return parse_spec(base64.b64decode(args.spec_b64).decode())
    path = Path(args.spec)
    if not path.is_file():
        raise InputError(f"spec file {path} not found")
    return parse_spec(path.read_text())


def is_uri(storage_path: str) -> bool:
    """``s3://…``, ``gs://…``, any ``scheme://``: an object store Ray Train writes through pyarrow."""
    return "://" in storage_path


def resolve_storage(storage_path: str | None) -> tuple[str, Path]:
    """(storage_path as Ray gets it, a local folder for this driver's own files). A URI stays a string, untouched
    (``Path`` would fold ``s3://b`` into ``s3:/b``); a local path is made absolute and created. The local folder
    holds the default SQLite MLflow store and generated synthetic data: the storage itself, or ``~/sibnn-runs``
    when the storage is an object store."""
    if storage_path and is_uri(storage_path):
        local = Path.home() / "sibnn-runs"
        local.mkdir(parents=True, exist_ok=True)
        return storage_path.rstrip("/"), local
    local = Path(storage_path or Path.home() / "sibnn-runs").expanduser().resolve()
    local.mkdir(parents=True, exist_ok=True)
    return str(local), local


def _confined(root: Path, storage_path: Path, settings: JobSettings) -> Path:
    """``root`` with symlinks and ``..`` resolved, refused unless it lies inside ``SIBNN_DATA_ROOTS`` (set by the
    service on every job it submits) — the storage path counts as one, for the synthetic data made there."""
    real = Path(os.path.realpath(root))
    allowed = settings.data_root_paths
    if allowed is None:  # run by hand, outside the service: the user's own paths
        return real
    roots = allowed + [storage_path]
    if not any(real == r or real.is_relative_to(r) for r in roots):
        raise InputError(f"dataset.root {root} resolves to {real}, outside the data roots "
                         f"({', '.join(map(str, roots))}; {DATA_ROOTS_ENV})")
    return real


def _check_layout(spec: ExperimentSpec, root: Path) -> None:
    """Fail in the driver, in one line, when the root lacks the dataset's files (not in every worker, retried)."""
    from sibnn.data import DatasetError, load_small_dataset

    ds = spec.dataset
    try:
        if ds.is_imagenet_format and ds.format == "folder":
            for split in ("train", "val"):
                if not (root / split).is_dir():
                    raise DatasetError(f"{root} has no {split}/ folder (ImageNet folder layout: train/<wnid>/*.JPEG, "
                                       f"val/<wnid>/*.JPEG)")
        elif ds.kind in ("mnist", "cifar10"):
            load_small_dataset(ds.kind, root)
    except DatasetError as e:
        raise InputError(f"dataset.root: {e}") from None


def prepare_dataset(spec: ExperimentSpec, storage_path: Path, settings: JobSettings | None = None) -> str | None:
    """The data root every worker reads; synthetic ImageNet-format data is generated once when absent.
    ``settings``: the job's (default: this process's environment)."""
    settings = settings or JobSettings.from_env()
    ds = spec.dataset
    if ds.kind in EMBEDDED_DATASETS:
        if ds.kind == "fashion_mnist":  # a Debian package's files: a missing package fails here, in one line
            from sibnn.data import DatasetError
            from sibnn.data.small import fashion_mnist_files

            try:
                fashion_mnist_files()
            except DatasetError as e:
                raise InputError(f"dataset.kind: {e}") from None
        return None
    if ds.kind == "synthetic":
        root = _confined(Path(ds.root), storage_path, settings) if ds.root else storage_path / "datasets" / (
            f"synthetic-{ds.synthetic_classes}x{ds.synthetic_per_class}")
        if not (root / "train").is_dir():
            from sibnn.data.synthetic import write_synthetic_imagenet

            write_synthetic_imagenet(root, ds.synthetic_classes, ds.synthetic_per_class,
                                     webdataset=ds.format == "webdataset")
        return str(root / "wds") if ds.format == "webdataset" else str(root)
    root = _confined(Path(ds.root), storage_path, settings)
    if not root.is_dir():
        raise InputError(f"dataset.root {ds.root} does not exist or is not a directory (on the machine running the "
                         f"job)")
    _check_layout(spec, root)
    return str(root)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m jobs.run", description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--spec", help="path of a spec JSON file")
    src.add_argument("--spec-json", help="the spec as JSON text")
    src.add_argument("--spec-b64", help="the spec as base64-encoded JSON (safe in any shell)")
    src.add_argument("--preset", choices=sorted(PRESETS))
    p.add_argument("--root", help="dataset root for --preset")
    p.add_argument("--experiment-id", required=True)
    p.add_argument("--storage-path", help="default: SIBNN_STORAGE_PATH, else ~/sibnn-runs")
    p.add_argument("--mlflow-uri", help="default: MLFLOW_TRACKING_URI, else a SQLite file in the storage folder")
    p.add_argument("--ray-temp-dir", default=None, help="temp dir for a local Ray started by this command")
    return p.parse_args(argv)


def _mark_killed(mlflow_uri: str, experiment_id: str) -> None:
    from jobs import tracking

    tracking.mark_killed(tracking.client(mlflow_uri), experiment_id)
    print(f"cancelled: MLflow runs of experiment {experiment_id} marked KILLED; checkpoints kept", flush=True)


def _install_sigterm(mlflow_uri: str, experiment_id: str, local_ray: bool) -> None:
    def on_sigterm(signum, frame):
        # Ray's stop_job sends SIGTERM, then SIGKILL a few seconds later. Marking the runs is network work that
        # can hang (MLflow down, retries): it gets a thread and a deadline, and the process exits either way.
        os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
        os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "2"
        marker = threading.Thread(target=_mark_killed, args=(mlflow_uri, experiment_id), daemon=True)
        marker.start()
        marker.join(SIGTERM_DEADLINE_S)
        if marker.is_alive():
            print(f"cancelled: MLflow did not answer within {SIGTERM_DEADLINE_S} s; runs left as they were",
                  flush=True)
        if local_ray:  # a Ray this process started must not outlive it (no Ray job: no SIGKILL deadline)
            import ray

            ray.shutdown()
        os._exit(EXIT_CANCELLED)

    signal.signal(signal.SIGTERM, on_sigterm)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if not EXPERIMENT_ID.fullmatch(args.experiment_id):
            raise InputError("experiment id must be 1–64 letters, digits, '_' or '-', starting with a letter or digit")
        settings = JobSettings.from_env()  # read once: everything below, and every trial, gets this object
        spec = load_spec(args)
        storage, local = resolve_storage(args.storage_path or settings.storage_path)
        mlflow_uri = args.mlflow_uri or settings.mlflow_tracking_uri or f"sqlite:///{local / 'mlflow.db'}"
        data_root = prepare_dataset(spec, local, settings)
    except SpecError as e:
        print("invalid spec:", file=sys.stderr)
        for loc, msg in e.errors:
            print(f"  {loc}: {msg}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (InputError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT

    import ray

    from jobs.manifest import data_fingerprint
    from jobs.sweep import InfeasibleTrialError, run_sweep

    address = settings.ray_address
    init_kw = {"address": address} if address else {"include_dashboard": False}
    if not address and args.ray_temp_dir:
        init_kw["_temp_dir"] = args.ray_temp_dir
    ray.init(**init_kw, log_to_driver=True)
    # After ray.init: Ray's core worker installs its own SIGTERM handler, which would abort without cleanup.
    _install_sigterm(mlflow_uri, args.experiment_id, local_ray=not address)
    trials = spec.trials()
    print(f"experiment {args.experiment_id}: {len(trials)} trials on {ray.cluster_resources()} "
          f"(storage {storage}, MLflow {mlflow_uri})", flush=True)
    try:
        outcome = run_sweep(spec, args.experiment_id, storage_path=storage, mlflow_uri=mlflow_uri,
                            data_root=data_root, data_fingerprint=data_fingerprint(spec.dataset.kind, data_root),
                            settings=settings)
    except InfeasibleTrialError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"{'trial':<36}{'state':<10}{'top-1':>8}{'best':>8}{'sparsity':>10}")
    for r in outcome.rows:
        fmt = lambda v, f: format(v, f) if v is not None else "–"  # noqa: E731
        print(f"{r['trial_id']:<36}{r['state']:<10}{fmt(r['final_top1'], '8.2f')}{fmt(r['best_top1'], '8.2f')}"
              f"{fmt(r['sparsity'], '10.3f')}")
    if outcome.failed:
        print(f"failed trials: {', '.join(outcome.failed)}", file=sys.stderr)
        return EXIT_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
