"""What a model argument names (registry entry, local file or folder, URL), which backend runs
it, and what ``backend="auto"`` may try instead."""
from __future__ import annotations

from pathlib import Path

from ..errors import InvalidParameterError, UnknownModelError
from .backends import BACKENDS, backend_for_file, get_backend
from .registry import MODELS, ModelSpec, get_spec

__all__ = ["DEFAULT_UPSCALER", "resolve_model", "choose_backend", "auto_candidates",
           "target_name"]

DEFAULT_UPSCALER = "realesrgan-x4plus"


def target_name(target: ModelSpec | str) -> str:
    return target.name if isinstance(target, ModelSpec) else target


def resolve_model(model: str | Path | ModelSpec) -> ModelSpec | str:
    """The registry entry for ``model``, or the resolved path of a local file/folder, or a URL.

    Raises :class:`UnknownModelError` (with close names) for anything else.
    """
    if isinstance(model, ModelSpec):
        return model
    text = str(model)
    if text.startswith(("https://", "http://")):
        return text
    if text.strip().lower() in MODELS:
        return MODELS[text.strip().lower()]
    path = Path(text).expanduser()
    if path.is_dir() and any(b.folder_marker and b.accepts(str(path)) for b in BACKENDS.values()):
        return str(path.resolve())
    if path.suffix or "/" in text or "\\" in text:
        if not path.is_file():
            raise UnknownModelError(f"model file {path} does not exist; pass a registry name "
                                    f"({', '.join(sorted(MODELS))}) or an existing file / URL.")
        return str(path.resolve())
    return get_spec(text)  # raises with suggestions


def choose_backend(target: ModelSpec | str, backend: str) -> str:
    """The backend that runs ``target``: ``backend`` itself after checking the model runs on it,
    or for ``"auto"`` the model's first installed backend (a file's format decides for files)."""
    if backend != "auto":
        plugin = get_backend(backend)  # raises the "unknown backend" error
        if isinstance(target, ModelSpec) and not plugin.runs(target.backends):
            raise InvalidParameterError(f"{target.name} runs on backends {', '.join(target.backends)}, "
                                        f"not {backend!r}.")
        return backend
    if isinstance(target, str):
        return backend_for_file(target)
    for name in target.backends:
        if name in BACKENDS:
            return name
    raise InvalidParameterError(f"no installed backend can run {target.name} "
                                f"(it needs one of {', '.join(target.backends)}).")


def auto_candidates(target: ModelSpec | str) -> list[tuple[ModelSpec | str, str]]:
    """What ``backend="auto"`` tries, in order: the requested model on each of its backends, then
    (for a non-OpenCV model) Real-ESRGAN, EDSR, ESPCN, FSRCNN, LapSRN at the model's output scale.

    ESPCN precedes FSRCNN because it measured higher PSNR at every scale (tests/test_opencv_backend.py).
    """
    if isinstance(target, str):
        return [(target, choose_backend(target, "auto"))]
    cands = [(target, b) for b in target.backends if b in BACKENDS and BACKENDS[b].auto]
    if "opencv" in target.backends:  # an OpenCV model asked for by name: no substitutes
        return cands
    s = round(target.output_scale)
    for name in (f"realesrgan-x{s}plus", f"edsr-x{s}", f"espcn-x{s}", f"fsrcnn-x{s}",
                 f"lapsrn-x{s}", "espcn-x4"):
        spec = MODELS.get(name)
        if spec is not None:
            cands += [(spec, b) for b in spec.backends
                      if b in BACKENDS and BACKENDS[b].auto and (spec, b) not in cands]
    return cands
