"""Request dependencies as ``Annotated`` types: the shared context (``CtxDep``) and the bearer token that
everything changing state needs (``require_token``, used as ``dependencies=[Depends(require_token)]``)."""
from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.experiments import Context
from service.guard import token_problem
from service.problems import Problem

bearer = HTTPBearer(auto_error=False, description="SIBNN_API_TOKEN of the service")


def get_ctx(request: Request) -> Context:
    return request.app.state.ctx


CtxDep = Annotated[Context, Depends(get_ctx)]
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def require_token(creds: BearerDep, ctx: CtxDep) -> None:
    # RequestGuard has already refused a bad token before the body was read; this repeats the check (a route
    # mounted without the guard stays closed) and declares the scheme in the OpenAPI document.
    header = f"{creds.scheme} {creds.credentials}" if creds is not None else None
    why = token_problem(ctx.settings, header, write=True)
    if why is not None:
        raise Problem(401, why, headers={"WWW-Authenticate": 'Bearer realm="sibnn"'})


WRITE = Depends(require_token)  # a route's ``dependencies=[WRITE]``: the token is checked, its value unused
