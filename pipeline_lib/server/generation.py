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

from ..errors import InvalidParameterError
from ..generate import generate, get_preset, list_presets, load_pipeline
from ..images import encode_image
from ..upscale.sizing import parse_size
from ..validation import check_guidance, check_int, check_seed
from .limits import ServerLimits
from .schemas import GenerationRequest
from .service import check_n, check_response_format, not_served

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
        if w * h > self.limits.max_output_pixels:
            raise InvalidParameterError(
                f"size {w}x{h} is {w * h:,} pixels; this server generates at most "
                f"{self.limits.max_output_pixels:,} (--max-output-pixels). Generate smaller and "
                "upscale with POST /v1/images/upscale.")
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
        loras = tuple((ref.name, ref.weight) for ref in req.loras or ())
        return GenerationJob(req.prompt, n, check_seed(req.seed, n), width, height, steps,
                             guidance, req.negative_prompt, loras)

    def infer(self, job: GenerationJob) -> list:
        return generate(job.prompt, model=self.model, negative_prompt=job.negative_prompt,
                        steps=job.steps, guidance=job.guidance, width=job.width,
                        height=job.height, seed=job.seed, num_images=job.n,
                        loras=list(job.loras) or None, **self._options)

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
