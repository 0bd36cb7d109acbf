"""Per-trial state read from MLflow is cached per experiment for ``SIBNN_TRIALS_CACHE_S`` (cachetools.TTLCache):
pollers of one experiment cost one MLflow query per period; another experiment, or an expired entry, asks again;
a failed read is not cached."""
import threading

import pytest

from service.experiments import Context, MlflowUnavailable
from service.settings import Settings
from tests.service.conftest import dead_address


class Exp:
    def __init__(self, exp_id):
        self.id, self.mlflow_experiment_id = exp_id, None


@pytest.fixture
def ctx(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # as create_app sets it
    s = Settings(home=tmp_path, database_url=f"sqlite:///{tmp_path / 's.db'}", ray_address=dead_address(),
                 mlflow_tracking_uri=dead_address(), trials_cache_s=60)
    ctx = Context.from_settings(s)
    yield ctx
    ctx.engine.dispose()


def test_one_mlflow_read_per_experiment_per_period(ctx, monkeypatch):
    calls = []
    monkeypatch.setattr(ctx, "mlflow_call", lambda fn, exp_id, *a: calls.append(exp_id) or [{"trial": exp_id}])
    results = []
    threads = [threading.Thread(target=lambda: results.append(ctx.trials(Exp("a"), None))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [[{"trial": "a"}]] * 8
    assert ctx.trials(Exp("b"), None) == [{"trial": "b"}]
    n = len(calls)
    assert calls.count("b") == 1 and 1 <= calls.count("a") <= 8
    assert ctx.trials(Exp("a"), None) == [{"trial": "a"}] and len(calls) == n  # cached
    ctx.trials_cache.expire(ctx.trials_cache.timer() + 61)  # the period passes
    ctx.trials(Exp("a"), None)
    assert calls[n:] == ["a"]


def test_a_failed_read_is_not_cached(ctx):
    with pytest.raises(MlflowUnavailable):
        ctx.trials(Exp("a"), None)  # MLflow is down: a real refused connection
    assert "a" not in ctx.trials_cache
