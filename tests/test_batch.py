"""Batch jobs: parsing errors, resumability, and a real 2-process Accelerate run on the CPU."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline_lib import InvalidParameterError
from pipeline_lib.batch import read_jobs, run_batch
from pipeline_lib.testing import tiny_sd_pipeline_dir

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def jobs_file(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("jobs")
    rng = np.random.default_rng(0)
    lines = []
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).save(d / f"in{i}.png")
        lines.append({"type": "upscale", "input": f"in{i}.png", "model": "realesr-animevideov3",
                      "scale": 2})
    lines[0]["id"] = "first"
    sd = str(tiny_sd_pipeline_dir())
    for prompt in ("a cat", "a dog"):
        lines.append({"type": "generate", "prompt": prompt, "model": sd, "width": 32, "height": 32,
                      "steps": 1})
    path = d / "jobs.jsonl"
    path.write_text("# tiny jobs\n" + "\n".join(json.dumps(x) for x in lines) + "\n\n")
    return path


def _write(tmp_path, text: str) -> Path:
    p = tmp_path / "jobs.jsonl"
    p.write_text(text)
    return p


@pytest.mark.parametrize("text, match", [
    ('{"type": "upscale", "input": "a.png"}\n{"type": "upscale", "input": ', r"jobs.jsonl:2: not valid JSON"),
    ('[1, 2]', r"jobs.jsonl:1: expected a JSON object"),
    ('\n{"type": "resize", "input": "a.png"}', r"jobs.jsonl:2: \"type\" must be one of generate, upscale"),
    ('{"type": "generate"}', r"jobs.jsonl:1: a generate job needs \"prompt\""),
    ('{"type": "generate", "prompt": "x", "stepz": 3}', r"jobs.jsonl:1: unknown generate option\(s\) stepz"),
    ('{"type": "upscale", "input": "a.png", "id": "../x"}', r"jobs.jsonl:1: \"id\" must be"),
    ('{"type": "upscale", "input": "a.png"}\n{"type": "upscale", "input": "a.png"}',
     r"jobs.jsonl:2: job id 'upscale-[0-9a-f]+' repeats line 1"),
])
def test_bad_lines_name_the_line(tmp_path, text, match):
    with pytest.raises(InvalidParameterError, match=match):
        read_jobs(_write(tmp_path, text))


def test_ids_are_stable_and_seeds_derived(jobs_file):
    a, b = read_jobs(jobs_file), read_jobs(jobs_file)
    assert [j.id for j in a] == [j.id for j in b] and a[0].id == "first"
    assert len({j.id for j in a}) == 6
    gens = [j for j in a if j.type == "generate"]
    assert all(isinstance(j.kwargs["seed"], int) for j in gens)
    assert gens[0].kwargs["seed"] != gens[1].kwargs["seed"]
    assert Path(a[1].kwargs["input"]) == jobs_file.parent / "in1.png"  # relative to the jobs file


def test_two_processes_each_job_once_then_resume(jobs_file, tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    # --multi_gpu is Accelerate's torchrun launcher; on a host without CUDA the batch module forms
    # a CPU (gloo) group. (`--cpu --num_processes 2` would start a single process.)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "pipeline_lib", "-q", "batch", str(jobs_file), "-o", str(out), "--no-progress"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    done = [int(n) for n in re.findall(r"\[process \d/2\] done (\d+), skipped 0", proc.stdout)]
    assert len(done) == 2 and sum(done) == 6 and min(done) >= 1, proc.stdout  # split, none twice
    records = [json.loads(p.read_text()) for p in out.glob("*.json")]
    ids = {j.id for j in read_jobs(jobs_file)}
    assert sorted(r["id"] for r in records) == sorted(ids)  # none lost, none duplicated
    assert {r["rank"] for r in records} == {0, 1}
    for r in records:
        img = Image.open(out / r["outputs"][0])
        assert img.size == ((32, 24) if r["type"] == "upscale" else (32, 32))
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = run_batch(jobs_file, out, progress=False)
    assert again.done == [] and sorted(again.skipped) == sorted(ids) and not again.failed
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_failed_job_is_reported_and_others_run(tmp_path):
    Image.new("RGB", (8, 8), (10, 200, 30)).save(tmp_path / "ok.png")
    p = _write(tmp_path, '{"type": "upscale", "input": "missing.png", "id": "bad"}\n'
                         '{"type": "upscale", "input": "ok.png", "id": "good", "model": "realesr-animevideov3"}\n')
    rep = run_batch(p, tmp_path / "out", progress=False)
    assert rep.done == ["good"] and list(rep.failed) == ["bad"]
    assert "missing.png" in rep.failed["bad"]
    assert Image.open(tmp_path / "out" / "good.png").size == (32, 32)
    assert not (tmp_path / "out" / "bad.json").exists()
