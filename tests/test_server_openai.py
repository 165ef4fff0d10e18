"""The HTTP service as OpenAI clients see it: ``POST /v1/images/generations`` through the official
``openai`` client, API keys, the rate limit, and generation and upscale sharing one device.

A live uvicorn on a random 127.0.0.1 port serves a tiny offline SD pipeline
(:mod:`pipeline_lib.testing`) and the compact realesr-animevideov3; nothing leaves loopback.
"""
from __future__ import annotations

import base64
import io
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import openai
import pytest
import uvicorn
from PIL import Image

import pipeline_lib as pl
from pipeline_lib.errors import InvalidParameterError, UnknownModelError
from pipeline_lib.metadata import GENERATE_KEYS
from pipeline_lib.server import AccessPolicy, ServerLimits, create_app
from pipeline_lib.server import generation as generation_module
from pipeline_lib.server import upscaling as upscaling_module

MODEL = "realesr-animevideov3"
KEY, OTHER_KEY = "test-key-0123456789abcdef", "second-key-abcdef0123456789"
LIMITS = ServerLimits(max_n=3, max_upload_bytes=200_000, max_input_pixels=64 * 64,
                      max_output_pixels=256 * 256, max_steps=8)
FAST = {"steps": 2}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """uvicorn in a thread of this process (so tests can watch inference), on 127.0.0.1."""

    def __init__(self, app) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 300
        while True:
            assert self.thread.is_alive(), "uvicorn stopped during start-up"
            assert time.monotonic() < deadline, "models not loaded in 300 s"
            try:
                if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(60)


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    from pipeline_lib.testing import tiny_sd_pipeline_dir

    return str(tiny_sd_pipeline_dir(tmp_path_factory.mktemp("tiny")))


@pytest.fixture(scope="module")
def live(sd_dir):
    app = create_app(MODEL, device="cpu", limits=LIMITS, generate_model=sd_dir,
                     api_keys=[KEY, OTHER_KEY])
    with LiveServer(app) as server:
        yield server


def _client(live, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=live.url + "/v1", max_retries=0, timeout=120)


def _png(item) -> Image.Image:
    b64 = item.b64_json if hasattr(item, "b64_json") else item["b64_json"]
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def _seed_of(img: Image.Image) -> int:
    return int(pl.parse_parameters(img.text["parameters"])["seed"])


# ------------------------------------------------------------------ generation
def test_openai_client_gets_n_pngs_with_consecutive_seeds(live, sd_dir):
    t0 = int(time.time())
    res = _client(live).images.generate(prompt="a red apple", n=2, size="64x64",
                                        response_format="b64_json", extra_body={**FAST, "seed": 41})
    assert t0 <= res.created <= time.time() + 1
    assert len(res.data) == 2 and all(d.revised_prompt is None for d in res.data)
    imgs = [_png(d) for d in res.data]
    assert [(im.format, im.size) for im in imgs] == [("PNG", (64, 64))] * 2
    assert [_seed_of(im) for im in imgs] == [41, 42]
    assert not np.array_equal(np.asarray(imgs[0]), np.asarray(imgs[1]))
    params = pl.parse_parameters(imgs[0].text["parameters"])
    assert params["prompt"] == "a red apple" and params["steps"] == 2
    # the PNG's parameters re-make the batch through the library, pixel for pixel (a batch, as a
    # lone image may differ by a level where batched matmuls round differently)
    kwargs = {k: params[k] for k in GENERATE_KEYS if k in params}
    again = pl.generate(**{**kwargs, "model": sd_dir}, num_images=2, device="cpu", progress=False)
    for made, served in zip(again, imgs):
        assert np.array_equal(np.asarray(made.image), np.asarray(served.convert("RGB")))


def test_without_a_seed_each_image_gets_its_own(live):
    res = _client(live).images.generate(prompt="a boat", n=2, size="64x64", extra_body=FAST)
    seeds = [_seed_of(_png(d)) for d in res.data]
    assert seeds[1] == seeds[0] + 1 and 0 <= seeds[0] <= 2**32 - 2


def test_n_too_large_is_422_with_a_message(live):
    with pytest.raises(openai.UnprocessableEntityError) as err:
        _client(live).images.generate(prompt="x", n=9, size="64x64", extra_body=FAST)
    assert err.value.status_code == 422
    assert "n must be in 1..3" in err.value.message and "--max-n" in err.value.message
    assert err.value.type == "invalid_parameter"


@pytest.mark.parametrize("kwargs, match, param", [
    ({"quality": "hd"}, "quality: unknown field", "quality"),
    ({"extra_body": {"cfg": 3}}, "cfg: unknown field", "cfg"),
    ({"response_format": "url"}, "use 'b64_json'", None),
    ({"size": "1024"}, "size must be 'WxH'", None),
    ({"size": "4096x4096"}, "--max-output-pixels", None),
    ({"model": "dall-e-3"}, "--generate-model dall-e-3", "model"),
    ({"extra_body": {"steps": 9}}, "steps must be in 1..8", None),
    ({"extra_body": {"guidance": 51}}, "guidance must be a finite number", None),
    ({"extra_body": {"seed": 2**32 - 1}, "n": 2}, "seed must be in 0..4294967295", None),
    ({"extra_body": {"seed": "7"}}, "seed: Input should be a valid integer", "seed"),
    # LoRAs by name from the server's folder only: a path never reaches the loader
    ({"extra_body": {"loras": [{"name": "../../etc/passwd"}]}}, "String should match pattern",
     "loras.0.name"),
    ({"extra_body": {"loras": [{"name": "not-there", "weight": 0.8}]}}, "LoRA 'not-there' not "
     "found in", None),
])
def test_bad_generation_fields_are_422_naming_them(live, kwargs, match, param):
    kwargs = {"prompt": "x", "size": "64x64", **kwargs}
    with pytest.raises(openai.UnprocessableEntityError) as err:
        _client(live).images.generate(**kwargs)
    assert match in err.value.message, err.value.message
    assert err.value.param == param


def test_models_lists_both(live, sd_dir):
    rows = {m.id: m for m in _client(live).models.list().data}
    assert set(rows) == {MODEL, sd_dir}
    assert rows[MODEL].kind == "upscale" and rows[sd_dir].kind == "generate"
    assert all(m.ready for m in rows.values())


def test_generation_off_is_404_and_unknown_preset_fails_at_create_app():
    with pytest.raises(UnknownModelError, match="Did you mean"):
        create_app(MODEL, device="cpu", generate_model="sdxl-turbbo")
    from fastapi.testclient import TestClient

    with TestClient(create_app(MODEL, device="cpu", limits=LIMITS, api_keys=())) as c:
        r = c.post("/v1/images/generations", json={"prompt": "x"})
        assert r.status_code == 404 and r.json()["error"]["type"] == "generation_disabled"
        assert "--generate-model" in r.json()["error"]["message"]


# ------------------------------------------------------------------ keys
def test_wrong_or_missing_key_is_401_and_health_is_open(live, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = "not-the-key-" + "z" * 16
    with pytest.raises(openai.AuthenticationError) as err:
        _client(live, wrong).images.generate(prompt="x", size="64x64", extra_body=FAST)
    assert err.value.status_code == 401 and err.value.code == "invalid_api_key"
    assert wrong not in err.value.message
    r = httpx.get(live.url + "/v1/models")
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
    assert r.headers["www-authenticate"] == "Bearer"
    r = httpx.get(live.url + "/v1/models", headers={"Authorization": f"Basic {KEY}"})
    assert r.status_code == 401
    assert httpx.get(live.url + "/health").status_code == 200
    assert httpx.get(live.url + "/nowhere").status_code == 401  # no probing without a key
    assert _client(live, OTHER_KEY).models.list().data  # the second key works too
    assert KEY not in caplog.text and wrong not in caplog.text and OTHER_KEY not in caplog.text


def test_keys_from_env_file_and_flags(tmp_path, monkeypatch):
    keyfile = tmp_path / "keys.txt"
    keyfile.write_text("# team keys\nfile-key-1\n\n  file-key-2  \n", encoding="utf-8")
    monkeypatch.setenv("PIPELINE_LIB_API_KEY", "env-key-1, env-key-2")
    monkeypatch.setenv("PIPELINE_LIB_SERVER_RATE_LIMIT", "30")
    policy = AccessPolicy.from_sources(["flag-key"], keyfile)
    assert policy.keys == ("flag-key", "env-key-1", "env-key-2", "file-key-1", "file-key-2")
    assert policy.rate_per_minute == 30
    assert policy.allows("file-key-2") and not policy.allows("file-key-") and not policy.allows("")
    with pytest.raises(InvalidParameterError, match="has spaces"):
        AccessPolicy.from_sources(["two words"])
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(InvalidParameterError, match="holds no key"):
        AccessPolicy.from_sources(key_file=tmp_path / "empty.txt")
    with pytest.raises(InvalidParameterError, match="cannot read the API key file"):
        AccessPolicy.from_sources(key_file=tmp_path / "missing.txt")


def test_cli_flags_reach_the_policy(monkeypatch, tmp_path):
    from pipeline_lib.cli import build_parser
    from pipeline_lib.commands.serve import access_from_args

    monkeypatch.delenv("PIPELINE_LIB_API_KEY", raising=False)
    args = build_parser().parse_args(["serve", "--api-key", "aaaa-1", "--api-key", "bbbb-2",
                                      "--rate-limit", "5", "--generate-model", "sdxl-turbo"])
    policy = access_from_args(args)
    assert policy.keys == ("aaaa-1", "bbbb-2") and policy.rate_per_minute == 5
    assert args.generate_model == "sdxl-turbo"


@pytest.mark.parametrize("host, keys, warned", [("0.0.0.0", (), True), ("0.0.0.0", ("k-1",), False),
                                                ("127.0.0.1", (), False)])
def test_exposed_without_a_key_warns(monkeypatch, caplog, host, keys, warned):
    from pipeline_lib.server import app as app_module

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: None)
    monkeypatch.setattr(app_module, "create_app", lambda *a, **k: None)
    caplog.set_level(logging.INFO, logger="pipeline_lib.server.app")
    app_module.serve(host=host, api_keys=keys)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert bool(warnings) == warned
    if warned:
        assert "without an API key" in warnings[0] and "tunnel" in warnings[0]


def test_rate_limit_is_429_with_retry_after(sd_dir):
    app = create_app(MODEL, device="cpu", limits=LIMITS,
                     api_keys=AccessPolicy(keys=(KEY, OTHER_KEY), rate_per_minute=2))
    with LiveServer(app) as server:
        client = _client(server)
        client.models.list()
        client.models.list()
        with pytest.raises(openai.RateLimitError) as err:
            client.models.list()
        assert 1 <= int(err.value.response.headers["retry-after"]) <= 30
        assert err.value.code == "rate_limit_exceeded"
        assert _client(server, OTHER_KEY).models.list().data  # each key has its own budget
        assert httpx.get(server.url + "/health").status_code == 200  # never limited


# ------------------------------------------------------------------ one device, in order
def _tiny_png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (12, 16, 3), np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_generation_and_upscale_share_the_device_in_order(live, monkeypatch):
    order, active, peak = [], [0], [0]
    gate, lock = threading.Event(), threading.Lock()

    def tracked(real, label_of):
        def run(self, *args):
            with lock:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
                order.append(label_of(args))
            try:
                assert gate.wait(120), "test never opened the gate"
                return real(self, *args)
            finally:
                with lock:
                    active[0] -= 1
        return run

    monkeypatch.setattr(generation_module.Generation, "infer", tracked(
        generation_module.Generation.infer, lambda a: f"gen:{a[0].prompt}"))
    monkeypatch.setattr(upscaling_module.Upscaling, "infer", tracked(
        upscaling_module.Upscaling.infer, lambda a: f"up:{a[2].prompt}"))
    png = _tiny_png()
    service = live.app.state.service

    def gen(i):
        return _client(live).images.generate(prompt=f"p{i}", size="64x64", extra_body=FAST)

    def up(i):
        return httpx.post(live.url + "/v1/images/upscale", timeout=120,
                          headers={"Authorization": f"Bearer {KEY}"},
                          files={"image": ("a.png", png, "image/png")},
                          data={"prompt": f"p{i}", "scale": "2"})

    expected = []
    with ThreadPoolExecutor(6) as pool:
        futures = []
        for i in range(6):
            kind = (gen, up)[i % 2]
            futures.append(pool.submit(kind, i))
            expected.append(f"{'gen' if kind is gen else 'up'}:p{i}")
            deadline = time.monotonic() + 60  # let each one take its place in the queue
            while service.pending < i + 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert service.pending == i + 1
        time.sleep(0.2)
        assert order == expected[:1]  # the first runs, the rest wait for the device
        gate.set()
        answers = [f.result(timeout=300) for f in futures]
    assert order == expected and peak[0] == 1
    assert all(len(a.data) == 1 for a in answers[0::2])
    assert all(r.status_code == 200 and _png(r.json()["data"][0]).size == (32, 24)
               for r in answers[1::2])
