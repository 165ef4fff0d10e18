"""Every ```python block of README.md runs as written: each in a fresh interpreter, from a folder
that has the repository's ``assets/``, offline, in the notebooks' test mode (presets are tiny
random stand-ins). A block may be marked ``<!-- no-run -->`` on the line before its fence when it
cannot run offline (a running server, a Hub download) — at most two."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_NO_RUN = 2


def python_blocks() -> list[tuple[int, str, bool]]:
    """(line number, code, marked no-run) for each ```python block."""
    lines = README.read_text(encoding="utf-8").split("\n")
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            start = i + 1
            end = next(j for j in range(start, len(lines)) if lines[j].strip() == "```")
            no_run = i > 0 and lines[i - 1].strip() == "<!-- no-run -->"
            blocks.append((start + 1, "\n".join(lines[start:end]), no_run))
            i = end
        i += 1
    return blocks


def test_readme_has_python_blocks_and_few_no_run_marks():
    blocks = python_blocks()
    assert len(blocks) >= 5
    assert sum(no_run for *_, no_run in blocks) <= MAX_NO_RUN


@pytest.mark.parametrize("line, code", [(ln, code) for ln, code, no_run in python_blocks()
                                        if not no_run], ids=lambda v: f"line{v}" if isinstance(v, int) else "")
def test_readme_block_runs_as_written(tmp_path, line, code):
    (tmp_path / "assets").symlink_to(ROOT / "assets")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PIPELINE_LIB_NOTEBOOK_TEST": "1",
           "HF_HUB_OFFLINE": "1", "PIPELINE_LIB_OFFLINE": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, text=True,
                          capture_output=True, timeout=900)
    assert proc.returncode == 0, f"README.md line {line} failed:\n{proc.stderr[-3000:]}"
    assert not re.search(r"Traceback \(most recent call last\)", proc.stderr)


def test_cpu_torch_route_installs_torch_and_torchvision_from_the_cpu_index():
    """README point: torch alone from the CPU index gets replaced by a CUDA build when
    requirements.txt pulls torchvision from PyPI; the documented command installs both."""
    text = README.read_text(encoding="utf-8")
    cpu_lines = [ln for ln in text.splitlines() if "download.pytorch.org/whl/cpu" in ln
                 and ln.strip().startswith("pip install")]
    assert cpu_lines and all(re.search(r"\btorch\b.*\btorchvision\b", ln) for ln in cpu_lines)
    assert "pip install -r requirements.txt" in text
    reqs = (ROOT / "requirements.txt").read_text()
    assert not re.search(r"^\s*torch(vision)?\b", reqs, re.M)  # never pinned there
