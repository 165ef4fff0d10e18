"""The fast subset (``-m "not slow"``) stays meaningful: every test listed as slow exists."""
from __future__ import annotations

import ast

from conftest import ROOT, SLOW_FILES, SLOW_TESTS


def test_every_slow_entry_names_an_existing_test():
    defined = set()
    for f in (ROOT / "tests").glob("test_*.py"):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
                defined.add(f"{f.name}::{node.name}")
    missing = sorted(SLOW_TESTS - defined) + sorted(f for f in SLOW_FILES
                                                    if not list((ROOT / "tests").rglob(f)))
    assert not missing, f"SLOW_TESTS in tests/conftest.py names tests that no longer exist: {missing}"
