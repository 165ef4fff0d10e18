"""Test-wide settings: never touch the network, keep caches inside the test run."""
from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["PIPELINE_LIB_OFFLINE"] = "1"

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PHOTO = ROOT / "assets" / "astronaut.png"


def pytest_configure(config):
    # One cache per test session, shared by its workers, so converted weights are made once.
    cache = Path(config.rootpath) / ".pytest_cache" / "pipeline_lib_cache"
    os.environ.setdefault("PIPELINE_LIB_CACHE", str(cache))


@pytest.fixture(scope="session")
def photo() -> Image.Image:
    """A real photograph (public-domain NASA portrait), RGB 512×512."""
    return Image.open(PHOTO).convert("RGB")


@pytest.fixture(scope="session")
def small_photo(photo) -> Image.Image:
    """A 48×40 crop with face detail: small enough for x4plus on 2 CPU cores."""
    return photo.crop((180, 90, 228, 130))


def psnr(a, b, peak: float = 255.0) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    mse = np.mean((a - b) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(peak * peak / mse)


# ------------------------------------------------------------------ the fast subset
# `python -m pytest -m "not slow"`: everyday runs without the heaviest tests (README, "Tests").
# Listed here, by file and test name, rather than decorated in each file, so the whole choice is
# visible in one place; tests/test_fast_subset.py checks that every entry still names a test.
SLOW_TESTS: set[str] = set()


def pytest_collection_modifyitems(config, items):
    for item in items:
        name = f"{item.path.name}::{getattr(item, 'originalname', None) or item.name}"
        if item.path.suffix == ".ipynb" or name in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
