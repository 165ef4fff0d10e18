"""The command line's vocabulary and defaults come from the library, in one place."""
from __future__ import annotations

import pytest

from pipeline_lib.cli import build_parser
from pipeline_lib.generate.presets import DEFAULT_PRESET
from pipeline_lib.upscale import DEFAULT_UPSCALER


def test_defaults_are_the_librarys():
    p = build_parser()
    assert p.parse_args(["generate", "x", "-o", "o"]).model == DEFAULT_PRESET
    # unnamed: upscale()'s own default (and its automatic fallback), named in the help
    assert p.parse_args(["upscale", "a.png", "-o", "o"]).model is None
    sub = p._subparsers._group_actions[0].choices["upscale"]
    assert f"default: {DEFAULT_UPSCALER}" in " ".join(sub.format_help().split())
    assert p.parse_args(["serve"]).model == DEFAULT_UPSCALER


@pytest.mark.parametrize("flag", ["--negative-prompt", "--negative"])
def test_negative_prompt_flag_and_its_old_name(flag):
    args = build_parser().parse_args(["generate", "x", "-o", "o", flag, "blurry"])
    assert args.negative_prompt == "blurry"


@pytest.mark.parametrize("argv, quiet, verbose", [
    (["-q", "upscale", "a.png", "-o", "o"], True, False),
    (["upscale", "a.png", "-o", "o", "-q"], True, False),
    (["upscale", "a.png", "-o", "o"], False, False),
    (["-v", "models"], False, True),
    (["models", "--verbose"], False, True),
])
def test_log_flags_before_or_after_the_command(argv, quiet, verbose):
    args = build_parser().parse_args(argv)
    assert (args.quiet, args.verbose) == (quiet, verbose)
