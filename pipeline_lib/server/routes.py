"""The HTTP routes, thin: parse the request, let the service check and run it, shape the answer.

``app.state`` holds ``service`` (:class:`~.service.Service`), ``upscaling`` and ``generation``
(None when the server does not generate).
"""
from __future__ import annotations

import logging
import time

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse

from .errors import ERROR_RESPONSES, ApiError
from .schemas import GenerationRequest, Health, ImagesResponse, ModelList

__all__ = ["router", "UPSCALE_USAGE", "GENERATE_USAGE"]

log = logging.getLogger(__name__)

router = APIRouter()

UPSCALE_USAGE = ("Send multipart/form-data with an 'image' file and optional fields prompt, n, "
                 "guidance (or guidance_scale), model, scale, size, seed, response_format, "
                 "refine_strength.")
GENERATE_USAGE = ("Send JSON with 'prompt' and optional n, size ('WxH'), response_format "
                  "('b64_json'), model, negative_prompt, seed, steps, guidance, user, loras, "
                  "embeddings, clip_skip, hires_scale, hires_strength, hires_steps, "
                  "hires_upscaler, refine_strength.")
_ERRORS = {s: ERROR_RESPONSES[s] for s in (400, 401, 413, 422, 429, 500, 503)}
_META_ERRORS = {s: ERROR_RESPONSES[s] for s in (401, 429, 500)}


def _images(data: list[str]) -> JSONResponse:
    return JSONResponse({"created": int(time.time()), "data": [{"b64_json": s} for s in data]})


@router.post("/v1/images/upscale", summary="Upscale one image; returns n base64 PNGs",
             response_model=ImagesResponse, responses=_ERRORS)
async def upscale_image(
    request: Request,
    image: UploadFile = File(..., description="the image file (PNG, JPEG, WebP, TIFF, BMP)"),
    prompt: str = Form("", description="used by diffusion upscalers; recorded otherwise"),
    n: int = Form(1, description="number of images (this server's --max-n at most)"),
    guidance: float | None = Form(None, description="diffusion upscalers only, 0..50"),
    guidance_scale: float | None = Form(None, description="the original contract's name for "
                                                          "guidance"),
    model: str | None = Form(None, description="must be the model this server serves"),
    scale: float | None = Form(None, description="output factor (default: the model's)"),
    size: str | None = Form(None, description="'N' (long side) or 'WxH'"),
    seed: int | None = Form(None, description="diffusion upscalers only; image i uses seed+i"),
    response_format: str = Form("b64_json", description="only 'b64_json'"),
    refine_strength: float | None = Form(None, description="then repaint the upscaled picture "
                                         "tile by tile with the generation model at this "
                                         "strength, guided by prompt (needs --generate-model)"),
) -> JSONResponse:
    service, upscaling = request.app.state.service, request.app.state.upscaling
    generation = request.app.state.generation
    if refine_strength is not None and generation is None:
        raise ApiError(422, "invalid_parameter", "refine_strength refines with the generation "
                       "model, and this server has none; start it with --generate-model "
                       "PRESET|REPO|FOLDER|FILE, or leave refine_strength out.",
                       param="refine_strength", code="generation_disabled")
    job = upscaling.check_fields(n=n, guidance=guidance, guidance_scale=guidance_scale,
                                 model=model, scale=scale, size=size, seed=seed, prompt=prompt,
                                 response_format=response_format, refine_strength=refine_strength)
    async with service.admitted("upscale"):
        refined = None
        if job.refine_strength is not None:
            service.slots["generate"].require_ready()
        up = service.slots["upscale"].model
        arr, meta = await service.in_thread(upscaling.read_upload, image)
        h, w = arr.shape[:2]
        upscaling.check_output(up, w, h, job)
        t0 = time.perf_counter()
        results = await service.on_device(upscaling.infer, up, arr, job)
        del arr
        if job.refine_strength is not None:
            refined = await service.on_device(generation.refine_upscaled, results, job.prompt,
                                              job.refine_strength, job.refine_seeds())
        data = await service.in_thread(upscaling.encode, results, meta, job, refined)
    log.info("upscaled %s %dx%d → %dx%d, n=%d, %.2fs", image.filename, w, h, *results[0].size,
             job.n, time.perf_counter() - t0)
    return _images(data)


@router.post("/v1/images/generations", summary="Generate n images from a prompt (OpenAI Images "
             "API)", response_model=ImagesResponse, responses={
                 404: {**ERROR_RESPONSES[400], "description": "this server does not generate"},
                 **_ERRORS})
async def generate_images(request: Request, body: GenerationRequest) -> JSONResponse:
    service, generation = request.app.state.service, request.app.state.generation
    if generation is None:
        raise ApiError(404, "generation_disabled", "this server does not generate images; start "
                       "it with --generate-model PRESET|REPO|FOLDER|FILE.")
    job = generation.check_fields(body)
    async with service.admitted("generate"):
        t0 = time.perf_counter()
        images = await service.on_device(generation.infer, job)
        data = await service.in_thread(generation.encode, images)
    log.info("generated %d image(s), seed %d, %.2fs", job.n, job.seed, time.perf_counter() - t0)
    return _images(data)


@router.get("/health", summary="Are the models loaded, and on which device",
            response_model=Health, responses={503: {"model": Health,
                                                    "description": "loading or failed"}})
async def health(request: Request) -> JSONResponse:
    service, upscaling = request.app.state.service, request.app.state.upscaling
    slot = service.slots["upscale"]
    up = slot.model
    body = {"status": service.status, "model": upscaling.served, "loaded": up is not None,
            "device": up.device if up else (upscaling.device or "auto"),
            "backend": up.backend if up else upscaling.chosen,
            "dtype": up.dtype if up else upscaling.dtype, "pending": service.pending}
    if slot.error:
        body["error"] = slot.error
    gen = service.slots.get("generate")
    if gen is not None:
        body["generation"] = {"model": gen.name, "status": gen.status,
                              "loaded": gen.model is not None,
                              "device": request.app.state.generation.device,
                              **({"error": gen.error} if gen.error else {})}
    return JSONResponse(body, status_code=200 if service.status == "ok" else 503)


@router.get("/v1/models", summary="The models this server serves, and the upscaler registry",
            response_model=ModelList, responses=_META_ERRORS)
async def models(request: Request) -> JSONResponse:
    service, upscaling = request.app.state.service, request.app.state.upscaling
    rows = [upscaling.model_row(service.slots["upscale"].model)]
    if request.app.state.generation is not None:
        rows.append(request.app.state.generation.model_row(
            service.slots["generate"].status == "ready"))
    return JSONResponse({"object": "list", "data": rows, "available": upscaling.others(),
                         "note": "one upscaler and at most one generation model per server; "
                                 "start another with --model NAME to serve one of 'available'."})
