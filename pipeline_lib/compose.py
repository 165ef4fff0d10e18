"""Where generation meets upscaling: ``text_to_image`` (prompt → picture → target size) and the
SD → x2-latent hand-off (generate with ``output_type="latent"``, upscale the latents, no VAE
round trip). The only module that uses both :mod:`pipeline_lib.generate` and
:mod:`pipeline_lib.upscale`; neither of those imports the other.

>>> from pipeline_lib import text_to_image
>>> big = text_to_image("portrait of an old fisherman", size=2048)[0]      # doctest: +SKIP
>>> big.image.size                                                         # doctest: +SKIP
(1365, 2048)
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import devices
from .errors import BackendUnavailableError, InvalidParameterError, WeightsError
from .generate import (DEFAULT_PRESET, MAX_IMAGES, GeneratedImage, as_rgb, current_pipeline,
                       generate, img2img_session, move_off_gpu, register_pixel_upscaler)
from .generate.pipeline import get_loaded, pipeline_slot
from .multi_gpu import ProgressSum, choose_devices, pipelined
from .presentation import refined_params
from .refine_plan import refine_memory_plan
from .upscale import (DEFAULT_UPSCALER, ModelSpec, UpscaleResult, load_upscaler, resolve_model,
                      upscale)
from .upscale.pixels import from_float, resize
from .upscale.sizing import parse_size, target_size
from .upscale.tiling import check_tiling, run_tiled, tile_layout
from .validation import MAX_SEED, check_callback, check_int, check_seed, check_strength

__all__ = ["text_to_image", "refine", "refine_generated", "upscaler_options", "latent_handoff", "make_room",
           "hires_pixel_upscale", "tile_seed", "UPSCALE_HEADROOM", "SD_LATENT_SPACE"]

log = logging.getLogger(__name__)

UPSCALE_HEADROOM = 3 * 1024 ** 3  # free GPU bytes the upscaler wants; less → park the pipeline
# Generation pipelines whose latents live in the SD-1.x/2.x VAE space the latent upscaler knows.
SD_LATENT_SPACE = ("StableDiffusionPipeline",)


def _diffusers_class(upscaler) -> str | None:
    """The diffusers class a diffusion upscaler name/folder stands for; None for other upscalers."""
    try:
        target = resolve_model(upscaler)
    except Exception:  # unknown names are reported by upscale() itself, with suggestions
        return None
    if isinstance(target, ModelSpec):
        return target.pipeline if "diffusion" in target.backends else None
    index = Path(target, "model_index.json")
    return json.loads(index.read_text())["_class_name"] if index.is_file() else None


def upscaler_options(upscaler, gen: GeneratedImage) -> dict[str, Any]:
    """Per-call options for ``upscale()``: a diffusion upscaler is guided by the picture's own
    prompt and seeded with its seed (so the result is reproducible); others take none."""
    if _diffusers_class(upscaler) is None:
        return {}
    return {"prompt": gen.params.get("prompt", ""), "seed": gen.seed}


def latent_handoff(model, upscaler, generate_kwargs: dict) -> Callable | None:
    """A function ``(GeneratedImage with latents, size) -> UpscaleResult`` when ``upscaler`` is an x2
    latent upscaler and ``model`` an SD-1.x/2.x pipeline; None otherwise (decode, then upscale)."""
    from .upscale.backends.diffusion_backend import LATENT  # imports torch: only when asked

    if _diffusers_class(upscaler) != LATENT:
        return None
    device, progress = generate_kwargs.get("device"), generate_kwargs.get("progress", True)
    speed = {k: generate_kwargs.get(k) for k in ("channels_last", "fuse_qkv", "compile")}
    loaded = get_loaded(model, device=device, memory=generate_kwargs.get("memory", "auto"),
                        progress=progress, **speed)  # cached: generate() reuses it
    kind = type(loaded.pipe).__name__
    if kind not in SD_LATENT_SPACE or (loaded.preset and loaded.preset.refiner):
        log.info("%s latents are not in the SD-1.x latent space; decoding, then upscaling the "
                 "image with %s", kind, upscaler)
        return None
    try:
        up = load_upscaler(upscaler, device, backend="diffusion", progress=progress)
    except (WeightsError, BackendUnavailableError) as exc:
        log.warning("latent upscaler unavailable (%s); decoding and upscaling the image instead", exc)
        return None

    def handoff(gen: GeneratedImage, size) -> UpscaleResult:
        return _upscale_latents(up, upscaler, gen, size, progress)

    return handoff


def _upscale_latents(up, upscaler, gen: GeneratedImage, size, progress: bool) -> UpscaleResult:
    from PIL import Image

    from .upscale.backends.diffusion_backend import upscale_latents

    t0 = time.perf_counter()
    opts = upscaler_options(upscaler, gen)
    chw = upscale_latents(up, gen.image, **opts)[0]
    h, w = chw.shape[1:]
    src_w = gen.params.get("width", w // up.scale)
    out_size = target_size(w, h, size=size)
    if out_size[0] > w or out_size[1] > h:  # more passes of the same model, then the resize
        img = Image.fromarray(from_float(chw, np.dtype(np.uint8)))
        res = upscale(img, upscaler, size=size, backend="diffusion", progress=progress,
                      full_result=True, **opts)
        image, used_tile = res.image, res.tile
    else:
        image, used_tile = Image.fromarray(from_float(resize(chw, out_size), np.dtype(np.uint8))), 0
    result = UpscaleResult(image, up.name, "diffusion", up.device, up.dtype, out_size[0] / src_w,
                           out_size, used_tile, time.perf_counter() - t0)
    image.info.update(result.as_metadata())
    return result


@register_pixel_upscaler
def hires_pixel_upscale(images: list, name: str, scale: float, device, progress: bool) -> list:
    """The hires fix's pixel upscaler (registered with generate/ at import): ``name`` is any
    upscaler; the result is resized to exactly ``scale`` × the input."""
    make_room()
    out = []
    for img in images:
        size = (round(img.width * scale), round(img.height * scale))
        out.append(upscale(img, name, size=size, device=device, progress=progress))
    return out


def make_room() -> None:
    """Park the diffusion pipeline in RAM when the GPU lacks room for the upscaler beside it."""
    cur = current_pipeline()
    if cur is None or not cur.plan.device.startswith("cuda"):
        return
    import torch

    free = devices.free_memory(torch.device(cur.plan.device))
    if free is not None and free < UPSCALE_HEADROOM:
        move_off_gpu()


def text_to_image(prompt: str, *, model: str = DEFAULT_PRESET, upscaler: str = DEFAULT_UPSCALER,
                  size: int | tuple[int, int] | str = 2048, refine_strength: float | None = None,
                  devices=None, **generate_kwargs) -> list[GeneratedImage]:
    """Generate, then upscale each picture to ``size``: an int is the long side (aspect kept:
    512×768 → 1365×2048), ``(w, h)`` is exact. A diffusion upscaler (sd-x4, sd-x2-latent) gets
    the image's prompt and seed; ``upscaler="sd-x2-latent"`` after an SD-1.x/2.x model takes the
    latents directly (no VAE decode/encode), then further passes/resizing reach ``size``. The
    diffusion model is moved off the GPU first when the two would not fit together.
    ``refine_strength=0.3`` then runs :func:`refine` over each upscaled picture (same prompt,
    model, LoRAs and seed): GAN sharpness plus diffusion texture. Each
    result's ``params`` adds upscaler, upscale_by and upscale_size (and the refine settings);
    ``generate(**result.generate_kwargs())`` re-makes the un-upscaled picture.

    ``devices=["cuda:0", "cuda:1"]`` (or ``"auto"`` on Kaggle's T4 ×2): generation runs on the
    first device and upscaling (and refining) on the second, pipelined: while image *k* is
    upscaled, image *k+1* is generated (each image alone, seed + i; pictures decoded, no latent
    hand-off). One device: as without ``devices``.

    >>> out = text_to_image("a red fox in snow", model="sdxl-turbo", size=2048)[0]  # doctest: +SKIP
    >>> out.image.size                                                           # doctest: +SKIP
    (2048, 2048)
    """
    target = parse_size(size)
    if target is None:
        raise InvalidParameterError("size must be a long side (e.g. 2048) or (width, height).")
    resolve_model(upscaler)  # an unknown upscaler fails now, not after minutes of generation
    if refine_strength is not None:
        check_strength(refine_strength, "refine_strength")
    devs = choose_devices(generate_kwargs.pop("device", None), devices)
    if len(devs) > 1:
        return _pipelined(prompt, model, upscaler, target, refine_strength, devs[:2],
                          generate_kwargs)
    generate_kwargs["device"] = devs[0]
    handoff = latent_handoff(model, upscaler, generate_kwargs)
    images = generate(prompt, model=model, output_type="latent" if handoff else "pil",
                      **generate_kwargs)
    make_room()
    out = [_upscaled(gen, upscaler, target, generate_kwargs.get("device"),
                     generate_kwargs.get("progress", True), handoff) for gen in images]
    if refine_strength is None:
        return out
    return [refine_generated(g, model, refine_strength, generate_kwargs) for g in out]


def _upscaled(gen: GeneratedImage, upscaler, target, device, progress: bool,
              handoff=None) -> GeneratedImage:
    if handoff:  # SD latents straight into the x2 latent upscaler: no decode/encode trip
        res = handoff(gen, size=target)
    else:
        res = upscale(gen.image, upscaler, size=target, device=device, progress=progress,
                      full_result=True, **upscaler_options(upscaler, gen))
    params = dict(gen.params, upscaler=res.model, upscale_by=float(res.scale),
                  upscale_size=f"{res.size[0]}x{res.size[1]}")
    return GeneratedImage(res.image, gen.seed, params)


def _pipelined(prompt: str, model, upscaler, target, strength, devs: list,
               kwargs: dict) -> list[GeneratedImage]:
    """Generation on ``devs[0]`` one image ahead of upscale (+ refine) on ``devs[1]``; each
    device has its own pipeline slot, so the refiner's copy never evicts the generator's."""
    count = check_int(kwargs.pop("num_images", 1), "num_images", 1, MAX_IMAGES)
    seed = check_seed(kwargs.pop("seed", None), count)
    on_progress, progress = kwargs.pop("on_progress", None), kwargs.get("progress", True)
    check_callback(on_progress)
    log.info("generating on %s, upscaling%s on %s, pipelined over %d images", devs[0],
             "" if strength is None else " and refining", devs[1], count)
    with ProgressSum(count, on_progress, progress) as steps:
        def produce(index: int) -> GeneratedImage:
            with pipeline_slot(0):
                return generate(prompt, model=model, device=devs[0], seed=seed + index,
                                num_images=1, on_progress=steps.part(index),
                                **dict(kwargs, progress=False))[0]

        def consume(gen: GeneratedImage) -> GeneratedImage:
            with pipeline_slot(1):
                big = _upscaled(gen, upscaler, target, devs[1], progress)
                if strength is None:
                    return big
                return refine_generated(big, model, strength, dict(kwargs, device=devs[1]))

        return pipelined(list(range(count)), produce, consume, devices=devs)


def refine_generated(gen: GeneratedImage, model, strength: float, generate_kwargs: dict, *,
                     steps: int | None = None) -> GeneratedImage:
    """:func:`refine` over ``gen`` with its own prompt and seed and the settings of the
    ``generate_kwargs`` that made it (model, LoRAs, embeddings...); ``params`` gain the
    ``refine_*`` settings. ``steps`` None: the model's own."""
    keys = ("negative_prompt", "guidance", "scheduler", "loras", "embeddings", "clip_skip",
            "device", "memory", "dtype", "progress")
    opts = {k: generate_kwargs[k] for k in keys if k in generate_kwargs}
    ref = refine(gen.image, gen.params.get("prompt", ""), model=model, strength=strength,
                 seed=gen.seed, steps=steps, **opts)
    return GeneratedImage(ref.image, gen.seed, refined_params(gen.params, ref))


# ------------------------------------------------------------------ tiled detail refine
SEAM_STRENGTH = 0.5  # the seam-fix pass repaints tile borders at this fraction of the strength
_SEAM_SEEDS = 1 << 20  # seam bands draw seeds from a range far from the tiles'


def tile_seed(seed: int, index: int) -> int:
    """The seed of tile ``index``: consecutive from ``seed`` (like a batch), wrapping at 2**32."""
    return (seed + index) % (MAX_SEED + 1)


def _to_float(img) -> np.ndarray:
    return np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0


def _tile_fn(session, strength: float, seed: int, first: int, counter: dict, control: bool):
    """``fn(batch)`` for the upscale tiler (scale 1): each tile repainted with its own seed.
    Tiles the tiler shrank to share the length are padded (edge-replicated) to a multiple of 8
    for the VAE and cropped back."""
    from PIL import Image

    def fn(batch: np.ndarray) -> np.ndarray:
        out = []
        for chw in batch:
            h, w = chw.shape[1:]
            ph, pw = -h % 8, -w % 8
            padded = np.pad(chw, ((0, 0), (0, ph), (0, pw)), mode="edge")
            img = Image.fromarray(from_float(padded, np.dtype(np.uint8)))
            index = first + counter["n"]
            counter["n"] += 1
            res = session.run(img, strength=strength, seed=tile_seed(seed, index),
                              control_image=img if control else None)[0]
            out.append(_to_float(res)[:, :h, :w])
        return np.stack(out)

    return fn


class _Count:
    """Progress for the tiler: a tqdm bar and/or ``on_progress(done, total)``."""

    def __init__(self, total: int, progress: bool, on_progress):
        from tqdm.auto import tqdm

        self.total, self.done, self.on_progress = total, 0, on_progress
        self.bar = tqdm(total=total, desc="refine tiles", leave=False, disable=not progress)

    def update(self, n: int = 1) -> None:
        self.done += n
        self.bar.update(n)
        if self.on_progress is not None:
            self.on_progress(min(self.done, self.total), self.total)


def _seam_bands(length: int, tile: int, overlap: int, band: int) -> list[tuple[int, int]]:
    """(start, end) of a band centred on every border between neighbouring tiles."""
    size, starts = tile_layout(length, tile, overlap)
    out = []
    for a, b in zip(starts, starts[1:]):
        centre = (b + a + size) // 2
        lo = max(0, min(centre - band // 2, length - band))
        out.append((lo, lo + band))
    return out


def _ramp(band: int) -> np.ndarray:
    """Blend weight across a seam band: 0 at its edges, 1 over its middle half."""
    pos = (np.arange(band, dtype=np.float32) + 0.5) / band
    return np.clip(np.minimum(pos, 1 - pos) * 4, 0.0, 1.0)


def _seam_fix(canvas: np.ndarray, run_strip, tile: int, overlap: int, band: int) -> int:
    """Repaint a band over every tile border (both directions) and feather it in; returns the
    number of bands. ``run_strip(chw) -> chw`` repaints one strip (tiled along its length)."""
    _, h, w = canvas.shape
    count = 0
    for lo, hi in _seam_bands(w, tile, overlap, band):
        strip = run_strip(canvas[:, :, lo:hi])
        wgt = _ramp(hi - lo)[None, None, :]
        canvas[:, :, lo:hi] = canvas[:, :, lo:hi] * (1 - wgt) + strip * wgt
        count += 1
    for lo, hi in _seam_bands(h, tile, overlap, band):
        strip = run_strip(canvas[:, lo:hi, :])
        wgt = _ramp(hi - lo)[None, :, None]
        canvas[:, lo:hi, :] = canvas[:, lo:hi, :] * (1 - wgt) + strip * wgt
        count += 1
    return count


def _native_tile(session) -> int:
    return max(64, (min(session.job.width, session.job.height) // 8) * 8)


def _check_refine(strength, tile, overlap, steps, seed) -> tuple[float, int]:
    strength = check_strength(strength)
    check_tiling(tile, overlap)
    if tile is not None and tile % 8:
        raise InvalidParameterError(f"tile must be a multiple of 8 (the VAE's factor), got {tile}.")
    if steps is not None and (not isinstance(steps, int) or not 1 <= steps <= 1000):
        raise InvalidParameterError(f"steps must be in 1..1000, got {steps!r}.")
    return strength, check_seed(seed)


def refine(image, prompt: str, *, model: str = DEFAULT_PRESET, strength: float = 0.3,
           tile: int | None = None, overlap: int | None = None, steps: int | None = None,
           seed: int | None = None, controlnet=None, progress: bool = True,
           on_progress: Callable[[int, int], object] | None = None, seam_fix: bool = True,
           negative_prompt: str | None = None, guidance: float | None = None,
           scheduler: str | None = None, loras=None, embeddings=None, clip_skip: int | None = None,
           device=None, memory: str = "auto", dtype=None) -> GeneratedImage:
    """Tiled detail refine (A1111's Ultimate SD Upscale): the same size out, repainted tile by
    tile with img2img at ``strength``, so a GAN-upscaled picture gets real texture back.

    ``tile`` (default: the model's native size, 512 for SD-1.5, 1024 for SDXL; a multiple of 8)
    and ``overlap`` (default tile/8) lay the tiles out with the upscale tiler, which feathers
    every overlap; then (``seam_fix``) a band over each tile border is repainted at half the
    strength and feathered in. Tile *i* uses seed ``seed + i``. ``controlnet="tile"`` (SD-1.5
    ``lllyasviel/control_v11f1e_sd15_tile``, SDXL ``xinsir/controlnet-tile-sdxl-1.0``), a repo
    or a folder guides each tile with itself, so higher strengths keep the composition.
    Tiles run one at a time (the GPU peak is one tile's; see :func:`refine_memory_plan`).
    Returns a :class:`GeneratedImage` whose ``params`` record the refine settings."""
    strength, seed = _check_refine(strength, tile, overlap, steps, seed)
    src = as_rgb(image)
    canvas = _to_float(src)
    with img2img_session(prompt, model=model, negative_prompt=negative_prompt, steps=steps,
                         guidance=guidance, scheduler=scheduler, loras=loras, embeddings=embeddings,
                         clip_skip=clip_skip, controlnet=controlnet, size=(1024, 1024),
                         device=device, memory=memory, dtype=dtype, progress=False) as session:
        tile = tile or _native_tile(session)
        overlap = overlap if overlap is not None else min(max(8, tile // 8 // 8 * 8), tile // 2 - 1)
        plan = refine_memory_plan(model, size=src.size, tile=tile, overlap=overlap,
                                  memory=_profile(session), controlnet=controlnet is not None,
                                  pipe=session.loaded.pipe)
        log.info("%s", plan.describe())
        t0 = time.perf_counter()
        out, bands = _refine_canvas(session, canvas, strength, seed, tile, overlap, seam_fix,
                                    controlnet is not None, progress, on_progress)
        params = dict(session.params(), width=src.width, height=src.height, seed=seed,
                      refine_strength=strength, refine_tile=tile, refine_overlap=overlap,
                      refine_seam_fix=bool(seam_fix), refine_tiles=plan.tiles)
    if controlnet is not None:
        params["refine_controlnet"] = controlnet if isinstance(controlnet, str) else "custom"
    seconds = time.perf_counter() - t0
    log.info("refined %dx%d in %d tiles + %d seam bands in %.1fs (%.1f s/MP)", src.width,
             src.height, plan.tiles, bands, seconds, seconds / (src.width * src.height / 1e6))
    from PIL import Image

    result = Image.fromarray(from_float(out, np.dtype(np.uint8)))
    return GeneratedImage(result, seed, params)


def _profile(session) -> str:
    plan = session.loaded.plan
    return plan.profile if plan.profile in ("fast", "balanced", "low") else "fast"


def _refine_canvas(session, canvas, strength, seed, tile, overlap, seam_fix, control, progress,
                   on_progress) -> tuple[np.ndarray, int]:
    _, h, w = canvas.shape
    n_tiles = len(tile_layout(h, tile, overlap)[1]) * len(tile_layout(w, tile, overlap)[1])
    counter = _Count(n_tiles, progress, on_progress)
    fn = _tile_fn(session, strength, seed, 0, {"n": 0}, control)
    out = run_tiled(fn, canvas, 1, tile, overlap, progress=counter)
    bands = 0
    if seam_fix and n_tiles > 1:
        band = max(16, (overlap * 2 + 7) // 8 * 8)
        seam = {"n": 0}

        def run_strip(strip: np.ndarray) -> np.ndarray:
            fn2 = _tile_fn(session, strength * SEAM_STRENGTH, seed + _SEAM_SEEDS, 0, seam, control)
            return run_tiled(fn2, np.ascontiguousarray(strip), 1, tile, overlap)

        bands = _seam_fix(out, run_strip, tile, overlap, band)
    counter.bar.close()
    return np.clip(out, 0.0, 1.0), bands
