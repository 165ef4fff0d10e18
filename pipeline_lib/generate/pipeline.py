"""``load_pipeline()``: one diffusion pipeline per process, from a preset, repo, folder or file."""
from __future__ import annotations

import gc
import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InvalidParameterError, UnknownModelError, WeightsError
from ..gpu_guard import register_gpu_evictor
from ..hashing import a1111_short_hash
from ..hub import hub_access
from ..memory import MemoryPlan, apply_plan, plan_memory
from ..samplers import SCHEDULERS
from .presets import Preset, find_preset, get_preset
from .stand_ins import stand_in

__all__ = ["SINGLE_FILE_SUFFIXES", "Loaded", "current_pipeline", "set_scheduler", "unload_pipeline",
           "move_off_gpu", "get_loaded", "load_pipeline", "get_refiner"]

log = logging.getLogger(__name__)

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")


@dataclass
class Loaded:
    key: tuple
    pipe: Any
    plan: MemoryPlan
    source: str
    preset: Preset | None
    scheduler: str  # scheduler key currently set on pipe
    original_scheduler: Any = None
    refiner: Any = None
    offloaded_to_cpu: bool = False
    name: str = ""  # what metadata calls the model: preset, repo id, or a local file's stem
    model_hash: str | None = None  # A1111's short hash, for single-file checkpoints
    img2img: Any = None  # (controlnet id, img2img pipeline made with from_pipe)
    controlnets: dict = field(default_factory=dict)  # source → ControlNetModel (one at a time)


_CURRENT: Loaded | None = None
_LOCK = threading.RLock()


def current_pipeline() -> Loaded | None:
    """The loaded pipeline (one per process) with its memory plan, or None."""
    return _CURRENT


def _resolve(model: str | Path) -> tuple[str, str, Preset | None]:
    """(kind, source, preset): kind is 'folder', 'file' or 'hub'."""
    text = str(model).strip()
    if not text:
        raise InvalidParameterError("model is empty; pass a preset name (e.g. 'absolute-reality'), "
                                    "a Hub repo id, a diffusers folder or a .safetensors file.")
    preset = find_preset(text)
    preset = stand_in(text, preset) or preset
    source = preset.repo if preset else text
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise UnknownModelError(f"{path} is a folder but not a diffusers pipeline (no "
                                    "model_index.json); save one with pipe.save_pretrained().")
        return "folder", str(path.resolve()), preset
    if path.suffix.lower() in SINGLE_FILE_SUFFIXES:
        if not path.is_file():
            raise UnknownModelError(f"checkpoint {path} does not exist.")
        return "file", str(path.resolve()), preset
    looks_like_path = source.startswith((".", "/", "~")) or "\\" in source or source.count("/") > 1
    if preset is None and (looks_like_path or "/" not in source):
        if looks_like_path:
            raise UnknownModelError(f"model folder {path} does not exist.")
        get_preset(text)  # raises with suggestions
    return "hub", source, preset


def _display_name(kind: str, source: str) -> str:
    """A local model's file stem or folder name (never its absolute path, which would leak
    the user's folders into every shared image); a Hub repo id as it is."""
    if kind == "file":
        return Path(source).stem
    return Path(source).name if kind == "folder" else source


def _pipeline_class(kind: str, source: str, config: str | None, preset: Preset | None):
    import diffusers

    name = None
    cfg_dir = config or (preset.config if preset else None)
    if cfg_dir and Path(cfg_dir, "model_index.json").is_file():
        name = json.loads(Path(cfg_dir, "model_index.json").read_text())["_class_name"]
    elif preset is not None:
        name = preset.pipeline_class
    elif kind == "file" and source.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(source, "pt") as f:
            xl = any(k.startswith("conditioner.embedders.1.") for k in f.keys())
        name = "StableDiffusionXLPipeline" if xl else "StableDiffusionPipeline"
    elif kind == "file":
        name = "StableDiffusionPipeline"
    return getattr(diffusers, name) if name else None


def _load(kind: str, source: str, preset: Preset | None, plan: MemoryPlan, config: str | None,
          progress: bool):
    # before importing diffusers: fail in seconds when the Hub cannot be reached, not after retries
    hub = hub_access(source) if kind == "hub" else {}
    import diffusers

    kwargs: dict[str, Any] = {**plan.load_kwargs, **hub}
    if preset and preset.vae:
        kwargs["vae"] = diffusers.AutoencoderKL.from_pretrained(
            preset.vae, **plan.load_kwargs, **hub_access(preset.vae, "VAE", "config.json"))
    if not progress:
        diffusers.utils.logging.disable_progress_bar()
    try:
        if kind == "file":
            cls = _pipeline_class(kind, source, config, preset)
            cfg = config or (preset.config if preset else None)
            if cfg:
                kwargs["config"] = cfg
            return cls.from_single_file(source, **kwargs)
        if preset and preset.variant and plan.dtype == "float16":
            try:
                return diffusers.AutoPipelineForText2Image.from_pretrained(
                    source, variant=preset.variant, **kwargs)
            except (ValueError, OSError, EnvironmentError) as exc:
                log.info("no %s variant of %s (%s); loading the full-precision files",
                         preset.variant, source, exc)
        return diffusers.AutoPipelineForText2Image.from_pretrained(source, **kwargs)
    except (OSError, EnvironmentError, ValueError) as exc:
        hint = ("; for a single file pass config=<local diffusers folder or repo id> so no "
                "download is needed" if kind == "file" else
                "; check the repo id, or log in with `hf auth login` for gated models"
                if kind == "hub" else "")
        raise WeightsError(f"could not load model {source!r}: {exc}{hint}") from exc
    finally:
        if not progress:
            diffusers.utils.logging.enable_progress_bar()


def set_scheduler(loaded: Loaded, name: str) -> None:
    """Swap the scheduler when it changes; built from the model's own scheduler config, so
    training settings (beta schedule, v-prediction, timestep spacing) are kept."""
    if name == loaded.scheduler:
        return
    import diffusers

    cls_name, extra, _label = SCHEDULERS[name]
    original = loaded.original_scheduler
    loaded.pipe.scheduler = (original if cls_name is None else
                             getattr(diffusers, cls_name).from_config(original.config, **extra))
    loaded.scheduler = name


def unload_pipeline() -> None:
    """Drop the cached pipeline and give its memory (GPU memory included) back."""
    global _CURRENT
    with _LOCK:
        if _CURRENT is None:
            return
        device = _CURRENT.plan.device
        _CURRENT = None
        gc.collect()
        if device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()


def move_off_gpu(reason: str = "another model") -> bool:
    """Free the GPU for another model (e.g. a big upscale, or ncnn's Vulkan allocator) but keep
    the weights in RAM; the next ``load_pipeline`` puts them back. Returns True when something
    moved. Registered with :mod:`pipeline_lib.gpu_guard`, so the ncnn backend calls it."""
    with _LOCK:
        cur = current_pipeline()
        if cur is None or not cur.plan.device.startswith("cuda") or cur.plan.offload or cur.offloaded_to_cpu:
            return False
        import torch

        cur.pipe.to("cpu")
        cur.offloaded_to_cpu = True
        gc.collect()
        torch.cuda.empty_cache()
        log.info("moved the diffusion pipeline to the CPU to make room on %s for %s",
                 cur.plan.device, reason)
        return True


register_gpu_evictor(move_off_gpu)


def get_loaded(model: str | Path = "absolute-reality", *, device=None, memory: str = "auto",
               dtype=None, config: str | None = None, xformers: bool = False,
               progress: bool = True, channels_last: bool | None = None,
               fuse_qkv: bool | None = None, compile: bool | None = None) -> Loaded:
    global _CURRENT
    kind, source, preset = _resolve(model)
    plan = plan_memory(memory, device, dtype=dtype, xformers=xformers, channels_last=channels_last,
                       fuse_qkv=fuse_qkv, compile=compile)
    with _LOCK:
        cur = _CURRENT
        base_key = (kind, source, preset.vae if preset else None, plan)
        if cur is not None and cur.key[:4] == base_key and (config is None or cur.key[4] == config):
            if cur.offloaded_to_cpu:
                cur.pipe.to(plan.device)
                cur.offloaded_to_cpu = False
            cur.preset = preset  # the same weights may be reached through another name
            return cur
        if cur is not None:
            log.info("switching model: freeing %s", cur.source)
            unload_pipeline()
        log.info("loading %s (%s)", source, kind)
        pipe = _load(kind, source, preset, plan, config, progress)
        apply_plan(pipe, plan)
        loaded = Loaded(base_key + (config,), pipe, plan, source, preset, "default",
                        original_scheduler=pipe.scheduler, name=_display_name(kind, source),
                        model_hash=a1111_short_hash(source) if kind == "file" else None)
        _CURRENT = loaded
        return loaded


def load_pipeline(model: str | Path = "absolute-reality", *, device=None, memory: str = "auto",
                  dtype=None, config: str | None = None, xformers: bool = False,
                  progress: bool = True, channels_last: bool | None = None,
                  fuse_qkv: bool | None = None, compile: bool | None = None):
    """Load (once per process) and return the diffusers pipeline for ``model``.

    ``model`` is a preset name (see :func:`list_presets`), a Hub repo id, a local diffusers folder
    or a single ``.safetensors``/``.ckpt`` checkpoint (``config=`` names a local diffusers
    folder so that works offline). The class comes from the model (``AutoPipelineForText2Image``).
    Asking for another model frees the current one first, so two never share a 16 GB GPU.
    ``channels_last`` / ``fuse_qkv`` (None: on for CUDA, off on CPU) and ``compile`` (None:
    ``PIPELINE_LIB_COMPILE``, else off) are the speed options of :mod:`.memory`; each
    combination is its own cached pipeline.

    >>> pipe = load_pipeline("sdxl-turbo", memory="auto")            # doctest: +SKIP
    >>> type(pipe).__name__                                          # doctest: +SKIP
    'StableDiffusionXLPipeline'
    """
    return get_loaded(model, device=device, memory=memory, dtype=dtype, config=config,
                      xformers=xformers, progress=progress, channels_last=channels_last,
                      fuse_qkv=fuse_qkv, compile=compile).pipe


def get_refiner(loaded: Loaded, progress: bool = True):
    """The SDXL refiner of ``loaded``'s preset, sharing its VAE and second text encoder."""
    if loaded.refiner is None:
        import diffusers

        repo = loaded.preset.refiner
        kwargs = ({"variant": loaded.preset.variant}
                  if loaded.plan.dtype == "float16" and loaded.preset.variant else {})
        try:
            refiner = diffusers.StableDiffusionXLImg2ImgPipeline.from_pretrained(
                repo, text_encoder_2=loaded.pipe.text_encoder_2, vae=loaded.pipe.vae,
                **loaded.plan.load_kwargs, **kwargs, **hub_access(repo, "refiner"))
        except (OSError, ValueError) as exc:
            raise WeightsError(f"could not load the refiner {repo!r}: {exc}") from exc
        apply_plan(refiner, loaded.plan)
        refiner.set_progress_bar_config(disable=not progress, leave=False, desc="refine")
        loaded.refiner = refiner
    return loaded.refiner
