"""What a generation request needs: checks (the library's rules and the server's limits), the
``generate()`` call and the PNG encoding with the A1111 ``parameters`` text per image.

Enabled by ``create_app(generate_model=...)`` / ``serve --generate-model PRESET|REPO|FOLDER|FILE``.
"""
from __future__ import annotations

import base64
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..compose import refine, refine_generated
from ..errors import InvalidParameterError
from ..generate import GeneratedImage, generate, get_preset, list_presets, load_pipeline
from ..generate.adapters import embedding_by_name, lora_by_name
from ..generate.job import HIRES_LATENT, check_extras, check_hires_needs_scale, model_defaults
from ..generate.passes import hires_dims
from ..generate.pipeline import get_loaded
from ..images import encode_image
from ..presentation import upscaled_params
from ..upscale.registry import MODELS
from ..upscale.sizing import parse_size, working_canvas
from ..validation import check_guidance, check_int, check_seed, check_strength
from .limits import ServerLimits
from .schemas import GenerationRequest
from .service import check_canvas, check_n, check_response_format, not_served

__all__ = ["GenerationJob", "Generation"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationJob:
    """One validated request: ``seed`` is the first image's (image i uses seed + i)."""

    prompt: str
    n: int
    seed: int
    width: int | None
    height: int | None
    steps: int | None
    guidance: float | None
    negative_prompt: str | None
    loras: tuple[tuple[str, float], ...] = ()
    embeddings: tuple[str, ...] = ()  # files in the server's embeddings folder
    clip_skip: int | None = None
    hires: tuple[tuple[str, Any], ...] = ()  # the hires_* fields given, for generate()
    refine_strength: float | None = None

    @property
    def hires_scale(self) -> float | None:
        return dict(self.hires).get("hires_scale")


def _looks_like_a_preset(model: str) -> bool:
    # repo ids have a slash, files and folders exist; anything else must be a preset name
    return "/" not in model and "\\" not in model and not Path(model).expanduser().exists()


class Generation:
    """The served text-to-image model (preset, Hub repo, diffusers folder or checkpoint)."""

    def __init__(self, model: str, device: str | None, dtype: str | None,
                 limits: ServerLimits, memory: str = "auto") -> None:
        model = str(model)
        if _looks_like_a_preset(model):
            model = get_preset(model).name  # fail fast: UnknownModelError with suggestions
        self.model, self.device, self.dtype, self.memory = model, device, dtype, memory
        self.limits = limits

    @property
    def _options(self) -> dict[str, Any]:
        # the same options at load and per call, so generate() finds the pipeline loaded
        return {"device": self.device, "dtype": self.dtype, "memory": self.memory,
                "progress": False}

    def load(self):
        pipe = load_pipeline(self.model, **self._options)
        log.info("generating with %s on %s", self.model, getattr(pipe, "device", "?"))
        return pipe

    def _size(self, size: str | None) -> tuple[int | None, int | None]:
        if size is None or size.strip().lower() == "auto":
            return None, None
        parsed = parse_size(size)
        if not isinstance(parsed, tuple):
            raise InvalidParameterError(f"size must be 'WxH' (e.g. '512x512') or 'auto', got "
                                        f"{size!r}.")
        w, h = parsed
        check_canvas((w, h), self.limits, f"size {w}x{h}",
                     "Generate smaller and upscale with POST /v1/images/upscale.")
        return w, h

    def check_fields(self, req: GenerationRequest) -> GenerationJob:
        n = check_n(req.n, self.limits)
        check_response_format(req.response_format)
        if req.model and req.model.strip() and req.model.strip() != self.model:
            raise not_served(req.model.strip(), self.model, "--generate-model")
        width, height = self._size(req.size)
        steps = None if req.steps is None else check_int(
            req.steps, "steps", 1, self.limits.max_steps, hint="this server's --max-steps")
        guidance = None if req.guidance is None else check_guidance(req.guidance)
        # by name in the server's folders only (absolute paths from here on): a request never
        # makes the server read a path, not even one relative to its working directory
        loras = tuple((str(lora_by_name(ref.name)), ref.weight) for ref in req.loras or ())
        hires = self._check_hires(req)
        # the library's rules (ranges, messages) on the workflow fields, before any waiting
        check_extras(clip_skip=req.clip_skip, **dict(hires))
        embeddings = tuple(str(embedding_by_name(name)) for name in req.embeddings or ())
        refine_strength = None if req.refine_strength is None else check_strength(
            req.refine_strength, "refine_strength")
        return GenerationJob(req.prompt, n, check_seed(req.seed, n), width, height, steps,
                             guidance, req.negative_prompt, loras, embeddings, req.clip_skip,
                             hires, refine_strength)

    def _check_hires(self, req: GenerationRequest) -> tuple[tuple[str, Any], ...]:
        fields = {"hires_strength": req.hires_strength, "hires_steps": req.hires_steps,
                  "hires_upscaler": req.hires_upscaler}
        check_hires_needs_scale(req.hires_scale, **fields)
        upscaler = req.hires_upscaler
        if upscaler is not None and upscaler.strip().lower() not in (HIRES_LATENT, *MODELS):
            raise InvalidParameterError(
                f"hires_upscaler must be {HIRES_LATENT!r} or an upscaler name (GET /v1/models: "
                f"'available', e.g. realesrgan-x4plus), got {upscaler!r}; this server reads no "
                "paths or URLs.")
        if req.hires_steps is not None:
            check_int(req.hires_steps, "hires_steps", 1, self.limits.max_steps,
                      hint="this server's --max-steps")
        given = {"hires_scale": req.hires_scale, **fields}
        return tuple((k, v.strip().lower() if k == "hires_upscaler" else v)
                     for k, v in given.items() if v is not None)

    def _check_hires_size(self, job: GenerationJob) -> None:
        """The hires fix's output (and a pixel upscaler's working canvas) within the server's
        pixel limit; runs on the device thread, where the pipeline (and its default size) is."""
        scale = job.hires_scale
        if scale is None or float(scale) == 1.0:
            return
        (w, h), _multiple = model_defaults(get_loaded(self.model, **self._options))
        w, h = job.width or w, job.height or h
        out = hires_dims(w, h, float(scale))
        spec = MODELS.get(str(dict(job.hires).get("hires_upscaler", HIRES_LATENT)))
        canvas = working_canvas(w, h, out, spec.scale) if spec is not None else out
        pixel = f" through {spec.name}" if canvas != out else ""
        check_canvas(canvas, self.limits, f"hires_scale={scale:g} on {w}×{h} (→ {out[0]}×{out[1]}"
                     f"{pixel})", "Ask for a smaller hires_scale or size.")

    def _generate_kwargs(self, job: GenerationJob) -> dict[str, Any]:
        return {"model": self.model, "negative_prompt": job.negative_prompt,
                "steps": job.steps, "guidance": job.guidance, "width": job.width,
                "height": job.height, "seed": job.seed, "num_images": job.n,
                "loras": list(job.loras) or None, "embeddings": list(job.embeddings) or None,
                "clip_skip": job.clip_skip, **dict(job.hires), **self._options}

    def infer(self, job: GenerationJob) -> list:
        self._check_hires_size(job)
        kwargs = self._generate_kwargs(job)
        images = generate(job.prompt, **kwargs)
        if job.refine_strength is None:
            return images
        return [refine_generated(img, self.model, job.refine_strength, kwargs, steps=job.steps)
                for img in images]

    def refine_upscaled(self, results, prompt: str, strength: float, seeds: list[int]) -> list:
        """The upscale route's refine: each upscaled picture (one result used for all ``seeds``
        when the upscaler is deterministic) repainted with this model, same size."""
        results = results * len(seeds) if len(results) == 1 else results
        out = []
        for res, seed in zip(results, seeds):
            ref = refine(res.image, prompt, model=self.model, strength=strength, seed=seed,
                         **self._options)
            out.append(GeneratedImage(ref.image, seed, upscaled_params(ref.params, res)))
        return out

    @staticmethod
    def encode(images) -> list[str]:
        # the A1111 text GeneratedImage.save writes, so a saved answer re-makes its picture
        return [base64.b64encode(encode_image(img.image, "PNG",
                                              {"parameters": img.parameters_text()})).decode("ascii")
                for img in images]

    def model_row(self, ready: bool) -> dict:
        presets = {p["name"]: p for p in list_presets()}
        row = presets.get(self.model, {})
        return {"id": self.model, "object": "model", "owned_by": "pipeline_lib",
                "kind": "generate", "ready": ready, "device": self.device,
                **({"description": row["description"]} if row.get("description") else {})}
