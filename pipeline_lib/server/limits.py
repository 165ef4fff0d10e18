"""What one HTTP request may ask for: :class:`ServerLimits`, defaults from ``config``."""
from __future__ import annotations

from dataclasses import dataclass, fields

from .. import config
from ..errors import InvalidParameterError
from ..validation import is_whole

__all__ = ["ServerLimits", "ENV_PREFIX"]

ENV_PREFIX = "PIPELINE_LIB_SERVER_"


def _default(name: str) -> int:
    return config.SETTINGS[ENV_PREFIX + name.upper()].default


@dataclass(frozen=True)
class ServerLimits:
    """What one request may ask for; anything past these is refused before inference.

    ``max_output_pixels`` bounds the largest canvas the model produces (a ×4 model asked for ×2
    works at ×4 then shrinks, so that canvas counts; a generated image counts its own size).
    ``max_pending`` bounds requests in flight (waiting or running); more get 503 "busy" instead
    of piling up memory; ``max_steps`` bounds a generation's denoising steps. Environment
    overrides: ``PIPELINE_LIB_SERVER_MAX_UPLOAD_BYTES`` etc. (field name upper-cased, declared in
    :mod:`pipeline_lib.config`).

    >>> ServerLimits(max_n=2).max_n
    2
    """

    max_upload_bytes: int = _default("max_upload_bytes")
    max_input_pixels: int = _default("max_input_pixels")
    max_output_pixels: int = _default("max_output_pixels")
    max_n: int = _default("max_n")
    max_pending: int = _default("max_pending")
    max_steps: int = _default("max_steps")

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not is_whole(value) or value < 1:
                raise InvalidParameterError(f"ServerLimits.{f.name} must be a positive integer, "
                                            f"got {value!r}.")

    @classmethod
    def from_env(cls, **overrides: int | None) -> "ServerLimits":
        """Defaults, then ``PIPELINE_LIB_SERVER_<FIELD>`` variables, then non-None ``overrides``."""
        values = {f.name: config.get(ENV_PREFIX + f.name.upper()) for f in fields(cls)}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
