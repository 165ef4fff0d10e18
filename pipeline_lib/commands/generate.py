"""``python -m pipeline_lib generate "PROMPT" -o OUTDIR``: generate (and optionally upscale) images."""
from __future__ import annotations

import argparse

from ..errors import InvalidParameterError
from ..generate.presets import DEFAULT_PRESET
from ..outputs import save_to_free_name

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", help="what to draw")
    p.add_argument("-o", "--output", required=True, help="output folder (created if missing)")
    p.add_argument("-m", "--model", default=DEFAULT_PRESET,
                   help="preset (list: python -m pipeline_lib models), Hub repo id, diffusers "
                        "folder or .safetensors (default %(default)s)")
    p.add_argument("--negative-prompt", help="negative prompt (default: the preset's)")
    p.add_argument("--negative", dest="negative_prompt", help=argparse.SUPPRESS)  # old name
    p.add_argument("--steps", type=int, help="denoising steps (default: the preset's)")
    p.add_argument("--guidance", type=float, help="CFG scale (default: the preset's)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--size", help="WxH to generate at (rounded to the model's multiple)")
    g.add_argument("--aspect", help="square, portrait (2:3), portrait-3:4, portrait-9:16, landscape "
                                    "(3:2), landscape-4:3, landscape-16:9 or a ratio like 4:5")
    p.add_argument("--seed", type=int, help="first seed (default: random; printed)")
    p.add_argument("-n", "--num-images", type=int, default=1, help="images (seeds seed, seed+1, ...)")
    p.add_argument("--scheduler", help="dpm++2m-karras, euler-a, ... (default: the preset's)")
    p.add_argument("--upscale", metavar="NAME", help="upscale with this model, e.g. realesrgan-x4plus")
    p.add_argument("--target", default="2048", help="upscale target: N (long side) or WxH (default 2048)")
    p.add_argument("--memory", default="auto", choices=["auto", "fast", "balanced", "low"])
    p.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: best available)")
    p.add_argument("--devices", help="several devices, e.g. cuda:0,cuda:1, or auto (every usable "
                                     "GPU; Kaggle's T4 ×2): -n images split over them; with "
                                     "--upscale, generation on the first and upscaling on the "
                                     "second, pipelined")
    p.add_argument("--dtype", help="fp16, bf16 or fp32 (default: fp16 on a GPU, fp32 on a CPU; "
                                   "bf16 only where native)")
    p.add_argument("--xformers", action="store_true",
                   help="xformers attention when installed (default: PyTorch SDPA)")
    w = p.add_argument_group("photoreal workflow (same names as generate()'s arguments)")
    w.add_argument("--lora", dest="loras", action="append", type=_lora, metavar="SOURCE[:WEIGHT]",
                   help="LoRA file, name in PIPELINE_LIB_LORA_DIR, Hub repo or URL, weight "
                        "default 1 (repeatable); <lora:name:0.8> in the prompt works too")
    w.add_argument("--embedding", dest="embeddings", action="append", metavar="SOURCE",
                   help="textual-inversion embedding, active when its token is in a prompt "
                        "(repeatable)")
    w.add_argument("--clip-skip", type=int, help="A1111's clip skip (1 = none, 2 = common)")
    w.add_argument("--hires-scale", type=float, help="hires fix: generate, enlarge this much, "
                                                     "img2img at the larger size")
    w.add_argument("--hires-strength", type=float, help="hires fix denoising strength "
                                                        "(default: generate()'s, 0.35)")
    w.add_argument("--hires-steps", type=int, help="hires fix steps (default: as --steps)")
    w.add_argument("--hires-upscaler", help="'latent' (default) or any upscaler name for the "
                                            "hires fix")
    w.add_argument("--refine-strength", type=float,
                   help="with --upscale: tiled img2img detail refine after the upscale (e.g. 0.3)")


def _lora(text: str) -> tuple[str, float]:
    """``SOURCE[:WEIGHT]``; a URL's or Windows path's own colons are kept."""
    source, sep, weight = text.rpartition(":")
    try:
        return (source, float(weight)) if sep and source else (text, 1.0)
    except ValueError:
        return text, 1.0


def run(args: argparse.Namespace) -> int:
    from ..compose import text_to_image
    from ..generate import generate, size_for_aspect
    from ..generate.job import check_hires_needs_scale
    from ..upscale.sizing import parse_size

    width = height = None
    if args.size:
        size = parse_size(args.size)
        if not isinstance(size, tuple):
            raise InvalidParameterError(f"--size needs WxH, e.g. 512x768, got {args.size!r}.")
        width, height = size
    elif args.aspect:
        width, height = size_for_aspect(args.aspect, args.model)
    kwargs = dict(model=args.model, negative_prompt=args.negative_prompt, steps=args.steps,
                  guidance=args.guidance, width=width, height=height, seed=args.seed,
                  num_images=args.num_images, scheduler=args.scheduler, device=args.device,
                  memory=args.memory, dtype=args.dtype, xformers=args.xformers,
                  progress=not getattr(args, "quiet", False))
    if args.devices:
        kwargs["devices"] = args.devices
    check_hires_needs_scale(args.hires_scale, hires_strength=args.hires_strength,
                            hires_steps=args.hires_steps, hires_upscaler=args.hires_upscaler)
    # the workflow options given on the command line; the rest keep generate()'s defaults
    kwargs.update({k: v for k in ("loras", "embeddings", "clip_skip", "hires_scale",
                                  "hires_strength", "hires_steps", "hires_upscaler")
                   if (v := getattr(args, k)) is not None})
    if args.refine_strength is not None and not args.upscale:
        raise InvalidParameterError("--refine-strength refines an upscaled picture: add --upscale "
                                    "NAME (e.g. --upscale realesrgan-x4plus).")
    if args.upscale:
        results = text_to_image(args.prompt, upscaler=args.upscale, size=parse_size(args.target),
                                refine_strength=args.refine_strength, **kwargs)
    else:
        results = generate(args.prompt, **kwargs)
    for res in results:
        dest = save_to_free_name(args.output, str(res.seed), res.save)
        print(f"{dest}  seed={res.seed}  {res.image.size[0]}x{res.image.size[1]}")
    return 0
