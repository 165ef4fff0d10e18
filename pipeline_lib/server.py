"""HTTP upscaling service: ``POST /v1/images/upscale`` (multipart) → JSON with base64 PNGs.

One model per process, loaded once at start-up in a worker thread (``/health`` answers 503
"loading" meanwhile). Inference runs in worker threads, one at a time behind an async lock, so
the event loop keeps answering and concurrent requests never share the GPU. Every limit
(:class:`ServerLimits`) is checked before any inference; errors are JSON
``{"error": {"message": ..., "type": ...}}``.

>>> from pipeline_lib.server import create_app, ServerLimits
>>> app = create_app("realesr-animevideov3", device="cpu", limits=ServerLimits(max_n=2))  # doctest: +SKIP
>>> serve(port=8997)   # blocks; Ctrl-C stops it                                     # doctest: +SKIP
"""
from __future__ import annotations

import base64
import logging
import math
import os
import random
import shutil
import tempfile
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, fields
from typing import Any

import anyio
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .errors import (ImageReadError, ImageTooLargeError, InvalidParameterError, PipelineError,
                     TileOutOfMemoryError, UnknownModelError)
from .images import encode_image, read_image
from .upscale import (DEFAULT_UPSCALER, choose_backend, resolve_model, list_upscalers,
                      load_upscaler, upscale)
from .upscale.backends import run_options
from .upscale.registry import MODELS, ModelSpec
from .upscale.sizing import check_scale, parse_size, target_size, working_canvas
from .upscale.tiling import check_tiling

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "ServerLimits", "create_app", "serve"]

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8997
_MB = 1024 * 1024
_ENV = "PIPELINE_LIB_SERVER_"


@dataclass(frozen=True)
class ServerLimits:
    """What one request may ask for; anything past these is refused before inference.

    ``max_output_pixels`` bounds the largest canvas the model produces (a ×4 model asked for ×2
    works at ×4 then shrinks, so that canvas counts). ``max_pending`` bounds requests in flight
    (waiting or running); more get 503 "busy" instead of piling up memory.
    Environment overrides: ``PIPELINE_LIB_SERVER_MAX_UPLOAD_BYTES`` etc. (field name upper-cased).

    >>> ServerLimits(max_n=2).max_n
    2
    """

    max_upload_bytes: int = 20 * _MB
    max_input_pixels: int = 2048 * 2048
    max_output_pixels: int = 4096 * 4096
    max_n: int = 4
    max_pending: int = 32

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidParameterError(f"ServerLimits.{f.name} must be a positive integer, "
                                            f"got {value!r}.")

    @classmethod
    def from_env(cls, **overrides: int | None) -> "ServerLimits":
        """Defaults, then ``PIPELINE_LIB_SERVER_<FIELD>`` variables, then non-None ``overrides``."""
        values: dict[str, int] = {}
        for f in fields(cls):
            raw = os.environ.get(_ENV + f.name.upper())
            if raw is not None:
                try:
                    values[f.name] = int(raw)
                except ValueError:
                    raise InvalidParameterError(f"{_ENV}{f.name.upper()}={raw!r} is not an "
                                                "integer.") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


class _ApiError(Exception):
    """An error with an HTTP status and a machine-readable type, rendered as the JSON error shape."""

    def __init__(self, status: int, type_: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.type, self.message, self.headers = status, type_, message, headers


class _UploadTooLarge(StarletteHTTPException):
    # An HTTPException so FastAPI re-raises it untouched from body parsing (anything else it
    # turns into a generic 400 "error parsing the body").
    def __init__(self, detail: str) -> None:
        super().__init__(status_code=413, detail=detail)


def _error_body(type_: str, message: str) -> dict:
    return {"error": {"message": message, "type": type_}}


def _too_large_message(size: int | None, limit: int) -> str:
    got = f"the upload is {size:,} bytes" if size is not None else "the upload is too large"
    return (f"{got}; this server accepts request bodies of at most {limit:,} bytes "
            f"({limit / _MB:.1f} MB). Send a smaller image (e.g. PNG→JPEG, or downscale it) or "
            "start the server with a larger --max-upload-mb.")


class _BodyLimit:
    """ASGI middleware: refuse request bodies over ``limit`` bytes.

    Checks Content-Length before the app runs (so nothing is read or parsed), and counts the
    bytes actually received, which also covers chunked uploads and lying headers. Hand-written
    rather than FastAPI's ``max_body_size`` because that answers in plain text, and only exists
    in very recent FastAPI versions.
    """

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = None
        for key, value in scope.get("headers", ()):
            if key == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    length = None
        if length is not None and length > self.limit:
            return await self._refuse(scope, receive, send, length)
        received = 0

        async def counting_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _UploadTooLarge(_too_large_message(None, self.limit))
            return message

        started = False

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _UploadTooLarge:
            if started:
                raise
            await self._refuse(scope, receive, send, None)

    async def _refuse(self, scope, receive, send, length: int | None) -> None:
        response = JSONResponse(_error_body("upload_too_large", _too_large_message(length, self.limit)),
                                status_code=413, headers={"Connection": "close"})
        await response(scope, receive, send)


@dataclass
class _State:
    """What the app knows about its one model (mutated only by the loader and the event loop)."""

    name: str
    status: str = "loading"  # loading | ready | failed
    upscaler: Any = None
    error: str | None = None
    pending: int = 0
    gpu_lock: Any = None


@dataclass
class _Job:
    """One validated request, ready for the worker thread."""

    n: int
    scale: float | None
    size: Any
    prompt: str
    guidance_scale: float | None
    seed: int | None
    seeds: list[int] = field(default_factory=list)  # per image, filled for sampling upscalers


def create_app(model: str = DEFAULT_UPSCALER, device: str | None = None,
               limits: ServerLimits | None = None, *, dtype: str | None = None,
               backend: str = "auto", **upscale_opts) -> FastAPI:
    """Build the FastAPI app serving one upscaler (loaded at start-up, once).

    ``limits=None`` reads :meth:`ServerLimits.from_env`. ``upscale_opts`` go to
    :func:`~pipeline_lib.upscale` on every request (``tile=``, ``overlap=``...). An unknown
    ``model`` raises :class:`UnknownModelError` here, before any server starts.

    >>> from fastapi.testclient import TestClient                            # doctest: +SKIP
    >>> with TestClient(create_app("realesr-animevideov3", device="cpu")) as client:  # doctest: +SKIP
    ...     client.get("/health").json()["status"]      # the model loads in the background
    'loading'
    """
    limits = limits or ServerLimits.from_env()
    target = resolve_model(model)  # fail fast on typos, not minutes later in a log
    chosen = choose_backend(target, backend)
    served = target.name if isinstance(target, ModelSpec) else str(model)
    # tiling and a diffusion upscaler's per-call settings (steps, noise_level...) go to every
    # upscale() call; the rest are load options
    per_call = {"tile", "overlap", *run_options(chosen)}
    per_request = {k: upscale_opts.pop(k) for k in list(upscale_opts) if k in per_call}
    # Bad settings fail here, at start-up, not on every request (or in a background load).
    check_tiling(per_request.get("tile"), per_request.get("overlap"))
    if chosen == "torch":
        from .devices import resolve_device, resolve_dtype

        resolve_dtype(dtype)
        if device is not None:
            resolve_device(device)
    state = _State(name=served)

    def load() -> None:
        try:
            up = load_upscaler(served, device, dtype, backend=chosen, progress=False, **upscale_opts)
        except Exception as exc:  # reported by /health and every request, not a crash loop
            log.exception("loading %s failed", served)
            state.error, state.status = f"{type(exc).__name__}: {exc}", "failed"
            return
        state.upscaler, state.status = up, "ready"
        log.info("serving %s on %s (%s)", up.name, up.device, up.dtype)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.gpu_lock = anyio.Lock()
        async with anyio.create_task_group() as tg:
            # abandon_on_cancel: shutting down mid-load must not wait for the weights
            tg.start_soon(lambda: anyio.to_thread.run_sync(load, abandon_on_cancel=True))
            yield
            tg.cancel_scope.cancel()

    app = FastAPI(title="pipeline_lib upscaler", lifespan=lifespan,
                  description="Self-hosted image upscaling (Real-ESRGAN and friends).")
    app.state.pipeline = state
    app.state.limits = limits
    app.add_middleware(_BodyLimit, limit=limits.max_upload_bytes)
    _install_error_handlers(app)

    def not_ready() -> _ApiError:
        if state.status == "failed":
            return _ApiError(503, "model_load_failed", f"the model {served} failed to load "
                             f"({state.error}); fix the cause and restart the server.")
        return _ApiError(503, "model_loading", f"the model {served} is still loading; retry "
                         "in a few seconds (GET /health says when it is ready).",
                         {"Retry-After": "5"})

    def validate(n: int, guidance_scale: float | None, model_field: str | None, scale: float | None,
                 size: str | None, response_format: str) -> tuple[float | None, Any]:
        if not 1 <= n <= limits.max_n:
            raise InvalidParameterError(f"n must be between 1 and {limits.max_n}, got {n}.")
        if guidance_scale is not None and not (math.isfinite(guidance_scale) and guidance_scale >= 0):
            raise InvalidParameterError(f"guidance_scale must be a finite number ≥ 0, got "
                                        f"{guidance_scale!r}.")
        if response_format != "b64_json":
            raise InvalidParameterError(f"response_format {response_format!r} is not supported; "
                                        "use 'b64_json' (the default): this server does not "
                                        "store images, so it cannot return URLs.")
        if model_field and model_field.strip():
            wanted = model_field.strip()
            if wanted.lower() != served.lower() and wanted != str(model):
                if wanted.lower() in MODELS:
                    raise _ApiError(422, "model_not_served",
                                    f"this server serves {served!r}, not {wanted!r}; leave "
                                    f"'model' out or send model={served}, or start a server "
                                    f"with --model {wanted.lower()}.")
                from .upscale.registry import get_spec

                get_spec(wanted)  # raises UnknownModelError with suggestions
        if scale is not None and size:
            raise InvalidParameterError("give either scale or size, not both.")
        return (check_scale(scale) if scale is not None else None,
                parse_size(size) if size else None)

    def prepare(upload: UploadFile) -> tuple[Any, Any]:
        # Through a temp file so read_image applies EXIF, keeps 16-bit PNGs and checks the pixel
        # count from the header before decoding (decompression bombs never reach memory).
        fd, tmp = tempfile.mkstemp(prefix="pipeline_lib_upload_")
        try:
            with os.fdopen(fd, "wb") as f:
                upload.file.seek(0)
                shutil.copyfileobj(upload.file, f)
            try:
                return read_image(tmp, max_pixels=limits.max_input_pixels)
            except ImageReadError as exc:
                label = f"uploaded file {upload.filename!r}" if upload.filename else "uploaded file"
                raise type(exc)(str(exc).replace(tmp, label)) from None
        finally:
            os.unlink(tmp)

    def check_output(w: int, h: int, job: _Job) -> tuple[int, int]:
        up = state.upscaler
        out = target_size(w, h, scale=job.scale, size=job.size,
                          default_scale=up.default_scale or up.scale)
        canvas = working_canvas(w, h, out, up.scale)
        if canvas[0] * canvas[1] > limits.max_output_pixels:
            raise InvalidParameterError(
                f"a {w}×{h} input upscaled to {out[0]}×{out[1]} needs a {canvas[0]}×{canvas[1]} "
                f"canvas ({canvas[0] * canvas[1]:,} pixels); this server allows at most "
                f"{limits.max_output_pixels:,}. Ask for a smaller scale/size, send a smaller "
                "image, or start the server with a larger --max-output-pixels.")
        return out

    def infer(arr, job: _Job):
        with_tile = {"backend": chosen, "device": device, "dtype": dtype, "progress": False,
                     "full_result": True, **per_request, **upscale_opts}
        if "prompt" in state.upscaler.run_options:
            # Diffusion upscalers sample: the prompt steers them and image i uses seed + i, so
            # n requests give n different, individually reproducible results.
            base = job.seed if job.seed is not None else random.randrange(2**32 - job.n)
            job.seeds = [base + i for i in range(job.n)]
            with_tile["prompt"] = job.prompt
            if job.guidance_scale is not None:
                with_tile["guidance"] = job.guidance_scale
            return [upscale(arr, served, scale=job.scale, size=job.size, seed=s, **with_tile)
                    for s in job.seeds]
        # The GAN/regression upscalers are deterministic: n copies of one result, computed once.
        return [upscale(arr, served, scale=job.scale, size=job.size, **with_tile)]

    def encode(results, meta, job: _Job) -> list[str]:
        extra = {k: str(v) for k, v in (("upscale_prompt", job.prompt),
                                        ("upscale_guidance_scale", job.guidance_scale),
                                        ("upscale_seed", job.seed)) if v not in (None, "")}
        out = []
        for i, res in enumerate(results):
            res.source_metadata = dict(meta.info)
            seed = {"upscale_seed": str(job.seeds[i])} if job.seeds else {}
            png = encode_image(res.image, "PNG", {**res.as_metadata(), **extra, **seed})
            out.append(base64.b64encode(png).decode("ascii"))
        return (out * job.n)[:job.n] if len(out) == 1 else out

    @app.post("/v1/images/upscale", summary="Upscale one image; returns n base64 PNGs")
    async def upscale_image(
        image: UploadFile = File(..., description="the image file (PNG, JPEG, WebP, TIFF, BMP)"),
        prompt: str = Form("", description="used by diffusion upscalers; recorded otherwise"),
        n: int = Form(1, description=f"number of images, 1–{limits.max_n}"),
        guidance_scale: float | None = Form(None, description="diffusion upscalers only"),
        model: str | None = Form(None, description="must be the model this server serves"),
        scale: float | None = Form(None, description="output factor (default: the model's)"),
        size: str | None = Form(None, description="'N' (long side) or 'WxH'"),
        seed: int | None = Form(None, description="diffusion upscalers only"),
        response_format: str = Form("b64_json", description="only 'b64_json'"),
    ) -> JSONResponse:
        scale_v, size_v = validate(n, guidance_scale, model, scale, size, response_format)
        if state.status != "ready":
            raise not_ready()
        if state.pending >= limits.max_pending:
            raise _ApiError(503, "server_busy", f"{state.pending} requests are already in "
                            "flight; retry shortly.", {"Retry-After": "2"})
        job = _Job(n, scale_v, size_v, prompt, guidance_scale, seed)
        state.pending += 1
        try:
            arr, meta = await anyio.to_thread.run_sync(prepare, image)
            h, w = arr.shape[:2]
            check_output(w, h, job)
            t0 = time.perf_counter()
            async with state.gpu_lock:
                results = await anyio.to_thread.run_sync(infer, arr, job)
            del arr
            data = await anyio.to_thread.run_sync(encode, results, meta, job)
        finally:
            state.pending -= 1
        log.info("upscaled %s %dx%d → %dx%d, n=%d, %.2fs (prompt=%r)", image.filename, w, h,
                 *results[0].size, n, time.perf_counter() - t0, prompt)
        return JSONResponse({"created": int(time.time()),
                             "data": [{"b64_json": s} for s in data]})

    @app.get("/health", summary="Is the model loaded, and on which device")
    async def health() -> JSONResponse:
        up = state.upscaler
        body = {"status": {"ready": "ok"}.get(state.status, state.status), "model": served,
                "loaded": up is not None, "device": up.device if up else (device or "auto"),
                "backend": up.backend if up else chosen, "dtype": up.dtype if up else dtype,
                "pending": state.pending}
        if state.error:
            body["error"] = state.error
        return JSONResponse(body, status_code=200 if up is not None else 503)

    @app.get("/v1/models", summary="The upscaler this server serves, and the registry")
    async def models() -> JSONResponse:
        up = state.upscaler
        rows = {r["name"]: r for r in list_upscalers()}
        row = {**rows.get(served, {"name": served}), "id": served, "object": "model",
               "owned_by": "pipeline_lib", "ready": up is not None,
               "device": up.device if up else None, "backend": up.backend if up else chosen}
        return JSONResponse({"object": "list", "data": [row],
                             "available": sorted(n for n in rows if n != served),
                             "note": "one model per server; start another with --model NAME "
                                     "to serve one of 'available'."})

    return app


_STATUS_TYPES = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed",
                 413: "upload_too_large", 415: "unsupported_media_type"}


def _install_error_handlers(app: FastAPI) -> None:
    def respond(status: int, type_: str, message: str, headers=None) -> JSONResponse:
        return JSONResponse(_error_body(type_, message), status_code=status, headers=headers)

    @app.exception_handler(_ApiError)
    async def api_error(_: Request, exc: _ApiError):
        return respond(exc.status, exc.type, exc.message, exc.headers)

    @app.exception_handler(PipelineError)
    async def pipeline_error(_: Request, exc: PipelineError):
        if isinstance(exc, ImageTooLargeError):
            what = str(exc).split("; raise it")[0]
            return respond(413, "image_too_large", f"{what}; send a smaller image or start the "
                           "server with a larger --max-input-pixels.")
        if isinstance(exc, ImageReadError):
            return respond(400, "invalid_image", f"{exc} Send a PNG, JPEG, WebP, TIFF or BMP "
                           "file in the 'image' field.")
        if isinstance(exc, UnknownModelError):
            return respond(422, "unknown_model", str(exc))
        if isinstance(exc, InvalidParameterError):
            return respond(422, "invalid_parameter", str(exc))
        if isinstance(exc, TileOutOfMemoryError):
            return respond(503, "out_of_memory", f"{exc} The server keeps running; retry with a "
                           "smaller image or scale, or restart it with a smaller --tile.")
        log.exception("request failed", exc_info=exc)
        return respond(500, "server_error", f"{type(exc).__name__}: {exc}")

    @app.exception_handler(MemoryError)
    async def memory_error(_: Request, exc: MemoryError):
        log.error("out of memory serving a request: %s", exc)
        return respond(503, "out_of_memory", "the server ran out of memory on this request and "
                       "keeps running; retry with a smaller image or scale.")

    @app.exception_handler(Exception)
    async def unexpected_error(_: Request, exc: Exception):
        # Still the JSON error shape, never a bare "Internal Server Error" page.
        log.exception("request failed", exc_info=exc)
        return respond(500, "server_error", f"{type(exc).__name__}: {exc}")

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError):
        parts = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "form"))
            got = f" (got {err['input']!r})" if isinstance(err.get("input"), (str, int, float)) else ""
            parts.append(f"{loc or 'request'}: {err.get('msg', 'invalid')}{got}")
        return respond(422, "invalid_parameter", "; ".join(parts) + ". Send multipart/form-data "
                       "with an 'image' file and optional fields prompt, n, guidance_scale, "
                       "model, scale, size, seed, response_format.")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException):
        return respond(exc.status_code, _STATUS_TYPES.get(exc.status_code, "http_error"),
                       str(exc.detail), getattr(exc, "headers", None))


def serve(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, model: str = DEFAULT_UPSCALER,
          device: str | None = None, limits: ServerLimits | None = None, *,
          log_level: str = "info", **upscale_opts) -> None:
    """Run the service with uvicorn until Ctrl-C / SIGTERM (graceful: in-flight requests finish).

    Binds 127.0.0.1 by default: only this machine can connect. To expose it, put it behind a
    reverse proxy (TLS, auth, rate limits) and pass ``host="0.0.0.0"`` deliberately.

    >>> serve(port=8997, model="realesrgan-x4plus")   # doctest: +SKIP
    """
    import uvicorn

    app = create_app(model, device, limits, **upscale_opts)
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s: anyone who can reach this port can use the GPU; put it "
                    "behind a reverse proxy with authentication", host)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=30)
