"""Every model pipeline_lib knows by name — upscalers and generation presets — as one table.

``python -m pipeline_lib models`` prints it. ``offline`` says whether a model runs without the
network now: ``bundled`` (shipped with pipeline_lib or a pip package it installs), ``cached``
(downloaded before), ``local`` (a preset pointing at a file or folder on this machine) or
``download`` (fetched on first use). ``gpu_peak`` is a preset's planned GPU memory peak (fp16,
balanced profile, default size; see :func:`pipeline_lib.refine_plan.generation_peak_bytes`).

>>> rows = model_table()
>>> [r for r in rows if r["name"] == "espcn-x2"][0]["offline"]
'bundled'
"""
from __future__ import annotations

from pathlib import Path

from .generate import list_presets
from .generate.presets import BUILT_IN
from .hub import is_cached
from .upscale import list_upscalers
from .upscale.registry import get_spec
from .upscale.weights import weights_available

__all__ = ["COLUMNS", "model_table"]

#: Column order of :func:`model_table` rows.
COLUMNS = ("name", "kind", "scale", "backends", "offline", "gpu_peak", "license")

_HUB = "https://huggingface.co/"


def model_table() -> list[dict[str, str]]:
    """One row of text per upscaler (``kind`` "upscale") and per preset (``kind`` "generate");
    a preset's ``scale`` column holds its default size."""
    rows = [{"name": r["name"], "kind": "upscale", "scale": f"x{r['output_scale']:g}",
             "backends": ", ".join(r["backends"]), "offline": _upscaler_offline(r),
             "gpu_peak": "-", "license": r["license"]} for r in list_upscalers()]
    rows += [{"name": p["name"], "kind": "generate", "scale": "{}x{}".format(*p["size"]),
              "backends": "diffusers", "offline": _repo_offline(p["repo"]),
              "gpu_peak": _gib(p["planned_peak_gib"]), "license": p.get("license") or "see the model card"} for p in list_presets()]
    return rows


def _gib(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} GiB"


def _upscaler_offline(row: dict) -> str:
    if row["source"].startswith("bundled"):
        return "bundled"
    spec = get_spec(row["name"])
    if weights_available(spec):
        return "bundled" if spec.ncnn_stem else "cached"
    if spec.weights is None and row["source"].startswith(_HUB):  # a diffusers repo on the Hub
        return _repo_offline(row["source"][len(_HUB):])
    return "download"


def _repo_offline(repo: str) -> str:
    """``local`` for a path on this machine, ``cached`` for a Hub repo in the Hugging Face
    cache, ``bundled`` for the tiny built-in pipelines, else ``download``."""
    if repo == BUILT_IN:
        return "bundled"
    if Path(repo).expanduser().exists():
        return "local"
    return "cached" if is_cached(repo) else "download"
