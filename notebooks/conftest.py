"""Notebook runs (nbmake): test mode, no network, caches inside the test run.

Set here at import time so the kernels nbmake starts inherit them: the notebooks then use the tiny
offline pipelines of pipeline_lib.testing and small sizes.
"""
import os
from pathlib import Path

os.environ["PIPELINE_LIB_NOTEBOOK_TEST"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["PIPELINE_LIB_OFFLINE"] = "1"
os.environ.setdefault("PIPELINE_LIB_CACHE", str(Path(__file__).resolve().parent.parent / ".pytest_cache"
                                                / "pipeline_lib_cache"))
os.environ.setdefault("MPLBACKEND", "Agg")
