"""A small HTTP client of the API (the ``sibnn`` command and ``bench/api.py`` use it).

Every answer is parsed with the models the routes declare (``service.schemas``): an answer that does not match
them is an ``ApiError`` naming the path and the field, not a ``KeyError`` later. The methods return the parsed
answer as plain JSON data (``model_dump``), the keys the API sent that this client knows.

A newer server may add fields: the client reads its answers (``extra="allow"`` at validation, where the server's
models forbid extras). A field the client's models do not name is dropped from fixed-shape objects, and kept in the
open ones (result and trial rows, whose columns come from MLflow), as the server's models serialise them.

Where the API is: ``SIBNN_API_URL`` and ``SIBNN_API_TOKEN``, else the ``stack.json`` that ``sibnn up`` writes in
``SIBNN_HOME`` (~/.sibnn), else http://127.0.0.1:8000.
"""
from __future__ import annotations

import os
from pathlib import Path

import httpx
from pydantic import BaseModel, ValidationError

from console.stack import StackInfo
from service import schemas


# The answers' unknown fields: accepted (an older client against a newer server), not an "Unexpected answer".
ANSWER_EXTRA = "allow"


class ApiError(RuntimeError):
    def __init__(self, status: int, problem: dict):
        self.status, self.problem = status, problem
        detail = problem.get("detail") or problem.get("title") or f"HTTP {status}"
        super().__init__(f"{status} {problem.get('title', '')}: {detail}".strip())


def home() -> Path:
    return Path(os.environ.get("SIBNN_HOME", Path.home() / ".sibnn")).expanduser()


def locate(url: str | None = None, token: str | None = None) -> tuple[str, str | None]:
    info = StackInfo.read(home())
    url = url or os.environ.get("SIBNN_API_URL") or (info.api_url if info else "http://127.0.0.1:8000")
    token = token or os.environ.get("SIBNN_API_TOKEN") or (info.api_token if info else None)
    return url.rstrip("/"), token


class Api:
    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 30.0):
        self.url, self.token = locate(url, token)
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def _check(self, r: httpx.Response):
        if r.status_code >= 400:
            try:
                problem = r.json()
            except ValueError:
                problem = {"detail": r.text[:500]}
            if not isinstance(problem, dict):
                problem = {"detail": str(problem)}
            try:  # RFC 9457 problem details as the API documents them; anything else is kept as it came
                problem = schemas.Problem.model_validate(problem, extra=ANSWER_EXTRA).model_dump(
                    mode="json", exclude_unset=True)
            except ValidationError:
                pass
            raise ApiError(r.status_code, problem)
        return r

    def _parse(self, model: type[BaseModel], r: httpx.Response) -> dict:
        try:
            parsed = model.model_validate_json(r.content, extra=ANSWER_EXTRA)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            raise ApiError(502, {"title": "Unexpected answer",
                                 "detail": f"{r.request.method} {r.request.url.path}: the answer does not match the "
                                           f"API's {model.__name__} schema at {where}: {first['msg']} (client and "
                                           "server versions differ?)"}) from None
        return parsed.model_dump(mode="json", exclude_unset=True)

    def request(self, method: str, path: str, **kw) -> httpx.Response:
        try:
            return self._check(self.http.request(method, path, **kw))
        except httpx.ConnectError:
            raise ApiError(503, {"title": "API unreachable",
                                 "detail": f"no API at {self.url} (start it with `sibnn up`, or set SIBNN_API_URL)"}
                           ) from None

    def submit(self, spec: dict, idempotency_key: str | None = None) -> dict:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._parse(schemas.Experiment, self.request("POST", "/experiments", json=spec, headers=headers))

    def get(self, exp_id: str) -> dict:
        return self._parse(schemas.ExperimentDetail, self.request("GET", f"/experiments/{exp_id}"))

    def list(self, status: str | None = None, limit: int = 50) -> dict:
        params = {"limit": limit, **({"status": status} if status else {})}
        return self._parse(schemas.ExperimentPage, self.request("GET", "/experiments", params=params))

    def cancel(self, exp_id: str) -> dict:
        return self._parse(schemas.Experiment, self.request("DELETE", f"/experiments/{exp_id}"))

    def results(self, exp_id: str) -> dict:
        return self._parse(schemas.Results, self.request("GET", f"/experiments/{exp_id}/results"))

    def logs(self, exp_id: str, tail: int = 200) -> str:
        return self.request("GET", f"/experiments/{exp_id}/logs", params={"tail": tail}).text

    def follow_logs(self, exp_id: str, tail: int = 200):
        with self.http.stream("GET", f"/experiments/{exp_id}/logs", params={"tail": tail, "follow": True},
                              timeout=None) as r:
            self._check(r)
            yield from r.iter_text()

    def table(self, name: str, experiment_ids: list[str] | None = None) -> dict:
        model = TABLES.get(name)
        r = self.request("GET", f"/tables/{name}", params={"experiment_id": experiment_ids or []})
        return self._parse(model, r) if model else r.json()

    def ready(self) -> dict:
        r = self.http.get("/readyz")
        if r.status_code in (200, 503):  # 503: ready is false, each check says why
            return self._parse(schemas.Readiness, r)
        self._check(r)
        return r.json()


TABLES: dict[str, type[BaseModel]] = {"rho-ablation": schemas.RhoAblationTable,
                                      "paper-comparison": schemas.PaperComparisonTable}
