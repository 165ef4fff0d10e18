"""Every ``PIPELINE_LIB_*`` environment variable, declared once with its type and default.

Values are read when asked for (not cached at import), so a notebook that sets a variable after
``import pipeline_lib`` still gets it. A value that does not parse is an
:class:`InvalidParameterError` naming the variable; a ``PIPELINE_LIB_*`` name that is not declared
here (a typo) is reported once by :func:`check_environment` with the closest real name.

>>> get("PIPELINE_LIB_MAX_INPUT_PIXELS") > 0
True
"""
from __future__ import annotations

import difflib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InvalidParameterError

__all__ = ["Setting", "SETTINGS", "PREFIX", "get", "cache_dir", "offline", "check_environment",
           "TRUE_WORDS", "FALSE_WORDS"]

log = logging.getLogger(__name__)

PREFIX = "PIPELINE_LIB_"
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("", "0", "false", "no", "off")


@dataclass(frozen=True)
class Setting:
    """One variable: ``kind`` is 'bool', 'int' (positive), 'path' or 'str'."""

    name: str
    kind: str
    default: Any
    doc: str


_DECLARED = (
    Setting("PIPELINE_LIB_CACHE", "path", None,
            "cache root (weights, converted models); default $XDG_CACHE_HOME or ~/.cache, /pipeline_lib"),
    Setting("PIPELINE_LIB_OFFLINE", "bool", False,
            "never download; missing weights raise an error naming where to put them"),
    Setting("PIPELINE_LIB_MAX_INPUT_PIXELS", "int", 64_000_000,
            "inputs above this many pixels are refused before decoding (bomb guard)"),
    Setting("PIPELINE_LIB_MAX_OUTPUT_PIXELS", "int", 268_435_456,
            "largest working canvas of an upscale (16384², ~3 GB of float32)"),
    Setting("PIPELINE_LIB_HEAP_REUSE", "bool", True,
            "keep freed memory inside the process during CPU runs (glibc)"),
    Setting("PIPELINE_LIB_COMPILE", "bool", False, "torch.compile the UNet by default"),
    Setting("PIPELINE_LIB_LORA_DIR", "path", None,
            "folder that <lora:name:weight> in a prompt is looked up in; default <cache>/loras"),
    Setting("PIPELINE_LIB_EMBEDDINGS_DIR", "path", None,
            "folder of textual-inversion embeddings named by token; default <cache>/embeddings"),
    Setting("PIPELINE_LIB_NOTEBOOK_TEST", "bool", False,
            "notebooks' test mode: tiny offline pipelines and small sizes"),
    Setting("PIPELINE_LIB_INSTALL_DIR", "path", None,
            "where the notebooks' install cell clones/unpacks (default /content or /kaggle/working)"),
    Setting("PIPELINE_LIB_SERVER_MAX_UPLOAD_BYTES", "int", 20 * 1024 * 1024,
            "HTTP: largest request body"),
    Setting("PIPELINE_LIB_SERVER_MAX_INPUT_PIXELS", "int", 2048 * 2048, "HTTP: largest input"),
    Setting("PIPELINE_LIB_SERVER_MAX_OUTPUT_PIXELS", "int", 4096 * 4096,
            "HTTP: largest canvas the model produces"),
    Setting("PIPELINE_LIB_SERVER_MAX_N", "int", 4, "HTTP: largest n per request"),
    Setting("PIPELINE_LIB_SERVER_MAX_PENDING", "int", 32,
            "HTTP: requests in flight before 503 busy"),
    Setting("PIPELINE_LIB_SERVER_MAX_STEPS", "int", 150,
            "HTTP: most denoising steps one generation request may ask for"),
    Setting("PIPELINE_LIB_API_KEY", "str", None,
            "HTTP: API key(s) every route but /health requires (Bearer); several: comma-separated"),
    Setting("PIPELINE_LIB_API_KEY_FILE", "path", None,
            "HTTP: file of API keys, one a line (# comments and blank lines skipped)"),
    Setting("PIPELINE_LIB_SERVER_RATE_LIMIT", "int", None,
            "HTTP: requests per minute each API key may make (429 past it); unset: no limit"),
    Setting("PIPELINE_LIB_CHROMIUM", "path", None,
            "tests/browser: the Chromium binary (default: chromium-headless-shell on PATH)"),
    Setting("PIPELINE_LIB_TEST_ARTIFACTS", "path", None,
            "tests/browser: where screenshots go (default test-artifacts/browser)"),
)
SETTINGS: dict[str, Setting] = {s.name: s for s in _DECLARED}


def _parse(setting: Setting, raw: str) -> Any:
    text = raw.strip()
    if setting.kind == "bool":
        if text.lower() in TRUE_WORDS:
            return True
        if text.lower() in FALSE_WORDS:
            return False
        raise InvalidParameterError(f"{setting.name}={raw!r} is not understood; set it to 1 or 0, "
                                    "or unset it.")
    if not text:
        return setting.default
    if setting.kind == "int":
        try:
            value = int(text.replace("_", ""))
        except ValueError:
            value = 0
        if value < 1:
            raise InvalidParameterError(f"{setting.name}={raw!r} is not a positive integer; set it "
                                        f"to a number such as {setting.default} or unset it.")
        return value
    return Path(text).expanduser() if setting.kind == "path" else text


def get(name: str) -> Any:
    """The current value of the declared variable ``name`` (its default when unset)."""
    setting = SETTINGS[name]
    raw = os.environ.get(name)
    return setting.default if raw is None else _parse(setting, raw)


def cache_dir() -> Path:
    """Root of pipeline_lib's cache: ``$PIPELINE_LIB_CACHE`` or ``~/.cache/pipeline_lib``."""
    root = get("PIPELINE_LIB_CACHE")
    if root is not None:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "pipeline_lib")


def offline() -> bool:
    """True when downloads are off: ``PIPELINE_LIB_OFFLINE`` or Hugging Face's ``HF_HUB_OFFLINE``."""
    hub = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in TRUE_WORDS
    return hub or bool(get("PIPELINE_LIB_OFFLINE"))


def check_environment(environ: dict[str, str] | None = None) -> list[str]:
    """Warn about ``PIPELINE_LIB_*`` names that are not settings (typos); returns them."""
    env = os.environ if environ is None else environ
    unknown = sorted(n for n in env if n.startswith(PREFIX) and n not in SETTINGS)
    for name in unknown:
        close = difflib.get_close_matches(name, list(SETTINGS), n=1, cutoff=0.7)
        hint = f"; did you mean {close[0]}?" if close else ""
        log.warning("%s is not a pipeline_lib setting and is ignored%s", name, hint)
    return unknown
