"""The published OpenAPI schema, made exact: the ranges this server accepts (the library's
rules and this server's limits) and the Bearer requirement when API keys are set.

The ranges are documented here rather than enforced by pydantic so that a refused value gets
the library's own message (the same one the CLI and Python callers get).
"""
from __future__ import annotations

from fastapi import FastAPI

from ..generate.job import MAX_CLIP_SKIP, MAX_HIRES_SCALE
from ..upscale.sizing import MAX_SCALE
from ..validation import MAX_GUIDANCE, MAX_SEED
from .auth import OPEN_PATHS, AccessPolicy
from .limits import ServerLimits

__all__ = ["document"]


def _ranges(limits: ServerLimits) -> dict[str, dict]:
    strength = {"exclusiveMinimum": 0, "maximum": 1}
    return {"n": {"minimum": 1, "maximum": limits.max_n},
            "steps": {"minimum": 1, "maximum": limits.max_steps},
            "seed": {"minimum": 0, "maximum": MAX_SEED},
            "guidance": {"minimum": 0, "maximum": MAX_GUIDANCE},
            "guidance_scale": {"minimum": 0, "maximum": MAX_GUIDANCE},
            "scale": {"exclusiveMinimum": 0, "maximum": MAX_SCALE},
            "clip_skip": {"minimum": 1, "maximum": MAX_CLIP_SKIP},
            # 1 is "off"; the output must also fit --max-output-pixels (checked per request)
            "hires_scale": {"minimum": 1, "maximum": MAX_HIRES_SCALE},
            "hires_strength": strength, "refine_strength": strength,
            "hires_steps": {"minimum": 1, "maximum": limits.max_steps}}


def _add_ranges(schema: dict, limits: ServerLimits) -> None:
    ranges = _ranges(limits)
    for body in schema.get("components", {}).get("schemas", {}).values():
        for name, prop in body.get("properties", {}).items():
            bounds = ranges.get(name)
            if bounds is None:
                continue
            # on the number branch of an "X or null" field, so null stays allowed
            for branch in prop.get("anyOf", [prop]):
                if branch.get("type") in ("integer", "number"):
                    branch.update(bounds)


def _add_security(schema: dict) -> None:
    schema.setdefault("components", {})["securitySchemes"] = {
        "apiKey": {"type": "http", "scheme": "bearer"}}
    schema["security"] = [{"apiKey": []}]
    for path in OPEN_PATHS:
        for operation in schema["paths"].get(path, {}).values():
            operation["security"] = []
            operation.get("responses", {}).pop("401", None)


def document(app: FastAPI, limits: ServerLimits, policy: AccessPolicy) -> None:
    """Make ``app.openapi()`` return the exact schema (built once, on first use)."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = build()
            _add_ranges(schema, limits)
            if policy.required:
                _add_security(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
