"""Calls to a dependency that may hang (MLflow, Ray): a bounded pool that refuses work instead of queueing it.

A hung dependency holds at most ``slots`` threads; the next call is refused at once (the caller answers 503), so the
routes that need only the database, and the reconciler, keep their threads."""
from __future__ import annotations

import concurrent.futures
import threading


class CallGate:
    """A bounded thread pool that refuses work instead of queueing it when every slot is taken."""

    def __init__(self, slots: int, name: str):
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=slots, thread_name_prefix=name)
        self.slots = threading.BoundedSemaphore(slots)

    def submit(self, fn) -> concurrent.futures.Future | None:
        if not self.slots.acquire(blocking=False):
            return None
        try:
            future = self.pool.submit(fn)
        except BaseException:
            self.slots.release()
            raise
        future.add_done_callback(lambda _: self.slots.release())
        return future
