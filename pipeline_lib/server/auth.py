"""API keys: every route but ``/health`` requires ``Authorization: Bearer KEY``.

Keys come from ``--api-key`` (repeatable), ``PIPELINE_LIB_API_KEY`` (comma-separated) and a key
file (``--api-key-file`` / ``PIPELINE_LIB_API_KEY_FILE``, one key a line). A presented key is
compared with every configured key in constant time (:func:`hmac.compare_digest`), so timing
says nothing about how much of a guess was right. Keys are never logged. An optional per-key
rate limit (requests per minute, a token bucket) answers 429 with ``Retry-After``.
"""
from __future__ import annotations

import hmac
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import config
from ..errors import InvalidParameterError
from ..validation import check_int
from .errors import error_response

__all__ = ["AccessPolicy", "ApiKeyGate", "OPEN_PATHS"]

#: Paths anyone may call: load balancers and tunnels probe /health without a key.
OPEN_PATHS = frozenset({"/health"})


def _check_key(key: str, where: str) -> str:
    if not key or not key.isascii() or not key.isprintable() or any(c.isspace() for c in key):
        raise InvalidParameterError(f"an API key from {where} is empty or has spaces or "
                                    "non-ASCII characters; use printable ASCII without spaces "
                                    "(e.g. python -c 'import secrets; print(secrets.token_urlsafe())').")
    return key


def _read_key_file(path: str | Path) -> list[str]:
    try:
        lines = Path(path).expanduser().read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InvalidParameterError(f"cannot read the API key file {str(path)!r}: "
                                    f"{exc.strerror or exc}.") from None
    keys = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not keys:
        raise InvalidParameterError(f"the API key file {str(path)!r} holds no key; write one key "
                                    "a line.")
    return [_check_key(k, f"the file {str(path)!r}") for k in keys]


@dataclass(frozen=True)
class AccessPolicy:
    """Who may call the service: ``keys`` (none: anyone) and ``rate_per_minute`` per key.

    >>> AccessPolicy(keys=("k1",)).allows("k1"), AccessPolicy(keys=("k1",)).allows("k2")
    (True, False)
    """

    keys: tuple[str, ...] = ()
    rate_per_minute: int | None = None

    def __post_init__(self) -> None:
        for key in self.keys:
            _check_key(key, "the key list")
        if self.rate_per_minute is not None:
            check_int(self.rate_per_minute, "rate_per_minute", 1)

    @property
    def required(self) -> bool:
        return bool(self.keys)

    @classmethod
    def from_sources(cls, keys=(), key_file: str | Path | None = None,
                     rate_per_minute: int | None = None) -> "AccessPolicy":
        """``keys`` and ``key_file``, plus ``PIPELINE_LIB_API_KEY(_FILE)``; the rate limit falls
        back to ``PIPELINE_LIB_SERVER_RATE_LIMIT``."""
        found = [_check_key(k, "--api-key") for k in keys]
        env = config.get("PIPELINE_LIB_API_KEY")
        if env:
            found += [_check_key(k.strip(), "PIPELINE_LIB_API_KEY") for k in env.split(",")]
        for path in (key_file, config.get("PIPELINE_LIB_API_KEY_FILE")):
            if path is not None:
                found += _read_key_file(path)
        rate = rate_per_minute if rate_per_minute is not None else config.get(
            "PIPELINE_LIB_SERVER_RATE_LIMIT")
        return cls(tuple(dict.fromkeys(found)), rate)

    def match(self, presented: str) -> int | None:
        """Index of the key ``presented`` equals, compared with every key in constant time."""
        given = presented.encode("utf-8", "surrogateescape")
        hit = None
        for i, key in enumerate(self.keys):
            # no early exit: the time taken does not tell which key (or none) matched
            if hmac.compare_digest(given, key.encode("ascii")):
                hit = i
        return hit

    def allows(self, presented: str) -> bool:
        return self.match(presented) is not None


@dataclass
class _Buckets:
    """One token bucket per key: ``rate`` tokens a minute, bursts up to ``rate``."""

    rate: int
    tokens: dict[int, tuple[float, float]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, who: int) -> float:
        """0 when a request may go now, else the seconds until one may."""
        now = time.monotonic()
        with self.lock:
            level, since = self.tokens.get(who, (float(self.rate), now))
            level = min(float(self.rate), level + (now - since) * self.rate / 60.0)
            if level >= 1.0:
                self.tokens[who] = (level - 1.0, now)
                return 0.0
            self.tokens[who] = (level, now)
            return (1.0 - level) * 60.0 / self.rate


def _bearer(scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return None


class ApiKeyGate:
    """ASGI middleware: 401 without a valid key, 429 past the key's rate (both before the body
    is read, so a refused upload costs nothing)."""

    def __init__(self, app, policy: AccessPolicy) -> None:
        self.app, self.policy = app, policy
        self.buckets = _Buckets(policy.rate_per_minute) if policy.rate_per_minute else None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope.get("path") in OPEN_PATHS or not self.policy.required:
            return await self.app(scope, receive, send)
        token = _bearer(scope)
        who = self.policy.match(token) if token else None
        if who is None:
            return await self._refuse_key(token, scope, receive, send)
        if self.buckets is not None:
            wait = self.buckets.take(who)
            if wait > 0:
                response = error_response(
                    429, "rate_limit_exceeded", f"this API key may make "
                    f"{self.policy.rate_per_minute} requests a minute; retry in {math.ceil(wait)} s.",
                    {"Retry-After": str(math.ceil(wait))}, code="rate_limit_exceeded")
                return await response(scope, receive, send)
        await self.app(scope, receive, send)

    async def _refuse_key(self, token, scope, receive, send) -> None:
        if token is None:
            code, message = "missing_api_key", ("this server requires an API key: send the header "
                                                "'Authorization: Bearer KEY'.")
        else:  # never echo what was sent: it may be a real key meant for another service
            code, message = "invalid_api_key", ("the API key sent is not valid for this server; "
                                                "send 'Authorization: Bearer KEY' with a key it "
                                                "was started with (--api-key).")
        response = error_response(401, "authentication_error", message,
                                  {"WWW-Authenticate": "Bearer"}, code=code)
        await response(scope, receive, send)
