"""Generation speed: our ``generate()`` vs a plain diffusers pipeline, same files, same seed, same
scheduler; and the full prompt → 2048² flow (SDXL-shaped + realesrgan-x4plus) via ``text_to_image``.

Models have the real SD-1.5 / SDXL config dimensions but random weights (no download); they are
built once into bench/.cache (git-ignored) with save_pretrained, so every contender loads the same
files. Each contender runs in a fresh subprocess (so peak RSS / peak GPU memory is its own): load,
one warm-up image, then ``--repeat`` timed images, best kept (the CPU may be shared).

    python bench/generate.py            # 512², 25 steps, real SD-1.5 dims; flow: real SDXL dims, 1024² → 2048²
    python bench/generate.py --quick    # CPU-sized, see QUICK below
    python bench/generate.py --compile  # adds our generate(compile=True) as a contender

QUICK (a few minutes on 2 CPU cores): SD-1.5-shaped at 128², 3 steps, UNet widths ÷5
(64,128,256,256; everything else SD-1.5: layers, heads, cross-attention 768, real ViT-L/14 text
encoder, real SD VAE); flow: SDXL-*shaped* reduced config (UNet widths 64,128,256, transformer
depths 1,1,2, small text encoders, real SDXL VAE) at 128², 2 steps, x4plus to 512² instead of 2048².

On CUDA three contenders: diffusers with default settings (fp32), diffusers in fp16 (its documented
usage, the fair peer) and ours (fp16, SDPA, fused QKV, channels_last); PSNR is against diffusers
fp32. On the CPU everything is fp32 and the images must be identical (PSNR inf); on a CPU with
native bf16 (AVX512-BF16/AMX) ``ours-bf16`` (``generate(dtype="bf16")``, opt-in) is added, with
its PSNR against diffusers fp32.
Ends with one line: ``summary: generate_vs_diffusers=... psnr_vs_diffusers_db=... flow_2048_s=... flow_peak_gb=...``
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _common import alternating, psnr  # noqa: E402

CACHE = ROOT / "bench" / ".cache"
PROMPT = "portrait of an old fisherman, golden hour, 85mm photo"
SEED, GUIDANCE = 1234, 7.5


# ------------------------------------------------------------------ model folders
def _text_encoder(hidden, layers, heads, inter, projection=None, act="quick_gelu"):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from pipeline_lib.testing import BOS_ID, EOS_ID, MAX_TOKENS

    cfg = CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=inter,
                         num_hidden_layers=layers, num_attention_heads=heads,
                         max_position_embeddings=MAX_TOKENS, hidden_act=act, bos_token_id=BOS_ID,
                         eos_token_id=EOS_ID, pad_token_id=EOS_ID, projection_dim=projection or hidden)
    return CLIPTextModelWithProjection(cfg) if projection else CLIPTextModel(cfg)


def _sd_vae(scaling_factor=0.18215, sample_size=512):
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                         block_out_channels=(128, 256, 512, 512), norm_num_groups=32,
                         down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, sample_size=sample_size,
                         scaling_factor=scaling_factor)


def build_sd15(folder: Path, quick: bool):
    """SD-1.5 config dimensions (runwayml/stable-diffusion-v1-5 unet/vae/text_encoder configs)."""
    import torch
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    from pipeline_lib.testing import _tokenizer

    torch.manual_seed(0)
    widths = (64, 128, 256, 256) if quick else (320, 640, 1280, 1280)
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=widths,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32)
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, skip_prk_steps=True, steps_offset=1,
                              set_alpha_to_one=False)
    return StableDiffusionPipeline(vae=_sd_vae(), text_encoder=_text_encoder(768, 12, 12, 3072),
                                   tokenizer=_tokenizer(folder / "_tok"), unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def build_sdxl(folder: Path, quick: bool):
    """SDXL-base config dimensions (quick: the reduced SDXL-shaped config in the module doc)."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    from pipeline_lib.testing import _tokenizer

    torch.manual_seed(0)
    if quick:
        widths, depth, heads, te1, te2, time_dim = ((64, 128, 256), (1, 1, 2), (1, 2, 4),
                                                    (256, 2, 4, 1024), (512, 2, 8, 2048), 64)
    else:
        widths, depth, heads, te1, te2, time_dim = ((320, 640, 1280), (1, 2, 10), (5, 10, 20),
                                                    (768, 12, 12, 3072), (1280, 32, 20, 5120), 256)
    unet = UNet2DConditionModel(
        sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=widths,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=depth, attention_head_dim=heads, use_linear_projection=True,
        cross_attention_dim=te1[0] + te2[0], addition_embed_type="text_time",
        addition_time_embed_dim=time_dim, projection_class_embeddings_input_dim=6 * time_dim + te2[0],
        norm_num_groups=32)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012,
                                       beta_schedule="scaled_linear", steps_offset=1,
                                       timestep_spacing="leading")
    tok = _tokenizer(folder / "_tok")
    return StableDiffusionXLPipeline(
        vae=_sd_vae(0.13025, 1024), text_encoder=_text_encoder(*te1),
        text_encoder_2=_text_encoder(*te2, projection=te2[0], act="gelu"),
        tokenizer=tok, tokenizer_2=tok, unet=unet, scheduler=scheduler,
        force_zeros_for_empty_prompt=True)


def model_folder(kind: str, quick: bool) -> Path:
    from pipeline_lib.testing import _build_folder

    builder = build_sd15 if kind == "sd15" else build_sdxl
    name = f"{kind}-shaped{'-quick' if quick else ''}"
    return _build_folder(CACHE / name, lambda tmp: builder(tmp, quick))


# ------------------------------------------------------------------ workers (fresh processes)
def _peak(device: str) -> float:
    """GiB: max_memory_allocated on CUDA, else this process's peak RSS."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 1024 ** 3
    # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so a worker would inherit the
    # parent's peak (the parent built the models); the high-water mark is per address space.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024 ** 2
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def _sync(device):
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def worker(a) -> dict:
    import logging

    import numpy as np
    import torch

    logging.disable(logging.WARNING)
    torch.manual_seed(0)
    dev = a.device
    kw = dict(num_inference_steps=a.steps, guidance_scale=GUIDANCE, width=a.size, height=a.size)
    t_load = time.perf_counter()
    if a.worker.startswith("diffusers"):
        from diffusers import StableDiffusionPipeline

        dtype = torch.float16 if a.worker == "diffusers-fp16" else torch.float32
        pipe = StableDiffusionPipeline.from_pretrained(a.folder, dtype=dtype).to(dev)
        pipe.set_progress_bar_config(disable=True)

        def once():
            g = torch.Generator("cpu").manual_seed(SEED)
            return pipe(PROMPT, generator=g, **kw).images[0]
    elif a.worker in ("ours", "ours-compile", "ours-bf16"):
        from pipeline_lib import generate, load_pipeline

        compile_ = a.worker == "ours-compile"
        dtype = "bf16" if a.worker == "ours-bf16" else None
        load_pipeline(a.folder, device=dev, dtype=dtype, progress=False, compile=compile_)

        def once():
            return generate(PROMPT, model=a.folder, steps=a.steps, guidance=GUIDANCE, width=a.size,
                            height=a.size, seed=SEED, device=dev, dtype=dtype, progress=False,
                            compile=compile_)[0].image
    else:  # flow
        from pipeline_lib import load_pipeline, text_to_image

        load_pipeline(a.folder, device=dev, progress=False)

        def once():
            return text_to_image(PROMPT, model=a.folder, steps=a.steps, guidance=GUIDANCE,
                                 width=a.size, height=a.size, seed=SEED, device=dev,
                                 progress=False, upscaler="realesrgan-x4plus",
                                 size=a.target)[0].image
    _sync(dev)
    load_s = time.perf_counter() - t_load
    t = time.perf_counter()
    once()  # warm-up: first-call set-up (oneDNN primitives, cuDNN autotune, compile)
    _sync(dev)
    warm_s = time.perf_counter() - t
    times = []
    for _ in range(a.repeat):
        t = time.perf_counter()
        img = once()
        _sync(dev)
        times.append(time.perf_counter() - t)
    np.save(a.out, np.asarray(img))
    return {"load_s": load_s, "warmup_s": warm_s, "best_s": min(times), "times": times,
            "peak_gb": _peak(dev), "size": list(img.size)}


def run_worker(name: str, folder: Path, a, out: Path, steps: int, size: int, target: int = 0) -> dict:
    cmd = [sys.executable, __file__, "--worker", name, "--folder", str(folder), "--device", a.device,
           "--steps", str(steps), "--size", str(size), "--repeat", str(a.repeat), "--out", str(out),
           "--target", str(target)]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               HF_HUB_OFFLINE="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"worker {name} failed (exit {proc.returncode})")
    return json.loads(lines[-1][7:])


# ------------------------------------------------------------------ main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="CPU-sized run (see QUICK above)")
    ap.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--repeat", type=int, help="timed images per contender, best kept (default 3, quick 2)")
    ap.add_argument("--rounds", type=int, default=2, help="fresh-process rounds per contender, "
                    "alternating order, best kept (default 2)")
    ap.add_argument("--compile", action="store_true", help="also time generate(compile=True)")
    ap.add_argument("--no-flow", action="store_true", help="skip the prompt → 2048² flow")
    for hidden in ("--worker", "--folder", "--out"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    for hidden in ("--steps", "--size", "--target"):
        ap.add_argument(hidden, type=int, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    import numpy as np
    import torch

    a.device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    a.repeat = a.repeat or (2 if a.quick else 3)
    if a.worker:
        print("RESULT " + json.dumps(worker(a)), flush=True)
        return 0

    cuda = a.device.startswith("cuda")
    size, steps = (128, 3) if a.quick else (512, 25)
    fsize, fsteps, ftarget = (128, 2, 512) if a.quick else (1024, 25, 2048)
    print(f"device: {torch.cuda.get_device_name() if cuda else 'cpu'}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, {a.rounds} rounds × {a.repeat} timed images "
          "after a warm-up (best kept)")
    t = time.perf_counter()
    sd = model_folder("sd15", a.quick)
    print(f"SD-1.5-shaped model: {sd} ({time.perf_counter() - t:.0f}s to build/find)")
    mem = "peak GPU GiB (max_memory_allocated)" if cuda else "peak RSS GiB"
    names = (["diffusers", "diffusers-fp16", "ours"] if cuda else ["diffusers", "ours"])
    names += ["ours-compile"] if a.compile else []
    from pipeline_lib.devices import cpu_has_native_bf16

    bf16 = not cuda and cpu_has_native_bf16()
    names += ["ours-bf16"] if bf16 else []  # opt-in on CPUs with native bf16; changes pixels
    tmp = CACHE / "out"
    tmp.mkdir(parents=True, exist_ok=True)
    res, imgs = {}, {}
    # each contender keeps its best round
    for _rnd, name in alternating(names, a.rounds):
        r = run_worker(name, sd, a, tmp / f"{name}.npy", steps, size)
        if name not in res or r["best_s"] < res[name]["best_s"]:
            res[name] = r
        imgs[name] = np.load(tmp / f"{name}.npy")
        print(f"  {name}: {r['best_s']:.2f}s/image, peak {r['peak_gb']:.2f} GiB", flush=True)
    ref = imgs["diffusers"]
    peer = "diffusers-fp16" if cuda else "diffusers"
    print(f"\nSD-1.5-shaped{' (quick: UNet widths ÷5)' if a.quick else ''}, {size}², {steps} steps, "
          f"guidance {GUIDANCE}, seed {SEED}")
    print(f"| contender | s/image | s/step | load s | warm-up s | {mem} | PSNR vs diffusers fp32 dB | speed vs {peer} |")
    print("|---|---|---|---|---|---|---|---|")
    for name in names:
        r = res[name]
        print(f"| {name} | {r['best_s']:.3f} | {r['best_s'] / steps:.4f} | {r['load_s']:.1f} | "
              f"{r['warmup_s']:.2f} | {r['peak_gb']:.2f} | {psnr(imgs[name], ref):.1f} | "
              f"{res[peer]['best_s'] / r['best_s']:.3f}× |")
    ratio = res[peer]["best_s"] / res["ours"]["best_s"]
    p = psnr(imgs["ours"], ref)
    print("(s/step = s/image ÷ steps, so it includes text encoding and VAE decode)")

    flow = {}
    if not a.no_flow:
        xl = model_folder("sdxl", a.quick)
        flow = run_worker("flow", xl, a, tmp / "flow.npy", fsteps, fsize, ftarget)
        shape = "reduced SDXL-shaped config" if a.quick else "SDXL config dims"
        print(f"\nprompt → {ftarget}² flow ({shape}, {fsize}², {fsteps} steps, + realesrgan-x4plus "
              f"via text_to_image): {flow['best_s']:.2f}s, {mem} {flow['peak_gb']:.2f}, "
              f"output {flow['size'][0]}x{flow['size'][1]}")
    fmt = lambda v: "nan" if v is None else ("inf" if math.isinf(v) else f"{v:.2f}")  # noqa: E731
    print(f"summary: generate_vs_diffusers={ratio:.3f} psnr_vs_diffusers_db={fmt(p)} "
          f"flow_{ftarget}_s={fmt(flow.get('best_s'))} flow_peak_gb={fmt(flow.get('peak_gb'))} "
          f"device={'cuda' if cuda else 'cpu'} quick={int(a.quick)}"
          + (f" bf16_vs_diffusers={res[peer]['best_s'] / res['ours-bf16']['best_s']:.3f} "
             f"psnr_bf16_db={fmt(psnr(imgs['ours-bf16'], ref))}" if bf16 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
