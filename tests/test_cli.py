"""The upscale command end to end, in a real subprocess."""
from __future__ import annotations

import os
import subprocess
import sys

from PIL import Image

from conftest import ROOT


def cli(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "pipeline_lib", *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=300)


def test_folder_in_folder_out_skip_and_failures(tmp_path, small_photo):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    small_photo.save(src / "a.png")
    small_photo.crop((0, 0, 20, 10)).save(src / "sub" / "b.jpg")
    (src / "broken.png").write_text("not an image")
    out = tmp_path / "out"
    r = cli("upscale", str(src), "-o", str(out), "--model", "realesr-animevideov3", "--scale", "2")
    assert r.returncode == 1, r.stderr
    assert "broken.png: failed" in r.stderr and "not an image" in r.stderr
    a, b = out / "a_upscaled.png", out / "sub" / "b_upscaled.png"
    assert Image.open(a).size == (96, 80) and Image.open(b).size == (40, 20)
    assert Image.open(a).text["upscaler"] == "realesr-animevideov3"
    stamp = a.stat().st_mtime_ns
    r = cli("upscale", str(src / "a.png"), "-o", str(out), "--model", "realesr-animevideov3")
    assert r.returncode == 0 and "skipped" in r.stdout and a.stat().st_mtime_ns == stamp
    r = cli("upscale", str(src / "a.png"), "-o", str(out), "--model", "realesr-animevideov3",
            "--overwrite")
    assert r.returncode == 0 and Image.open(a).size == (192, 160)


def test_single_file_output_and_size(tmp_path, small_photo):
    src = tmp_path / "p.png"
    small_photo.save(src)
    dest = tmp_path / "deep" / "result.png"
    r = cli("upscale", str(src), "-o", str(dest), "--model", "realesr-animevideov3", "--size", "100")
    assert r.returncode == 0, r.stderr
    assert Image.open(dest).size == (100, 83)


def test_bad_arguments_exit_nonzero_with_reason(tmp_path, small_photo):
    src = tmp_path / "p.png"
    small_photo.save(src)
    r = cli("upscale", str(src), "-o", str(tmp_path), "--scale", "-2")
    assert r.returncode == 2 and "scale must be" in r.stderr
    r = cli("upscale", str(src), "-o", str(tmp_path), "--model", "nope-x4")
    assert r.returncode == 1 and "Unknown upscaler 'nope-x4'" in r.stderr
    assert not list(tmp_path.glob("*_upscaled*"))


def test_hires_options_without_hires_scale_are_refused_not_ignored(tmp_path):
    r = cli("generate", "a house", "-m", "tiny-random", "-o", str(tmp_path / "out"),
            "--hires-strength", "0.3", "--hires-steps", "4")
    assert r.returncode != 0
    assert "hires_steps, hires_strength without hires_scale does nothing" in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()
