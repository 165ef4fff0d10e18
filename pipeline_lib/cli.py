"""Command line: ``python -m pipeline_lib <command> ...``.

Each sub-command lives in ``pipeline_lib/commands/<name>.py`` with ``add_arguments(parser)`` and
``run(args) -> int``; this module only wires them up, so commands stay thin front ends.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from . import __version__, config
from .errors import PipelineError

__all__ = ["COMMANDS", "build_parser", "main"]

COMMANDS = {
    "upscale": "Upscale images (files or folders) with Real-ESRGAN and friends.",
    "generate": "Generate photoreal images from a prompt (optionally upscaled to 2048+).",
    "serve": "Run the HTTP upscaling service (POST /v1/images/upscale).",
    "batch": "Run many generate/upscale jobs from a JSON-lines file (accelerate launch: multi-GPU).",
    "models": "List the upscalers and generation presets: scale, backends, offline?, licence.",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline_lib",
                                     description="Photoreal generation and upscaling.")
    parser.add_argument("--version", action="version", version=f"pipeline_lib {__version__}")
    _add_log_flags(parser, default=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in COMMANDS.items():
        module = importlib.import_module(f".commands.{name}", __package__)
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        _add_log_flags(p, default=argparse.SUPPRESS)  # so "upscale ... -q" works too
        p.set_defaults(_run=module.run)
    return parser


def _add_log_flags(parser: argparse.ArgumentParser, default) -> None:
    # a sub-command's SUPPRESS default leaves the value set before the command name in place
    parser.add_argument("-v", "--verbose", action="store_true", default=default,
                        help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", default=default,
                        help="warnings and errors only, no progress bars")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    config.check_environment()  # a mistyped PIPELINE_LIB_* variable is said, not ignored
    try:
        return int(args._run(args) or 0)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished files are kept, no partial file was written", file=sys.stderr)
        return 130
