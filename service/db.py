"""Persistence: experiments, their submission attempts and idempotency keys (SQLAlchemy 2; SQLite or PostgreSQL).

The schema is owned by the Alembic migrations in ``service/migrations``; ``migrate(url)`` brings a database to the
latest revision (the app does it at start-up unless ``SIBNN_AUTO_MIGRATE=false``).
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path

from sqlalchemy import (Boolean, DateTime, ForeignKey, Integer, String, Text, TypeDecorator, UniqueConstraint,
                        create_engine, event, text)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, sessionmaker

MIGRATIONS = Path(__file__).parent / "migrations"

# Experiment status (DESIGN.md "Experiment status").
PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED = "PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"
ACTIVE = (PENDING, RUNNING)
TERMINAL = (SUCCEEDED, FAILED, CANCELLED)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class UTCDateTime(TypeDecorator):
    """Aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(dt.timezone.utc)
            if dialect.name == "sqlite":
                value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return value


class Base(DeclarativeBase):
    pass


class ExperimentRow(Base):
    __tablename__ = "experiments"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    spec_json: Mapped[str] = mapped_column(Text)
    spec_fingerprint: Mapped[str] = mapped_column(String(64))
    n_trials: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    mlflow_experiment_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    mlflow_parent_run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)

    attempts: Mapped[list[AttemptRow]] = relationship(back_populates="experiment", order_by="AttemptRow.number",
                                                      lazy="selectin", cascade="all, delete-orphan")

    @property
    def submission_id(self) -> str:
        return submission_id(self.id, self.attempt)

    @property
    def current_attempt(self) -> AttemptRow | None:
        return next((a for a in self.attempts if a.number == self.attempt), None)


class AttemptRow(Base):
    """One submission of an experiment to Ray; the Ray ``submission_id`` is ``<experiment id>-<number>``."""

    __tablename__ = "attempts"
    __table_args__ = (UniqueConstraint("experiment_id", "number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    experiment_id: Mapped[str] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    submission_id: Mapped[str] = mapped_column(String(80), unique=True)
    ray_status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    message: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Submission is a step of the reconciler (accept, then submit): which reconciler took it, when (a lease), and
    # when Ray accepted the job.
    submit_claimed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    submitted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    ended_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)

    experiment: Mapped[ExperimentRow] = relationship(back_populates="attempts")


class IdempotencyKeyRow(Base):
    """``Idempotency-Key`` of a POST: the body's fingerprint, and the experiment once it exists."""

    __tablename__ = "idempotency_keys"

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    experiment_id: Mapped[str | None] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"),
                                                      nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


CREATE_LOCK_KEY = 0x51B_0001  # PostgreSQL advisory lock: "an experiment is being counted and created"


def lock_experiment_creation(s) -> None:
    """Serialise "count the active experiments, then insert one" across requests, processes and API replicas.

    Called first in the session's transaction; the lock is released by its commit or rollback. PostgreSQL: a
    transaction-scoped advisory lock. SQLite: a write statement that changes nothing takes the database's write
    lock at once (in WAL mode a transaction that read first could not upgrade later); other writers wait for it
    (busy_timeout)."""
    if s.get_bind().dialect.name == "postgresql":
        s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": CREATE_LOCK_KEY})
    else:
        s.execute(text("UPDATE experiments SET status = status WHERE 0 = 1"))


def submission_id(experiment_id: str, attempt: int) -> str:
    return f"{experiment_id}-{attempt}"


def normalise_url(url: str) -> str:
    """``postgresql://`` → psycopg 3 (SQLAlchemy's default driver for that scheme is psycopg2)."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def make_engine(url: str) -> Engine:
    url = normalise_url(url)
    if url.startswith("sqlite"):
        if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(conn, _record):
            # WAL: readers never wait for the writer; foreign keys: cascades as on PostgreSQL.
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def session_factory(engine: Engine) -> sessionmaker:
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(url: str):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    return cfg


MIGRATION_LOCK = 0x51B22020  # pg_advisory_lock key: one migrator at a time per PostgreSQL database


def migrate(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision`` (Alembic upgrade); idempotent. On PostgreSQL the upgrade runs
    under a session advisory lock, so migrators started together (API replicas, `sibnn migrate` twice) take turns
    instead of racing to create the same tables; the second finds the schema at head and does nothing."""
    from alembic import command
    from sqlalchemy import text

    engine = make_engine(url)  # creates the SQLite file's folder
    try:
        if engine.dialect.name != "postgresql":
            command.upgrade(alembic_config(url), revision)
            return
        with engine.connect() as lock:
            lock.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK})
            try:
                command.upgrade(alembic_config(url), revision)
            finally:
                lock.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK})
    finally:
        engine.dispose()


def downgrade(url: str, revision: str = "base") -> None:
    from alembic import command

    command.downgrade(alembic_config(url), revision)
