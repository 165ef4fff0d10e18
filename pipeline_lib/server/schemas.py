"""The JSON bodies the service takes and gives, as pydantic models (they make the OpenAPI schema).

Errors follow OpenAI's error object (``message``, ``type``, ``param``, ``code``) so OpenAI
clients raise their usual typed exceptions.
"""
from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, ConfigDict, Field

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


class LoraRef(BaseModel):
    """A LoRA of the server's LoRA folder, by file name (no paths: requests read no other file)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_. -]*$", max_length=200)
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
