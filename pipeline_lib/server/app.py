"""Build the FastAPI app (:func:`create_app`) and run it with uvicorn (:func:`serve`).

>>> from pipeline_lib.server import create_app, ServerLimits
>>> app = create_app("realesr-animevideov3", device="cpu", limits=ServerLimits(max_n=2))  # doctest: +SKIP
>>> serve(port=8997, api_keys=["s3cret-key"])   # blocks; Ctrl-C stops it              # doctest: +SKIP
"""
from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import Iterable

from fastapi import FastAPI

from ..upscale import DEFAULT_UPSCALER
from .auth import AccessPolicy, ApiKeyGate
from .body_limit import BodyLimit
from .errors import install_error_handlers
from .generation import Generation
from .limits import ServerLimits
from .openapi import document
from .routes import GENERATE_USAGE, UPSCALE_USAGE, router
from .service import Service, Slot
from .upscaling import Upscaling

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "LOOPBACK", "create_app", "serve"]

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8997
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _policy(api_keys: AccessPolicy | Iterable[str] | None) -> AccessPolicy:
    if isinstance(api_keys, AccessPolicy):
        return api_keys
    return AccessPolicy.from_sources(tuple(api_keys or ()))


def create_app(model: str = DEFAULT_UPSCALER, device: str | None = None,
               limits: ServerLimits | None = None, *, dtype: str | None = None,
               backend: str = "auto", generate_model: str | None = None,
               api_keys: AccessPolicy | Iterable[str] | None = None,
               **upscale_opts) -> FastAPI:
    """The FastAPI app serving one upscaler and, with ``generate_model``, one text-to-image model.

    Models load at start-up, once, in the background (``/health`` answers 503 "loading"
    meanwhile). ``limits=None`` reads :meth:`ServerLimits.from_env`; ``api_keys`` (keys or an
    :class:`AccessPolicy`; None reads ``PIPELINE_LIB_API_KEY``/``_FILE``) makes every route but
    ``/health`` require ``Authorization: Bearer KEY``. ``upscale_opts`` go to
    :func:`~pipeline_lib.upscale` (``tile=``, ``overlap=``...). An unknown ``model`` or
    ``generate_model`` raises :class:`UnknownModelError` here, before any server starts.

    >>> from fastapi.testclient import TestClient                            # doctest: +SKIP
    >>> with TestClient(create_app("realesr-animevideov3", device="cpu")) as client:  # doctest: +SKIP
    ...     client.get("/health").json()["status"]      # the model loads in the background
    'loading'
    """
    limits = limits or ServerLimits.from_env()
    policy = _policy(api_keys)
    upscaling = Upscaling(model, device, dtype, backend, limits, upscale_opts)
    slots, loaders = {"upscale": Slot(upscaling.served, "upscale")}, {"upscale": upscaling.load}
    generation = None
    if generate_model is not None:
        generation = Generation(generate_model, device, dtype, limits)
        slots["generate"], loaders["generate"] = Slot(generation.model, "generate"), generation.load
    service = Service(limits, slots, loaders)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        async with service.running():
            yield

    app = FastAPI(title="pipeline_lib image service", lifespan=lifespan,
                  description="Self-hosted image upscaling (Real-ESRGAN and friends) and "
                              "generation (OpenAI Images API).")
    app.state.service = app.state.pipeline = service  # .pipeline: the name before the split
    app.state.upscaling, app.state.generation, app.state.limits = upscaling, generation, limits
    app.add_middleware(BodyLimit, limit=limits.max_upload_bytes)
    app.add_middleware(ApiKeyGate, policy=policy)  # outermost: refused before any byte is read
    install_error_handlers(app, usage={"/v1/images/upscale": UPSCALE_USAGE,
                                       "/v1/images/generations": GENERATE_USAGE})
    app.include_router(router)
    document(app, limits, policy)
    return app


def serve(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, model: str = DEFAULT_UPSCALER,
          device: str | None = None, limits: ServerLimits | None = None, *,
          log_level: str = "info", api_keys: AccessPolicy | Iterable[str] | None = None,
          **app_opts) -> None:
    """Run the service with uvicorn until Ctrl-C / SIGTERM (graceful: in-flight requests finish).

    Binds 127.0.0.1 by default: only this machine can connect. Exposing it (``host="0.0.0.0"``,
    or a tunnel such as Colab's, whose URL is public) needs API keys and, for TLS, a proxy.

    >>> serve(port=8997, model="realesrgan-x4plus", generate_model="sdxl-turbo")  # doctest: +SKIP
    """
    import uvicorn

    policy = _policy(api_keys)
    app = create_app(model, device, limits, api_keys=policy, **app_opts)
    if host not in LOOPBACK and not policy.required:
        log.warning("listening on %s without an API key: anyone who can reach this port (or a "
                    "tunnel URL to it, which is public) can use the GPU and your models; start "
                    "with --api-key or PIPELINE_LIB_API_KEY", host)
    elif not policy.required:
        log.info("no API key set; fine on 127.0.0.1, but a tunnel to this port makes it public")
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=30)
