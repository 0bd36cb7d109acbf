"""The request guard, an ASGI middleware in front of every route: the token first, then a bounded body.

Order matters for a hostile client: the ``Authorization`` header is checked before one byte of the body is read
(an unauthenticated 200 MB upload gets its 401 at once), and the body is read chunk by chunk up to
``SIBNN_MAX_BODY_BYTES`` (413 the moment it is exceeded, whatever ``Content-Length`` claims). A JSON body is then
checked for what the JSON parser itself reports badly: the parse error's line and column, numbers with thousands of
digits and deep nesting, all as 422 naming ``body``. What passes is handed to the routes unchanged.

Writes (any method but GET/HEAD/OPTIONS) need ``SIBNN_API_TOKEN``; reads need it or ``SIBNN_READ_TOKEN`` unless
reads are open (``SIBNN_OPEN_READS=true``, or by default a loopback ``SIBNN_HOST`` and a request that arrived on a
loopback address). Probes and the API's own
description stay open: /healthz, /readyz, /docs, /openapi.json.
"""
from __future__ import annotations

import ipaddress
import json
import secrets

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from service.problems import PROBLEM_JSON
from service.settings import Settings

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MAX_JSON_DEPTH = 32
MAX_NUMBER_DIGITS = 100
CHALLENGE = [(b"www-authenticate", b'Bearer realm="sibnn"')]


def token_problem(settings: Settings, authorization: str | None, write: bool) -> str | None:
    """Why this request may not pass (None: it may). The API token may do everything, the read token read."""
    api = settings.api_token.get_secret_value().strip() if settings.api_token else ""
    accepted = [t for t in ([api] if write else [api, settings.read_token_value or ""]) if t]
    if not accepted:
        return ("this service has no API token configured (SIBNN_API_TOKEN): requests that change state are refused"
                if write else "reads need a token here and none is configured (SIBNN_READ_TOKEN or SIBNN_API_TOKEN)")
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        what = "SIBNN_API_TOKEN" if write else "SIBNN_READ_TOKEN or SIBNN_API_TOKEN"
        return f"missing bearer token: send 'Authorization: Bearer <{what}>'"
    if not any(secrets.compare_digest(given.strip().encode(), t.encode()) for t in accepted):
        return "invalid bearer token"
    return None


def _depth_ok(value, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if d > limit:
            return False
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, d + 1) for x in v)
    return True


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_NUMBER_DIGITS:
        raise ValueError(f"a number has more than {MAX_NUMBER_DIGITS} digits")
    return int(text)


def _parse_float(text: str) -> float:
    if len(text) > MAX_NUMBER_DIGITS + 10:
        raise ValueError(f"a number has more than {MAX_NUMBER_DIGITS} digits")
    return float(text)


def json_problem(body: bytes) -> str | None:
    """What is wrong with a JSON body as a whole (None: it parses, within the limits)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        return f"not UTF-8 text (byte {e.start})"
    try:
        value = json.loads(text, parse_int=_parse_int, parse_float=_parse_float)
    except json.JSONDecodeError as e:
        return f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}"
    except ValueError as e:
        return str(e)
    except RecursionError:
        return f"nested deeper than {MAX_JSON_DEPTH} levels"
    if not _depth_ok(value, MAX_JSON_DEPTH):
        return f"nested deeper than {MAX_JSON_DEPTH} levels"
    return None


class RequestGuard:
    def __init__(self, app: ASGIApp, settings: Settings):
        self.app, self.settings = app, settings

    def _reads_open(self, scope: Scope) -> bool:
        """Explicit SIBNN_OPEN_READS wins; else open only on a loopback SIBNN_HOST and a request that arrived on a
        loopback address (``uvicorn --host 0.0.0.0`` without SIBNN_HOST still closes reads to the network)."""
        if self.settings.open_reads is not None:
            return self.settings.open_reads
        if not self.settings.reads_open:
            return False
        server = scope.get("server")
        try:
            return server is None or ipaddress.ip_address(server[0]).is_loopback
        except ValueError:  # a name, not an address (test clients): the setting decides
            return True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        method, path = scope["method"], scope["path"]
        write = method not in READ_METHODS
        if path not in OPEN_PATHS and (write or not self._reads_open(scope)):
            why = token_problem(self.settings, request.headers.get("authorization"), write)
            if why is not None:
                return await _problem(scope, send, 401, "Unauthorized", why, headers=CHALLENGE)
        if method in READ_METHODS:
            return await self.app(scope, receive, send)

        limit = self.settings.max_body_bytes
        too_big = f"the request body is larger than {limit} bytes (SIBNN_MAX_BODY_BYTES)"
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await _problem(scope, send, 413, "Content Too Large", too_big)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return await _problem(scope, send, 413, "Content Too Large", too_big)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if body:
            ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if not ctype:
                return await _problem(scope, send, 415, "Unsupported Media Type",
                                      "the request has a body but no Content-Type: send 'Content-Type: "
                                      "application/json'")
            if ctype == "application/json" or ctype.endswith("+json"):
                why = json_problem(body)
                if why is not None:
                    return await _problem(scope, send, 422, "Invalid request", f"body: {why}",
                                          errors=[{"field": "body", "message": why}])

        sent = False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _problem(scope: Scope, send: Send, status: int, title: str, detail: str, *, errors=None,
                   headers=()) -> None:
    doc = {"type": "about:blank", "title": title, "status": status, "detail": detail, "instance": scope["path"]}
    if errors is not None:
        doc["errors"] = errors
    payload = json.dumps(doc).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", PROBLEM_JSON.encode()), (b"content-length", str(len(payload)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": payload})
