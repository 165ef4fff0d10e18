"""LoRAs and textual-inversion embeddings for one call: found, loaded, recorded, taken off again.

A LoRA is a file, a folder, a Hub repo (``owner/repo`` or ``owner/repo/file.safetensors``), a URL
(downloaded once into the LoRA folder) or a bare name looked up in ``PIPELINE_LIB_LORA_DIR``
(default ``<cache>/loras``) — the form ``<lora:name:0.8>`` in a prompt takes. Kohya (A1111,
Civitai) and diffusers key layouts both load through diffusers' ``load_lora_weights`` (peft).
Everything is unloaded when the call ends, so the next call sees the bare model again.

>>> with applied(pipe, [("film-grain", 0.6)], [], "a cat", "") as used:   # doctest: +SKIP
...     used.lora_hashes                                                  # doctest: +SKIP
{'film-grain': '3f9a1c0b2d4e'}
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import struct
import urllib.request
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from .. import config
from ..errors import InvalidParameterError, UnknownModelError, WeightsError
from ..hub import hub_access
from ..outputs import atomic_output

__all__ = ["LORA_SUFFIXES", "EMBEDDING_SUFFIXES", "lora_dir", "embeddings_dir", "resolve_lora",
           "resolve_embedding", "embedding_by_name", "lora_by_name", "check_loras", "check_embeddings", "addnet_hash", "Applied",
           "applied"]

log = logging.getLogger(__name__)

LORA_SUFFIXES = (".safetensors", ".pt", ".ckpt", ".bin")
EMBEDDING_SUFFIXES = (".safetensors", ".pt", ".bin")


def lora_dir() -> Path:
    return config.get("PIPELINE_LIB_LORA_DIR") or config.cache_dir() / "loras"


def embeddings_dir() -> Path:
    return config.get("PIPELINE_LIB_EMBEDDINGS_DIR") or config.cache_dir() / "embeddings"


def check_loras(loras) -> list[tuple[str, float]]:
    """``[(source, weight), ...]`` (a bare source means weight 1) with finite weights."""
    if loras is None:
        return []
    if isinstance(loras, (str, Path)) or not hasattr(loras, "__iter__"):
        raise InvalidParameterError("loras must be a list of (path_or_repo_or_url, weight) pairs, "
                                    f"got {loras!r}; e.g. loras=[('film-grain.safetensors', 0.8)].")
    out = []
    for item in loras:
        source, weight = (item, 1.0) if isinstance(item, (str, Path)) else tuple(item)
        try:
            weight = float(weight)
        except (TypeError, ValueError):
            weight = float("nan")
        if not (weight == weight and abs(weight) < 100):
            raise InvalidParameterError(f"LoRA weight for {source!r} must be a number (usually "
                                        f"0..1.5), got {item!r}.")
        out.append((str(source), weight))
    return out


def check_embeddings(embeddings) -> list[str]:
    if embeddings is None:
        return []
    if isinstance(embeddings, (str, Path)):
        raise InvalidParameterError(f"embeddings must be a list of files or names, got {embeddings!r};"
                                    " write embeddings=[...].")
    return [str(e) for e in embeddings]


def _download(url: str, folder: Path) -> Path:
    name = re.sub(r"[^\w.\-]", "_", Path(url.split("?")[0]).name) or "lora.safetensors"
    dest = folder / name
    if dest.is_file():
        return dest
    if config.offline():
        raise WeightsError(f"downloads are off (PIPELINE_LIB_OFFLINE / HF_HUB_OFFLINE) and {url} is "
                           f"not in {folder}; download it there yourself.")
    log.info("downloading %s to %s", url, dest)
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, atomic_output(dest) as tmp:
            tmp.write_bytes(resp.read())
    except OSError as exc:
        raise WeightsError(f"could not download {url}: {exc}; download it into {folder} and pass "
                           "its name instead.") from exc
    return dest


_INSTEAD = "Pass a file path, a Hub repo id or a URL instead."


def _by_name(name: str, folder: Path, suffixes, what: str, setting: str,
             instead: str = _INSTEAD) -> Path:
    if Path(name).name != name or name.startswith("."):  # `<lora:../../x:1>` stays in the folder
        raise InvalidParameterError(f"{what} name {name!r} is not a file name in {folder} "
                                    f"({setting}). {instead}".rstrip())
    for cand in [folder / name] + [folder / f"{name}{s}" for s in suffixes]:
        if cand.is_file():
            return cand
    known = sorted(p.stem for p in folder.glob("*") if p.suffix in suffixes) if folder.is_dir() else []
    raise UnknownModelError(f"{what} {name!r} not found in {folder} ({setting}); "
                            f"{'available: ' + ', '.join(known) if known else 'that folder has none'}. "
                            f"{instead}".rstrip())


def resolve_lora(source: str) -> tuple[str, dict, str]:
    """(what to hand ``load_lora_weights``, its extra kwargs, the name metadata uses)."""
    text = source.strip()
    path = Path(text).expanduser()
    if text.startswith(("http://", "https://")):
        path = _download(text, lora_dir())
    if path.is_file():
        return str(path), {}, path.stem
    if path.is_dir():
        return str(path), {}, path.name
    parts = text.split("/")
    if len(parts) == 1 or text.startswith((".", "~", "/")):
        path = _by_name(text, lora_dir(), LORA_SUFFIXES, "LoRA", "PIPELINE_LIB_LORA_DIR")
        return str(path), {}, path.stem
    if len(parts) > 2:  # owner/repo/file.safetensors
        repo, weight_name = "/".join(parts[:2]), "/".join(parts[2:])
        return repo, {"weight_name": weight_name, **hub_access(repo, "LoRA", weight_name)}, Path(weight_name).stem
    return text, hub_access(text, "LoRA", "pytorch_lora_weights.safetensors"), parts[1]


def resolve_embedding(source: str) -> tuple[Path, str]:
    """(file, trigger token): the token is the file's stem, as in A1111."""
    path = Path(source).expanduser()
    if not path.is_file():
        path = _by_name(source, embeddings_dir(), EMBEDDING_SUFFIXES, "embedding",
                        "PIPELINE_LIB_EMBEDDINGS_DIR")
    return path, path.stem


def embedding_by_name(name: str) -> Path:
    """The file of embedding ``name`` (with or without its suffix) in ``PIPELINE_LIB_EMBEDDINGS_DIR``
    and nowhere else: for callers that must not read arbitrary paths (the HTTP server)."""
    return _by_name(name, embeddings_dir(), EMBEDDING_SUFFIXES, "embedding",
                    "PIPELINE_LIB_EMBEDDINGS_DIR", instead="")


def lora_by_name(name: str) -> Path:
    """The file of LoRA ``name`` (with or without its suffix) in ``PIPELINE_LIB_LORA_DIR`` and
    nowhere else (not the working directory, as :func:`resolve_lora` would try first)."""
    return _by_name(name, lora_dir(), LORA_SUFFIXES, "LoRA", "PIPELINE_LIB_LORA_DIR", instead="")


def addnet_hash(path: str | Path) -> str:
    """A1111's LoRA hash: sha256 of a .safetensors file's tensor bytes (after its JSON header),
    so editing the metadata keeps it; other files hash whole. First 12 hex digits."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if str(path).endswith(".safetensors"):
            f.seek(8 + struct.unpack("<Q", f.read(8))[0])
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:12]


def _file_hash(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:12]


@dataclass
class Applied:
    """What one call put on the pipeline: ``lora_hashes`` / ``ti_hashes`` name → short hash."""

    lora_hashes: dict[str, str] = field(default_factory=dict)
    ti_hashes: dict[str, str] = field(default_factory=dict)
    adapters: list[str] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)


def _load_loras(pipe, loras: list[tuple[str, float]], used: Applied) -> None:
    if not loras:
        return
    if not hasattr(pipe, "load_lora_weights"):
        raise InvalidParameterError(f"{type(pipe).__name__} cannot take LoRAs.")
    weights = []
    for index, (source, weight) in enumerate(loras):
        target, kwargs, name = resolve_lora(source)
        adapter = f"pl{index}_{re.sub(r'[^0-9A-Za-z_]', '_', name)}"
        try:
            with warnings.catch_warnings():
                # Several adapters at once is what the caller asked for; peft's warning about it
                # would only alarm the user.
                warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                pipe.load_lora_weights(target, adapter_name=adapter, **kwargs)
        except (ValueError, KeyError, OSError, RuntimeError) as exc:
            raise WeightsError(f"could not load LoRA {source!r}: {exc}. It must be a LoRA/LyCORIS "
                               "file for this model family (SD-1.x vs SDXL).") from exc
        used.adapters.append(adapter)
        weights.append(weight)
        if Path(target).is_file():
            used.lora_hashes[name] = addnet_hash(target)
    pipe.set_adapters(used.adapters, adapter_weights=weights)


def _embedding_tensors(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    import torch

    return torch.load(str(path), map_location="cpu", weights_only=True)


def _load_embedding(pipe, path: Path, token: str) -> None:
    """SD-1.x files load as they are; SDXL files carry ``clip_l`` and ``clip_g`` vectors, one per
    text encoder."""
    if getattr(pipe, "text_encoder_2", None) is None:
        pipe.load_textual_inversion(str(path), token=token)
        return
    state = _embedding_tensors(path)
    if not {"clip_l", "clip_g"} <= set(state):
        raise WeightsError(f"{path} is not an SDXL embedding (no clip_l/clip_g tensors).")
    pipe.load_textual_inversion(state["clip_l"], token=token, text_encoder=pipe.text_encoder,
                                tokenizer=pipe.tokenizer)
    if pipe.tokenizer_2 is not pipe.tokenizer:
        pipe.load_textual_inversion(state["clip_g"], token=token, text_encoder=pipe.text_encoder_2,
                                    tokenizer=pipe.tokenizer_2)


def _load_embeddings(pipe, embeddings: list[str], prompts: str, used: Applied) -> None:
    for source in embeddings:
        path, token = resolve_embedding(source)
        if not re.search(rf"(?<![\w-]){re.escape(token)}(?![\w-])", prompts):
            continue  # A1111: an embedding only acts where its token is written
        try:
            _load_embedding(pipe, path, token)
        except (ValueError, KeyError, OSError, RuntimeError) as exc:
            raise WeightsError(f"could not load embedding {path}: {exc}") from exc
        used.tokens.append(token)
        used.ti_hashes[token] = _file_hash(path)


def _take_off(pipe, used: Applied) -> None:
    if used.adapters:
        pipe.delete_adapters(used.adapters)
        if not pipe.get_list_adapters() or not any(pipe.get_list_adapters().values()):
            pipe.unload_lora_weights()
    for token in used.tokens:
        pipe.unload_textual_inversion(token)
        if getattr(pipe, "text_encoder_2", None) is not None and pipe.tokenizer_2 is not pipe.tokenizer:
            pipe.unload_textual_inversion(token, tokenizer=pipe.tokenizer_2,
                                          text_encoder=pipe.text_encoder_2)


@contextlib.contextmanager
def applied(pipe, loras: list[tuple[str, float]], embeddings: list[str], prompt: str,
            negative: str) -> Iterator[Applied]:
    """Put ``loras`` and the embeddings whose token is in either prompt on ``pipe`` for the
    block; take them off afterwards, also when the block fails."""
    used = Applied()
    try:
        _load_loras(pipe, loras, used)
        _load_embeddings(pipe, embeddings, f"{prompt}\n{negative}", used)
        yield used
    finally:
        _take_off(pipe, used)

