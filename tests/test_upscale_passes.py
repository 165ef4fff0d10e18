"""Multi-pass upscales are planned, not overshot: one log line states the plan and a single
progress total covers every pass (issue: a new user's first hour, point 8)."""
from __future__ import annotations

import logging

import pytest
from PIL import Image

import pipeline_lib as pl
from pipeline_lib.upscale.sizing import MAX_FINAL_ENLARGE, pass_inputs, passes_needed


@pytest.mark.parametrize("factor, native, passes", [
    (16, 8, 1),    # ×8 then a ×2 resize, not ×64 then a shrink
    (2, 4, 1), (4, 4, 1), (6, 4, 1), (8, 4, 1),  # one pass, then resize (≤ 2× enlarging)
    (9, 4, 2), (16, 4, 2), (32, 4, 2), (33, 4, 3),
    (3, 2, 1), (5, 2, 2), (0.5, 4, 1), (7, 1, 1),
])
def test_passes_needed(factor, native, passes):
    assert passes_needed(100, 100, (round(100 * factor), round(100 * factor)), native) == passes
    made = native ** passes
    assert factor / made <= MAX_FINAL_ENLARGE + 1e-9 or native == 1


def test_pass_inputs_grow_by_the_native_factor():
    assert pass_inputs(10, 6, 4, 3) == [(10, 6), (40, 24), (160, 96)]


def test_x8_model_to_16x_runs_once_and_reports_the_plan(caplog):
    caplog.set_level(logging.INFO, "pipeline_lib")
    seen = []
    res = pl.upscale(Image.new("RGB", (32, 24), (200, 40, 90)), "lapsrn-x8", size=512,
                     progress=False, full_result=True, on_progress=lambda d, t: seen.append((d, t)))
    assert res.size == (512, 384) and res.image.size == (512, 384)
    plan = [r.getMessage() for r in caplog.records if "upscale plan" in r.getMessage()]
    assert len(plan) == 1 and "1 pass → 256×192, resized to 512×384" in plan[0]


def test_one_progress_total_over_every_pass():
    seen = []
    res = pl.upscale(Image.new("RGB", (24, 20), (10, 120, 30)), "realesr-animevideov3", scale=20,
                     tile=32, overlap=4, progress=False, full_result=True,
                     on_progress=lambda d, t: seen.append((d, t)))
    assert res.size == (480, 400)
    totals = {t for _, t in seen}
    assert len(totals) == 1  # known from the start, never grows mid-run
    total = totals.pop()
    # pass 1 reads 24×20 (one tile), pass 2 reads 96×80 in 32-px tiles
    assert [d for d, _ in seen] == list(range(1, total + 1)) and total > 2
