"""The error table: exception → HTTP status, error type and message, in OpenAI's error JSON.

Every error the service sends is ``{"error": {"message", "type", "param", "code"}}``: the
shape OpenAI's API uses, so its clients raise their typed exceptions (401 →
``AuthenticationError``, 400 → ``BadRequestError``, 422 → ``UnprocessableEntityError``...).
"""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import (GenerationOutOfMemoryError, ImageReadError, ImageTooLargeError,
                      InvalidParameterError, PipelineError, TileOutOfMemoryError,
                      UnknownModelError, WeightsError)
from .schemas import ErrorResponse

__all__ = ["ApiError", "UploadTooLarge", "error_body", "error_response", "install_error_handlers",
           "ERROR_RESPONSES", "STATUS_TYPES"]

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error with an HTTP status and a machine-readable type, rendered as the error JSON."""

    def __init__(self, status: int, type_: str, message: str, headers: dict | None = None, *,
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.type, self.message, self.headers = status, type_, message, headers
        self.param, self.code = param, code


class UploadTooLarge(StarletteHTTPException):
    # An HTTPException so FastAPI re-raises it untouched from body parsing (anything else it
    # turns into a generic 400 "error parsing the body").
    def __init__(self, detail: str) -> None:
        super().__init__(status_code=413, detail=detail)


def error_body(type_: str, message: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(status: int, type_: str, message: str, headers: dict | None = None, *,
                   param: str | None = None, code: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(type_, message, param, code), status_code=status,
                        headers=headers)


# Library errors: (status, type, advice appended to the library's own message). Checked in
# order, so subclasses (ImageTooLargeError is an ImageReadError) come first.
_LIBRARY_ERRORS: tuple[tuple[type, int, str, str], ...] = (
    (ImageTooLargeError, 413, "image_too_large", ""),
    (ImageReadError, 400, "invalid_image", " Send a PNG, JPEG, WebP, TIFF or BMP file in the "
                                           "'image' field."),
    (UnknownModelError, 422, "unknown_model", ""),
    (InvalidParameterError, 422, "invalid_parameter", ""),
    # a named model/LoRA/embedding whose file this server cannot load: asking again will not help
    # (a 503 would make clients retry), another name may
    (WeightsError, 422, "weights_unavailable", " Choose another model (GET /v1/models) or ask "
                                               "the server's operator to place the file."),
    (TileOutOfMemoryError, 503, "out_of_memory", " The server keeps running; retry with a smaller "
                                                 "image or scale, or restart it with a smaller "
                                                 "--tile."),
    (GenerationOutOfMemoryError, 503, "out_of_memory", " The server keeps running; retry with "
                                                       "fewer images or a smaller size."),
)

STATUS_TYPES = {400: "invalid_request", 401: "authentication_error", 404: "not_found",
                405: "method_not_allowed", 413: "upload_too_large",
                415: "unsupported_media_type", 429: "rate_limit_exceeded"}

#: Every error status a route may answer, for the OpenAPI schema (all in the error JSON).
ERROR_RESPONSES = {status: {"model": ErrorResponse, "description": what} for status, what in (
    (400, "unreadable image or request body"), (401, "missing or wrong API key"),
    (413, "request body or image too large"), (422, "a field is missing, unknown or out of range"),
    (429, "this API key's request rate is used up (see Retry-After)"),
    (500, "a server bug (the JSON error shape still)"),
    (503, "model loading or failed, server busy, or out of memory"))}


def _library_error(exc: PipelineError) -> JSONResponse:
    for kind, status, type_, advice in _LIBRARY_ERRORS:
        if isinstance(exc, kind):
            message = str(exc)
            if kind is ImageTooLargeError:
                message = (f"{message.split('; raise it')[0]}; send a smaller image or start the "
                           "server with a larger --max-input-pixels.")
            if kind is WeightsError:  # the Python/CLI opt-in does not exist over HTTP
                message = message.split(" Pass fallback=True")[0]
            return error_response(status, type_, message + advice)
    return _server_error(exc)


def _server_error(exc: BaseException) -> JSONResponse:
    # Still the JSON error shape, never a bare "Internal Server Error" page.
    log.error("request failed", exc_info=exc)
    return error_response(500, "server_error", f"{type(exc).__name__}: {exc}")


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    parts, params = [], []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "form"))
        params.append(loc)
        got = err.get("input")
        shown = f" (got {got!r})" if isinstance(got, (str, int, float)) and len(repr(got)) < 80 else ""
        if err.get("type") == "extra_forbidden":
            parts.append(f"{loc}: unknown field; this server does not take it")
        else:
            parts.append(f"{loc or 'request'}: {err.get('msg', 'invalid')}{shown}")
    return "; ".join(parts), params[0] if len(params) == 1 and params[0] else None


def install_error_handlers(app: FastAPI, *, usage: dict[str, str]) -> None:
    """Every exception → the error JSON. ``usage``: route path → how to call it (for 422s)."""

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError):
        return error_response(exc.status, exc.type, exc.message, exc.headers, param=exc.param,
                              code=exc.code)

    @app.exception_handler(PipelineError)
    async def pipeline_error(_: Request, exc: PipelineError):
        return _library_error(exc)

    @app.exception_handler(MemoryError)
    async def memory_error(_: Request, exc: MemoryError):
        log.error("out of memory serving a request: %s", exc)
        return error_response(503, "out_of_memory", "the server ran out of memory on this "
                              "request and keeps running; retry with a smaller image or scale.")

    @app.exception_handler(Exception)
    async def unexpected_error(_: Request, exc: Exception):
        return _server_error(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        message, param = _validation_message(exc)
        hint = usage.get(request.url.path, "")
        return error_response(422, "invalid_parameter", f"{message}.{' ' + hint if hint else ''}",
                              param=param)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException):
        return error_response(exc.status_code, STATUS_TYPES.get(exc.status_code, "http_error"),
                              str(exc.detail), getattr(exc, "headers", None))
