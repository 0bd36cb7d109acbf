"""Persistence on SQLite and a real PostgreSQL: migrations, constraints, aware timestamps."""
import datetime as dt

import pytest
from sqlalchemy import inspect, select
from sqlalchemy.exc import IntegrityError

from service import db
from service.db import AttemptRow, ExperimentRow, IdempotencyKeyRow


def _experiment(exp_id="e1", **kw):
    exp = ExperimentRow(id=exp_id, name="n", spec_json="{}", spec_fingerprint="f" * 64, n_trials=1, status=db.PENDING,
                        attempt=1, cancel_requested=False, **kw)
    exp.attempts.append(AttemptRow(number=1, submission_id=db.submission_id(exp_id, 1)))
    return exp


@pytest.fixture
def sessions(db_url):
    """A session factory on a freshly migrated database (SQLite and PostgreSQL, via ``db_url``)."""
    db.migrate(db_url)
    engine = db.make_engine(db_url)
    yield db.session_factory(engine)
    engine.dispose()


def test_migrations_create_the_schema_and_downgrade_removes_it(db_url):
    db.migrate(db_url)
    engine = db.make_engine(db_url)
    assert {"experiments", "attempts", "idempotency_keys", "alembic_version"} <= set(inspect(engine).get_table_names())
    db.downgrade(db_url, "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    db.migrate(db_url)  # and up again
    assert "experiments" in inspect(engine).get_table_names()
    engine.dispose()


def test_an_experiment_round_trips_with_its_attempts_and_aware_timestamps(sessions):
    with sessions() as s:
        s.add(_experiment())
        s.commit()
    with sessions() as s:
        exp = s.get(ExperimentRow, "e1")
        assert exp.submission_id == "e1-1" and exp.current_attempt.submission_id == "e1-1"
        assert exp.created_at.tzinfo is not None
        assert abs((dt.datetime.now(dt.timezone.utc) - exp.created_at).total_seconds()) < 60


def test_a_ray_submission_id_is_unique(sessions):
    with sessions() as s:
        s.add(_experiment())
        s.commit()
        s.add(AttemptRow(experiment_id="e1", number=2, submission_id="e1-1"))
        with pytest.raises(IntegrityError):
            s.commit()


def test_an_idempotency_key_is_taken_once(sessions):
    with sessions() as s:
        s.add(IdempotencyKeyRow(key="k", fingerprint="a" * 64))
        s.commit()
    with sessions() as s:
        s.add(IdempotencyKeyRow(key="k", fingerprint="b" * 64))
        with pytest.raises(IntegrityError):
            s.commit()
    with sessions() as s:
        assert s.scalars(select(IdempotencyKeyRow.fingerprint)).all() == ["a" * 64]


def test_a_burst_with_one_key_takes_the_creation_lock_once_and_the_rest_replay(sessions, monkeypatch):
    """Twenty requests with one Idempotency-Key at once (a client's retries): one experiment, and one trip through
    the database's creation lock; the other nineteen replay it. Without the per-key lock every request of the burst
    misses the replay lookup and queues on the creation lock."""
    import concurrent.futures
    import threading

    from service import store as store_mod

    taken, barrier = [], threading.Barrier(20)
    real = db.lock_experiment_creation

    def counting(s):
        taken.append(1)
        real(s)

    monkeypatch.setattr(store_mod.db, "lock_experiment_creation", counting)
    st = store_mod.Store(sessions)

    def post(i):
        barrier.wait()
        return st.create(f"e{i}", key="k", fingerprint="f" * 64, name="n", spec_json="{}", n_trials=1, max_active=50)

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        results = list(pool.map(post, range(20)))
    assert {exp.id for exp, _ in results} == {results[0][0].id}
    assert sum(created for _, created in results) == 1
    assert len(taken) == 1, f"{len(taken)} trips through the creation lock"
    assert st.key_locks._held == {}  # nothing kept once the burst is over
