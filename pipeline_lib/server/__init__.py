"""HTTP service: ``POST /v1/images/upscale`` (multipart) and ``POST /v1/images/generations``
(OpenAI Images API JSON) → JSON with base64 PNGs; ``/health``, ``/v1/models``.

Modules: ``limits`` (what a request may ask), ``errors`` (exception → status and OpenAI error
JSON), ``auth`` (API keys, rate limit), ``body_limit``, ``service`` (models, device lock,
pending count), ``upscaling`` / ``generation`` (checks and inference calls), ``schemas``,
``routes`` (thin), ``app`` (create_app, serve).
"""
from __future__ import annotations

from .app import DEFAULT_HOST, DEFAULT_PORT, create_app, serve
from .auth import AccessPolicy
from .limits import ServerLimits

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "AccessPolicy", "ServerLimits", "create_app", "serve"]
