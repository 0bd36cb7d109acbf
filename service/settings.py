"""Service settings, read from the environment (``SIBNN_*``; a few standard Ray/MLflow names are accepted too).

| env | default | what |
|---|---|---|
| SIBNN_HOME | ~/.sibnn | state folder of the embedded stack (SQLite file, runs, logs) |
| SIBNN_DATABASE_URL | sqlite:///$SIBNN_HOME/sibnn.db | SQLAlchemy URL; ``postgresql://`` uses psycopg 3 |
| SIBNN_DATABASE_URL_FILE | – | or a file holding it (it carries the password: a Docker/Kubernetes secret) |
| SIBNN_RAY_ADDRESS | http://127.0.0.1:8265 | the Ray cluster's job (dashboard) HTTP address |
| RAY_ADDRESS / RAY_API_SERVER_ADDRESS | – | Ray's (they win in its job client): alone and HTTP, the address; else must equal SIBNN_RAY_ADDRESS |
| SIBNN_RAY_AUTH_TOKEN / RAY_AUTH_TOKEN | – | the cluster's token (Ray token authentication) |
| SIBNN_RAY_AUTH_TOKEN_PATH / _FILE / RAY_AUTH_TOKEN_PATH | – | or a file holding it (else ~/.ray/auth_token if it exists, as Ray) |
| SIBNN_RAY_TIMEOUT_S / SIBNN_RAY_MAX_CALLS | 10 / 8 | per Ray call, then 503 naming Ray; Ray calls in flight at once (more: 503 at once) |
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
| SIBNN_SUBMIT_GRACE_S | 30 | the lease of one reconciler's claim to submit an accepted experiment (replicas never submit it twice) |

Every secret file (``*_FILE`` / ``*_PATH``) is read once, when the settings are made: a missing, unreadable or empty
file stops the start with its variable named, and setting a secret both as a value and as a file is refused. Only
Ray's default ~/.ray/auth_token is optional.

Read by the jobs from the Ray head's environment (``sibnn up`` passes its shell's ``SIBNN_*`` to the head):

| env | default | what |
|---|---|---|
| SIBNN_MAX_CLUSTER_GPUS / _CPUS | the cluster now | its size at full scale: trial concurrency, too-large trials |
| SIBNN_TORCH_BACKEND | NCCL with GPUs, else gloo | torch.distributed backend of the trials |
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from pydantic import AliasChoices, Field, PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[1]
# (secret field, the field naming a file that holds it, the variable errors name). Read by Settings._read_secret_files.
SECRET_FILES = (("api_token", "api_token_path", "SIBNN_API_TOKEN"),
                ("read_token", "read_token_path", "SIBNN_READ_TOKEN"),
                ("database_url", "database_url_path", "SIBNN_DATABASE_URL"),
                ("ray_auth_token", "ray_auth_token_path", "SIBNN_RAY_AUTH_TOKEN"))
# Ray's job client takes its address from these when set, whatever it is given (RAY_API_SERVER_ADDRESS first).
RAY_ADDRESS_VARS = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")


def ray_default_token_file() -> Path:
    return Path.home() / ".ray" / "auth_token"


def _same_http_address(a: str, b: str) -> bool:
    def norm(v: str) -> str:
        v = v.strip().rstrip("/")
        return v if "://" in v else f"http://{v}"  # as Ray's client reads an address without a scheme
    return norm(a) == norm(b)


class Settings(BaseSettings):
    # hide_input_in_errors: a start-up error names the variable, never prints the values (tokens among them)
    model_config = SettingsConfigDict(env_prefix="SIBNN_", extra="ignore", populate_by_name=True,
                                      hide_input_in_errors=True)

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
    submit_grace_s: float = Field(30.0, ge=0, description="how long one reconciler's claim to submit an accepted "
                                                           "attempt keeps the others (API replicas) from taking it")
    max_attempts: int = Field(3, ge=1, description="submissions of one experiment (Ray cluster restarts)")
    max_active_experiments: int = Field(8, ge=1)
    max_trials: int = Field(512, ge=1)
    # Every Ray call (job submission client and /readyz's ping) is bounded: a head that accepts the connection and
    # never answers costs a request this long, then 503 naming it. SIBNN_REQUEST_TIMEOUT_S: its former name.
    ray_timeout_s: float = Field(10.0, gt=0, validation_alias=AliasChoices(
        "SIBNN_RAY_TIMEOUT_S", "SIBNN_REQUEST_TIMEOUT_S", "ray_timeout_s", "request_timeout_s"))
    ray_max_calls: int = Field(8, ge=1, description="Ray calls in flight at once; more get 503 at once")
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

    # secret field -> the file its value was read from (so a copy re-reads only a file that changed)
    _read_from: dict = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _read_secret_files(self):
        """Every secret file, read once, here, at start-up: a file that is missing, unreadable or empty stops the
        start naming its variable (not a 500 on the first request that needs it); a secret set both as a value and
        as a file is refused. Ray's default ~/.ray/auth_token is read when it exists and no token is configured."""
        read_from = dict(self._read_from)
        for field, path_field, var in SECRET_FILES:
            path = getattr(self, path_field)
            if field in read_from and read_from[field] != path:
                setattr(self, field, None)  # a copy naming another file (or none): the old file's value goes
                del read_from[field]
            if path is None and field == "ray_auth_token" and self.ray_auth_token is None:
                default = ray_default_token_file()
                if default.is_file():  # optional: only what exists is read
                    value = _read_secret(default, f"{default} (Ray's default token file)")
                    self.ray_auth_token = SecretStr(value) if value else None
                    read_from[field] = None
                continue
            if path is None or read_from.get(field) == path:
                continue
            file_var = _named(path_field, f"{var}_FILE")
            if getattr(self, field) is not None:
                raise ValueError(f"both {_named(field, var)} and {file_var} are set: use one")
            value = _read_secret(path, f"{file_var}={path}")
            if not value:
                raise ValueError(f"{file_var}={path} is empty")
            setattr(self, field, value if field == "database_url" else SecretStr(value))
            read_from[field] = path
        self._read_from = read_from
        return self

    @model_validator(mode="after")
    def _one_ray_address(self):
        """One Ray address: Ray's job client would silently take RAY_API_SERVER_ADDRESS or RAY_ADDRESS over
        SIBNN_RAY_ADDRESS, while /readyz asks SIBNN_RAY_ADDRESS. An HTTP address in Ray's variable stands for an
        unset SIBNN_RAY_ADDRESS; any other disagreement stops the start, naming both variables."""
        var = next((v for v in RAY_ADDRESS_VARS if os.environ.get(v, "").strip()), None)
        if var is None:
            return self
        theirs = os.environ[var].strip()
        if "ray_address" not in self.model_fields_set and theirs.startswith(("http://", "https://")):
            self.ray_address = theirs.rstrip("/")
            return self
        if not _same_http_address(theirs, self.ray_address):
            shown = "SIBNN_RAY_ADDRESS" if "ray_address" in self.model_fields_set else "SIBNN_RAY_ADDRESS (default)"
            raise ValueError(f"{var}={theirs} and {shown}={self.ray_address} differ: Ray's job client would use "
                             f"{var} while the service checks SIBNN_RAY_ADDRESS. Set one address: unset {var}, or "
                             f"give SIBNN_RAY_ADDRESS the same Ray dashboard HTTP address")
        return self

    def model_copy(self, *, update=None, deep: bool = False) -> "Settings":
        """A copy whose secret files are read (and checked) as at start-up when ``update`` names another file."""
        copy = super().model_copy(update=update, deep=deep)
        copy._read_from = dict(self._read_from)
        return copy._read_secret_files()

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

    @property
    def read_token_value(self) -> str | None:
        """The read-only token (from SIBNN_READ_TOKEN or its file, read at start-up)."""
        return self.read_token.get_secret_value().strip() or None if self.read_token is not None else None

    @property
    def ray_token(self) -> str | None:
        """The Ray cluster's token: the variable, else the token file, else Ray's own default file (read at
        start-up)."""
        return self.ray_auth_token.get_secret_value().strip() or None if self.ray_auth_token is not None else None


def _named(field: str, default: str) -> str:
    """The variable that set ``field``, for a message: the one of its names set in the environment (RAY_AUTH_TOKEN,
    SIBNN_READ_TOKEN_PATH, ...), else ``default``."""
    alias = Settings.model_fields[field].validation_alias
    names = [n for n in getattr(alias, "choices", ()) if isinstance(n, str) and n.isupper()]
    return next((n for n in names if os.environ.get(n)), default)


def _read_secret(path: Path, named: str) -> str:
    try:
        return path.read_text().strip()
    except OSError as e:
        raise ValueError(f"{named}: cannot read it ({e.strerror or type(e).__name__})") from None
