"""Issue 10 for generation, batch jobs, animations/videos and metadata: bad parameters, simulated
out-of-memory, killed runs, broken media files. Tiny random pipelines, 32-64 px, 1-2 steps."""
from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bad_inputs import write_corpus
from conftest import ROOT

import pipeline_lib as pl
from pipeline_lib import cli
from pipeline_lib.batch import run_batch
from pipeline_lib.errors import (GenerationOutOfMemoryError, ImageReadError, ImageTooLargeError,
                                 InvalidParameterError)
from pipeline_lib.memory import MemoryPlan
from pipeline_lib.testing import tiny_sd_pipeline_dir

FAST = dict(steps=2, width=32, height=32, progress=False)
MODEL = "realesr-animevideov3"


@pytest.fixture(scope="module")
def sd_dir():
    return str(tiny_sd_pipeline_dir())


def _sha(p: Path) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def _complete_pngs(folder: Path) -> list[Path]:
    """Every visible PNG in ``folder``, each checked to decode fully."""
    found = sorted(folder.glob("*.png"))
    for f in found:
        with Image.open(f) as im:
            im.load()
    return found


# ------------------------------------------------------------------ parameters
@pytest.mark.parametrize("kwargs, match", [
    (dict(width=-5), r"width must be ≥ 1 pixel, got -5"),
    (dict(width=float("nan")), r"width must be a whole number of pixels, got nan"),
    (dict(height=float("inf")), r"height must be a whole number of pixels, got inf"),
    (dict(device="cuda:7"), r"'cuda:7'.*(no CUDA GPU is available|does not exist: this machine has)"),
    (dict(device="gpu9"), r"unknown device 'gpu9'; use 'cpu', 'cuda', 'cuda:N' or 'mps'"),
    (dict(negative_prompt=5), r"negative_prompt must be text or None"),
    (dict(steps=1.5), r"steps must be a whole number"),
    (dict(seed="5"), r"seed must be a whole number in 0\.\.4294967295"),
    (dict(num_images=True), r"num_images must be a whole number"),
    (dict(output_type="np"), r"output_type must be 'pil' or 'latent'"),
    (dict(memory=None), r"unknown memory profile None; use one of auto, fast, balanced, low"),
    (dict(guidance=-1), r"guidance must be a finite number in 0\.\.50"),
])
def test_generate_rejects_with_the_accepted_range(sd_dir, kwargs, match):
    args = dict(FAST, model=sd_dir, seed=1)
    args.update(kwargs)
    with pytest.raises(InvalidParameterError, match=match):
        pl.generate("x", **args)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(upscaler="nope"), pl.UnknownModelError, r"Unknown upscaler 'nope'"),
    (dict(size=0), InvalidParameterError, r"size values must be ≥ 1 pixel, got 0"),
    (dict(size=-5), InvalidParameterError, r"≥ 1 pixel, got -5"),
    (dict(size=float("nan")), InvalidParameterError, r"size must be an int \(long side\) or \(width, height\)"),
    (dict(size="abc"), InvalidParameterError, r"'abc' is not 'N' or 'WxH'"),
])
def test_text_to_image_checks_before_generating(sd_dir, monkeypatch, kwargs, error, match):
    gen_mod = sys.modules["pipeline_lib.generate"]

    def never(*a, **k):
        raise AssertionError("generated before the arguments were checked")

    monkeypatch.setattr(gen_mod, "generate", never)
    args = dict(model=sd_dir, upscaler=MODEL, seed=1)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        pl.text_to_image("x", **args)


@pytest.mark.parametrize("kwargs, match", [
    (dict(area=-1), r"area must be in 1\.\.16777216"),
    (dict(area=float("nan")), r"area must be a whole number in 1\.\.16777216"),
    (dict(multiple=0), r"multiple must be in 1\.\.256"),
])
def test_size_for_aspect_checks_area_and_multiple(kwargs, match):
    with pytest.raises(InvalidParameterError, match=match):
        pl.size_for_aspect("portrait", **kwargs)
    assert pl.size_for_aspect("square", area=4096, multiple=8) == (64, 64)


@pytest.mark.parametrize("flags, match", [
    (["--size", "0x0"], r"size '0x0' is not 'N' or 'WxH' with positive integers"),
    (["--aspect", "wide"], r"unknown aspect 'wide'; use one of square"),
    (["--device", "cuda:7"], r"'cuda:7'"),
    (["--seed", "-1"], r"seed must be in 0\.\.4294967295"),
    (["-n", "0"], r"num_images must be in 1\.\.64, got 0"),
    (["--steps", "0"], r"steps must be in 1\.\.1000, got 0"),
    (["--guidance", "nan"], r"guidance must be a finite number in 0\.\.50"),
    (["--scheduler", "bogus"], r"unknown scheduler 'bogus'.*Use one of default"),
    (["--upscale", "nope"], r"Unknown upscaler 'nope'"),
    (["--upscale", MODEL, "--target", "0"], r"size '0' is not 'N' or 'WxH'"),
])
def test_cli_generate_flags(sd_dir, tmp_path, capsys, flags, match):
    import re

    out = tmp_path / "out"
    args = ["generate", "x", "-o", str(out), "-m", sd_dir, "--steps", "2", "--seed", "1",
            "--device", "cpu"]
    if "--aspect" not in flags:
        args += ["--size", "32x32"]
    args += flags  # later flags win in argparse
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert re.search(match, err) and "Traceback" not in err
    assert not out.exists() or not list(out.iterdir())


def test_batch_refuses_a_bad_device_before_any_job(tmp_path):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"type": "upscale", "input": "a.png"}\n')
    with pytest.raises(InvalidParameterError, match=r"unknown device 'gpu9'"):
        run_batch(jobs, tmp_path / "out", device="gpu9", progress=False)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ out of memory
@pytest.fixture
def oom_at_64(sd_dir, monkeypatch):
    """The tiny UNet runs out of 'CUDA' memory on 64-px images (8-px latents), not on 32-px ones."""
    pipe = pl.load_pipeline(sd_dir, device="cpu")
    real = pipe.unet.forward

    def forward(sample, *a, **k):
        if sample.shape[-1] >= 8:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB "
                                              "(simulated)")
        return real(sample, *a, **k)

    monkeypatch.setattr(pipe.unet, "forward", forward)
    return pipe


def test_generation_oom_is_typed_and_names_the_settings(sd_dir, oom_at_64):
    with pytest.raises(GenerationOutOfMemoryError) as err:
        pl.generate("x", model=sd_dir, seed=3, steps=2, width=64, height=64, num_images=2,
                    device="cpu", progress=False)
    assert isinstance(err.value, MemoryError) and isinstance(err.value, pl.PipelineError)
    msg = str(err.value)
    assert "out of cpu memory generating 2 image(s) of 64x64" in msg and "(simulated)" in msg
    assert "num_images=1" in msg and "smaller size than 64x64" in msg and "--size" in msg
    # the same process carries on with the next (smaller) job
    ok = pl.generate("x", model=sd_dir, seed=3, device="cpu", **FAST)[0]
    assert ok.image.size == (32, 32) and np.asarray(ok.image).std() > 0


def test_oom_advice_on_a_gpu_names_memory_low():
    plan = MemoryPlan("balanced", "cuda:0", "float16", "model")
    from pipeline_lib.generate.oom import oom_advice

    msg = oom_advice("CUDA out of memory", plan, 1, 1024, 1024)
    assert "memory='low' (CLI: --memory low" in msg and "device='cpu'" in msg
    low = MemoryPlan("low", "cuda:0", "float16", "sequential")
    assert "memory='low'" not in oom_advice("x", low, 1, 512, 512)


def test_cli_generate_oom_exits_nonzero_without_traceback(sd_dir, oom_at_64, tmp_path, capsys):
    out = tmp_path / "out"
    rc = cli.main(["generate", "x", "-o", str(out), "-m", sd_dir, "--steps", "2", "--size",
                   "64x64", "--seed", "1", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "error: out of cpu memory" in err and "--size" in err
    assert "Traceback" not in err and not (out.exists() and list(out.iterdir()))


def test_batch_reports_oom_and_runs_the_next_job(sd_dir, oom_at_64, tmp_path):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("\n".join(json.dumps(j) for j in [
        {"type": "generate", "id": "big", "prompt": "x", "model": sd_dir, "width": 64, "height": 64,
         "steps": 2},
        {"type": "generate", "id": "small", "prompt": "x", "model": sd_dir, "width": 32,
         "height": 32, "steps": 2}]))
    rep = run_batch(jobs, tmp_path / "out", device="cpu", progress=False)
    assert rep.done == ["small"] and list(rep.failed) == ["big"]
    assert rep.failed["big"].startswith("GenerationOutOfMemoryError: out of cpu memory")
    assert "smaller size" in rep.failed["big"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["small.json", "small.png"]


# ------------------------------------------------------------------ interrupted work
def _wait_then_kill(proc, ready, what: str, limit: float = 240) -> None:
    deadline = time.monotonic() + limit
    try:
        while not ready():
            assert proc.poll() is None, f"the run ended before {what}"
            assert time.monotonic() < deadline, f"no {what} after {limit} s"
            time.sleep(0.005)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)


def test_killed_batch_leaves_no_partial_files_and_rerun_does_each_job_once(sd_dir, tmp_path):
    jobs = [{"type": "generate", "id": f"j{i}", "prompt": f"picture {i}", "model": sd_dir,
             "width": 32, "height": 32, "steps": 2, "num_images": 2 if i % 3 == 0 else 1}
            for i in range(10)]
    jobs_file = tmp_path / "jobs.jsonl"
    jobs_file.write_text("\n".join(json.dumps(j) for j in jobs))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline_lib", "-q", "batch", str(jobs_file),
                             "-o", str(out), "--no-progress", "--device", "cpu"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_then_kill(proc, lambda: out.is_dir() and any(out.glob("j*.json")), "a finished job")
    records = {p.stem: json.loads(p.read_text()) for p in out.glob("j*.json")}
    assert 1 <= len(records) < 10, "the kill landed too late to test anything"
    for r in records.values():  # a record only ever follows its complete images
        assert all((out / name).is_file() for name in r["outputs"])
    _complete_pngs(out)  # every visible image decodes fully
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("j*.json")}

    rep = run_batch(jobs_file, out, device="cpu", progress=False)
    assert not rep.failed, rep.failed
    assert sorted(rep.skipped) == sorted(records) and set(rep.done).isdisjoint(records)
    assert sorted(rep.done + rep.skipped) == sorted(j["id"] for j in jobs)  # each job exactly once
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("j*.json") if p.name in before} == before
    expected = sorted([f"j{i}.json" for i in range(10)]
                      + [f"j{i}-{k}.png" for i in range(10) if i % 3 == 0 for k in (0, 1)]
                      + [f"j{i}.png" for i in range(10) if i % 3])
    assert sorted(p.name for p in out.iterdir()) == expected  # no .part, nothing twice
    for f in _complete_pngs(out):
        assert Image.open(f).size == (32, 32)


def test_rerun_replaces_images_left_by_a_job_killed_between_its_images(sd_dir, tmp_path):
    jobs_file = tmp_path / "jobs.jsonl"
    jobs_file.write_text(json.dumps({"type": "generate", "id": "pair", "prompt": "x", "model": sd_dir,
                                     "num_images": 2, "seed": 9, "steps": 2, "width": 32,
                                     "height": 32}))
    out = tmp_path / "out"
    out.mkdir()
    Image.new("RGB", (32, 32), (1, 2, 3)).save(out / "pair-0.png")  # image 0 of a killed attempt
    rep = run_batch(jobs_file, out, device="cpu", progress=False)
    assert rep.done == ["pair"] and not rep.failed
    ref = pl.generate("x", model=sd_dir, seed=9, num_images=2, device="cpu", **FAST)
    for k in (0, 1):
        got = np.asarray(Image.open(out / f"pair-{k}.png").convert("RGB"), np.int16)
        assert np.abs(got - np.asarray(ref[k].image, np.int16)).max() <= 1


def test_killed_generate_cli_leaves_only_complete_images(sd_dir, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline_lib", "-q", "generate", "a cat", "-o",
                             str(out), "-m", sd_dir, "-n", "3", "--seed", "100", "--steps", "2",
                             "--size", "32x32", "--device", "cpu"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_then_kill(proc, lambda: out.is_dir() and any(out.glob("*.png")), "a first image")
    done = _complete_pngs(out)
    assert 1 <= len(done) <= 3
    assert {p.name for p in done} <= {"100.png", "101.png", "102.png"}
    for f in done:  # each visible file is whole and carries its own seed
        assert pl.read_metadata(f)["seed"] == int(f.stem)
    assert all(p.name.startswith(".") for p in out.iterdir() if p not in done)


# ------------------------------------------------------------------ media
def _gif(frames, **kw) -> bytes:
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=len(frames) > 1, append_images=frames[1:], **kw)
    return buf.getvalue()


def _video(path: Path, n: int = 20, size: int = 16) -> Path:
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        rng = np.random.default_rng(0)
        for _ in range(n):
            f = av.VideoFrame.from_ndarray(rng.integers(0, 256, (size, size, 3), np.uint8), "rgb24")
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return path


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    pytest.importorskip("av")
    d = tmp_path_factory.mktemp("media")
    frames = [Image.new("RGB", (16, 12), c) for c in ("red", "green", "blue")]
    anim = _gif(frames, duration=50, loop=0)
    (d / "truncated.gif").write_bytes(anim[: len(anim) * 2 // 3])
    (d / "anim.gif").write_bytes(anim)
    (d / "single.gif").write_bytes(_gif(frames[:1]))
    (d / "text.mp4").write_text("this is a text file, not a video\n")
    mkv = _video(d / "full.mkv").read_bytes()
    (d / "truncated.mkv").write_bytes(mkv[: len(mkv) * 2 // 3])
    mp4 = _video(d / "full.mp4").read_bytes()
    (d / "truncated.mp4").write_bytes(mp4[: len(mp4) // 2])
    return d


@pytest.mark.parametrize("name, dest, env, error, match", [
    ("truncated.gif", "o.gif", {}, ImageReadError, r"truncated\.gif: damaged or truncated animation"),
    ("text.mp4", "o.mp4", {}, ImageReadError, r"text\.mp4: not a video PyAV can read"),
    ("truncated.mkv", "o.mkv", {}, ImageReadError,
     r"truncated\.mkv: the video looks truncated: \d+ frames decoded of about 20"),
    ("truncated.mp4", "o.mp4", {}, ImageReadError, r"truncated\.mp4: not a video PyAV can read"),
    # 3 frames of 64×48 each fit a 5000-pixel limit alone, not together
    ("anim.gif", "o.gif", {"PIPELINE_LIB_MAX_OUTPUT_PIXELS": "5000"}, InvalidParameterError,
     r"anim\.gif: 3 frames of 64×48 = 9,216 output pixels, past the limit of 5,000"),
    ("anim.gif", "o.gif", {"PIPELINE_LIB_MAX_OUTPUT_PIXELS": "2000"}, InvalidParameterError,
     r"anim\.gif: output 64×48 = 3,072 pixels exceeds the limit of 2,000"),
    ("anim.gif", "o.gif", {"PIPELINE_LIB_MAX_INPUT_PIXELS": "100"}, ImageTooLargeError,
     r"anim\.gif: 16×12 = 192 pixels exceeds the limit of 100"),
])
def test_broken_media_give_typed_errors_naming_the_file(media, tmp_path, monkeypatch, name, dest,
                                                        env, error, match):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    src = media / name
    digest = _sha(src)
    with pytest.raises(error, match=match):
        pl.upscale_file(src, tmp_path / dest, model=MODEL, scale=4, progress=False)
    assert list(tmp_path.iterdir()) == []  # no output, no temp file
    assert _sha(src) == digest


def test_truncated_video_through_the_cli(media, tmp_path, capsys):
    out = tmp_path / "out"
    rc = cli.main(["upscale", str(media / "truncated.mkv"), str(media / "full.mkv"), "-o", str(out),
                   "--model", MODEL, "--scale", "2", "--device", "cpu"])
    cap = capsys.readouterr()
    assert rc == 1 and "truncated.mkv: failed:" in cap.err and "looks truncated" in cap.err
    assert "1 upscaled, 0 skipped, 1 failed" in cap.out
    assert sorted(p.name for p in out.iterdir()) == ["full_upscaled.mkv"]


def test_single_frame_gif_is_a_still(media, tmp_path, capsys):
    from pipeline_lib.media import media_kind

    src = media / "single.gif"
    digest = _sha(src)
    assert media_kind(src) == "still"
    dest = pl.upscale_file(src, tmp_path / "one.gif", model=MODEL, scale=2, progress=False)
    with Image.open(dest) as im:
        assert im.format == "GIF" and getattr(im, "n_frames", 1) == 1 and im.size == (32, 24)
        r, g, b = im.convert("RGB").getpixel((16, 12))
        assert r > 200 and g < 40 and b < 40
    rc = cli.main(["upscale", str(src), "-o", str(tmp_path / "cli"), "--model", MODEL, "--scale",
                   "2", "--device", "cpu"])
    assert rc == 0 and Image.open(tmp_path / "cli" / "single_upscaled.png").size == (32, 24)
    assert _sha(src) == digest


# ------------------------------------------------------------------ metadata
@pytest.mark.parametrize("name", ["empty.png", "text.png", "truncated.png", "html.jpg"])
def test_read_metadata_on_non_images(tmp_path, name):
    write_corpus(tmp_path)
    with pytest.raises(ImageReadError, match=rf"{name}.*(not a readable image|no generation)"):
        pl.read_metadata(tmp_path / name)


@pytest.mark.parametrize("text, result", [
    ("a cat\nSteps: 2x, Seed: 5", r"Steps is '2x', not a number"),
    ("a cat\nSteps: 20, Sampler: Euler, CFG scale: nan, Seed: 5", r"CFG scale is nan, not a number"),
    ("a cat\nSteps: 20, Seed: abc", r"Seed is 'abc', not a number"),
    ("just a prompt, no settings\nsecond line", {"prompt": "just a prompt, no settings\nsecond line",
                                                 "negative_prompt": ""}),
    ("\x00\x01 binary-ish junk \ufffd", {"prompt": "\x00\x01 binary-ish junk \ufffd",
                                          "negative_prompt": ""}),
])
def test_read_metadata_on_garbled_parameters(tmp_path, text, result):
    from pipeline_lib.images import save_image

    path = save_image(Image.new("RGB", (4, 4)), tmp_path / "g.png", metadata={"parameters": text})
    if isinstance(result, dict):
        assert pl.read_metadata(path) == result
    else:
        with pytest.raises(ImageReadError, match=rf"g\.png: garbled 'parameters' text: {result}"):
            pl.read_metadata(path)


@pytest.mark.parametrize("prompt, negative", [
    ("草原の馬, 🐎 at dawn — «lumière»", "ぼやけ, 低品質"),
    ("line one,\nline two, with commas", "neg one\nneg two, blurry"),
    ("\nstarts with a newline", ""),
    ("ends with a newline\n", "a: b, \"quoted\""),
    ("Steps: 5 is part of the prompt", "x"),
])
def test_metadata_round_trip_with_unicode_newlines_commas(sd_dir, tmp_path, prompt, negative):
    g = pl.generate(prompt, model=sd_dir, seed=42, negative_prompt=negative, device="cpu", **FAST)[0]
    meta = pl.read_metadata(g.save(tmp_path / "m.png"))
    assert meta["prompt"] == prompt and meta["negative_prompt"] == negative
    assert (meta["seed"], meta["steps"], meta["width"], meta["height"]) == (42, 2, 32, 32)
    assert meta["model"] == Path(sd_dir).name  # the folder's name, not the user's path
    again = pl.generate(**{**meta, "model": sd_dir}, device="cpu", progress=False)[0]
    assert np.array_equal(np.asarray(again.image), np.asarray(g.image))


def test_media_kind_and_upscale_file_survive_a_pillow_bomb(tmp_path):
    """Pillow's own bomb error (past 2× its limit) is no OSError; it must not escape media_kind."""
    from pipeline_lib.media import media_kind

    cases = write_corpus(tmp_path / "c")
    src = tmp_path / "c" / "bomb_huge.png"
    assert cases["bomb_huge.png"].error == "too_large" and media_kind(src) == "still"
    with pytest.raises(ImageTooLargeError, match=r"bomb_huge\.png"):
        pl.upscale_file(src, tmp_path / "o.png", model=MODEL, scale=2, progress=False)
    assert not (tmp_path / "o.png").exists()
