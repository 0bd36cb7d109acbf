"""Request dependencies: the shared context and the bearer token for everything that changes state."""
from __future__ import annotations

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.experiments import Context
from service.guard import token_problem
from service.problems import Problem

bearer = HTTPBearer(auto_error=False, description="SIBNN_API_TOKEN of the service")


def get_ctx(request: Request) -> Context:
    return request.app.state.ctx


def require_token(creds: HTTPAuthorizationCredentials | None = Depends(bearer),
                  ctx: Context = Depends(get_ctx)) -> None:
    # RequestGuard has already refused a bad token before the body was read; this repeats the check (a route
    # mounted without the guard stays closed) and declares the scheme in the OpenAPI document.
    header = f"{creds.scheme} {creds.credentials}" if creds is not None else None
    why = token_problem(ctx.settings, header, write=True)
    if why is not None:
        raise Problem(401, why, headers={"WWW-Authenticate": 'Bearer realm="sibnn"'})
