"""Reaching the Hugging Face Hub: decide before a download whether it can work, so an offline
machine fails in seconds with one message instead of minutes of retries and duplicated warnings.

>>> hub_access("stabilityai/sdxl-turbo", offline_ok=True) in ({}, {"local_files_only": True})  # doctest: +SKIP
True
"""
from __future__ import annotations

import socket
from pathlib import Path
from urllib.parse import urlparse

from .config import offline
from .errors import WeightsError

__all__ = ["hub_cache_dir", "is_cached", "hub_reachable", "hub_access"]


def hub_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def is_cached(repo: str, filename: str = "model_index.json") -> bool:
    """Whether ``repo``'s ``filename`` is in the local Hub cache (no network)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo, filename), str)
    except Exception:  # not a valid repo id: diffusers will say so when it loads
        return False


def hub_reachable(timeout: float = 3.0) -> bool:
    """One TCP connection to the Hub's endpoint; no retries (a quick yes/no, not a download)."""
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def _unreachable(repo: str, why: str, what: str) -> WeightsError:
    return WeightsError(
        f"{why}, and the {what} {repo!r} is not in the Hugging Face cache ({hub_cache_dir()}). "
        f"Connect to the internet and retry (unset PIPELINE_LIB_OFFLINE / HF_HUB_OFFLINE if set), "
        "or pass a local diffusers folder (model='path/to/folder', made with save_pretrained) or a "
        "single .safetensors/.ckpt checkpoint file (model='path/to/model.safetensors').")


def hub_access(repo: str, what: str = "model", marker: str = "model_index.json") -> dict:
    """Keyword arguments for ``from_pretrained(repo, ...)``, or a :class:`WeightsError` now.

    Cached and offline: load from the cache only (``local_files_only``). Not cached: offline
    (``PIPELINE_LIB_OFFLINE`` or ``HF_HUB_OFFLINE``) or the Hub unreachable → an error naming
    the repo, the cache folder and the local alternatives, instead of huggingface_hub's retries.
    """
    if Path(repo).expanduser().exists():  # a local folder: no Hub involved
        return {}
    if is_cached(repo, marker):
        return {"local_files_only": True} if offline() else {}
    if offline():
        raise _unreachable(repo, "downloads are off (PIPELINE_LIB_OFFLINE / HF_HUB_OFFLINE)", what)
    if not hub_reachable():
        raise _unreachable(repo, "the Hugging Face Hub cannot be reached from this machine", what)
    return {}
