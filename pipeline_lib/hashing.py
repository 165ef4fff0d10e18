"""File checksums (weights verification, A1111's model hash)."""
from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["sha256_file", "a1111_short_hash"]


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def a1111_short_hash(path: str | Path) -> str:
    """A1111's ``Model hash`` for a checkpoint file: the first 10 hex digits of its sha256."""
    return sha256_file(path)[:10]
