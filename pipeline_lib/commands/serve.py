"""``python -m pipeline_lib serve``: the HTTP service (FastAPI + uvicorn)."""
from __future__ import annotations

import argparse

from ..upscale import DEFAULT_UPSCALER

__all__ = ["add_arguments", "limits_from_args", "access_from_args", "run"]

_MB = 1024 * 1024


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default %(default)s: this machine only; anything else "
                        "needs --api-key)")
    p.add_argument("--port", type=int, default=8997, help="TCP port (default %(default)s)")
    p.add_argument("-m", "--model", default=DEFAULT_UPSCALER,
                   help="upscaler: registry name, weight file or https URL (default: %(default)s)")
    p.add_argument("--generate-model", metavar="PRESET|REPO|FOLDER|FILE",
                   help="also serve POST /v1/images/generations with this text-to-image model")
    p.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: best available)")
    p.add_argument("--dtype", help="fp16, bf16 or fp32 (default: fp16 on CUDA, else fp32)")
    p.add_argument("--backend", default="auto", help="auto, torch, ... (default %(default)s)")
    p.add_argument("--tile", type=int, help="tile size in input px (default: auto)")
    diff = p.add_argument_group("diffusion upscalers (sd-x4, sd-x2-latent)")
    diff.add_argument("--steps", type=int, help="denoising steps per image")
    diff.add_argument("--noise-level", type=int, help="sd-x4 noise level (0-350)")
    diff.add_argument("--negative-prompt", help="negative prompt for every request")
    keys = p.add_argument_group("access (default: PIPELINE_LIB_API_KEY / _API_KEY_FILE)")
    keys.add_argument("--api-key", action="append", default=[], metavar="KEY",
                      help="require 'Authorization: Bearer KEY' on every route but /health "
                           "(repeat for several keys)")
    keys.add_argument("--api-key-file", metavar="FILE", help="file of API keys, one a line")
    keys.add_argument("--rate-limit", type=int, metavar="N",
                      help="requests per minute per API key; more get 429 (default: no limit)")
    limits = p.add_argument_group("limits (default: PIPELINE_LIB_SERVER_* environment, then built-in)")
    limits.add_argument("--max-upload-mb", type=float, help="largest request body, MB (default 20)")
    limits.add_argument("--max-input-pixels", type=int, help="largest input, pixels (default 2048²)")
    limits.add_argument("--max-output-pixels", type=int,
                        help="largest canvas a model produces, pixels (default 4096²)")
    limits.add_argument("--max-n", type=int, help="largest n per request (default 4)")
    limits.add_argument("--max-pending", type=int,
                        help="requests in flight before answering 503 busy (default 32)")
    limits.add_argument("--max-steps", type=int,
                        help="most denoising steps a generation request may ask for (default 150)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info",
                                                           "debug"], help="uvicorn log level")


def limits_from_args(args: argparse.Namespace):
    """CLI flags over ``PIPELINE_LIB_SERVER_*`` variables over defaults."""
    from ..server import ServerLimits

    upload = None if args.max_upload_mb is None else int(args.max_upload_mb * _MB)
    return ServerLimits.from_env(max_upload_bytes=upload, max_input_pixels=args.max_input_pixels,
                                 max_output_pixels=args.max_output_pixels, max_n=args.max_n,
                                 max_pending=args.max_pending, max_steps=args.max_steps)


def access_from_args(args: argparse.Namespace):
    """--api-key / --api-key-file / --rate-limit, plus the PIPELINE_LIB_API_KEY* variables."""
    from ..server import AccessPolicy

    return AccessPolicy.from_sources(args.api_key, args.api_key_file, args.rate_limit)


def run(args: argparse.Namespace) -> int:
    from ..server import serve

    opts = {k: v for k, v in (("tile", args.tile), ("steps", args.steps),
                              ("noise_level", args.noise_level),
                              ("negative_prompt", args.negative_prompt)) if v is not None}
    serve(args.host, args.port, args.model, args.device, limits_from_args(args),
          log_level=args.log_level, api_keys=access_from_args(args), dtype=args.dtype,
          backend=args.backend, generate_model=args.generate_model, **opts)
    return 0
