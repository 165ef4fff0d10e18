"""What the notebooks need besides the app and the comparisons: where they run, test mode, a demo image.

Notebook cells only call these, so the notebooks hold no logic of their own.

>>> from pipeline_lib import notebook as nb
>>> nb.environment() in ("colab", "kaggle", "local")
True

Test mode (``PIPELINE_LIB_NOTEBOOK_TEST=1``) swaps the real diffusion models for the tiny offline
pipelines of :mod:`pipeline_lib.testing` and uses small sizes, so every notebook runs top to bottom
on a CPU with no network (CI runs them with nbmake). The code path is the same otherwise.
"""
from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any

from . import config

__all__ = ["TEST_ENV", "test_mode", "environment", "system_report", "print_system",
           "fresh_versions", "changed_modules", "print_restart_advice",
           "test_presets", "model_choices", "study_presets", "study_kwargs", "demo_image", "demo_prompt", "defaults",
           "check_upload_upscale_save"]

TEST_ENV = "PIPELINE_LIB_NOTEBOOK_TEST"
_ASSET = Path("assets") / "astronaut.png"


def test_mode(value: bool | None = None) -> bool:
    """``value`` if given, else whether ``PIPELINE_LIB_NOTEBOOK_TEST`` is set to a true value."""
    if value is not None:
        return bool(value)
    return config.get(TEST_ENV)


def environment() -> str:
    """'colab', 'kaggle' or 'local' (from the markers each service sets)."""
    if "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ:
        return "colab"
    if "KAGGLE_KERNEL_RUN_TYPE" in os.environ or Path("/kaggle/working").is_dir():
        return "kaggle"
    return "local"


def system_report() -> dict[str, Any]:
    """Where we run: environment, Python, torch, the GPU and its memory (None without CUDA)."""
    info: dict[str, Any] = {"environment": environment(), "python": platform.python_version(),
                            "test_mode": test_mode(), "torch": None, "gpu": None,
                            "gpu_memory_gb": None, "gpu_free_gb": None}
    try:
        import torch
    except ImportError:
        return info
    info["torch"] = torch.__version__
    if torch.cuda.is_available():
        from .gpu_support import unsupported_gpu_reason

        dev = torch.cuda.current_device()
        info["gpu"] = torch.cuda.get_device_name(dev)
        info["gpu_unsupported"] = unsupported_gpu_reason(dev)
        if info["gpu_unsupported"] is None:  # mem_get_info is CUDA work: only on a usable GPU
            free, total = torch.cuda.mem_get_info(dev)
            info.update(gpu_memory_gb=round(total / 2 ** 30, 1), gpu_free_gb=round(free / 2 ** 30, 1))
    return info


def print_system() -> dict[str, Any]:
    """Print :func:`system_report` as one readable block (and return it)."""
    r = system_report()
    gpu = (f"{r['gpu']} — {r['gpu_memory_gb']} GB ({r['gpu_free_gb']} GB free)" if r["gpu"]
           else "none (CPU only: generation is slow; upscaling small images is fine)")
    if r.get("gpu_unsupported"):
        gpu = f"{r['gpu']} — NOT USABLE: {r['gpu_unsupported']}"
    print(f"environment: {r['environment']}{'  [notebook test mode: tiny offline models]' if r['test_mode'] else ''}\n"
          f"python {r['python']}, torch {r['torch'] or 'not installed'}\nGPU: {gpu}")
    return r


def fresh_versions(modules) -> dict[str, str]:
    """The versions a restarted session would import (asked of a new interpreter)."""
    import json
    import subprocess

    code = ("import importlib, json, sys\nout = {}\nfor m in sys.argv[1:]:\n    try:\n"
            "        out[m] = getattr(importlib.import_module(m), '__version__', '?')\n"
            "    except Exception as e:\n        out[m] = 'broken: ' + type(e).__name__\n"
            "print(json.dumps(out))")
    proc = subprocess.run([sys.executable, "-c", code, *modules], capture_output=True, text=True,
                          timeout=300)
    return json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else {}


def changed_modules(before: dict[str, str]) -> dict[str, tuple[str, str]]:
    """Modules this session imported before an install whose installed version is now another:
    name → (loaded, installed). Non-empty means the session must restart to use them."""
    now = fresh_versions(list(before))
    return {m: (v, now[m]) for m, v in before.items() if m in now and now[m] != v}


def print_restart_advice(before: dict[str, str]) -> bool:
    """After ``pip install`` in a notebook: say whether the session must restart (True if so)."""
    changed = changed_modules(before)
    if not changed:
        print("pipeline_lib is installed; no package this session had loaded changed: go on.")
        return False
    what = ", ".join(f"{m} {a} → {b}" for m, (a, b) in sorted(changed.items()))
    print(f"pipeline_lib is installed, but it changed packages this session had already loaded "
          f"({what}).\nRuntime → Restart session, then run from the next cell.")
    return True


def test_presets() -> list[str]:
    """Register the tiny offline SD-1.x and SDXL pipelines as presets 'tiny-sd' / 'tiny-sdxl'.

    They are built once (a few seconds) by :mod:`pipeline_lib.testing` and then reused.
    """
    from .generate import Preset, register_preset
    from .testing import tiny_sd_pipeline_dir, tiny_sdxl_pipeline_dir

    presets = [
        Preset("tiny-sd", str(tiny_sd_pipeline_dir()), "StableDiffusionPipeline", steps=2,
               guidance=5.0, size=(64, 64), description="tiny random SD-1.x pipeline (offline tests)"),
        Preset("tiny-sdxl", str(tiny_sdxl_pipeline_dir()), "StableDiffusionXLPipeline", steps=2,
               guidance=5.0, size=(64, 64), multiple=64,
               description="tiny random SDXL pipeline (offline tests)"),
    ]
    for p in presets:
        register_preset(p, replace=True)
    return [p.name for p in presets]


def model_choices(test: bool | None = None) -> list[str]:
    """Preset names to offer: the tiny pipelines in test mode, the real presets otherwise."""
    if test_mode(test):
        return test_presets()
    from .generate import list_presets

    return [p["name"] for p in list_presets() if not p["name"].startswith("tiny-")]


def study_presets(test: bool | None = None) -> list[str]:
    """The models of the seed-001 study (photorealism, steerability, efficiency on a 16 GB GPU);
    the tiny offline pipelines in test mode."""
    if test_mode(test):
        return test_presets()
    return ["absolute-reality", "realistic-vision-v6", "epicrealism", "cyberrealistic-v3", "sdxl-base"]


def study_kwargs(test: bool | None = None) -> dict[str, Any]:
    """Extra ``generate()`` arguments for the model study: small and quick in test mode, else
    each preset's own steps and size."""
    return {"steps": 2, "width": 64, "height": 64} if test_mode(test) else {}


def defaults(test: bool | None = None) -> dict[str, Any]:
    """Sizes and models the notebooks use: small and offline in test mode."""
    if test_mode(test):
        return {"upscaler": "realesr-animevideov3", "target_size": 128, "steps": 2, "size": (64, 64),
                "demo_side": 64, "compare_factor": 4}
    return {"upscaler": "realesrgan-x4plus", "target_size": 2048, "steps": None, "size": None,
            "demo_side": None, "compare_factor": 4}


def _asset_candidates() -> list[Path]:
    here = Path(__file__).resolve().parent
    cands = [here.parent / _ASSET, Path.cwd() / _ASSET, Path.cwd().parent / _ASSET]
    # where the Colab/Kaggle install cell clones the repository
    cands += [Path(p) / "pipeline_lib" / _ASSET for p in ("/content", "/kaggle/working")]
    return cands


def demo_image(side: int | None = None, test: bool | None = None):
    """The bundled photograph (assets/astronaut.png, public-domain NASA portrait) as RGB PIL.

    ``side`` (default: 64 in test mode, else the full 512) takes a centred square crop around the
    face of that size, so test runs stay small. Raises :class:`ImageReadError` when the repository
    checkout (and with it ``assets/``) cannot be found.
    """
    from PIL import Image

    from .errors import ImageReadError

    side = side or defaults(test)["demo_side"]
    for path in _asset_candidates():
        if path.is_file():
            img = Image.open(path).convert("RGB")
            break
    else:
        raise ImageReadError(f"{_ASSET} not found (looked in {', '.join(map(str, _asset_candidates()))}); "
                             "run the notebook from a checkout of the repository or pass your own image.")
    if side and side < min(img.size):
        # the face sits about 30 % down the photo
        cx = img.width // 2
        cy = max(side // 2, min(img.height - side // 2, int(img.height * 0.3)))
        img = img.crop((cx - side // 2, cy - side // 2, cx - side // 2 + side, cy - side // 2 + side))
    return img


def demo_prompt(test: bool | None = None) -> str:
    """The prompt the notebooks use (short in test mode: the tiny tokenizer reads characters)."""
    if test_mode(test):
        return "astronaut portrait, studio light"
    return ("portrait photo of an astronaut in a white spacesuit, American flag behind, studio "
            "lighting, 85mm, sharp focus")


def _app_problem(ui) -> str:
    # the app's own message line (HTML) as plain text, for a failed check's error
    import html
    import re

    return html.unescape(re.sub(r"<[^>]+>", " ", ui.message.value)).strip() or "no message"


def check_upload_upscale_save(ui, side: int = 32, folder: str | Path | None = None) -> Path:
    """Drive the app as a user would — upload a ``side``×``side`` crop of the demo photo, press
    Upscale (to 4 × ``side``), press Save — and check the saved file; the notebooks' test mode
    runs this so CI covers the whole path on Colab's and Kaggle's ipywidgets.

    Saves into ``folder`` (default: a new temporary folder; the app's own folder is put back
    after). Prints one line and returns the saved path; raises ``AssertionError`` naming what
    differs (the app's message included) when any step goes wrong.
    """
    import io
    import tempfile

    from PIL import Image

    from .testing import simulate_upload

    buf = io.BytesIO()
    demo_image(side).save(buf, "PNG")
    simulate_upload(ui, buf.getvalue(), "astronaut.png")
    if [r.original.size for r in ui.results] != [(side, side)]:
        raise AssertionError(f"upload: the app shows {[r.original.size for r in ui.results]}, "
                             f"not one {side}×{side} picture ({_app_problem(ui)})")
    model, want = ui.upscaler.value, (4 * side, 4 * side)
    ui.target_size.value = str(4 * side)
    ui.upscale_button.click()
    got = ui.results[0].upscaled
    if got is None or got.size != want:
        raise AssertionError(f"upscale with {model}: got {got and got.size}, want {want} "
                             f"({_app_problem(ui)})")
    folder = Path(folder or tempfile.mkdtemp(prefix="pipeline_lib-check-"))
    before, kept = len(ui.saved), ui.output_dir.value
    ui.output_dir.value = str(folder)
    try:
        ui.save_button.click()
    finally:
        ui.output_dir.value = kept
    new = ui.saved[before:]
    if len(new) != 1 or new[0].parent != folder or not new[0].is_file():
        raise AssertionError(f"save: expected one file in {folder}, the app saved {new} "
                             f"({_app_problem(ui)})")
    with Image.open(new[0]) as img:
        found = (img.format, img.size, img.text.get("upscaler"), img.text.get("upscale_by"))
    if found != ("PNG", want, model, "4"):
        raise AssertionError(f"saved {new[0]}: (format, size, upscaler, upscale_by) = {found}, "
                             f"want {('PNG', want, model, '4')}")
    print(f"upload → upscale → save ok: astronaut.png {side}×{side} → {new[0].name} "
          f"{want[0]}×{want[1]} with {model}, metadata recorded, in {folder}")
    return new[0]
