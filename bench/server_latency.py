"""Latency of the HTTP service per request, end to end through a live uvicorn on 127.0.0.1.

Serves the tiny offline SD pipeline (pipeline_lib.testing) and realesr-animevideov3 on the CPU,
then times sequential requests with the official openai client (generation) and httpx (upscale):

    PYTHONPATH=. python bench/server_latency.py --requests 10

Prints median / min / max seconds per request for: generation n=1 64x64 2 steps, generation n=2,
upscale of a 32x24 PNG ×4, GET /health, and the same generate()/upscale() calls made directly. The tiny model makes noise, so this measures the
service's own overhead plus a minimal pipeline run, not a real model's speed.
"""
from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import openai
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_server_openai import KEY, MODEL, LiveServer  # noqa: E402

import pipeline_lib as pl  # noqa: E402
from pipeline_lib.server import ServerLimits, create_app  # noqa: E402
from pipeline_lib.testing import tiny_sd_pipeline_dir  # noqa: E402


def _timed(fn, count: int) -> list[float]:
    fn()  # warm-up: first-call allocations, lazy imports
    out = []
    for _ in range(count):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=10)
    args = ap.parse_args()
    sd = str(tiny_sd_pipeline_dir(Path(tempfile.gettempdir()) / "pipeline_lib_tiny"))
    app = create_app(MODEL, device="cpu", limits=ServerLimits(max_n=4), generate_model=sd,
                     api_keys=[KEY])
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 32, 3), np.uint8)).save(buf, "PNG")
    png, auth = buf.getvalue(), {"Authorization": f"Bearer {KEY}"}
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=120) as http:
        client = openai.OpenAI(api_key=KEY, base_url=server.url + "/v1", max_retries=0)

        def gen(n):
            return lambda: client.images.generate(prompt="a cat", n=n, size="64x64",
                                                  extra_body={"steps": 2})

        def up():
            http.post("/v1/images/upscale", headers=auth,
                      files={"image": ("a.png", png, "image/png")}).raise_for_status()

        arr = np.asarray(Image.open(io.BytesIO(png)))
        cases = {"generate n=1 64x64 2 steps": gen(1), "generate n=2 64x64 2 steps": gen(2),
                 "upscale 32x24 x4 (animevideov3)": up, "GET /health": lambda: http.get("/health"),
                 # the same work without HTTP, for the service's own share
                 "library generate() n=1": lambda: pl.generate(
                     "a cat", model=sd, width=64, height=64, steps=2, device="cpu", progress=False),
                 "library upscale()": lambda: pl.upscale(arr, MODEL, device="cpu", progress=False)}
        for name, fn in cases.items():
            t = _timed(fn, args.requests)
            print(f"{name:34s} median {statistics.median(t) * 1000:7.0f} ms   "
                  f"min {min(t) * 1000:7.0f}   max {max(t) * 1000:7.0f}   ({len(t)} requests)")


if __name__ == "__main__":
    main()
