"""The service object: the served models, the one device lock, the pending count, and the
request checks every route shares.

Each model loads once, in a worker thread, at start-up (:class:`Slot` says loading / ready /
failed). Inference runs in worker threads one request at a time behind a fair (first come,
first served) async lock, so the event loop keeps answering and an upscale and a generation
never share the device.
"""
from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Callable

import anyio

from ..errors import InvalidParameterError
from ..validation import check_int
from .errors import ApiError
from .limits import ServerLimits

__all__ = ["Slot", "Service", "check_n", "check_canvas", "check_response_format", "not_served"]

log = logging.getLogger(__name__)


@dataclass
class Slot:
    """One served model: mutated only by its loader thread (once) and read by the event loop."""

    name: str
    kind: str  # "upscale" | "generate"
    status: str = "loading"  # loading | ready | failed
    model: Any = None
    error: str | None = None

    def load(self, loader: Callable[[], Any]) -> None:
        try:
            model = loader()
        except Exception as exc:  # reported by /health and every request, not a crash loop
            log.exception("loading %s failed", self.name)
            self.error, self.status = f"{type(exc).__name__}: {exc}", "failed"
            return
        self.model, self.status = model, "ready"

    def require_ready(self) -> None:
        if self.status == "ready":
            return
        if self.status == "failed":
            raise ApiError(503, "model_load_failed", f"the model {self.name} failed to load "
                           f"({self.error}); fix the cause and restart the server.")
        raise ApiError(503, "model_loading", f"the model {self.name} is still loading; retry in a "
                       "few seconds (GET /health says when it is ready).", {"Retry-After": "5"})


def check_n(n, limits: ServerLimits) -> int:
    return check_int(n, "n", 1, limits.max_n, hint="this server's --max-n")


def check_canvas(canvas: tuple[int, int], limits: ServerLimits, what: str, advice: str) -> None:
    """The server's one output-pixel rule: ``what`` (say, "a 64×48 input upscaled to 256×192")
    needs a ``canvas``; over ``--max-output-pixels`` it is refused with ``advice``."""
    pixels = canvas[0] * canvas[1]
    if pixels > limits.max_output_pixels:
        raise InvalidParameterError(
            f"{what} needs a {canvas[0]}×{canvas[1]} canvas ({pixels:,} pixels); this server "
            f"makes at most {limits.max_output_pixels:,} pixels (--max-output-pixels). {advice}")


def check_response_format(value: str | None) -> None:
    if value not in (None, "b64_json"):
        raise InvalidParameterError(f"response_format {value!r} is not supported; use 'b64_json' "
                                    "(the default): this server does not store images, so it "
                                    "cannot return URLs.")


def not_served(wanted: str, served: str, flag: str) -> ApiError:
    return ApiError(422, "model_not_served", f"this server serves {served!r}, not {wanted!r}; "
                    f"leave 'model' out or send model={served}, or start a server with "
                    f"{flag} {wanted}.", param="model")


class Service:
    """The models (``slots``), the device lock and the count of requests in flight."""

    def __init__(self, limits: ServerLimits, slots: dict[str, Slot],
                 loaders: dict[str, Callable[[], Any]]) -> None:
        self.limits, self.slots, self.loaders = limits, slots, loaders
        self.pending = 0
        self.device_lock: anyio.Lock | None = None

    @property
    def status(self) -> str:
        states = {s.status for s in self.slots.values()}
        return "failed" if "failed" in states else "loading" if "loading" in states else "ok"

    def load_all(self) -> None:
        """Load every model, one after the other (worker thread; never raises)."""
        for kind, slot in self.slots.items():
            slot.load(self.loaders[kind])

    @asynccontextmanager
    async def running(self):
        """For the app's lifespan: the lock, and the models loading in the background."""
        self.device_lock = anyio.Lock()
        async with anyio.create_task_group() as tg:
            # abandon_on_cancel: shutting down mid-load must not wait for the weights
            tg.start_soon(lambda: anyio.to_thread.run_sync(self.load_all, abandon_on_cancel=True))
            yield
            tg.cancel_scope.cancel()

    @asynccontextmanager
    async def admitted(self, kind: str):
        """Count one request in flight (503 when the model is not ready or too many are)."""
        self.slots[kind].require_ready()
        if self.pending >= self.limits.max_pending:
            raise ApiError(503, "server_busy", f"{self.pending} requests are already in flight; "
                           "retry shortly.", {"Retry-After": "2"})
        self.pending += 1
        try:
            yield
        finally:
            self.pending -= 1

    async def on_device(self, fn: Callable, *args):
        """Run ``fn(*args)`` in a worker thread while holding the device (first come, first
        served)."""
        async with self.device_lock:
            return await anyio.to_thread.run_sync(fn, *args)

    @staticmethod
    async def in_thread(fn: Callable, *args):
        return await anyio.to_thread.run_sync(fn, *args)
