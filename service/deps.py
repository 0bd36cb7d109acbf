"""Request dependencies as ``Annotated`` types: the shared context (``CtxDep``), the bearer token that
everything changing state needs (``WRITE``: ``require_token``), and the bearer scheme declared on reads
(``READ_AUTH``)."""
from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.experiments import Context
from service.guard import token_problem
from service.problems import ProblemError

bearer = HTTPBearer(auto_error=False, description="SIBNN_API_TOKEN (everything) or SIBNN_READ_TOKEN (reads); reads "
                                                  "need none where they are open (a loopback SIBNN_HOST)")


# Both are ``async def``: they never block, and FastAPI runs a plain ``def`` dependency in its thread pool, a thread
# hop each per request (under a burst of POSTs those hops were a measurable share of the latency).
async def get_ctx(request: Request) -> Context:
    return request.app.state.ctx


CtxDep = Annotated[Context, Depends(get_ctx)]
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


async def require_token(creds: BearerDep, ctx: CtxDep) -> None:
    # RequestGuard has already refused a bad token before the body was read; this repeats the check (a route
    # mounted without the guard stays closed) and declares the scheme in the OpenAPI document.
    header = f"{creds.scheme} {creds.credentials}" if creds is not None else None
    why = token_problem(ctx.settings, header, write=True)
    if why is not None:
        raise ProblemError(401, why, headers={"WWW-Authenticate": 'Bearer realm="sibnn"'})


WRITE = Depends(require_token)  # a route's ``dependencies=[WRITE]``: the token is checked, its value unused

# A read route's ``dependencies=[READ_AUTH]``: declares the bearer scheme in the OpenAPI document, so the /docs page's
# "Authorize" sends the token where reads are closed. The credentials are optional here and not checked: who may
# read (open reads, the read token, the API token) is RequestGuard's decision, made before any route runs.
READ_AUTH = Depends(bearer)
