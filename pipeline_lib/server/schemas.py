"""The JSON bodies the service takes and gives, as pydantic models (they make the OpenAPI schema).

Errors follow OpenAI's error object (``message``, ``type``, ``param``, ``code``) so OpenAI
clients raise their usual typed exceptions.
"""
from __future__ import annotations

from typing import Annotated, Optional

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

__all__ = ["ErrorDetail", "ErrorResponse", "ImageData", "ImagesResponse", "GenerationRequest",
           "ModelRow", "ModelList", "Health", "GenerationHealth"]


class ErrorDetail(BaseModel):
    message: str = Field(description="what was wrong and what to do")
    type: str = Field(description="machine-readable kind, e.g. invalid_parameter")
    param: Optional[str] = Field(None, description="the request field at fault, when one is")
    code: Optional[str] = Field(None, description="a finer kind, e.g. invalid_api_key")


class ErrorResponse(BaseModel):
    error: ErrorDetail


class ImageData(BaseModel):
    b64_json: str = Field(description="a base64 PNG")


class ImagesResponse(BaseModel):
    created: int = Field(description="Unix time of the answer")
    data: list[ImageData]


#: A file name in one of the server's folders: no separators, no leading dot (no paths).
FILE_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_. -]*$"
FileName = Annotated[str, StringConstraints(pattern=FILE_NAME, max_length=200)]


class LoraRef(BaseModel):
    """A LoRA of the server's LoRA folder, by file name (no paths: requests read no other file)."""

    model_config = ConfigDict(extra="forbid")

    name: FileName
    weight: float = Field(1.0, ge=-10, le=10)


class GenerationRequest(BaseModel):
    """OpenAI's ``images.generate`` body plus pipeline_lib's extras; unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(description="what to draw")
    n: int = Field(1, strict=True, description="number of images (this server's --max-n at most)")
    size: Optional[str] = Field(None, description="'WxH' (e.g. '512x512'), or 'auto' / absent "
                                                  "for the model's own size")
    response_format: Optional[str] = Field(None, description="only 'b64_json' (the default)")
    model: Optional[str] = Field(None, description="must be the model this server generates with")
    user: Optional[str] = Field(None, description="accepted for OpenAI clients; ignored")
    negative_prompt: Optional[str] = Field(None, description="what to avoid (default: the "
                                                             "preset's)")
    seed: Optional[int] = Field(None, strict=True, description="image i uses seed+i "
                                                               "(default: random)")
    steps: Optional[int] = Field(None, strict=True, description="denoising steps (default: the "
                                                                "preset's)")
    guidance: Optional[float] = Field(None, description="classifier-free guidance, 0..50 "
                                                        "(default: the preset's)")
    loras: Optional[list[LoraRef]] = Field(None, description="LoRAs by file name in the "
                                           "server's LoRA folder (PIPELINE_LIB_LORA_DIR)")
    # The ranges of the fields below are published by openapi.py and checked by the library
    # (its messages), not by pydantic.
    embeddings: Optional[list[FileName]] = Field(
        None, max_length=16, description="textual-inversion embeddings by file name in the "
        "server's embeddings folder (PIPELINE_LIB_EMBEDDINGS_DIR); each acts where its token "
        "(the file's stem) is in a prompt")
    clip_skip: Optional[int] = Field(None, strict=True, description="A1111's Clip skip: 1 = the "
                                     "last layer (off), 2 = the one before")
    hires_scale: Optional[float] = Field(None, description="hires fix: generate at the base size, "
                                         "enlarge this much and repaint; output pixels stay "
                                         "within --max-output-pixels")
    hires_strength: Optional[float] = Field(None, description="hires fix denoising strength "
                                            "(default 0.35); needs hires_scale")
    hires_steps: Optional[int] = Field(None, strict=True, description="hires fix steps (default: "
                                       "steps); needs hires_scale")
    hires_upscaler: Optional[str] = Field(None, max_length=100, description="'latent' (default) "
                                          "or an upscaler name (GET /v1/models lists them; no "
                                          "paths or URLs); needs hires_scale")
    refine_strength: Optional[float] = Field(None, description="after generating, repaint each "
                                             "picture tile by tile at this strength (A1111's "
                                             "Ultimate SD upscale)")


class ModelRow(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    object: str
    owned_by: str
    kind: str = Field(description="'upscale' or 'generate'")
    ready: bool


class ModelList(BaseModel):
    object: str
    data: list[ModelRow]
    available: list[str] = Field(description="other upscalers a server can be started with")
    note: str


class GenerationHealth(BaseModel):
    model: str
    status: str
    loaded: bool
    device: Optional[str] = None
    error: Optional[str] = None


class Health(BaseModel):
    status: str = Field(description="ok, loading or failed")
    model: str
    loaded: bool
    device: Optional[str] = None
    backend: Optional[str] = None
    dtype: Optional[str] = None
    pending: int
    error: Optional[str] = None
    generation: Optional[GenerationHealth] = None
