"""Argument checks shared by every front end: one rule per kind of value, one message style.

Each check returns the normalised value or raises :class:`InvalidParameterError` whose message
names the argument, the accepted range and what was given.

>>> check_int(3, "steps", 1, 1000)
3
>>> check_guidance("7.5")
7.5
"""
from __future__ import annotations

import math
import secrets

from .errors import InvalidParameterError

__all__ = ["MAX_SEED", "MAX_GUIDANCE", "is_whole", "check_int", "check_float", "check_guidance",
           "check_seed", "parse_seed", "check_text", "check_flag", "check_strength", "check_callback"]

#: Seeds are 32-bit, like A1111 and ComfyUI, so a seed copied from either reproduces here.
MAX_SEED = 2 ** 32 - 1
#: Classifier-free guidance above this only burns the picture; typical values are 4-9.
MAX_GUIDANCE = 50.0


def is_whole(value) -> bool:
    """An int (or numpy integer), but not a bool: ``True`` as a step count is a bug, not 1."""
    return not isinstance(value, bool) and (isinstance(value, int) or hasattr(value, "__index__"))


def _range(low, high, unit: str = "") -> str:
    if high is not None:
        return f"in {low}..{high}"
    return f"≥ {low} {unit}" if unit else f"≥ {low}"


def check_int(value, name: str, low: int, high: int | None = None, *, hint: str = "",
              unit: str = "") -> int:
    """``value`` as an int in ``low..high`` (``high=None``: no upper bound); ``unit`` (e.g.
    "pixel") words an open range as "a whole number of pixels" / "≥ 1 pixel"."""
    extra = f" ({hint})" if hint else ""
    if low == 1 and high is None and not unit:
        kind, rng = "a positive integer", "a positive integer"
    else:
        kind = f"a whole number {f'of {unit}s' if unit and high is None else _range(low, high)}"
        rng = _range(low, high, unit)
    if not is_whole(value):
        raise InvalidParameterError(f"{name} must be {kind}{extra}, got {value!r}.")
    v = int(value)
    if v < low or (high is not None and v > high):
        raise InvalidParameterError(f"{name} must be {rng}{extra}, got {v}.")
    return v


def check_float(value, name: str, low: float, high: float, *, hint: str = "",
                low_open: bool = False) -> float:
    """``value`` as a finite float in ``low..high`` (``low_open``: ``low`` itself excluded)."""
    extra = f" ({hint})" if hint else ""
    bound = f"> {low:g} and ≤ {high:g}" if low_open else f"in {low:g}..{high:g}"
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if isinstance(value, bool) or not math.isfinite(v) or v < low or v > high or (
            low_open and v == low):
        raise InvalidParameterError(f"{name} must be a finite number {bound}{extra}, got {value!r}.")
    return v


def check_guidance(value, name: str = "guidance") -> float:
    """Classifier-free guidance scale in 0..50 (0 or 1 turns it off, as turbo models want)."""
    return check_float(value, name, 0.0, MAX_GUIDANCE, hint="typical 4-9; 0 for turbo models")


def check_strength(value, name: str = "strength") -> float:
    """A denoising strength: 0 < s ≤ 1 (how much of the picture the sampler may repaint)."""
    return check_float(value, name, 0.0, 1.0, low_open=True,
                       hint="0.2-0.4 keeps the picture and adds detail; 1 repaints it")


def check_seed(seed, count: int = 1) -> int:
    """A seed for ``count`` images (they use ``seed .. seed+count-1``); ``None`` picks one."""
    if seed is None:
        return secrets.randbelow(MAX_SEED - count + 2)
    if not is_whole(seed):
        raise InvalidParameterError(f"seed must be a whole number in 0..{MAX_SEED} (2**32-1), "
                                    f"got {seed!r}.")
    s = int(seed)
    if s < 0 or s + count - 1 > MAX_SEED:
        raise InvalidParameterError(
            f"seed must be in 0..{MAX_SEED} (2**32-1, as in A1111) and a batch of {count} uses "
            f"seed..seed+{count - 1}; got seed={s}.")
    return s


def parse_seed(text) -> int | None:
    """A seed typed by a person: blank, ``random`` or ``-1`` (A1111's "random") → None."""
    raw = "" if text is None else str(text).strip()
    if raw.lower() in ("", "random", "-1"):
        return None
    try:
        value = int(raw)
    except ValueError:
        raise InvalidParameterError(f"seed must be a whole number in 0..{MAX_SEED}, or blank / "
                                    f"'random' / -1 for a random one; got {text!r}.") from None
    return check_seed(value)


def check_text(value, name: str, *, optional: bool = False) -> str | None:
    """Text (a prompt); ``optional`` also accepts None (meaning "the default")."""
    if value is None and optional:
        return None
    if not isinstance(value, str):
        what = "text or None (the default)" if optional else "text"
        raise InvalidParameterError(f"{name} must be {what}, got {type(value).__name__}.")
    return value


def check_flag(value, name: str) -> bool | None:
    """True, False, or None (None = the device's default)."""
    if value is None or isinstance(value, bool):
        return value
    raise InvalidParameterError(f"{name} must be True, False or None (None = the default for the "
                                f"device), got {value!r}.")


def check_callback(value, name: str = "on_progress") -> None:
    """None, or a function called as ``value(done, total)``."""
    if value is not None and not callable(value):
        raise InvalidParameterError(f"{name} must be a function (done, total), got {value!r}.")
