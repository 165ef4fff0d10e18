"""Tiny, randomly initialised diffusion pipelines that work with no network at all.

Used by the test suite, by the notebooks' test mode and by anything that needs a *real* diffusers
pipeline (same classes, same loading code paths) without downloading gigabytes. The pictures they
make are noise-like, but every code path — ``from_pretrained`` on a folder, ``from_single_file`` on
an LDM-layout checkpoint, SD-1.x and SDXL conditioning — is the one real models take.

>>> from pipeline_lib.testing import tiny_sd_pipeline_dir
>>> from pipeline_lib import generate
>>> img = generate("a cat", model=str(tiny_sd_pipeline_dir()), width=64, height=64, steps=2)[0]  # doctest: +SKIP

Everything is built once per folder (a finished folder is reused, also across processes) and the
folder is written atomically, so parallel test workers never see half a pipeline.

:func:`simulate_upload` picks a file in the notebook app's upload button as a browser would, on
ipywidgets 7.x (Colab) and 8.x alike, so tests and the notebooks' test mode drive the app's real
upload handler.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from pathlib import Path

from . import config

__all__ = ["tiny_sd_pipeline_dir", "tiny_sdxl_pipeline_dir", "tiny_sd_single_file",
           "tiny_sd_x4_upscaler_dir", "tiny_sd_x2_latent_upscaler_dir",
           "tiny_sd_lora_bytes", "write_byte_level_tokenizer", "default_root",
           "upload_value", "simulate_upload"]

_LOCK = threading.Lock()
#: Token ids the offline tokenizer and the tiny text encoders agree on.
BOS_ID, EOS_ID = 512, 513
MAX_TOKENS = 77


def default_root() -> Path:
    """Where fixtures go when no root is given: ``$PIPELINE_LIB_CACHE/tiny`` or the temp dir."""
    base = config.get("PIPELINE_LIB_CACHE")
    return Path(base) / "tiny" if base else Path(tempfile.gettempdir()) / "pipeline_lib_tiny"


def write_byte_level_tokenizer(folder: str | os.PathLike) -> Path:
    """Write a CLIP tokenizer whose vocabulary is the 256 byte-level characters (+ ``</w>`` forms).

    Without merges every character is one token, which is all a random text encoder needs; it
    loads offline with ``CLIPTokenizer.from_pretrained(folder)``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = _byte_chars()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": i + 256 for i, c in enumerate(chars)})
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = BOS_ID, EOS_ID
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return folder


def _byte_chars() -> list[str]:
    # GPT-2/CLIP byte-level alphabet: printable bytes stand for themselves, the other 68 bytes map
    # to code points from 256 up (transformers 5 no longer exports its helper for this).
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    extra = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(extra)) for b in range(256)]


def _tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    write_byte_level_tokenizer(folder)
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=MAX_TOKENS)


def _text_config(hidden: int, projection: int | None = None):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=EOS_ID + 1, hidden_size=hidden, intermediate_size=2 * hidden,
                          num_hidden_layers=2,  # SDXL reads hidden_states[-2]
                          num_attention_heads=2, max_position_embeddings=MAX_TOKENS,
                          bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=EOS_ID,
                          projection_dim=projection or hidden)


def _vae():
    from diffusers import AutoencoderKL

    # Four levels → the real ×8 latent factor, so size rules match the real models.
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
                         block_out_channels=(8, 16, 16, 16), layers_per_block=1,
                         down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, sample_size=64)


def _scheduler():
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                  num_train_timesteps=1000, steps_offset=1,
                                  timestep_spacing="leading")


def build_tiny_sd(folder: Path, seed: int = 0):
    """A StableDiffusionPipeline with ~1 M random parameters (tokenizer files go into ``folder``)."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(16, 32), norm_num_groups=8,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                cross_attention_dim=32, attention_head_dim=4)
    vae = _vae()
    text_encoder = CLIPTextModel(_text_config(32))
    tokenizer = _tokenizer(folder / "_tok")
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                   unet=unet, scheduler=_scheduler(), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


def build_tiny_sdxl(folder: Path, seed: int = 0):
    """A StableDiffusionXLPipeline: two text encoders, text_time conditioning, random weights."""
    import torch
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    hidden, proj, time_dim = 32, 32, 8
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(16, 32), norm_num_groups=8,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                                attention_head_dim=(2, 4), use_linear_projection=True,
                                addition_embed_type="text_time", addition_time_embed_dim=time_dim,
                                transformer_layers_per_block=(1, 1),
                                projection_class_embeddings_input_dim=6 * time_dim + proj,
                                cross_attention_dim=2 * hidden)
    tok = _tokenizer(folder / "_tok")
    return StableDiffusionXLPipeline(vae=_vae(), text_encoder=CLIPTextModel(_text_config(hidden)),
                                     text_encoder_2=CLIPTextModelWithProjection(_text_config(hidden, proj)),
                                     tokenizer=tok, tokenizer_2=tok, unet=unet,
                                     scheduler=_scheduler(), force_zeros_for_empty_prompt=True)


def build_tiny_sd_x4_upscaler(folder: Path, seed: int = 0):
    """A StableDiffusionUpscalePipeline (sd-x4 layout): the UNet sees 4 noisy latents + the 3-channel
    low-res image (in_channels=7) and the noise level as a class label, so ``num_class_embeds`` must
    exceed ``max_noise_level`` (350); a 3-level VAE gives the real ×4 decode factor."""
    import torch
    from diffusers import (AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionUpscalePipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    hidden = 32
    unet = UNet2DConditionModel(sample_size=16, in_channels=7, out_channels=4, layers_per_block=1,
                                block_out_channels=(16, 32), norm_num_groups=8,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                                cross_attention_dim=hidden, attention_head_dim=4,
                                use_linear_projection=True, num_class_embeds=351)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
                        block_out_channels=(8, 16, 16), layers_per_block=1,
                        down_block_types=("DownEncoderBlock2D",) * 3,
                        up_block_types=("UpDecoderBlock2D",) * 3, sample_size=64,
                        scaling_factor=0.08333)  # the x4 model's VAE scaling factor
    return StableDiffusionUpscalePipeline(
        vae=vae, text_encoder=CLIPTextModel(_text_config(hidden)), tokenizer=_tokenizer(folder / "_tok"),
        unet=unet, low_res_scheduler=DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.0001,
                                                   beta_end=0.02),
        scheduler=DDIMScheduler(prediction_type="v_prediction"), max_noise_level=350)


def build_tiny_sd_x2_latent_upscaler(folder: Path, seed: int = 0):
    """A StableDiffusionLatentUpscalePipeline (sd-x2-latent layout): K-diffusion blocks, which need
    at least three levels; the UNet sees 4 noisy + 4 conditioning latents (in_channels=8) and
    predicts 5 channels; the timestep condition is 128 noise-level features + the pooled text
    embedding (``time_cond_proj_dim`` = 128 + hidden). Its VAE matches the tiny SD one, so latents
    from :func:`tiny_sd_pipeline_dir` hand over directly."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionLatentUpscalePipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    hidden = 32
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=8, out_channels=5, layers_per_block=1, block_out_channels=(32, 64, 64),
        down_block_types=("KDownBlock2D", "KCrossAttnDownBlock2D", "KCrossAttnDownBlock2D"),
        up_block_types=("KCrossAttnUpBlock2D", "KCrossAttnUpBlock2D", "KUpBlock2D"),
        mid_block_type=None, act_fn="gelu", attention_head_dim=8, norm_num_groups=None,
        cross_attention_dim=hidden, time_embedding_type="fourier", timestep_post_act="gelu",
        time_cond_proj_dim=128 + hidden, resnet_time_scale_shift="scale_shift", conv_in_kernel=1,
        conv_out_kernel=1, flip_sin_to_cos=True)
    scheduler = EulerDiscreteScheduler(prediction_type="sample", beta_schedule="scaled_linear",
                                       beta_start=0.00085, beta_end=0.012)
    return StableDiffusionLatentUpscalePipeline(vae=_vae(), text_encoder=CLIPTextModel(_text_config(hidden)),
                                                tokenizer=_tokenizer(folder / "_tok"), unet=unet,
                                                scheduler=scheduler)


def _build_folder(dest: Path, builder) -> Path:
    """Build into a temp sibling and rename, so a folder with model_index.json is always complete."""
    with _LOCK:
        if (dest / "model_index.json").is_file():
            return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        try:
            pipe = builder(tmp)
            pipe.save_pretrained(str(tmp), safe_serialization=True)
            shutil.rmtree(tmp / "_tok", ignore_errors=True)
            try:
                tmp.rename(dest)
            except OSError:  # another process finished first: theirs is as good as ours
                if not (dest / "model_index.json").is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def tiny_sd_pipeline_dir(root: str | os.PathLike | None = None) -> Path:
    """A saved tiny SD-1.x diffusers folder (built once; reused when already there)."""
    return _build_folder(Path(root or default_root()) / "tiny-sd", build_tiny_sd)


def tiny_sdxl_pipeline_dir(root: str | os.PathLike | None = None) -> Path:
    """A saved tiny SDXL diffusers folder (built once; reused when already there)."""
    return _build_folder(Path(root or default_root()) / "tiny-sdxl", build_tiny_sdxl)


def tiny_sd_x4_upscaler_dir(root: str | os.PathLike | None = None) -> Path:
    """A saved tiny sd-x4 upscaler folder (``upscale(img, str(folder))``)."""
    return _build_folder(Path(root or default_root()) / "tiny-sd-x4", build_tiny_sd_x4_upscaler)


def tiny_sd_x2_latent_upscaler_dir(root: str | os.PathLike | None = None) -> Path:
    """A saved tiny sd-x2-latent upscaler folder."""
    return _build_folder(Path(root or default_root()) / "tiny-sd-x2-latent",
                         build_tiny_sd_x2_latent_upscaler)


def tiny_sd_lora_bytes(seed: int = 0, root: str | os.PathLike | None = None) -> bytes:
    """A random LoRA for the tiny SD-1.x UNet's attention projections (made with peft, saved by
    diffusers' ``save_lora_weights`` as .safetensors), as the file's bytes: weight 1 visibly
    changes the tiny pipeline's pictures."""
    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, get_peft_model_state_dict

    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_sd_pipeline_dir(root)))
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                     target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in pipe.unet.named_parameters():
            if "lora_" in name:  # peft starts B at zero: an inert LoRA; make it bite
                p.copy_(torch.randn(p.shape, generator=gen) * 0.6)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))
    with tempfile.TemporaryDirectory(prefix="pipeline_lib-lora-") as tmp:
        StableDiffusionPipeline.save_lora_weights(tmp, unet_lora_layers=layers,
                                                  weight_name="lora.safetensors")
        return (Path(tmp) / "lora.safetensors").read_bytes()


# ------------------------------------------------------------------ single-file (LDM) layout
# diffusers only *reads* the original LDM layout (single_file_utils converts LDM → diffusers);
# there is no library writer for the other direction, so the inverse renaming lives here. It
# covers exactly the SD-1.x block types the tiny pipeline uses and is checked by loading the file
# back through from_single_file and comparing every weight.
_RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
           ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"),
           ("conv_shortcut", "skip_connection"))
_VAE_ATTN = (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"),
             ("to_out.0", "proj_out"))


def _sub(rest: str, pairs) -> str:
    for new, old in pairs:
        if rest.startswith(new + "."):
            return old + rest[len(new):]
    return rest


def _unet_ldm_key(key: str, per_block: int) -> str:
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    fixed = DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"]
    if key in fixed:
        return fixed[key]
    p = key.split(".")
    if p[0] == "down_blocks":
        b = int(p[1])
        if p[2] == "downsamplers":
            return f"input_blocks.{1 + b * (per_block + 1) + per_block}.0.op." + ".".join(p[5:])
        idx = 1 + b * (per_block + 1) + int(p[3])
        rest = ".".join(p[4:])
        return (f"input_blocks.{idx}.0." + _sub(rest, _RESNET) if p[2] == "resnets"
                else f"input_blocks.{idx}.1." + rest)
    if p[0] == "mid_block":
        i = int(p[2])
        rest = ".".join(p[3:])
        return (f"middle_block.{2 * i}." + _sub(rest, _RESNET) if p[1] == "resnets"
                else f"middle_block.{2 * i + 1}." + rest)
    if p[0] == "up_blocks":
        b = int(p[1])
        if p[2] == "upsamplers":
            return None  # placed by the caller, which knows whether the block has attentions
        idx = b * (per_block + 1) + int(p[3])
        rest = ".".join(p[4:])
        return (f"output_blocks.{idx}.0." + _sub(rest, _RESNET) if p[2] == "resnets"
                else f"output_blocks.{idx}.1." + rest)
    raise KeyError(f"no LDM name for UNet weight {key}")


def _vae_ldm_key(key: str, n_up: int) -> str:
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    inverse = DIFFUSERS_TO_LDM_MAPPING["vae"]
    if key in inverse:
        return inverse[key]
    p = key.split(".")
    coder = p[0]
    if p[1] == "mid_block":
        if p[2] == "resnets":
            return f"{coder}.mid.block_{int(p[3]) + 1}." + _sub(".".join(p[4:]), (("conv_shortcut", "nin_shortcut"),))
        return f"{coder}.mid.attn_1." + _sub(".".join(p[4:]), _VAE_ATTN)
    b = int(p[2])
    level = b if coder == "encoder" else n_up - 1 - b
    name = "down" if coder == "encoder" else "up"
    if p[3] in ("downsamplers", "upsamplers"):
        return f"{coder}.{name}.{level}.{'downsample' if coder == 'encoder' else 'upsample'}.conv." + p[-1]
    rest = _sub(".".join(p[5:]), (("conv_shortcut", "nin_shortcut"),))
    return f"{coder}.{name}.{level}.block.{p[4]}." + rest


def ldm_state_dict(pipe) -> dict:
    """The SD-1.x pipeline's weights under their original (CompVis LDM) checkpoint names."""
    per_block = pipe.unet.config.layers_per_block
    out = {}
    unet_sd = pipe.unet.state_dict()
    up_has_attn = {int(k.split(".")[1]) for k in unet_sd if k.startswith("up_blocks.") and ".attentions." in k}
    for k, v in unet_sd.items():
        name = _unet_ldm_key(k, per_block)
        if name is None:  # up_blocks.B.upsamplers.0.conv.{weight,bias}
            b = int(k.split(".")[1])
            slot = 2 if b in up_has_attn else 1
            name = f"output_blocks.{b * (per_block + 1) + per_block}.{slot}.conv.{k.split('.')[-1]}"
        out["model.diffusion_model." + name] = v
    n_up = len(pipe.vae.config.up_block_types)
    for k, v in pipe.vae.state_dict().items():
        name = _vae_ldm_key(k, n_up)
        if ".mid.attn_1." in name and name.endswith("weight") and v.ndim == 2:
            v = v[:, :, None, None]  # LDM stores the VAE attention projections as 1×1 convs
        out["first_stage_model." + name] = v
    for k, v in pipe.text_encoder.state_dict().items():
        # transformers 5 drops the "text_model." level from state_dict names; LDM files have it
        k = k if k.startswith("text_model.") else "text_model." + k
        out["cond_stage_model.transformer." + k] = v
    return {k: v.contiguous() for k, v in out.items()}


def tiny_sd_single_file(root: str | os.PathLike | None = None) -> Path:
    """The tiny SD-1.x pipeline as one LDM-layout ``.safetensors`` file (load it with
    ``config=tiny_sd_pipeline_dir(root)`` to stay offline)."""
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import save_file

    folder = tiny_sd_pipeline_dir(root)
    dest = folder.parent / "tiny-sd.safetensors"
    with _LOCK:
        if dest.is_file():
            return dest
        pipe = StableDiffusionPipeline.from_pretrained(str(folder))
        fd, tmp = tempfile.mkstemp(prefix=".tiny-sd.", suffix=".part", dir=folder.parent)
        os.close(fd)
        try:
            save_file(ldm_state_dict(pipe), tmp)
            os.replace(tmp, dest)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return dest


def upload_value(data: bytes, name: str, shape: int, mime: str | None = None):
    """A ``FileUpload.value`` holding one file, in the shape ipywidgets ``shape`` (7 or 8) gives.

    7.x (Colab's 7.7.1): a dict name → ``{"metadata": {"name", "type", "size", "lastModified"},
    "content": bytes}``; 8.x: a tuple of dicts with ``name``, ``type``, ``size``, ``content``
    (a memoryview) and ``last_modified`` (an aware datetime).
    """
    import datetime
    import mimetypes
    import time

    data = bytes(data)
    mime = mime if mime is not None else mimetypes.guess_type(name)[0] or ""
    if shape == 7:
        meta = {"name": name, "type": mime, "size": len(data), "lastModified": int(time.time() * 1000)}
        return {name: {"metadata": meta, "content": data}}
    if shape == 8:
        from traitlets import Bunch  # what ipywidgets 8 itself builds: dict and attribute access

        return (Bunch(name=name, type=mime, size=len(data), content=memoryview(data),
                      last_modified=datetime.datetime.now(datetime.timezone.utc)),)
    raise ValueError(f"shape must be 7 or 8 (the ipywidgets major version), got {shape!r}")


def _installed_shape(widget) -> int:
    # 7.x builds `value` from `metadata`, `data` and a `_counter` the browser bumps; 8.x has none
    return 7 if widget.has_trait("_counter") else 8


def simulate_upload(target, data: bytes, name: str, shape: int | None = None,
                    mime: str | None = None) -> None:
    """Pick the file ``name`` with bytes ``data`` in an upload button, as the browser does.

    ``target`` is the notebook app (its image upload, ``app.upload``) or any ``FileUpload`` widget
    (``app.lora_upload``). With ``shape`` None (or the installed ipywidgets' major version) the
    widget gets the message its own front end sends — 7.x: ``metadata``/``data`` lists and a bumped
    ``_counter``; 8.x: the ``value`` list — and builds its value itself, so every observer (the
    app's upload handler) runs as after a real upload. With the other version's ``shape`` the
    observers are called with a value of that shape (the widget keeps its own), which checks that
    a handler reads both.

    >>> simulate_upload(ui, Path("photo.png").read_bytes(), "photo.png")  # doctest: +SKIP
    """
    widget = getattr(target, "upload", target)
    installed = _installed_shape(widget)
    shape = shape or installed
    value = upload_value(data, name, shape, mime)
    if shape != installed:
        from traitlets import Bunch

        widget.notify_change(Bunch(name="value", old=widget.value, new=value, owner=widget,
                                   type="change"))
    elif installed == 7:
        ((meta, content),) = ((v["metadata"], v["content"]) for v in value.values())
        widget.set_state({"metadata": [meta], "data": [memoryview(content)],
                          "_counter": widget._counter + 1})
    else:  # the JSON the 8.x front end sends: last_modified in ms since the epoch
        (item,) = value
        widget.set_state({"value": [{**item, "last_modified":
                                     int(item["last_modified"].timestamp() * 1000)}]})
