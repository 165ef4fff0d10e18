"""The HTTP service: the seed's request, every error status, limits, loading, a real uvicorn.

Uses the compact realesr-animevideov3 on 32×24 crops; the network only ever touches 127.0.0.1.
"""
from __future__ import annotations

import base64
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

import pipeline_lib as pl
from pipeline_lib.server import upscaling as server
from pipeline_lib.errors import InvalidParameterError, UnknownModelError
from pipeline_lib.server import ServerLimits, create_app

from conftest import psnr

MODEL = "realesr-animevideov3"
ROOT = Path(__file__).resolve().parent.parent
LIMITS = ServerLimits(max_upload_bytes=64_000, max_input_pixels=80 * 80,
                      max_output_pixels=160 * 160, max_n=4)
SEED = {"prompt": "Super high resolution image of iron man, highly detailed, real life.",
        "n": 1, "guidance_scale": 8}
URL = "/v1/images/upscale"


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _decode(item: dict) -> Image.Image:
    # Exactly how the seed's client decodes the answer.
    return Image.open(io.BytesIO(base64.decodebytes(bytes(item["b64_json"], "utf-8"))))


def _wait_ready(get, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = get("/health")
        if r.status_code == 200:
            return r.json()
        time.sleep(0.1)
    raise AssertionError(f"model not loaded after {timeout}s: {r.json()}")


@pytest.fixture(scope="module")
def tiny(small_photo) -> Image.Image:
    return small_photo.crop((0, 0, 32, 24))


@pytest.fixture(scope="module")
def reference(tiny) -> np.ndarray:
    return np.asarray(pl.upscale(tiny, MODEL, device="cpu", progress=False))


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(MODEL, device="cpu", limits=LIMITS)) as c:
        _wait_ready(c.get)
        yield c


def _post(client, png: bytes, name: str = "in.png", **fields):
    return client.post(URL, files={"image": (name, png, "image/png")}, data=fields)


def _error(r, status: int, type_: str, match: str) -> str:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["type"] == type_, err
    assert match.lower() in err["message"].lower(), err["message"]
    return err["message"]


# ------------------------------------------------------------------ success
@pytest.mark.parametrize("n", [1, 3])
def test_seed_request_returns_n_pngs_equal_to_library_upscale(client, tiny, reference, n):
    t0 = int(time.time())
    r = _post(client, _png(tiny), **{**SEED, "n": n})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"created", "data"}
    assert t0 <= body["created"] <= time.time() + 1
    assert len(body["data"]) == n
    for item in body["data"]:
        img = _decode(item)
        assert img.format == "PNG" and img.size == (128, 96) and img.mode == "RGB"
        assert psnr(np.asarray(img), reference) == float("inf")  # the library's exact pixels
        assert img.info["upscaler"] == MODEL and img.info["upscale_prompt"] == SEED["prompt"]


@pytest.mark.parametrize("fields, size", [({"scale": "2"}, (64, 48)), ({"size": "100"}, (100, 75)),
                                          ({"size": "40x40"}, (40, 40)), ({"model": MODEL}, (128, 96))])
def test_scale_size_and_explicit_model(client, tiny, fields, size):
    r = _post(client, _png(tiny), **fields)
    assert r.status_code == 200, r.text
    assert _decode(r.json()["data"][0]).size == size


def test_rgba_and_gray_inputs_keep_their_mode(client, tiny):
    rgba = tiny.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(tiny.size))
    for img, mode in ((rgba, "RGBA"), (tiny.convert("L"), "L")):
        out = _decode(_post(client, _png(img)).json()["data"][0])
        assert (out.mode, out.size) == (mode, (128, 96))


def test_health_and_models(client):
    h = client.get("/health").json()
    assert h == {**h, "status": "ok", "model": MODEL, "loaded": True, "device": "cpu"}
    m = client.get("/v1/models").json()
    assert [row["id"] for row in m["data"]] == [MODEL]
    assert m["data"][0]["ready"] is True and m["data"][0]["scale"] == 4
    assert "realesrgan-x4plus" in m["available"] and MODEL not in m["available"]


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize("fields, type_, match", [
    ({"n": "0"}, "invalid_parameter", "n must be in 1..4 (this server's --max-n), got 0"),
    ({"n": "5"}, "invalid_parameter", "n must be in 1..4 (this server's --max-n), got 5"),
    ({"n": "two"}, "invalid_parameter", "n: Input should be a valid integer"),
    ({"model": "realesrgan-x5"}, "unknown_model", "Did you mean"),
    ({"model": "realesrgan-x4plus"}, "model_not_served", "start a server with --model realesrgan-x4plus"),
    ({"response_format": "url"}, "invalid_parameter", "use 'b64_json'"),
    ({"guidance_scale": "nan"}, "invalid_parameter", "guidance_scale must be a finite number"),
    ({"guidance_scale": "51"}, "invalid_parameter", "guidance_scale must be a finite number in 0..50"),
    ({"guidance": "-1"}, "invalid_parameter", "guidance must be a finite number in 0..50"),
    ({"guidance": "7", "guidance_scale": "8"}, "invalid_parameter", "disagree; send one of them"),
    ({"seed": str(2**32)}, "invalid_parameter", "seed must be in 0..4294967295"),
    ({"scale": "0"}, "invalid_parameter", "scale must be a finite number in (0, 32]"),
    ({"scale": "2", "size": "64"}, "invalid_parameter", "either scale or size"),
    ({"size": "big"}, "invalid_parameter", "'N' or 'WxH'"),
    ({"scale": "8"}, "invalid_parameter", "--max-output-pixels"),  # 256×192 > 160²
])
def test_bad_fields_are_422_with_a_message(client, tiny, fields, type_, match):
    _error(_post(client, _png(tiny), **fields), 422, type_, match)


def test_missing_image_is_422(client):
    _error(client.post(URL, data=SEED), 422, "invalid_parameter", "image: Field required")


@pytest.mark.parametrize("payload, match", [(b"hello, not a picture", "not an image file"),
                                            (b"", "empty"),
                                            (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "in.png")])
def test_not_an_image_is_400(client, payload, match):
    msg = _error(_post(client, payload), 400, "invalid_image", match)
    assert "Send a PNG" in msg and "pipeline_lib_upload" not in msg  # no temp paths leak


def test_too_many_input_pixels_is_413(client, photo):
    msg = _error(_post(client, _png(photo.resize((96, 96)))), 413, "image_too_large",
                 "96×96 = 9,216 pixels exceeds the limit of 6,400")
    assert "--max-input-pixels" in msg


@pytest.fixture
def counted(monkeypatch):
    """Counts inference calls, to prove refused requests never reach the model."""
    calls = []
    real = server.upscale
    monkeypatch.setattr(server, "upscale", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def test_upload_over_limit_is_413_by_content_length(client, counted):
    big = os.urandom(LIMITS.max_upload_bytes + 1)
    msg = _error(_post(client, big), 413, "upload_too_large", "at most 64,000 bytes")
    assert "--max-upload-mb" in msg and counted == []


def test_upload_over_limit_is_413_when_streamed_without_length(client, tiny, counted):
    boundary = "pipelinelibboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
            f"filename=\"x.png\"\r\nContent-Type: image/png\r\n\r\n").encode()

    def chunks():  # chunked transfer: no Content-Length, so only counting can catch it
        yield head
        for _ in range(20):
            yield b"\0" * 8192
        yield f"\r\n--{boundary}--\r\n".encode()

    r = client.post(URL, content=chunks(),
                    headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    _error(r, 413, "upload_too_large", "too large")
    assert counted == []
    assert _post(client, _png(tiny)).status_code == 200 and counted == [1]


def test_other_http_errors_use_the_error_shape(client):
    _error(client.get("/nowhere"), 404, "not_found", "not found")
    _error(client.get(URL), 405, "method_not_allowed", "method not allowed")


def test_busy_server_answers_503(client, tiny):
    state = client.app.state.pipeline
    state.pending = LIMITS.max_pending  # as if that many requests were in flight
    try:
        _error(_post(client, _png(tiny)), 503, "server_busy", "retry")
    finally:
        state.pending = 0


def test_503_while_loading_then_ready(monkeypatch, tiny):
    gate = threading.Event()
    real = server.load_upscaler

    def slow_load(*args, **kwargs):
        assert gate.wait(60), "test never released the loader"
        return real(*args, **kwargs)

    monkeypatch.setattr(server, "load_upscaler", slow_load)
    try:
        with TestClient(create_app(MODEL, device="cpu", limits=LIMITS)) as c:
            h = c.get("/health")
            assert h.status_code == 503 and h.json()["status"] == "loading"
            r = _post(c, _png(tiny), **SEED)
            _error(r, 503, "model_loading", "still loading")
            assert r.headers["retry-after"] == "5"
            gate.set()
            assert _wait_ready(c.get, 60)["loaded"] is True
            assert _post(c, _png(tiny), **SEED).status_code == 200
    finally:
        gate.set()


def test_failed_load_is_reported(monkeypatch, tiny):
    def broken(*args, **kwargs):
        raise OSError("disk on fire")

    monkeypatch.setattr(server, "load_upscaler", broken)
    with TestClient(create_app(MODEL, device="cpu", limits=LIMITS)) as c:
        deadline = time.monotonic() + 30
        while c.get("/health").json()["status"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.05)
        h = c.get("/health")
        assert h.status_code == 503 and h.json()["status"] == "failed"
        assert "disk on fire" in h.json()["error"]
        _error(_post(c, _png(tiny)), 503, "model_load_failed", "disk on fire")


def test_unknown_model_fails_at_create_app():
    with pytest.raises(UnknownModelError, match="Did you mean"):
        create_app("realesrgan-x4pluss")


# ------------------------------------------------------------------ limits and CLI
def test_limits_from_env_and_overrides(monkeypatch):
    monkeypatch.setenv("PIPELINE_LIB_SERVER_MAX_N", "2")
    monkeypatch.setenv("PIPELINE_LIB_SERVER_MAX_UPLOAD_BYTES", "1000")
    lim = ServerLimits.from_env(max_upload_bytes=5000, max_n=None)
    assert (lim.max_n, lim.max_upload_bytes, lim.max_output_pixels) == (2, 5000, 4096 * 4096)
    monkeypatch.setenv("PIPELINE_LIB_SERVER_MAX_N", "many")
    with pytest.raises(InvalidParameterError, match="PIPELINE_LIB_SERVER_MAX_N='many'"):
        ServerLimits.from_env()
    with pytest.raises(InvalidParameterError, match="max_n must be a positive integer"):
        ServerLimits(max_n=0)


def test_cli_parses_serve_flags(monkeypatch):
    from pipeline_lib.cli import build_parser
    from pipeline_lib.commands.serve import limits_from_args

    monkeypatch.setenv("PIPELINE_LIB_SERVER_MAX_PENDING", "7")
    args = build_parser().parse_args(["serve", "--port", "9001", "--model", MODEL,
                                      "--max-upload-mb", "1.5", "--max-n", "3"])
    assert (args.host, args.port, args.model) == ("127.0.0.1", 9001, MODEL)
    lim = limits_from_args(args)
    assert (lim.max_upload_bytes, lim.max_n, lim.max_pending) == (1572864, 3, 7)


def test_import_pipeline_lib_does_not_import_fastapi():
    code = "import sys, pipeline_lib; assert 'fastapi' not in sys.modules; pipeline_lib.create_app"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)


# ------------------------------------------------------------------ a real server
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def live_server():
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PIPELINE_LIB_SERVER_MAX_INPUT_PIXELS": "6400"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline_lib", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--model", MODEL, "--device", "cpu", "--max-upload-mb", "0.5", "--log-level", "warning"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=10) as c:
            deadline = time.monotonic() + 180
            while True:
                assert proc.poll() is None, proc.communicate()[0]
                assert time.monotonic() < deadline, "server did not become ready in 180 s"
                try:
                    if c.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.25)
        yield proc, base
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)


def test_live_server_concurrency_errors_and_clean_shutdown(live_server, tiny, reference):
    proc, base = live_server
    png = _png(tiny)

    def one(i: int):
        with httpx.Client(base_url=base, timeout=120) as c:
            return c.post(URL, files={"image": (f"{i}.png", png, "image/png")},
                          data={**SEED, "n": 1 + i % 2})

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, range(16), timeout=300))
    for i, r in enumerate(answers):
        assert r.status_code == 200, r.text
        assert len(r.json()["data"]) == 1 + i % 2
        for item in r.json()["data"]:
            assert psnr(np.asarray(_decode(item)), reference) == float("inf")

    with httpx.Client(base_url=base, timeout=60) as c:
        _error(c.post(URL, files={"image": ("x.txt", b"nope", "text/plain")}), 400,
               "invalid_image", "not an image")
        _error(c.post(URL, files={"image": ("a.png", png, "image/png")}, data={"n": "9"}), 422,
               "invalid_parameter", "n must be in 1..4")
        _error(c.post(URL, files={"image": ("b.bin", os.urandom(600_000), "image/png")}), 413,
               "upload_too_large", "at most 524,288 bytes")
        assert proc.poll() is None  # bad requests never take the process down
        assert c.get("/health").json()["status"] == "ok"
        r = c.post(URL, files={"image": ("a.png", png, "image/png")}, data=SEED)
        assert r.status_code == 200 and _decode(r.json()["data"][0]).size == (128, 96)

    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends; uvicorn shuts down gracefully
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "Traceback" not in out, out
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{base}/health", timeout=5)


def test_inference_is_serialised_and_off_the_event_loop(client, tiny, monkeypatch):
    real = server.upscale
    active, peak, release = [0], [0], threading.Event()
    lock = threading.Lock()

    def tracked(*args, **kwargs):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            assert release.wait(60), "test never released inference"
            return real(*args, **kwargs)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(server, "upscale", tracked)
    png = _png(tiny)
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(_post, client, png) for _ in range(4)]
        deadline = time.monotonic() + 30
        while client.get("/health").json()["pending"] < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        # inference is blocked in a worker thread, yet the loop still answers
        t0 = time.monotonic()
        health = client.get("/health")
        assert health.status_code == 200 and health.json()["pending"] == 4
        assert time.monotonic() - t0 < 5
        release.set()
        assert all(f.result(timeout=120).status_code == 200 for f in futures)
    assert peak[0] == 1  # one request on the model at a time


# ------------------------------------------------------------------ diffusion upscaler
def test_diffusion_upscaler_uses_prompt_guidance_and_per_image_seeds(tiny, tmp_path):
    """Served sd-x4 (tiny offline copy): the prompt steers it, image i uses seed + i, and a repeat
    with the same seed gives the same pixels."""
    from pipeline_lib.testing import tiny_sd_x4_upscaler_dir

    folder = str(tiny_sd_x4_upscaler_dir(tmp_path))
    img = tiny.crop((0, 0, 16, 12))
    with TestClient(create_app(folder, device="cpu", limits=LIMITS, steps=2)) as c:
        _wait_ready(c.get)

        def ask(**fields):
            r = _post(c, _png(img), **fields)
            assert r.status_code == 200, r.text
            return [Image.open(io.BytesIO(base64.b64decode(d["b64_json"]))) for d in r.json()["data"]]

        a = ask(prompt="a cat", n=2, guidance_scale=7.5, seed=5)
        assert [im.size for im in a] == [(64, 48)] * 2
        assert [im.text["upscale_seed"] for im in a] == ["5", "6"]
        assert a[0].text["upscale_prompt"] == "a cat"
        assert not np.array_equal(np.asarray(a[0]), np.asarray(a[1]))
        again = ask(prompt="a cat", n=1, guidance_scale=7.5, seed=5)
        assert np.array_equal(np.asarray(again[0]), np.asarray(a[0]))
        other = ask(prompt="a dog on the moon", n=1, guidance_scale=7.5, seed=5)
        assert not np.array_equal(np.asarray(other[0]), np.asarray(a[0]))
