"""ASGI middleware that refuses request bodies over a byte limit (413 in the error JSON)."""
from __future__ import annotations

from .errors import UploadTooLarge, error_response

__all__ = ["BodyLimit", "too_large_message", "MB"]

MB = 1024 * 1024


def too_large_message(size: int | None, limit: int) -> str:
    got = f"the upload is {size:,} bytes" if size is not None else "the upload is too large"
    return (f"{got}; this server accepts request bodies of at most {limit:,} bytes "
            f"({limit / MB:.1f} MB). Send a smaller image (e.g. PNG→JPEG, or downscale it) or "
            "start the server with a larger --max-upload-mb.")


class BodyLimit:
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
                    raise UploadTooLarge(too_large_message(None, self.limit))
            return message

        started = False

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except UploadTooLarge:
            if started:
                raise
            await self._refuse(scope, receive, send, None)

    async def _refuse(self, scope, receive, send, length: int | None) -> None:
        response = error_response(413, "upload_too_large", too_large_message(length, self.limit),
                                  {"Connection": "close"})
        await response(scope, receive, send)
