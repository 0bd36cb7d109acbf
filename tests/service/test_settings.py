"""Settings come from the environment; Ray's own variable names work too."""
from pathlib import Path

from service.settings import Settings


def test_defaults_are_an_embedded_local_setup(monkeypatch, tmp_path):
    for k in ("SIBNN_DATABASE_URL", "SIBNN_RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN", "SIBNN_API_TOKEN", "MLFLOW_TRACKING_URI",
              "SIBNN_MLFLOW_TRACKING_URI", "SIBNN_HOST"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("SIBNN_HOME", str(tmp_path))
    s = Settings()
    assert s.db_url == f"sqlite:///{tmp_path / 'sibnn.db'}"
    assert s.host == "127.0.0.1"
    assert s.runs_path == str(tmp_path / "runs")
    assert s.api_token is None


def test_environment_overrides_with_service_and_standard_names(monkeypatch, tmp_path):
    monkeypatch.setenv("SIBNN_DATABASE_URL", "postgresql://u@db/sibnn")
    monkeypatch.setenv("SIBNN_RAY_ADDRESS", "http://ray-head:8265")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "cluster-token")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000/")
    monkeypatch.setenv("SIBNN_API_TOKEN", "api-secret")
    monkeypatch.setenv("SIBNN_PORT", "9000")
    s = Settings()
    assert s.db_url == "postgresql://u@db/sibnn"
    assert (s.ray_address, s.ray_token) == ("http://ray-head:8265", "cluster-token")
    assert s.mlflow_ui == "http://mlflow:5000"
    assert s.api_token.get_secret_value() == "api-secret" and "api-secret" not in repr(s)
    assert s.port == 9000


def test_ray_token_is_read_from_the_token_file(monkeypatch, tmp_path: Path):
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("SIBNN_RAY_AUTH_TOKEN", raising=False)
    f = tmp_path / "auth_token"
    f.write_text("from-file\n")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(f))
    assert Settings().ray_token == "from-file"


def test_an_object_store_storage_path_reaches_the_job_untouched(monkeypatch, tmp_path):
    from jobs.run import resolve_storage
    from service.ray_jobs import runtime_env

    monkeypatch.setenv("SIBNN_STORAGE_PATH", "s3://sibnn-bucket/runs")
    s = Settings()
    assert s.runs_path == "s3://sibnn-bucket/runs"  # a Path would have folded it to s3:/sibnn-bucket/runs
    assert runtime_env(s, "e1")["env_vars"]["SIBNN_STORAGE_PATH"] == "s3://sibnn-bucket/runs"
    monkeypatch.setenv("HOME", str(tmp_path))
    for uri in ("s3://sibnn-bucket/runs", "gs://sibnn-bucket/runs/"):
        storage, local = resolve_storage(uri)
        assert storage == uri.rstrip("/") and local == tmp_path / "sibnn-runs"
    assert not (tmp_path / "s3:").exists() and not Path("s3:").exists(), "no local folder named after the URI"
    storage, local = resolve_storage(str(tmp_path / "shared"))
    assert storage == str(tmp_path / "shared") and local.is_dir()


def test_secrets_are_read_from_files_named_by_the_file_variables(monkeypatch, tmp_path: Path):
    # docker-compose.yml and infra/ mount secrets at /run/secrets/* and name them with *_FILE / *_PATH variables
    for k in ("SIBNN_API_TOKEN", "SIBNN_DATABASE_URL", "SIBNN_READ_TOKEN", "RAY_AUTH_TOKEN", "SIBNN_RAY_AUTH_TOKEN",
              "RAY_AUTH_TOKEN_PATH", "SIBNN_RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(k, raising=False)
    files = {"api_token": "api-from-file\n", "database_url": "postgresql+psycopg://sibnn:pw@postgres:5432/sibnn\n",
             "read_token": "read-from-file\n", "ray_auth_token": "ray-from-file\n"}
    for name, value in files.items():
        (tmp_path / name).write_text(value)
    monkeypatch.setenv("SIBNN_API_TOKEN_FILE", str(tmp_path / "api_token"))
    monkeypatch.setenv("SIBNN_DATABASE_URL_FILE", str(tmp_path / "database_url"))
    monkeypatch.setenv("SIBNN_READ_TOKEN_FILE", str(tmp_path / "read_token"))
    monkeypatch.setenv("SIBNN_RAY_AUTH_TOKEN_FILE", str(tmp_path / "ray_auth_token"))
    s = Settings()
    assert s.api_token.get_secret_value() == "api-from-file" and "api-from-file" not in repr(s)
    assert s.db_url == "postgresql+psycopg://sibnn:pw@postgres:5432/sibnn"
    assert (s.read_token_value, s.ray_token) == ("read-from-file", "ray-from-file")
    monkeypatch.delenv("SIBNN_API_TOKEN_FILE")
    monkeypatch.setenv("SIBNN_API_TOKEN_PATH", str(tmp_path / "api_token"))
    assert Settings().api_token.get_secret_value() == "api-from-file"


def test_a_missing_empty_or_doubled_secret_file_is_an_error_naming_the_variable(monkeypatch, tmp_path: Path):
    import pytest
    from pydantic import ValidationError

    monkeypatch.delenv("SIBNN_API_TOKEN", raising=False)
    monkeypatch.setenv("SIBNN_API_TOKEN_FILE", str(tmp_path / "absent"))
    with pytest.raises(ValidationError, match="SIBNN_API_TOKEN_FILE=.*absent: cannot read it"):
        Settings()
    (tmp_path / "empty").write_text("\n")
    monkeypatch.setenv("SIBNN_API_TOKEN_FILE", str(tmp_path / "empty"))
    with pytest.raises(ValidationError, match="SIBNN_API_TOKEN_FILE=.*empty is empty"):
        Settings()
    (tmp_path / "tok").write_text("x")
    monkeypatch.setenv("SIBNN_API_TOKEN_FILE", str(tmp_path / "tok"))
    monkeypatch.setenv("SIBNN_API_TOKEN", "y")
    with pytest.raises(ValidationError, match="both SIBNN_API_TOKEN and SIBNN_API_TOKEN_FILE"):
        Settings()
