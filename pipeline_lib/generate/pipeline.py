"""``load_pipeline()``: one diffusion pipeline per process (per *slot*: the multi-device paths
give each device's worker its own), from a preset, repo, folder or file."""
from __future__ import annotations

import contextlib
import contextvars
import gc
import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..errors import InvalidParameterError, UnknownModelError, WeightsError
from ..gpu_guard import register_gpu_evictor
from ..hashing import a1111_short_hash
from ..hub import hub_access
from ..memory import MemoryPlan, apply_plan, plan_memory
from ..samplers import SCHEDULERS
from .presets import Preset, find_preset, get_preset
from .stand_ins import stand_in

__all__ = ["SINGLE_FILE_SUFFIXES", "Loaded", "current_pipeline", "set_scheduler", "unload_pipeline",
           "move_off_gpu", "get_loaded", "load_pipeline", "get_refiner", "pipeline_slot",
           "loaded_pipelines", "parks_idle_unet", "resident_unet", "PARK_DEVICE"]

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
    resident: str = "both"  # which UNet of a base+refiner pair is on the device: base|refiner|both


_SLOTS: dict[int, Loaded] = {}  # slot → its cached pipeline; slot 0 is everyone's by default
_SLOT = contextvars.ContextVar("pipeline_lib_slot", default=0)
# Held for loads too, so two devices' pipelines load one after the other: diffusers builds models
# under accelerate's init_empty_weights(), which patches torch.nn.Module for the whole process;
# two loads at once gave each other meta tensors ("Cannot copy out of meta tensor"), tried here.
_LOCK = threading.RLock()


@contextlib.contextmanager
def pipeline_slot(slot: int) -> Iterator[None]:
    """Inside the block, the pipeline cache of this thread is ``slot`` (0 outside any block):
    two devices working at once each keep their own pipeline instead of evicting each other's.
    Threads start in slot 0, so a worker enters its slot itself."""
    token = _SLOT.set(int(slot))
    try:
        yield
    finally:
        _SLOT.reset(token)


def current_pipeline(slot: int | None = None) -> Loaded | None:
    """The loaded pipeline of ``slot`` (None: this thread's, see :func:`pipeline_slot`) with its
    memory plan, or None."""
    return _SLOTS.get(_SLOT.get() if slot is None else slot)


def loaded_pipelines() -> list[Loaded]:
    """Every cached pipeline, all slots."""
    with _LOCK:
        return list(_SLOTS.values())


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


def _drop(slots) -> None:
    with _LOCK:
        gone = [_SLOTS.pop(s) for s in list(slots) if s in _SLOTS]
        if not gone:
            return
        cuda = any(g.plan.device.startswith("cuda") for g in gone)
        del gone
        gc.collect()
        if cuda:
            import torch

            torch.cuda.empty_cache()


def unload_pipeline() -> None:
    """Drop the cached pipelines (every slot) and give their memory (GPU memory included) back."""
    _drop(list(_SLOTS))


def _same_device(plan_device: str, device) -> bool:
    if device is None:
        return True
    text = str(device)
    return plan_device == text or plan_device == f"{text}:0" or f"{plan_device}:0" == text


def move_off_gpu(reason: str = "another model", device=None) -> bool:
    """Free the GPU for another model (e.g. a big upscale, or ncnn's Vulkan allocator) but keep
    the weights in RAM; the next ``load_pipeline`` puts them back. ``device`` ('cuda:1') limits
    it to the pipelines on that GPU (None: every GPU). Returns True when something moved.
    Registered with :mod:`pipeline_lib.gpu_guard`, so the ncnn backend calls it."""
    moved = False
    with _LOCK:
        for cur in loaded_pipelines():
            if (not cur.plan.device.startswith("cuda") or cur.plan.offload or cur.offloaded_to_cpu
                    or not _same_device(cur.plan.device, device)):
                continue
            import torch

            cur.pipe.to("cpu")
            if cur.refiner is not None:
                cur.refiner.to("cpu")
            cur.offloaded_to_cpu, moved = True, True
            gc.collect()
            torch.cuda.empty_cache()
            log.info("moved the diffusion pipeline to the CPU to make room on %s for %s",
                     cur.plan.device, reason)
    return moved


register_gpu_evictor(move_off_gpu)


def get_loaded(model: str | Path = "absolute-reality", *, device=None, memory: str = "auto",
               dtype=None, config: str | None = None, xformers: bool = False,
               progress: bool = True, channels_last: bool | None = None,
               fuse_qkv: bool | None = None, compile: bool | None = None,
               slot: int | None = None) -> Loaded:
    """The cached pipeline of ``slot`` (None: this thread's, see :func:`pipeline_slot`), loaded
    or reused; another model (or device/options) in that slot is freed first."""
    kind, source, preset = _resolve(model)
    plan = plan_memory(memory, device, dtype=dtype, xformers=xformers, channels_last=channels_last,
                       fuse_qkv=fuse_qkv, compile=compile)
    slot = _SLOT.get() if slot is None else slot
    with _LOCK:
        cur = _SLOTS.get(slot)
        base_key = (kind, source, preset.vae if preset else None, plan)
        if cur is not None and cur.key[:4] == base_key and (config is None or cur.key[4] == config):
            if cur.offloaded_to_cpu:
                _back_on_device(cur)
            cur.preset = preset  # the same weights may be reached through another name
            return cur
        if cur is not None:
            log.info("switching model: freeing %s", cur.source)
            _drop([slot])
        log.info("loading %s (%s)", source, kind)
        pipe = _load(kind, source, preset, plan, config, progress)
        apply_plan(pipe, plan)
        loaded = Loaded(base_key + (config,), pipe, plan, source, preset, "default",
                        original_scheduler=pipe.scheduler, name=_display_name(kind, source),
                        model_hash=a1111_short_hash(source) if kind == "file" else None)
        _SLOTS[slot] = loaded
        return loaded


def _back_on_device(cur: Loaded) -> None:
    """After :func:`move_off_gpu`: the pipeline back on its device (only the resident UNet of a
    base+refiner pair that parks the other)."""
    import torch

    device = cur.plan.device
    if cur.refiner is not None and cur.resident in ("base", "refiner"):
        for name, comp in cur.pipe.components.items():
            if isinstance(comp, torch.nn.Module) and name != "unet":
                comp.to(device)
        active = cur.pipe if cur.resident == "base" else cur.refiner
        active.unet.to(device)
    else:
        cur.pipe.to(device)
        if cur.refiner is not None:
            cur.refiner.to(device)
    cur.offloaded_to_cpu = False


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


#: where an idle UNet waits (host RAM): moved there and back, never reloaded
PARK_DEVICE = "cpu"


def parks_idle_unet(loaded: Loaded) -> bool:
    """Whether a base+refiner pair keeps only the UNet in use on the GPU: with the fast profile
    (everything resident) on a GPU too small for both UNets at once — planned with
    :func:`pipeline_lib.refine_plan.generation_peak_bytes` — e.g. SDXL's pair on a 15 GB T4.
    Model offload (balanced) already runs one sub-model at a time, and low streams layers."""
    plan = loaded.plan
    if loaded.preset is None or not loaded.preset.refiner or not plan.device.startswith("cuda") \
            or plan.offload is not None:
        return False
    import torch

    from ..refine_plan import generation_peak_bytes

    total = torch.cuda.get_device_properties(torch.device(plan.device)).total_memory
    both = generation_peak_bytes(loaded.preset, memory="fast", both_unets=True)
    return both > 0.9 * total  # 10 %: allocator fragmentation, other tensors


def resident_unet(loaded: Loaded, which: str) -> None:
    """Put the ``which`` ("base" or "refiner") UNet on the device and park the other in RAM,
    when :func:`parks_idle_unet` says so; the text encoders and VAE stay where they are."""
    if loaded.refiner is None or loaded.resident == which or not parks_idle_unet(loaded):
        return
    active, idle = ((loaded.pipe.unet, loaded.refiner.unet) if which == "base"
                    else (loaded.refiner.unet, loaded.pipe.unet))
    idle.to(PARK_DEVICE)  # first out, then in: the two never share the GPU
    if loaded.plan.device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
    active.to(loaded.plan.device)
    loaded.resident = which
    log.info("%s UNet on %s, the other parked in RAM", which, loaded.plan.device)


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
        if parks_idle_unet(loaded):  # the base UNet leaves before the refiner's arrives
            loaded.pipe.unet.to(PARK_DEVICE)
            loaded.resident = "refiner"
        apply_plan(refiner, loaded.plan)
        refiner.set_progress_bar_config(disable=not progress, leave=False, desc="refine")
        loaded.refiner = refiner
    return loaded.refiner
