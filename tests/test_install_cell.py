"""The notebooks' install cell (Colab/Kaggle): one source for every notebook, and when it has no
repository URL and no upload, or the clone fails, it says what to do in two lines — no traceback."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline_lib import notebook as nb

ROOT = Path(__file__).resolve().parents[1]
CELL = ROOT / "notebooks" / "tools" / "install_cell.py"


def _install_cells() -> dict[str, str]:
    cells = {}
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            src = "".join(cell["source"])
            if cell["cell_type"] == "code" and "Install pipeline_lib" in src:
                cells[path.name] = src
    return cells


def test_every_colab_notebook_has_the_one_install_cell():
    cells = _install_cells()
    assert set(cells) >= {"colab_kaggle.ipynb", "compare_models.ipynb", "compare_upscalers.ipynb"}
    assert all(src.strip() == CELL.read_text().strip() for src in cells.values())
    assert not any("YOUR-ORG" in p.read_text() for p in (ROOT / "notebooks").glob("*.ipynb"))


def _run_cell(tmp_path, repo_url: str) -> subprocess.CompletedProcess:
    code = CELL.read_text().replace('REPO_URL = ""', f"REPO_URL = {repo_url!r}", 1)
    prelude = textwrap.dedent("""
        import sys, types
        sys.modules["google.colab"] = types.ModuleType("google.colab")  # as on Colab
    """)
    env = {k: v for k, v in os.environ.items() if k != "PIPELINE_LIB_NOTEBOOK_TEST"}
    env.update(PIPELINE_LIB_INSTALL_DIR=str(tmp_path), GIT_TERMINAL_PROMPT="0")
    return subprocess.run([sys.executable, "-c", prelude + code], env=env, text=True,
                          capture_output=True, timeout=120, cwd=tmp_path)


@pytest.mark.parametrize("repo_url", ["", "file:///nonexistent/pipeline_lib.git"])
def test_no_url_or_failed_clone_prints_two_lines(tmp_path, repo_url):
    proc = _run_cell(tmp_path, repo_url)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2, proc.stdout
    assert "set REPO_URL" in lines[0] and ".zip" in lines[1] and str(tmp_path) in lines[1]


def test_changed_modules_compares_with_what_a_fresh_session_imports():
    import numpy

    assert nb.changed_modules({"numpy": numpy.__version__}) == {}
    assert nb.changed_modules({"numpy": "0.0.1"}) == {"numpy": ("0.0.1", numpy.__version__)}


def test_restart_advice_names_the_changed_package(capsys):
    assert nb.print_restart_advice({"numpy": "0.0.1"}) is True
    out = capsys.readouterr().out
    assert "numpy 0.0.1 →" in out and "Runtime → Restart session" in out
    assert nb.print_restart_advice({}) is False


@pytest.mark.parametrize("installed, pin", [
    ({"opencv-python": "4.13.0.92", "opencv-python-headless": "4.13.0.92",
      "opencv-contrib-python": "4.13.0.92"}, "opencv-contrib-python-headless==4.13.0.92"),  # Kaggle
    ({"opencv-python": "5.0.0.93", "opencv-python-headless": "5.0.0.93",
      "opencv-contrib-python": "4.14.0.94"}, "opencv-contrib-python-headless==4.14.0.94"),  # Colab
    ({"opencv-contrib-python-headless": "4.12.0.88"}, "opencv-contrib-python-headless==4.12.0.88"),
    ({"opencv-python": "5.0.0.93"}, None),           # no contrib: our <5 requirement picks the build
    ({"opencv-contrib-python": "5.0.0.93"}, None),   # contrib 5: ours adds a 4.x build on top
    ({}, None),
])
def test_the_cell_pins_opencv_to_the_runtimes_own_contrib_4(monkeypatch, installed, pin):
    import importlib.metadata

    def version(name):
        if name not in installed:
            raise importlib.metadata.PackageNotFoundError(name)
        return installed[name]

    monkeypatch.setenv("PIPELINE_LIB_NOTEBOOK_TEST", "1")  # define the cell's functions, install nothing
    monkeypatch.setattr(importlib.metadata, "version", version)
    cell: dict = {}
    exec(CELL.read_text(), cell)
    assert cell["_opencv_pin"]() == pin
    cell["_run"] = lambda *cmd: cmd  # what pip would be asked
    cmd = cell["_pip_install"]("pipeline_lib.whl")
    assert cmd[:6] == (sys.executable, "-m", "pip", "install", "-q", "pipeline_lib.whl")
    constraints = Path(cmd[7]).read_text() if len(cmd) == 8 and cmd[6] == "-c" else None
    assert constraints == (pin and pin + "\n") and len(cmd) == (8 if pin else 6)
