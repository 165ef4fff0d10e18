"""``python -m pipeline_lib models``: one table of upscalers and presets."""
from __future__ import annotations

import dataclasses

import pipeline_lib as pl
from pipeline_lib.cli import main as cli_main
from pipeline_lib.generate import PRESETS


def _rows(text: str) -> dict[str, list[str]]:
    lines = text.splitlines()
    header = lines[0].split()
    assert header == ["NAME", "KIND", "SCALE", "BACKENDS", "OFFLINE", "GPU_PEAK", "LICENSE"]
    starts = [lines[0].index(h) for h in header] + [None]
    rows = {}
    for line in lines[1:]:
        if not line.strip():
            break
        cells = [line[a:b].strip() for a, b in zip(starts, starts[1:])]
        rows[cells[0]] = cells
    return rows


def test_models_lists_every_upscaler_and_preset(capsys, tmp_path, monkeypatch):
    local = tmp_path / "my-model"
    local.mkdir()
    base = PRESETS["sd-1.5"]
    monkeypatch.setitem(PRESETS, "my-local", dataclasses.replace(base, name="my-local",
                                                                 repo=str(local)))
    assert cli_main(["models"]) == 0
    rows = _rows(capsys.readouterr().out)
    names = {r["name"] for r in pl.list_upscalers()} | {p["name"] for p in pl.list_presets()}
    assert set(rows) == names
    assert rows["espcn-x2"] == ["espcn-x2", "upscale", "x2", "opencv", "bundled", "-", "Apache-2.0"]
    assert rows["realesr-animevideov3-x3"][2:4] == ["x3", "torch, ncnn"]
    assert rows["4x-ultrasharp"][4:] == ["download", "-", "CC-BY-NC-SA-4.0"]  # offline: no cache
    assert rows["sdxl-turbo"][1:3] == ["generate", "512x512"]
    assert "non-commercial" in rows["sdxl-turbo"][6]
    # the planned GPU peak (fp16, balanced) from the presets' own figures
    peaks = {p["name"]: p["planned_peak_gib"] for p in pl.list_presets()}
    assert rows["sdxl-base"][5] == f"{peaks['sdxl-base']:.1f} GiB" == "8.8 GiB"
    assert rows["absolute-reality"][5] == "3.8 GiB" and rows["tiny-random"][5] == "-"
    assert rows["my-local"][4] == "local"


def test_models_kind_filter(capsys):
    assert cli_main(["models", "--kind", "generate"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert {r[1] for r in rows.values()} == {"generate"} and "absolute-reality" in rows
