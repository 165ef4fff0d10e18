"""Which text chunks an upscaled file carries over from its source: the rule, once.

A source's generation parameters (A1111's ``parameters`` chunk, which ``read_metadata`` parses)
travel with the upscaled image; everything else a source holds — an editor's ``Comment: File
written by Adobe Photoshop``, ``Software``, XMP packets, an earlier upscale's keys — does not,
because it no longer describes the new file. The upscaler then adds its own keys.

This module imports nothing from the package, so the upscaler, the file front ends and the
HTTP service can all use it without an import circle.

>>> carried_metadata({"parameters": "a cat\\nSteps: 20", "Comment": "File written by Adobe Photoshop"})
{'parameters': 'a cat\\nSteps: 20'}
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

__all__ = ["CARRIED_KEYS", "carried_metadata", "upscaled_metadata"]

#: Source text chunks copied into an upscaled file.
CARRIED_KEYS = ("parameters",)


def carried_metadata(source: Mapping[str, Any] | None) -> dict[str, str]:
    """The part of a source's text metadata an upscaled copy keeps (see :data:`CARRIED_KEYS`)."""
    if not source:
        return {}
    return {k: source[k] for k in CARRIED_KEYS if isinstance(source.get(k), str)}


def upscaled_metadata(result) -> dict[str, str]:
    """Text chunks for saving an ``UpscaleResult``: the carried source keys plus the upscaler's own.

    ``result.as_metadata()`` supplies the upscaler's keys (which model and backend ran, the
    factor, any fallback); the source's other chunks are left out.
    """
    own = dataclasses.replace(result, source_metadata={}).as_metadata()
    return {**carried_metadata(result.source_metadata), **own}
