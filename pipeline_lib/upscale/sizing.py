"""Output size arithmetic for ``upscale()``: ``scale`` / ``size`` → exact target and model passes."""
from __future__ import annotations

import logging
import math
import numbers
import operator
from typing import Sequence, Union

from ..errors import InvalidParameterError
from .. import config

__all__ = ["MAX_SCALE", "DEFAULT_MAX_OUTPUT_PIXELS", "max_output_pixels", "parse_size",
           "check_scale", "target_size", "working_canvas", "check_canvas", "passes_needed",
           "pass_inputs", "MAX_FINAL_ENLARGE"]

log = logging.getLogger(__name__)

SizeArg = Union[int, str, Sequence[int], None]
MAX_SCALE = 32.0
DEFAULT_MAX_OUTPUT_PIXELS = config.SETTINGS["PIPELINE_LIB_MAX_OUTPUT_PIXELS"].default


def max_output_pixels() -> int:
    return config.get("PIPELINE_LIB_MAX_OUTPUT_PIXELS")


def parse_size(size: SizeArg) -> tuple[int, int] | int | None:
    """Accept 2048, "2048", "1536x2048", (1536, 2048); return an int (long side) or (w, h)."""
    if size is None:
        return None
    if isinstance(size, str):
        text = size.lower().replace("×", "x").strip()
        try:
            if "x" in text:
                w, h = text.split("x", 1)
                return _check_side(int(w)), _check_side(int(h))
            return _check_side(int(text))
        except ValueError:
            raise InvalidParameterError(f"size {size!r} is not 'N' or 'WxH' with positive integers.") from None
    if isinstance(size, (tuple, list)) and len(size) == 2:
        return _check_side(size[0]), _check_side(size[1])
    if isinstance(size, numbers.Integral) or hasattr(size, "__index__"):
        return _check_side(size)
    raise InvalidParameterError(f"size must be an int (long side) or (width, height), got {size!r}.")


def _check_side(v) -> int:
    # operator.index accepts Python and numpy integers only (not bools' numpy twin, floats,
    # arrays); Python bools are refused explicitly since True == 1 would be silently accepted.
    try:
        if isinstance(v, bool):
            raise TypeError
        v = operator.index(v)
    except TypeError:
        raise InvalidParameterError(f"size values must be integers ≥ 1, got {v!r}.") from None
    if v < 1:
        raise InvalidParameterError(f"size values must be ≥ 1 pixel, got {v}.")
    return v


def check_scale(scale) -> float:
    """A finite factor in (0, MAX_SCALE]; numbers only (numpy ones too), never bools or strings."""
    if isinstance(scale, (bool, str, bytes)) or not isinstance(scale, numbers.Real):
        raise InvalidParameterError(f"scale must be a number in (0, {MAX_SCALE:g}], got {scale!r}.")
    s = float(scale)
    if not math.isfinite(s) or s <= 0 or s > MAX_SCALE:
        raise InvalidParameterError(f"scale must be a finite number in (0, {MAX_SCALE:g}], got {scale!r}.")
    return s


def target_size(width: int, height: int, *, scale=None, size: SizeArg = None,
                default_scale: float = 4.0) -> tuple[int, int]:
    """Exact output ``(w, h)``. Aspect ratio is kept unless both sides are given explicitly.

    >>> target_size(512, 768, size=2048)
    (1365, 2048)
    >>> target_size(100, 50, scale=3.2)
    (320, 160)
    """
    if scale is not None and size is not None:
        raise InvalidParameterError("give either scale or size, not both.")
    parsed = parse_size(size)
    if isinstance(parsed, tuple):
        tw, th = parsed
        src, dst = width / height, tw / th
        if abs(src - dst) / src > 0.01:
            log.warning("target %dx%d changes the aspect ratio from %.3f to %.3f; the image is "
                        "stretched to fit exactly (pass one number to keep the aspect)",
                        tw, th, src, dst)
    elif isinstance(parsed, int):
        f = parsed / max(width, height)
        tw, th = (parsed, max(1, round(height * f))) if width >= height else (max(1, round(width * f)), parsed)
    else:
        s = check_scale(default_scale if scale is None else scale)
        tw, th = max(1, round(width * s)), max(1, round(height * s))
    if tw * th > max_output_pixels():
        raise InvalidParameterError(
            f"output {tw}×{th} = {tw * th:,} pixels exceeds the limit of {max_output_pixels():,}; "
            "ask for a smaller scale/size or raise PIPELINE_LIB_MAX_OUTPUT_PIXELS.")
    return tw, th


def working_canvas(width: int, height: int, target: tuple[int, int], native: int) -> tuple[int, int]:
    """The largest canvas the model passes produce: a ×4 model asked for ×2 works at ×4, and a
    stretched ``size=(w, h)`` enlarges both sides by the larger factor."""
    grow = native ** passes_needed(width, height, target, native)
    return max(target[0], width * grow), max(target[1], height * grow)


def check_canvas(width: int, height: int, target: tuple[int, int], native: int) -> tuple[int, int]:
    """:func:`working_canvas`, refused past ``PIPELINE_LIB_MAX_OUTPUT_PIXELS``."""
    canvas = working_canvas(width, height, target, native)
    if canvas[0] * canvas[1] > max_output_pixels():
        raise InvalidParameterError(
            f"a {width}×{height} input upscaled to {target[0]}×{target[1]} needs a "
            f"{canvas[0]}×{canvas[1]} working canvas ({canvas[0] * canvas[1]:,} pixels, past the "
            f"limit of {max_output_pixels():,}); ask for a smaller scale/size, keep the aspect "
            "ratio, or raise PIPELINE_LIB_MAX_OUTPUT_PIXELS.")
    return canvas


#: After the model passes, a resize may enlarge by at most this much; beyond it the model runs
#: again (a ×8 model asked for ×16 runs once and resizes ×2, instead of running to ×64 and
#: shrinking, which cost 259 s and 4.6 GB for a 128² input).
MAX_FINAL_ENLARGE = 2.0


def passes_needed(width: int, height: int, target: tuple[int, int], native: int) -> int:
    """How many times to run a ×``native`` model: at least once, and again while the resize
    that finishes the job would still enlarge by more than :data:`MAX_FINAL_ENLARGE`."""
    factor = max(target[0] / width, target[1] / height)
    if native <= 1:
        return 1
    passes = 1
    while factor / native ** passes > MAX_FINAL_ENLARGE + 1e-9:
        passes += 1
    return passes


def pass_inputs(width: int, height: int, native: int, passes: int) -> list[tuple[int, int]]:
    """The (w, h) each model pass reads: the input, then each pass's output."""
    return [(width * native ** i, height * native ** i) for i in range(passes)]
