"""The Ray job client: submit an experiment's ``jobs.run`` entrypoint, read its status and logs, stop it.

Ray 2.60 clusters run with token authentication; the service sends the cluster's token as a bearer header on
every request (``JobSubmissionClient(headers=...)``), so it works whatever ``RAY_AUTH_MODE`` says in this process.
Everything here blocks (HTTP through ``requests``): call it from sync endpoints or a worker thread, never from
``async def``.

A Ray head that accepts connections and never answers must not take the API with it (Ray's client has no timeout):
every call runs in a bounded pool (``service.calls.CallGate``, ``SIBNN_RAY_MAX_CALLS`` slots; a call finding them
all taken is refused at once), is waited for at most ``SIBNN_RAY_TIMEOUT_S``, and each HTTP request under it has
that timeout too, so a hung call gives its slot back. The client is made outside any lock: no request waits on
another's connection attempt. Each failure is a RayUnavailable naming the address (503).
"""
from __future__ import annotations

import base64
import concurrent.futures
import functools
import os
import re
import shlex
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import requests

from jobs.spec import ExperimentSpec
from service.calls import CallGate
from service.errors import DependencyUnavailable
from service.settings import Settings


ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-_]")
REASON_CHARS = 1000


def clean_message(text: str | None, limit: int = REASON_CHARS) -> str | None:
    """A Ray message fit for a status answer: no terminal colour codes, at most ``limit`` characters (the end,
    where the error is); the full driver log stays at ``/experiments/{id}/logs``."""
    if text is None:
        return None
    text = ANSI.sub("", text).strip()
    return text if len(text) <= limit else "…" + text[-(limit - 1):]


class RayUnavailable(DependencyUnavailable):
    """The Ray cluster cannot be reached or refuses the token; the message names the address."""


class JobNotFound(LookupError):
    pass


class JobAlreadyExists(RuntimeError):
    pass


@dataclass(frozen=True)
class JobState:
    submission_id: str
    status: str          # PENDING | RUNNING | STOPPED | SUCCEEDED | FAILED
    message: str | None
    job_id: str | None
    exit_code: int | None

    @property
    def terminal(self) -> bool:
        return self.status in ("STOPPED", "SUCCEEDED", "FAILED")


def entrypoint(settings: Settings, spec: ExperimentSpec, experiment_id: str) -> str:
    """The job's command line. The spec travels base64-encoded: no shell quoting can break it."""
    b64 = base64.b64encode(spec.model_dump_json().encode()).decode()
    return (f"{shlex.quote(settings.job_python)} -m jobs.run --spec-b64 {b64} "
            f"--experiment-id {shlex.quote(experiment_id)}")


def runtime_env(settings: Settings, experiment_id: str) -> dict:
    return {"env_vars": {
        "MLFLOW_TRACKING_URI": settings.job_mlflow_tracking_uri or settings.mlflow_tracking_uri,
        "SIBNN_STORAGE_PATH": str(settings.runs_path),
        "SIBNN_DATA_ROOTS": os.pathsep.join(map(str, settings.data_root_paths)),
        "SIBNN_EXPERIMENT_ID": experiment_id,
        "PYTHONPATH": settings.job_pythonpath,
        "PYTHONUNBUFFERED": "1",
    }}


@functools.cache
def _client_class():
    """Ray's ``JobSubmissionClient`` with a timeout on each of its HTTP requests (it sets none: a head that never
    answers would hold the calling thread for good). Built on first use: importing Ray costs seconds, and only the
    routes that talk to Ray need it. ``_do_request`` is where Ray 2.60's client sends every request;
    tests/service/test_review_faults.py fails if a Ray upgrade stops it timing out."""
    from ray.job_submission import JobSubmissionClient

    class TimedJobSubmissionClient(JobSubmissionClient):
        def __init__(self, address: str, *, timeout: float, **kwargs):
            self._request_timeout = timeout  # set first: the constructor already asks Ray for its version
            super().__init__(address, **kwargs)

        def _do_request(self, method, endpoint, **kwargs):
            kwargs.setdefault("timeout", self._request_timeout)
            return super()._do_request(method, endpoint, **kwargs)

    return TimedJobSubmissionClient


class RayJobs:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.address = settings.ray_address.rstrip("/")
        self.timeout = settings.ray_timeout_s
        self.gate = CallGate(settings.ray_max_calls, "ray")
        self._client = None
        self._lock = threading.Lock()  # guards only the swap of ``_client``: never held while Ray is asked

    @property
    def headers(self) -> dict:
        token = self.settings.ray_token
        return {"Authorization": f"Bearer {token}"} if token else {}

    def _get(self):
        """The client, made on first use (its constructor asks Ray for its version). Two threads may both make one
        while none exists; one is kept. Runs inside a gated call (``_call``)."""
        with self._lock:
            client = self._client
        if client is not None:
            return client
        make = _client_class()  # outside the try: a Ray install without its job client is a bug, not a Ray down
        try:
            client = make(self.address, headers=self.headers, timeout=self.timeout)
        except Exception as e:  # noqa: BLE001 - connection refused, auth, version, timeout: one message
            raise RayUnavailable(self._explain(e)) from None
        with self._lock:
            self._client = self._client or client
            return self._client

    def _forget(self) -> None:
        with self._lock:
            self._client = None  # reconnect next time (the head may have restarted)

    def _explain(self, e: Exception) -> str:
        text = str(e)
        if isinstance(e, (requests.exceptions.Timeout, httpx.TimeoutException)) or "timed out" in text.lower():
            return self._no_answer()
        if "401" in text or "Authentication required" in text:
            return f"Ray at {self.address} requires a token: set SIBNN_RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN)"
        if "403" in text or "Authentication failed" in text:
            return f"Ray at {self.address} rejected the token (SIBNN_RAY_AUTH_TOKEN)"
        first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
        return f"Ray at {self.address} is unreachable: {first[:300]}"

    def _no_answer(self) -> str:
        return f"Ray at {self.address} did not answer within {self.timeout:g} s (timeout; SIBNN_RAY_TIMEOUT_S)"

    def _gated(self, fn):
        """``fn()`` in the Ray pool, waited for at most ``timeout``: refused at once when every slot is taken."""
        future = self.gate.submit(fn)
        if future is None:
            raise RayUnavailable(f"Ray at {self.address} is not answering: {self.settings.ray_max_calls} calls "
                                 f"already waiting for it (SIBNN_RAY_MAX_CALLS)")
        try:
            return future.result(timeout=self.timeout)
        except concurrent.futures.TimeoutError:
            self._forget()
            raise RayUnavailable(self._no_answer()) from None

    def _call(self, fn, *args, **kwargs):
        return self._gated(lambda: self._ask(fn, *args, **kwargs))

    def _ask(self, fn, *args, **kwargs):
        client = self._get()
        try:
            return fn(client, *args, **kwargs)
        except (JobNotFound, JobAlreadyExists):
            raise
        except Exception as e:  # noqa: BLE001
            text = str(e)
            if "does not exist" in text or "404" in text.split("\n", 1)[0]:
                raise JobNotFound(text.splitlines()[0] if text else "not found") from None
            if "already exists" in text:
                raise JobAlreadyExists(text.strip().splitlines()[-1]) from None
            self._forget()
            raise RayUnavailable(self._explain(e)) from None

    def submit(self, spec: ExperimentSpec, experiment_id: str, submission_id: str) -> None:
        """Submit; a submission id Ray already knows is not an error (the same attempt, submitted before)."""
        try:
            self._call(lambda c: c.submit_job(entrypoint=entrypoint(self.settings, spec, experiment_id),
                                              submission_id=submission_id,
                                              runtime_env=runtime_env(self.settings, experiment_id),
                                              metadata={"sibnn.experiment_id": experiment_id}))
        except JobAlreadyExists:
            pass

    def state(self, submission_id: str) -> JobState:
        info = self._call(lambda c: c.get_job_info(submission_id))
        return JobState(submission_id, str(getattr(info.status, "value", info.status)), info.message, info.job_id,
                        getattr(info, "driver_exit_code", None))

    def stop(self, submission_id: str) -> bool:
        return bool(self._call(lambda c: c.stop_job(submission_id)))

    def logs(self, submission_id: str) -> str:
        return self._call(lambda c: c.get_job_logs(submission_id))

    async def follow(self, submission_id: str, skip: int = 0) -> AsyncIterator[str]:
        """The job's log as the driver writes it, through Ray's ``tail_job_logs`` websocket: each line is sent
        once, however long the log grows (no re-download). The first ``skip`` characters (what a ``logs`` call
        already returned) are dropped. Ends when the job has ended and its log is drained; a lost connection
        raises RayUnavailable."""
        import anyio

        client = await anyio.to_thread.run_sync(self._call, lambda c: c)  # connecting is gated and bounded too
        try:
            async for chunk in client.tail_job_logs(submission_id):
                if skip >= len(chunk):
                    skip -= len(chunk)
                    continue
                yield chunk[skip:]
                skip = 0
        except Exception as e:  # noqa: BLE001 - RuntimeError (job gone, socket closed), aiohttp errors
            if "does not exist" in str(e):
                raise JobNotFound(str(e).splitlines()[0]) from None
            self._forget()
            raise RayUnavailable(self._explain(e)) from None

    def ping(self) -> str:
        """The cluster's Ray version; raises RayUnavailable naming the address and what is wrong. Gated like every
        Ray call: readiness probes of a hung Ray hold at most ``SIBNN_RAY_MAX_CALLS`` threads."""
        return self._gated(self._version)

    def _version(self) -> str:
        try:
            r = httpx.get(f"{self.address}/api/version", headers=self.headers, timeout=self.timeout)
        except httpx.TimeoutException:
            raise RayUnavailable(self._no_answer()) from None
        except httpx.HTTPError as e:
            raise RayUnavailable(f"Ray at {self.address} is unreachable: {e}") from None
        if r.status_code == 401:
            raise RayUnavailable(f"Ray at {self.address} requires a token: set SIBNN_RAY_AUTH_TOKEN")
        if r.status_code == 403:
            raise RayUnavailable(f"Ray at {self.address} rejected the token (SIBNN_RAY_AUTH_TOKEN)")
        if r.status_code != 200:
            raise RayUnavailable(f"Ray at {self.address} answered {r.status_code}")
        return r.json().get("ray_version", "?")
