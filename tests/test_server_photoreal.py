"""The photoreal workflow over HTTP: embeddings by name, clip skip, the hires fix and the tiled
refine on ``POST /v1/images/generations`` (through the official ``openai`` client) and the refine
on ``POST /v1/images/upscale``; each PNG's A1111 ``parameters`` text records them.

A live uvicorn on 127.0.0.1 serves the tiny offline SD pipeline and realesr-animevideov3.
"""
from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

import pipeline_lib as pl
from pipeline_lib.server import ServerLimits, create_app

from test_server_openai import KEY, MODEL, LiveServer

LIMITS = ServerLimits(max_n=2, max_upload_bytes=200_000, max_input_pixels=64 * 64,
                      max_output_pixels=128 * 128, max_steps=8)
FAST = {"steps": 1, "seed": 2}


@pytest.fixture(scope="module")
def emb_dir(tmp_path_factory):
    import torch
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("embeddings")
    save_file({"emb_params": torch.randn(2, 32, generator=torch.Generator().manual_seed(0)) * 3},
              str(folder / "tinyemb.safetensors"))
    return folder


@pytest.fixture(scope="module")
def live(sd_dir, emb_dir):
    # a preset, so the upscale route's refine (no steps field) runs 4 steps, not a model's 30
    pl.register_preset(pl.Preset("tiny-photoreal", sd_dir, "StableDiffusionPipeline", steps=4,
                                 guidance=7.0, size=(64, 64)), replace=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PIPELINE_LIB_EMBEDDINGS_DIR", str(emb_dir))
        app = create_app(MODEL, device="cpu", limits=LIMITS, generate_model="tiny-photoreal",
                         api_keys=[KEY])
        with LiveServer(app) as server:
            yield server


def _gen(live, prompt: str = "a photo", **extra) -> list[Image.Image]:
    client = openai.OpenAI(api_key=KEY, base_url=live.url + "/v1", max_retries=0, timeout=300)
    res = client.images.generate(prompt=prompt, size="64x64", extra_body={**FAST, **extra})
    return [Image.open(io.BytesIO(base64.b64decode(d.b64_json))) for d in res.data]


def _refused(live, **extra) -> openai.UnprocessableEntityError:
    with pytest.raises(openai.UnprocessableEntityError) as err:
        _gen(live, **extra)
    return err.value


def _arr(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"), dtype=np.int16)


def _params(img: Image.Image) -> str:
    return img.text["parameters"]


# ------------------------------------------------------------------ embeddings, clip skip
def test_embedding_by_name_changes_the_image_only_with_its_token(live):
    with_tok = _gen(live, "a photo of tinyemb", embeddings=["tinyemb"])[0]
    text_only = _gen(live, "a photo of tinyemb")[0]
    plain = _gen(live, "a photo", embeddings=["tinyemb"])[0]
    plain_ref = _gen(live, "a photo")[0]
    assert np.abs(_arr(with_tok) - _arr(text_only)).max() > 5
    assert np.array_equal(_arr(plain), _arr(plain_ref))
    assert 'TI hashes: "tinyemb: ' in _params(with_tok) and "TI hashes" not in _params(plain)
    assert pl.parse_parameters(_params(with_tok))["embeddings"] == ["tinyemb"]


@pytest.mark.parametrize("name, match", [
    ("../embeddings/tinyemb.safetensors", "String should match pattern"),
    ("/etc/passwd", "String should match pattern"),
    ("not-there", "embedding 'not-there' not found in"),
])
def test_embedding_paths_are_refused_and_unknown_names_listed(live, name, match):
    err = _refused(live, embeddings=[name])
    assert match in err.message, err.message
    if name == "not-there":
        assert "available: tinyemb" in err.message and "path" not in err.message


def test_lora_names_never_reach_the_servers_working_directory(live, tmp_path, monkeypatch):
    # resolve_lora() tries a name as a path first; the server must look in its LoRA folder only
    (tmp_path / "cwdlora.safetensors").write_bytes(b"not read")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PIPELINE_LIB_LORA_DIR", str(tmp_path / "loras"))
    err = _refused(live, loras=[{"name": "cwdlora.safetensors", "weight": 1.0}])
    assert "LoRA 'cwdlora.safetensors' not found in" in err.message, err.message
    assert "path" not in err.message


def test_clip_skip_reaches_the_metadata(live):
    two = _gen(live, "a house", clip_skip=2)[0]
    assert "Clip skip: 2" in _params(two)
    assert np.abs(_arr(two) - _arr(_gen(live, "a house")[0])).max() > 0
    err = _refused(live, clip_skip=13)
    assert "clip_skip must be in 1..12" in err.message and err.type == "invalid_parameter"


# ------------------------------------------------------------------ hires fix
def test_hires_scale_2_doubles_the_size_and_is_recorded(live):
    img = _gen(live, "a lighthouse", hires_scale=2, hires_strength=0.5)[0]
    assert img.size == (128, 128)
    text = _params(img)
    for field in ("Size: 64x64", "Hires upscale: 2", "Hires upscaler: latent",
                  "Denoising strength: 0.5"):
        assert field in text, text


@pytest.mark.parametrize("extra, match", [
    ({"hires_strength": 0.5}, "hires_strength without hires_scale does nothing; set hires_scale"),
    ({"hires_steps": 2, "hires_upscaler": "latent"},
     "hires_steps, hires_upscaler without hires_scale does nothing; set hires_scale"),
    ({"hires_scale": 2, "hires_upscaler": "/tmp/evil.pth"}, "reads no paths or URLs"),
    ({"hires_scale": 2, "hires_upscaler": "https://example.com/x.pth"}, "reads no paths or URLs"),
    ({"hires_scale": 2, "hires_strength": 0}, "hires_strength must be a finite number > 0"),
    ({"hires_scale": 5}, "hires_scale must be a finite number > 1 and ≤ 4"),
    ({"hires_scale": 2, "hires_steps": 9}, "hires_steps must be in 1..8"),
    # past the server's pixel limit: the output, or a ×4 upscaler's working canvas
    ({"hires_scale": 3}, "(36,864 pixels); this server makes at most 16,384 pixels"),
    ({"hires_scale": 1.5, "hires_upscaler": "realesrgan-x4plus"}, "256×256 canvas"),
])
def test_bad_hires_fields_are_422_with_the_rule(live, extra, match):
    err = _refused(live, **extra)
    assert match in err.message, err.message


# ------------------------------------------------------------------ refine
def test_hires_upscaler_without_its_weights_is_422_weights_unavailable(live, tmp_path, monkeypatch):
    # an empty cache, offline: the x2plus file is missing; asking again would not help, so no 503
    monkeypatch.setenv("PIPELINE_LIB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIPELINE_LIB_OFFLINE", "1")
    err = _refused(live, hires_scale=2, hires_upscaler="realesrgan-x2plus")
    assert err.body["type"] == "weights_unavailable", err.body
    assert "RealESRGAN_x2plus.pth is not cached" in err.message and "sha256" in err.message
    assert "GET /v1/models" in err.message and "fallback" not in err.message


def test_refine_strength_on_generations(live):
    plain = _gen(live, "a field", steps=4)[0]
    refined = _gen(live, "a field", steps=4, refine_strength=0.5)[0]
    assert refined.size == plain.size == (64, 64)
    assert np.abs(_arr(refined) - _arr(plain)).max() > 5
    assert "Ultimate SD upscale denoise: 0.5" in _params(refined)
    assert "Ultimate SD upscale" not in _params(plain)
    err = _refused(live, refine_strength=1.5)
    assert "refine_strength must be a finite number > 0 and ≤ 1" in err.message


def _upload(url: str, **data) -> httpx.Response:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (12, 16, 3), np.uint8)).save(buf, "PNG")
    return httpx.post(url + "/v1/images/upscale", timeout=300,
                      headers={"Authorization": f"Bearer {KEY}"},
                      files={"image": ("a.png", buf.getvalue(), "image/png")},
                      data={"prompt": "a field", "scale": "2", **data})


def _png(response: httpx.Response) -> Image.Image:
    assert response.status_code == 200, response.text
    return Image.open(io.BytesIO(base64.b64decode(response.json()["data"][0]["b64_json"])))


def test_refine_strength_on_upscale(live):
    gan = _png(_upload(live.url))
    refined = _png(_upload(live.url, refine_strength="0.4", seed="3"))
    assert refined.size == gan.size == (32, 24)
    assert np.abs(_arr(refined) - _arr(gan)).max() > 5
    params = pl.parse_parameters(_params(refined))
    assert params["refine_strength"] == 0.4 and params["seed"] == 3
    assert params["prompt"] == "a field" and params["upscaler"] == MODEL
    assert refined.text["upscaler"] == MODEL and "parameters" not in gan.text
    bad = _upload(live.url, refine_strength="0")
    assert bad.status_code == 422
    assert "refine_strength must be a finite number > 0" in bad.json()["error"]["message"]


def test_upscale_refine_without_a_generation_model_is_422_generation_disabled():
    from fastapi.testclient import TestClient

    client = TestClient(create_app(MODEL, device="cpu", limits=LIMITS, api_keys=()))
    r = client.post("/v1/images/upscale", files={"image": ("a.png", b"x", "image/png")},
                    data={"refine_strength": "0.3"})
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["code"] == "generation_disabled" and error["param"] == "refine_strength"
    assert "--generate-model" in error["message"]


def test_openapi_documents_the_new_ranges(live):
    schema = live.app.openapi()["components"]["schemas"]
    props = schema["GenerationRequest"]["properties"]

    def bounds(prop):
        return next(b for b in prop.get("anyOf", [prop]) if b.get("type") in ("integer", "number"))

    assert bounds(props["clip_skip"])["maximum"] == 12
    assert bounds(props["hires_scale"])["maximum"] == 4.0
    assert bounds(props["hires_steps"])["maximum"] == LIMITS.max_steps
    for name in ("hires_strength", "refine_strength"):
        assert bounds(props[name]) | {"exclusiveMinimum": 0, "maximum": 1} == bounds(props[name])
    upload = next(s for n, s in schema.items() if n.startswith("Body_upscale"))
    assert bounds(upload["properties"]["refine_strength"])["maximum"] == 1
