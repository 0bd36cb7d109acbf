"""What can go wrong in the service's domain, said without HTTP: the experiment code raises these, and
``service.problems`` maps each kind to its status and RFC 9457 problem details in one table (``STATUS``).

A plain bug (``TypeError``, ``KeyError``, …) is none of these: it stays an exception, is logged with its stack,
and answers 500.
"""
from __future__ import annotations


class DomainError(Exception):
    """A refusal the client can act on; ``retry_after`` (seconds) when trying again later can succeed."""

    title: str | None = None  # None: the status's phrase

    def __init__(self, detail: str, *, retry_after: int | None = None):
        super().__init__(detail)
        self.detail, self.retry_after = detail, retry_after


class NotFound(DomainError):
    """The experiment (or attempt) asked for does not exist."""


class Conflict(DomainError):
    """The request is valid but the experiment's state (or an idempotency key's) does not allow it now."""


class InvalidInput(DomainError):
    """A value the schema accepted but the service cannot use; ``field`` names it for the ``errors`` list."""

    def __init__(self, field: str, message: str, *, detail: str | None = None, title: str = "Invalid request"):
        super().__init__(detail if detail is not None else f"{field}: {message}")
        self.field, self.message, self.title = field, message, title


class LimitReached(DomainError):
    """A capacity limit of this service (active experiments) is reached; retry later."""


class DependencyUnavailable(DomainError):
    """Ray, MLflow or the database cannot be reached or did not answer; the message names the address."""

    title = "Dependency unavailable"
