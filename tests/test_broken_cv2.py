"""A broken OpenCV (Colab's three packages, one of them uninstalled: ``cv2`` half deleted) never
breaks a torch upscale that only needs a final resize: Pillow does the resize then."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np

from conftest import ROOT, psnr
from pipeline_lib.upscale.pixels import _pillow_resize, resize


def test_pillow_resize_matches_opencv_closely():
    rng = np.random.default_rng(0)
    chw = rng.random((3, 40, 30), dtype=np.float32)
    chw = (chw + np.roll(chw, 1, 1) + np.roll(chw, 1, 2)) / 3  # smoother, like a picture
    for size, shrink in (((45, 60), False), ((15, 20), True)):
        a, b = resize(chw, size), _pillow_resize(chw, size, shrink)
        assert a.shape == b.shape == (3, size[1], size[0])
        assert psnr(a * 255, b * 255) > 30


def test_upscale_with_a_half_deleted_cv2(tmp_path):
    code = textwrap.dedent("""
        import sys, types
        sys.modules["cv2"] = types.ModuleType("cv2")  # what `pip uninstall opencv-python` leaves
        from PIL import Image
        import pipeline_lib as pl
        res = pl.upscale(Image.new("RGB", (10, 8), (200, 30, 70)), "realesr-animevideov3",
                         scale=3, progress=False, full_result=True)
        print("RESULT", res.image.size, res.backend)
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={**__import__("os").environ,
                                                       "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "RESULT (30, 24) torch" in proc.stdout
