"""The job side's settings, from the environment the Ray job runs in: one typed object, read once per process.

The service hands a job its settings as environment variables (``service/ray_jobs.py`` puts them in the job's
``runtime_env``; ``sibnn up`` passes its shell's ``SIBNN_*`` to the Ray head). The names stay what they always were:

| env | default | what |
|---|---|---|
| SIBNN_DATA_ROOTS | unset: no confinement (by hand) | folders (``:``-separated) every ``dataset.root`` must lie in |
| SIBNN_STORAGE_PATH | ~/sibnn-runs | checkpoints and Tune state: a folder every node sees, or ``s3://`` / ``gs://`` |
| MLFLOW_TRACKING_URI | a SQLite file in the storage folder | the MLflow tracking server |
| RAY_ADDRESS | unset: a local Ray is started | the cluster (a Ray job entrypoint always has it) |
| SIBNN_MAX_CLUSTER_GPUS / _CPUS | the cluster now | its size at full scale: trial concurrency, too-large trials |
| SIBNN_TORCH_BACKEND | NCCL with GPUs, else gloo | torch.distributed backend of the trials |
| SIBNN_GIT_COMMIT | ``unknown`` | the code's commit where there is no git checkout (an image): the run manifests |

An entry point (``jobs.run``) reads them once and passes the object down: to the sweep, in each Tune trial's
arguments and in each Train worker's loop config (it pickles), so every process of a job sees the values its
driver read. A bad value is an error naming the variable, before anything runs.
"""
from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MAX_GPUS_ENV, MAX_CPUS_ENV = "SIBNN_MAX_CLUSTER_GPUS", "SIBNN_MAX_CLUSTER_CPUS"
DATA_ROOTS_ENV = "SIBNN_DATA_ROOTS"


class JobSettingsError(ValueError):
    """An environment variable of the job that does not parse; the message names it and its value."""


class JobSettings(BaseSettings):
    # Every field names its variable (validation_alias), so an error's location is the variable, not the field.
    model_config = SettingsConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    # None: run by hand, outside the service (the user's own paths). An empty value confines to the storage only.
    data_roots: str | None = Field(None, validation_alias=DATA_ROOTS_ENV)
    # A string, not a Path: Path("s3://bucket/runs") is "s3:/bucket/runs", which Ray would take for a local folder.
    storage_path: str | None = Field(None, validation_alias="SIBNN_STORAGE_PATH")
    mlflow_tracking_uri: str | None = Field(None, validation_alias="MLFLOW_TRACKING_URI")
    ray_address: str | None = Field(None, validation_alias="RAY_ADDRESS")
    # The cluster at full size when it autoscales (KubeRay: maxReplicas × GPUs per worker pod). None: as it is now.
    max_cluster_gpus: float | None = Field(None, ge=0, allow_inf_nan=False, validation_alias=MAX_GPUS_ENV)
    max_cluster_cpus: float | None = Field(None, ge=0, allow_inf_nan=False, validation_alias=MAX_CPUS_ENV)
    # None: Ray's default (NCCL when the workers have GPUs); gloo on a cluster whose GPUs torch cannot use.
    torch_backend: str | None = Field(None, validation_alias="SIBNN_TORCH_BACKEND")
    git_commit: str | None = Field(None, validation_alias="SIBNN_GIT_COMMIT")

    @field_validator("storage_path", "mlflow_tracking_uri", "ray_address", "max_cluster_gpus", "max_cluster_cpus",
                     "torch_backend", "git_commit", mode="before")
    @classmethod
    def _blank_is_unset(cls, v):
        """``VAR=`` (set but empty, as a compose file or a shell leaves it) means unset, as it did before."""
        if isinstance(v, str):
            v = v.strip()
            return v or None
        return v

    @classmethod
    def from_env(cls) -> JobSettings:
        """The settings as this process's environment has them; a JobSettingsError names each bad variable."""
        try:
            return cls()
        except ValidationError as e:
            raise JobSettingsError("; ".join(
                f"{'.'.join(map(str, err['loc']))}={err['input']!r}: {err['msg']}" for err in e.errors())) from None

    @property
    def data_root_paths(self) -> list[Path] | None:
        """The folders a ``dataset.root`` must lie in, symlinks resolved; None when no variable confines them."""
        if self.data_roots is None:
            return None
        return [Path(os.path.realpath(r.strip())) for r in self.data_roots.split(os.pathsep) if r.strip()]

    @property
    def declares_cluster_size(self) -> bool:
        return self.max_cluster_gpus is not None or self.max_cluster_cpus is not None

    def mlflow_uri(self) -> str:
        """The tracking server, for the callers that have no URI of their own (a container's MLFLOW_TRACKING_URI)."""
        if not self.mlflow_tracking_uri:
            raise RuntimeError("MLFLOW_TRACKING_URI is not set: point it at the MLflow tracking server")
        return self.mlflow_tracking_uri
