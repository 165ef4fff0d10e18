"""The app's LoRA folder: which files it offers, and saving an uploaded one there (no ipywidgets).

The folder is the library's (``PIPELINE_LIB_LORA_DIR``, default ``<cache>/loras``), the one
``<lora:name:0.8>`` in a prompt is looked up in, so a file uploaded in the app also works in
prompts, the CLI and scripts.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import InvalidParameterError, OutputExistsError
from ..generate.adapters import LORA_SUFFIXES, lora_dir
from ..outputs import atomic_output

__all__ = ["UPLOAD_SUFFIX", "lora_files", "lora_path", "save_lora"]

UPLOAD_SUFFIX = ".safetensors"  # uploads only: a .pt/.ckpt may run code when loaded


def lora_files() -> list[str]:
    """File names of the LoRAs in the folder, sorted (case-insensitively)."""
    folder = lora_dir()
    if not folder.is_dir():
        return []
    return sorted((p.name for p in folder.iterdir()
                   if p.is_file() and p.suffix.lower() in LORA_SUFFIXES and not p.name.startswith(".")),
                  key=str.lower)


def lora_path(name: str) -> str:
    """The full path of the folder's file ``name`` (what ``generate(loras=...)`` gets)."""
    return str(lora_dir() / name)


def _check_safetensors(path: Path, shown: str) -> None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            f.keys()
    except Exception as exc:  # the library raises its own SafetensorError, or OSError
        raise InvalidParameterError(f"{shown} is not a readable .safetensors file ({exc}); "
                                    "upload the LoRA file itself, as downloaded.") from None


def save_lora(name: str, content: bytes) -> tuple[Path, bool]:
    """Save an uploaded LoRA as ``name`` in the folder, atomically; ``(path, new)``.

    The same file uploaded again is left as it is (``new`` False); a different file under a name
    the folder already has is refused with :class:`OutputExistsError`, never overwritten.
    """
    shown = Path(str(name or "").replace("\\", "/")).name
    if not shown.lower().endswith(UPLOAD_SUFFIX) or shown.startswith("."):
        raise InvalidParameterError(f"{shown or 'the upload'!r} is not a .safetensors file; upload a "
                                    "LoRA as .safetensors (as Civitai and the Hub ship them).")
    dest = lora_dir() / shown
    data = bytes(content)
    if dest.exists():
        if dest.is_file() and dest.stat().st_size == len(data) and dest.read_bytes() == data:
            return dest, False
        raise OutputExistsError(f"{dest} already exists with other content; it was left as it is. "
                                "Rename the file you upload, or delete the old one first.")
    # checked as the temporary file, published only when readable; a file of that name that
    # appears meanwhile is still never replaced (atomic_output refuses)
    with atomic_output(dest, overwrite=False) as tmp:
        tmp.write_bytes(data)
        _check_safetensors(tmp, shown)
    return dest, True
