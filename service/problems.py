"""Errors as RFC 9457 problem details (``application/problem+json``): one clear message, never a stack trace.

The one place where the domain's refusals (``service.errors``) get their HTTP status (``STATUS``); an exception
that is none of them is a bug: logged with its stack, answered 500."""
from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.errors import Conflict, DependencyUnavailable, DomainError, InvalidInput, LimitReached, NotFound

log = logging.getLogger("service")
PROBLEM_JSON = "application/problem+json"


STATUS: dict[type[DomainError], int] = {NotFound: 404, Conflict: 409, InvalidInput: 422, LimitReached: 429,
                                        DependencyUnavailable: 503}


def status_of(exc: DomainError) -> int:
    return next(STATUS[k] for k in type(exc).__mro__ if k in STATUS)


class ProblemError(Exception):
    """Raise in HTTP-layer code (routes, dependencies): becomes a problem-details answer as it is."""

    def __init__(self, status: int, detail: str, *, title: str | None = None, errors: list[dict] | None = None,
                 headers: dict | None = None, **extra):
        self.status, self.detail, self.errors, self.headers, self.extra = status, detail, errors, headers, extra
        self.title = title or HTTPStatus(status).phrase
        super().__init__(detail)


def problem_response(request: Request, status: int, title: str, detail: str | None, *, errors=None, headers=None,
                     **extra) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail,
            "instance": request.url.path, **extra}
    if errors is not None:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _loc(loc: tuple) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] == "body":
        parts = parts[1:]
    return ".".join(parts) or "body"


def install(app: FastAPI) -> None:
    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError):
        return problem_response(request, exc.status, exc.title, exc.detail, errors=exc.errors, headers=exc.headers,
                                **exc.extra)

    @app.exception_handler(DomainError)
    async def _domain(request: Request, exc: DomainError):
        status = status_of(exc)
        errors = [{"field": exc.field, "message": exc.message}] if isinstance(exc, InvalidInput) else None
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
        return problem_response(request, status, exc.title or HTTPStatus(status).phrase, exc.detail, errors=errors,
                                headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        errors = [{"field": _loc(tuple(e.get("loc", ()))),
                   "message": str(e.get("msg", "")).removeprefix("Value error, ")} for e in exc.errors()]
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return problem_response(request, 422, "Invalid request", detail, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        title = HTTPStatus(exc.status_code).phrase if exc.status_code in HTTPStatus._value2member_map_ else "Error"
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return problem_response(request, exc.status_code, title, detail, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(request, 500, "Internal Server Error",
                                f"unexpected {type(exc).__name__}; the service log has the details")
