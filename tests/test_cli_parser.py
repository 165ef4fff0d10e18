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


def test_photoreal_workflow_flags_use_the_python_names():
    args = build_parser().parse_args([
        "generate", "x", "-o", "o", "--lora", "film.safetensors:0.6", "--lora", "detail",
        "--lora", "https://h.example/l.safetensors:0.5", "--embedding", "badhands",
        "--clip-skip", "2", "--hires-scale", "2", "--hires-strength", "0.3",
        "--hires-upscaler", "realesrgan-x4plus", "--upscale", "realesrgan-x4plus",
        "--refine-strength", "0.3"])
    assert args.loras == [("film.safetensors", 0.6), ("detail", 1.0),
                          ("https://h.example/l.safetensors", 0.5)]
    assert (args.embeddings, args.clip_skip, args.hires_scale, args.hires_strength,
            args.hires_upscaler, args.refine_strength) == (["badhands"], 2, 2.0, 0.3,
                                                           "realesrgan-x4plus", 0.3)
