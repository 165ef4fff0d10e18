"""What an upscale request needs: the checks (the library's own rules), the upload reading,
the inference call and the PNG encoding. One model per server, chosen at start-up."""
from __future__ import annotations

import base64
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any

from ..errors import ImageReadError, InvalidParameterError
from ..images import encode_image, read_image
from ..upscale import choose_backend, list_upscalers, load_upscaler, resolve_model, upscale
from ..upscale.backends import run_options
from ..upscale.registry import MODELS, ModelSpec, get_spec
from ..upscale.sizing import check_scale, parse_size, target_size, working_canvas
from ..upscale.tiling import check_tiling
from ..validation import check_guidance, check_seed, check_strength
from .limits import ServerLimits
from .service import check_canvas, check_n, check_response_format, not_served

__all__ = ["UpscaleJob", "Upscaling"]

log = logging.getLogger(__name__)


@dataclass
class UpscaleJob:
    """One validated request, ready for the worker thread."""

    n: int
    scale: float | None
    size: Any
    prompt: str
    guidance: float | None
    seed: int | None
    seeds: list[int] = field(default_factory=list)  # per image, filled for sampling upscalers
    refine_strength: float | None = None  # then each result is refined by the generation model

    def refine_seeds(self) -> list[int]:
        """Image i's refine seed: the sampling upscaler's seed + i, else (random) seed + i."""
        if self.seeds:
            return list(self.seeds)
        base = check_seed(self.seed, self.n)
        return [base + i for i in range(self.n)]


class Upscaling:
    """The served upscaler's settings; ``model`` is a registry name, weight file or URL.

    ``options`` go to :func:`~pipeline_lib.upscale` on every request (``tile=``, ``overlap=``,
    a diffusion upscaler's ``steps=``...) or to the load (the rest). An unknown ``model`` raises
    :class:`UnknownModelError` here, before any server starts.
    """

    def __init__(self, model: str, device: str | None, dtype: str | None, backend: str,
                 limits: ServerLimits, options: dict[str, Any]) -> None:
        target = resolve_model(model)  # fail fast on typos, not minutes later in a log
        self.chosen = choose_backend(target, backend)
        self.served = target.name if isinstance(target, ModelSpec) else str(model)
        self.model, self.device, self.dtype, self.limits = str(model), device, dtype, limits
        # tiling and a diffusion upscaler's per-call settings (steps, noise_level...) go to every
        # upscale() call; the rest are load options
        per_call = {"tile", "overlap", *run_options(self.chosen)}
        self.per_request = {k: v for k, v in options.items() if k in per_call}
        self.load_options = {k: v for k, v in options.items() if k not in per_call}
        # Bad settings fail here, at start-up, not on every request (or in a background load).
        check_tiling(self.per_request.get("tile"), self.per_request.get("overlap"))
        if self.chosen == "torch":
            from ..devices import resolve_device, resolve_dtype

            resolve_dtype(dtype)
            if device is not None:
                resolve_device(device)

    def load(self):
        up = load_upscaler(self.served, self.device, self.dtype, backend=self.chosen,
                           progress=False, **self.load_options)
        log.info("serving %s on %s (%s)", up.name, up.device, up.dtype)
        return up

    def check_fields(self, *, n, guidance, guidance_scale, model: str | None, scale, size,
                     seed, prompt: str, response_format: str | None,
                     refine_strength=None) -> UpscaleJob:
        """The request's fields as a job (``guidance_scale`` is the original contract's name)."""
        n = check_n(n, self.limits)
        if guidance is not None and guidance_scale is not None and guidance != guidance_scale:
            raise InvalidParameterError(f"guidance={guidance!r} and guidance_scale="
                                        f"{guidance_scale!r} disagree; send one of them.")
        if guidance is not None:
            guidance = check_guidance(guidance)
        elif guidance_scale is not None:
            guidance = check_guidance(guidance_scale, "guidance_scale")
        check_response_format(response_format)
        if model and model.strip():
            self._check_model(model.strip())
        if scale is not None and size:
            raise InvalidParameterError("give either scale or size, not both.")
        if seed is not None:
            seed = check_seed(seed, n)
        if refine_strength is not None:
            refine_strength = check_strength(refine_strength, "refine_strength")
        return UpscaleJob(n, check_scale(scale) if scale is not None else None,
                          parse_size(size) if size else None, prompt, guidance, seed,
                          refine_strength=refine_strength)

    def _check_model(self, wanted: str) -> None:
        if wanted.lower() == self.served.lower() or wanted == self.model:
            return
        if wanted.lower() in MODELS:
            raise not_served(wanted.lower(), self.served, "--model")
        get_spec(wanted)  # raises UnknownModelError with suggestions

    def read_upload(self, upload) -> tuple[Any, Any]:
        # Through a temp file so read_image applies EXIF, keeps 16-bit PNGs and checks the pixel
        # count from the header before decoding (decompression bombs never reach memory).
        fd, tmp = tempfile.mkstemp(prefix="pipeline_lib_upload_")
        try:
            with os.fdopen(fd, "wb") as f:
                upload.file.seek(0)
                shutil.copyfileobj(upload.file, f)
            try:
                return read_image(tmp, max_pixels=self.limits.max_input_pixels)
            except ImageReadError as exc:
                label = f"uploaded file {upload.filename!r}" if upload.filename else "uploaded file"
                raise type(exc)(str(exc).replace(tmp, label)) from None
        finally:
            os.unlink(tmp)

    def check_output(self, up, w: int, h: int, job: UpscaleJob) -> tuple[int, int]:
        """The output size, refused when the model's working canvas passes the server's limit."""
        out = target_size(w, h, scale=job.scale, size=job.size,
                          default_scale=up.default_scale or up.scale)
        canvas = working_canvas(w, h, out, up.scale)
        check_canvas(canvas, self.limits, f"a {w}×{h} input upscaled to {out[0]}×{out[1]}",
                     "Ask for a smaller scale/size, send a smaller image, or start the server "
                     "with a larger --max-output-pixels.")
        return out

    def infer(self, up, arr, job: UpscaleJob) -> list:
        opts = {"backend": self.chosen, "device": self.device, "dtype": self.dtype,
                "progress": False, "full_result": True, **self.per_request, **self.load_options}
        if "prompt" in up.run_options:
            # Diffusion upscalers sample: the prompt steers them and image i uses seed + i, so
            # n requests give n different, individually reproducible results.
            base = check_seed(job.seed, job.n)
            job.seeds = [base + i for i in range(job.n)]
            opts["prompt"] = job.prompt
            if job.guidance is not None:
                opts["guidance"] = job.guidance
            return [upscale(arr, self.served, scale=job.scale, size=job.size, seed=s, **opts)
                    for s in job.seeds]
        # The GAN/regression upscalers are deterministic: n copies of one result, computed once.
        return [upscale(arr, self.served, scale=job.scale, size=job.size, **opts)]

    @staticmethod
    def encode(results, meta, job: UpscaleJob, refined=None) -> list[str]:
        """``refined`` (GeneratedImages, one per image): their pixels and A1111 ``parameters``
        (the refine's prompt, model, seed and settings plus the upscale) replace the results'."""
        extra = {k: str(v) for k, v in (("upscale_prompt", job.prompt),
                                        ("upscale_guidance", job.guidance),
                                        ("upscale_seed", job.seed)) if v not in (None, "")}
        out = []
        for res in results:
            res.source_metadata = dict(meta.info)
        for i, item in enumerate(refined or results):
            res = results[i] if len(results) > 1 else results[0]
            seed = {"upscale_seed": str(job.seeds[i])} if job.seeds else {}
            chunks = {**res.as_metadata(), **extra, **seed}
            if refined:
                chunks["parameters"] = item.parameters_text()
            png = encode_image(item.image, "PNG", chunks)
            out.append(base64.b64encode(png).decode("ascii"))
        return (out * job.n)[:job.n] if len(out) == 1 else out

    def model_row(self, up) -> dict:
        rows = {r["name"]: r for r in list_upscalers()}
        return {**rows.get(self.served, {"name": self.served}), "id": self.served,
                "object": "model", "owned_by": "pipeline_lib", "kind": "upscale",
                "ready": up is not None, "device": up.device if up else None,
                "backend": up.backend if up else self.chosen}

    def others(self) -> list[str]:
        return sorted(r["name"] for r in list_upscalers() if r["name"] != self.served)
