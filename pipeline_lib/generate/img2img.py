"""``img2img()``: repaint a picture with the cached model, its LoRAs, embeddings and seed options.

``img2img_session()`` keeps the adapters on and the text encoded across many calls — what the
tiled refine (:func:`pipeline_lib.compose.refine`) runs per tile.

>>> from pipeline_lib.generate import img2img
>>> out = img2img("photo.png", "a sharp photo, detailed skin", strength=0.3, seed=1)[0]  # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from ..memory import prepare_vae
from ..samplers import check_scheduler
from ..validation import check_callback, check_guidance, check_int, check_seed, check_strength, check_text
from .adapters import Applied, applied
from .api import GeneratedImage, MAX_IMAGES
from .job import Job, check_extras, conditioning, fill_defaults, step_callback
from .passes import load_controlnet, run_img2img
from .pipeline import Loaded, get_loaded, set_scheduler
from .presets import DEFAULT_PRESET

__all__ = ["img2img", "img2img_session", "Session", "as_rgb"]


def as_rgb(image):
    """A PIL RGB image from a path, PIL image or array (16-bit, grey and alpha converted)."""
    import numpy as np
    from PIL import Image

    from ..images import read_image

    if hasattr(image, "convert"):
        return image.convert("RGB")
    arr = read_image(image)[0] if not isinstance(image, np.ndarray) else image
    if arr.dtype != np.uint8:
        arr = (arr / 257).round().astype(np.uint8) if arr.dtype == np.uint16 else (
            np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    arr = np.repeat(arr[:, :, :1], 3, axis=2) if arr.shape[2] < 3 else arr[:, :, :3]
    return Image.fromarray(np.ascontiguousarray(arr))


@dataclass
class Session:
    """The model with this call's adapters on and its text encoded; ``run`` repaints."""

    loaded: Loaded
    job: Job
    cond: dict
    used: Applied
    controlnet: Any = None
    progress: bool = True

    def run(self, image, *, strength: float, seed: int, count: int = 1, control_image=None,
            on_progress: Callable | None = None) -> list:
        """PIL image(s) → PIL images of the same size (multiples of 8)."""
        cond = self.cond if count == self.job.num_images else {
            k: v[:1].repeat(count, *([1] * (v.dim() - 1))) if hasattr(v, "repeat") else v[:1] * count
            for k, v in self.cond.items()}
        steps = max(1, int(self.job.steps * strength))
        return run_img2img(self.loaded, cond, image, strength=strength, steps=self.job.steps,
                           guidance=self.job.guidance, seed=seed, count=count,
                           controlnet=self.controlnet, control_image=control_image,
                           progress=self.progress, callback=step_callback(on_progress, 0, steps, steps))

    def params(self) -> dict[str, Any]:
        job = self.job
        out = {"prompt": job.prompt, "negative_prompt": job.negative, "steps": job.steps,
               "guidance": job.guidance, "model": job.model_name, "scheduler": job.scheduler}
        if job.extras.loras:
            out["loras"] = list(job.extras.loras)
        if self.used.lora_hashes:
            out["lora_hashes"] = dict(self.used.lora_hashes)
        if self.used.ti_hashes:
            out["ti_hashes"] = dict(self.used.ti_hashes)
        if job.extras.clip_skip and job.extras.clip_skip > 1:
            out["clip_skip"] = job.extras.clip_skip
        return out


@contextlib.contextmanager
def img2img_session(prompt: str, *, model: str = DEFAULT_PRESET, negative_prompt: str | None = None,
                    steps: int | None = None, guidance: float | None = None,
                    scheduler: str | None = None, loras=None, embeddings=None,
                    clip_skip: int | None = None, controlnet=None, size=(512, 512),
                    num_images: int = 1, device=None, memory: str = "auto", dtype=None,
                    progress: bool = True) -> Iterator[Session]:
    """Load (cached) ``model``, put the LoRAs/embeddings on, encode the text once; yield a
    :class:`Session`. ``size`` is the largest image ``run`` will get (VAE tiling is planned
    for it). The adapters come off when the block ends."""
    check_text(prompt, "prompt")
    check_text(negative_prompt, "negative_prompt", optional=True)
    steps = None if steps is None else check_int(steps, "steps", 1, 1000)
    guidance = None if guidance is None else check_guidance(guidance)
    extras = check_extras(loras, embeddings, clip_skip)
    loaded = get_loaded(model, device=device, memory=memory, dtype=dtype, progress=progress)
    job = fill_defaults(loaded, prompt, negative_prompt, steps, guidance, None, None,
                        check_scheduler(scheduler), 0, num_images, extras)
    set_scheduler(loaded, job.scheduler)
    prepare_vae(loaded.pipe, loaded.plan, size[0], size[1], num_images)
    net = load_controlnet(loaded, controlnet)
    with applied(loaded.pipe, job.all_loras, extras.embeddings, job.text, job.negative) as used:
        yield Session(loaded, job, conditioning(loaded.pipe, job), used, net, progress)


def img2img(image, prompt: str, *, strength: float = 0.5, model: str = DEFAULT_PRESET,
            negative_prompt: str | None = None, steps: int | None = None,
            guidance: float | None = None, seed: int | None = None, num_images: int = 1,
            scheduler: str | None = None, loras=None, embeddings=None,
            clip_skip: int | None = None, controlnet=None, device=None, memory: str = "auto",
            dtype=None, progress: bool = True,
            on_progress: Callable[[int, int], object] | None = None) -> list[GeneratedImage]:
    """Repaint ``image`` (path, PIL or array) guided by ``prompt``: ``strength`` 0 < s ≤ 1 is how
    much may change (the sampler runs ``steps`` × strength steps). Same model, LoRA, embedding,
    clip-skip and seed options as :func:`generate` (the cached pipeline is reused through
    ``from_pipe``: nothing is loaded twice). ``controlnet="tile"`` (or a repo/folder) guides with
    a ControlNet fed the input image. Sizes are rounded down to a multiple of 8."""
    strength = check_strength(strength)
    num_images = check_int(num_images, "num_images", 1, MAX_IMAGES)
    check_callback(on_progress)
    seed = check_seed(seed, num_images)
    pil = as_rgb(image)
    w, h = (pil.width // 8) * 8, (pil.height // 8) * 8
    pil = pil if (w, h) == pil.size else pil.crop((0, 0, w, h))
    with img2img_session(prompt, model=model, negative_prompt=negative_prompt, steps=steps,
                         guidance=guidance, scheduler=scheduler, loras=loras,
                         embeddings=embeddings, clip_skip=clip_skip, controlnet=controlnet,
                         size=(w, h), num_images=num_images, device=device, memory=memory,
                         dtype=dtype, progress=progress) as session:
        images = session.run([pil] * num_images, strength=strength, seed=seed, count=num_images,
                             on_progress=on_progress)
        params = dict(session.params(), width=w, height=h, denoising_strength=strength)
    return [GeneratedImage(img, seed + i, dict(params, seed=seed + i)) for i, img in enumerate(images)]
