"""Request dependencies: the shared context and the bearer token for everything that changes state."""
from __future__ import annotations

import secrets

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.experiments import Context
from service.problems import Problem

bearer = HTTPBearer(auto_error=False, description="SIBNN_API_TOKEN of the service")


def get_ctx(request: Request) -> Context:
    return request.app.state.ctx


def require_token(creds: HTTPAuthorizationCredentials | None = Depends(bearer),
                  ctx: Context = Depends(get_ctx)) -> None:
    challenge = {"WWW-Authenticate": 'Bearer realm="sibnn"'}
    expected = ctx.settings.api_token.get_secret_value() if ctx.settings.api_token else None
    if expected is None:
        raise Problem(401, "this service has no API token configured (SIBNN_API_TOKEN): requests that change "
                           "state are refused", headers=challenge)
    if creds is None or creds.scheme.lower() != "bearer":
        raise Problem(401, "missing bearer token: send 'Authorization: Bearer <SIBNN_API_TOKEN>'", headers=challenge)
    if not secrets.compare_digest(creds.credentials.encode(), expected.encode()):
        raise Problem(401, "invalid bearer token", headers=challenge)
