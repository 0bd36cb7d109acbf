"""Service settings, read from the environment (``SIBNN_*``; a few standard Ray/MLflow names are accepted too).

| env | default | what |
|---|---|---|
| SIBNN_HOME | ~/.sibnn | state folder of the embedded stack (SQLite file, runs, logs) |
| SIBNN_DATABASE_URL | sqlite:///$SIBNN_HOME/sibnn.db | SQLAlchemy URL; ``postgresql://`` uses psycopg 3 |
| SIBNN_DATABASE_URL_FILE | – | or a file holding it (it carries the password: a Docker/Kubernetes secret) |
| SIBNN_RAY_ADDRESS | http://127.0.0.1:8265 | the Ray cluster's job (dashboard) HTTP address |
| SIBNN_RAY_AUTH_TOKEN / RAY_AUTH_TOKEN | – | the cluster's token (Ray token authentication) |
| SIBNN_RAY_AUTH_TOKEN_PATH / _FILE / RAY_AUTH_TOKEN_PATH | – | or a file holding it (else ~/.ray/auth_token, as Ray) |
| SIBNN_MLFLOW_TRACKING_URI / MLFLOW_TRACKING_URI | http://127.0.0.1:5000 | MLflow tracking server |
| SIBNN_MLFLOW_UI_URL | the tracking URI | base of the MLflow links in answers |
| SIBNN_JOB_MLFLOW_TRACKING_URI | the tracking URI | MLflow as the Ray job sees it (compose service names) |
| SIBNN_STORAGE_PATH | $SIBNN_HOME/runs | checkpoints and Tune state: a path every Ray node sees, or ``s3://``/``gs://`` |
| SIBNN_API_TOKEN | – | bearer token for every request that changes state (none set: such requests get 401) |
| SIBNN_API_TOKEN_FILE / _PATH | – | or a file holding it (a Docker/Kubernetes secret) |
| SIBNN_HOST / SIBNN_PORT | 127.0.0.1 / 8000 | bind address of ``sibnn up`` / ``python -m service`` |
| SIBNN_DATA_ROOTS | $SIBNN_HOME/data | folders (``:``-separated) every ``dataset.root`` must lie in; relative roots are taken inside the first |
| SIBNN_MAX_BODY_BYTES | 1048576 | largest request body (413 above it, checked while reading, after the token) |
| SIBNN_READ_TOKEN / SIBNN_READ_TOKEN_PATH / _FILE | – | a read-only bearer token (or a file holding it); the API token reads too |
| SIBNN_OPEN_READS | loopback host: true, else false | reads without a token; off unless SIBNN_HOST is loopback or this says true |
| SIBNN_MLFLOW_TIMEOUT_S / SIBNN_MLFLOW_MAX_CALLS | 5 / 8 | per MLflow request (never retried); MLflow calls in flight at once |

Read by the jobs from the Ray head's environment (``sibnn up`` passes its shell's ``SIBNN_*`` to the head):

| env | default | what |
|---|---|---|
| SIBNN_MAX_CLUSTER_GPUS / _CPUS | the cluster now | its size at full scale: trial concurrency, too-large trials |
| SIBNN_TORCH_BACKEND | NCCL with GPUs, else gloo | torch.distributed backend of the trials |
"""
from __future__ import annotations

import os
import sys
from functools import cached_property
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[1]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SIBNN_", extra="ignore", populate_by_name=True)

    home: Path = Field(Path.home() / ".sibnn", description="state folder of the embedded stack")
    database_url: str | None = Field(None, description="SQLAlchemy URL (SQLite file in home by default)")
    # Secrets as files (Docker/Kubernetes secrets, the postgres image's *_FILE convention): the value is read here,
    # so it never sits in the container's environment.
    database_url_path: Path | None = Field(
        None, validation_alias=AliasChoices("SIBNN_DATABASE_URL_FILE", "SIBNN_DATABASE_URL_PATH", "database_url_path"))
    ray_address: str = Field("http://127.0.0.1:8265", description="Ray job submission (dashboard) address")
    ray_auth_token: SecretStr | None = Field(
        None, validation_alias=AliasChoices("SIBNN_RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN", "ray_auth_token"))
    ray_auth_token_path: Path | None = Field(
        None, validation_alias=AliasChoices("SIBNN_RAY_AUTH_TOKEN_PATH", "SIBNN_RAY_AUTH_TOKEN_FILE",
                                            "RAY_AUTH_TOKEN_PATH", "ray_auth_token_path"))
    mlflow_tracking_uri: str = Field(
        "http://127.0.0.1:5000",
        validation_alias=AliasChoices("SIBNN_MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI", "mlflow_tracking_uri"))
    mlflow_ui_url: str | None = None
    job_mlflow_tracking_uri: str | None = None
    # A string, not a Path: Path("s3://bucket/runs") is "s3:/bucket/runs", which Ray would take for a local folder.
    storage_path: str | None = Field(None, description="checkpoints and Tune state: a shared folder or s3:// gs:// URI")
    api_token: SecretStr | None = None
    api_token_path: Path | None = Field(
        None, validation_alias=AliasChoices("SIBNN_API_TOKEN_FILE", "SIBNN_API_TOKEN_PATH", "api_token_path"))
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)

    # The Ray job runs `{job_python} -m jobs.run ...`: the project's interpreter, not whatever `python` is on PATH.
    job_python: str = sys.executable
    job_pythonpath: str = str(REPO_ROOT)
    check_dataset_paths: bool = Field(True, description="422 when dataset.root does not exist here")
    auto_migrate: bool = Field(True, description="run the Alembic migrations at start-up")
    reconcile_interval_s: float = Field(2.0, gt=0)
    submit_grace_s: float = Field(30.0, ge=0, description="age after which an unsubmitted experiment is resubmitted")
    max_attempts: int = Field(3, ge=1, description="submissions of one experiment (Ray cluster restarts)")
    max_active_experiments: int = Field(8, ge=1)
    max_trials: int = Field(512, ge=1)
    request_timeout_s: float = Field(10.0, gt=0)
    trials_cache_s: float = Field(1.0, ge=0, description="how stale per-trial state from MLflow may be")
    data_roots: str | None = Field(None, description="folders every dataset.root must lie in (os.pathsep-separated)")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="largest request body accepted")
    read_token: SecretStr | None = None
    read_token_path: Path | None = Field(
        None, validation_alias=AliasChoices("SIBNN_READ_TOKEN_PATH", "SIBNN_READ_TOKEN_FILE", "read_token_path"))
    open_reads: bool | None = Field(None, description="reads need no token (default: only on a loopback host)")
    mlflow_timeout_s: float = Field(5.0, ge=1, description="timeout of one MLflow request (whole seconds: MLflow's "
                                                           "client takes an int); a timed-out read is not retried")
    mlflow_max_calls: int = Field(8, ge=1, description="MLflow calls in flight at once; more get 503 at once")

    @field_validator("storage_path", mode="before")
    @classmethod
    def _path_to_str(cls, v):
        return str(v) if isinstance(v, Path) else v  # a local Path is fine; a URI must arrive as the string it is

    @model_validator(mode="after")
    def _secrets_from_files(self):
        """SIBNN_API_TOKEN_FILE / SIBNN_DATABASE_URL_FILE: read once, at start-up, with the variable named on error."""
        for field, path_field, var in (("api_token", "api_token_path", "SIBNN_API_TOKEN"),
                                       ("database_url", "database_url_path", "SIBNN_DATABASE_URL")):
            path = getattr(self, path_field)
            if path is None:
                continue
            if getattr(self, field) is not None:
                raise ValueError(f"both {var} and {var}_FILE are set: use one")
            try:
                value = path.read_text().strip()
            except OSError as e:
                raise ValueError(f"{var}_FILE={path}: cannot read it ({e.strerror})") from None
            if not value:
                raise ValueError(f"{var}_FILE={path} is empty")
            setattr(self, field, SecretStr(value) if field == "api_token" else value)
        return self

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'sibnn.db'}"

    @property
    def runs_path(self) -> str:
        return self.storage_path or str(self.home / "runs")

    @property
    def mlflow_ui(self) -> str:
        return (self.mlflow_ui_url or self.mlflow_tracking_uri).rstrip("/")

    @property
    def data_root_paths(self) -> list[Path]:
        """The allowed dataset folders, symlinks resolved (so a path is compared with where it really points)."""
        raw = [p for p in (self.data_roots or "").split(os.pathsep) if p.strip()]
        roots = [Path(p.strip()).expanduser() for p in raw] or [self.home / "data"]
        return [Path(os.path.realpath(r if r.is_absolute() else self.home / r)) for r in roots]

    @property
    def reads_open(self) -> bool:
        if self.open_reads is not None:
            return self.open_reads
        return self.host in ("127.0.0.1", "localhost", "::1")

    @cached_property
    def read_token_value(self) -> str | None:
        if self.read_token is not None:
            return self.read_token.get_secret_value().strip() or None
        if self.read_token_path is not None:
            return self.read_token_path.read_text().strip() or None
        return None

    @cached_property
    def ray_token(self) -> str | None:
        """The Ray cluster's token: the variable, else the token file, else Ray's own default file."""
        if self.ray_auth_token is not None:
            return self.ray_auth_token.get_secret_value().strip() or None
        for path in (self.ray_auth_token_path, Path.home() / ".ray" / "auth_token"):
            if path is not None and path.is_file():
                return path.read_text().strip() or None
        return None
