"""Schemathesis over the service's OpenAPI schema: no 500s, every answer matches the published
schema (errors included), and the server is healthy afterwards.

A live uvicorn on 127.0.0.1 serves the tiny offline SD pipeline and realesr-animevideov3 with
limits small enough that any request the schema allows finishes in about a second on a CPU.
"""
from __future__ import annotations

import io
import os
import time
from collections import Counter

import httpx
import numpy as np
import pytest
import schemathesis
from PIL import Image
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import positive_data_acceptance

from pipeline_lib import Preset, register_preset
from pipeline_lib.server import ServerLimits, create_app

from test_server_openai import KEY, MODEL, LiveServer

LIMITS = ServerLimits(max_n=2, max_upload_bytes=50_000, max_input_pixels=48 * 48,
                      max_output_pixels=96 * 96, max_steps=3, max_pending=8)
# per operation and mode; the run stays under a minute on 2 busy cores (FUZZ_EXAMPLES=200 for a
# longer hunt)
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "10"))


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory):
    from pipeline_lib.testing import tiny_sd_pipeline_dir

    sd = str(tiny_sd_pipeline_dir(tmp_path_factory.mktemp("tiny")))
    # a preset, so requests without 'steps' run the preset's 2 steps, not a full model's 30
    register_preset(Preset("tiny-fuzz", sd, "StableDiffusionPipeline", steps=2, guidance=5.0,
                           size=(64, 64)), replace=True)
    app = create_app(MODEL, device="cpu", limits=LIMITS, generate_model="tiny-fuzz", api_keys=[KEY])
    with LiveServer(app) as server:
        server.calls = Counter()
        t0 = time.monotonic()
        yield server
        # afterwards: still alive, still answering, nothing left in flight
        h = httpx.get(server.url + "/health", timeout=10)
        assert h.status_code == 200 and h.json()["status"] == "ok" and h.json()["pending"] == 0
        print(f"\nschemathesis: {sum(server.calls.values())} calls in {time.monotonic() - t0:.1f} s:"
              f" {dict(sorted(server.calls.items()))}")


def _png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (12, 16, 3), np.uint8)).save(buf, "PNG")
    return buf.getvalue()


PNG = _png()


def _operations(app) -> list:
    schema = schemathesis.openapi.from_dict(app.openapi())
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.parametrize("mode", list(GenerationMode), ids=lambda m: m.value)
def test_api_matches_its_schema(fuzzed, mode):
    """Every operation, valid (positive) and invalid (negative) requests: no 500, every answer
    as published."""
    operations = _operations(fuzzed.app)
    assert {f"{op.method.upper()} {op.path}" for op in operations} == {
        "POST /v1/images/upscale", "POST /v1/images/generations", "GET /health", "GET /v1/models"}
    for op in operations:
        if mode is GenerationMode.NEGATIVE and op.method.upper() == "GET":
            continue  # no parameters: nothing can be schema-invalid
        @given(case=op.as_strategy(generation_mode=mode), real_image=st.booleans())
        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case, real_image):
            if real_image and op.path == "/v1/images/upscale" and isinstance(case.body, dict) \
                    and "image" in case.body:
                # random bytes are never an image: half the time send one, so the fuzzed fields
                # reach sizing and inference too
                case.body["image"] = PNG
            # All checks but "schema-valid data is accepted": the schema cannot say that an
            # upload must hold an image or that n is at most this server's --max-n, so valid-
            # looking requests get 400/422 (tested in test_server*.py with their messages).
            response = case.call_and_validate(base_url=fuzzed.url, timeout=60,
                                              headers={"Authorization": f"Bearer {KEY}"},
                                              excluded_checks=[positive_data_acceptance])
            fuzzed.calls[f"{case.method} {case.path} {response.status_code}"] += 1

        check()
