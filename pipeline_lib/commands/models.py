"""``python -m pipeline_lib models``: the upscalers and generation presets, as a table."""
from __future__ import annotations

import argparse

from ..catalog import COLUMNS, model_table

__all__ = ["add_arguments", "format_table", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kind", choices=["upscale", "generate"], help="only upscalers or only presets")


def format_table(rows: list[dict[str, str]]) -> str:
    """Left-aligned columns under a header, two spaces apart."""
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in COLUMNS}
    lines = [[c.upper() for c in COLUMNS]] + [[r[c] for c in COLUMNS] for r in rows]
    return "\n".join("  ".join(v.ljust(widths[c]) for c, v in zip(COLUMNS, line)).rstrip()
                     for line in lines)


def run(args: argparse.Namespace) -> int:
    rows = [r for r in model_table() if args.kind in (None, r["kind"])]
    print(format_table(rows))
    print("\nupscale -m NAME runs an upscaler, generate -m NAME a preset. Offline: bundled, "
          "cached and local models run without the network; 'download' ones are fetched and "
          "cached on first use.")
    return 0
