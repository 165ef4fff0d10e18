"""A1111-compatible ``parameters`` text: write it, parse it, read it back from a PNG.

The text is what AUTOMATIC1111, ComfyUI importers and Civitai read::

    a portrait of an old fisherman
    Negative prompt: blurry, cartoon
    Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 42, Size: 512x768, Model: absolute-reality

>>> p = parse_parameters(format_parameters({"prompt": "a cat", "negative_prompt": "", "steps": 2,
...     "guidance": 7.0, "seed": 5, "width": 64, "height": 64, "model": "sd-1.5"}))
>>> p["steps"], p["seed"], p["width"], p["model"]
(2, 5, 64, 'sd-1.5')
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

from .errors import ImageReadError
from .samplers import SCHEDULERS, a1111_sampler, scheduler_from_label

__all__ = ["GENERATE_KEYS", "format_parameters", "parse_parameters", "read_metadata", "carried_over",
           "CARRIED_KEYS"]

#: Keys ``generate()`` accepts; ``read_metadata`` returns only these unless ``extra=True``.
GENERATE_KEYS = ("prompt", "negative_prompt", "steps", "guidance", "seed", "width", "height",
                 "model", "scheduler", "loras", "embeddings", "clip_skip", "hires_scale",
                 "hires_strength", "hires_steps", "hires_upscaler")

# our key → A1111 label, in the order A1111 (≥ 1.9) writes them
_FIELDS = [("steps", "Steps"), ("sampler", "Sampler"), ("schedule_type", "Schedule type"),
           ("guidance", "CFG scale"), ("seed", "Seed"), ("size", "Size"),
           ("model_hash", "Model hash"), ("model", "Model"), ("clip_skip", "Clip skip"),
           ("denoising_strength", "Denoising strength"), ("hires_scale", "Hires upscale"),
           ("hires_steps", "Hires steps"), ("hires_upscaler", "Hires upscaler"),
           ("lora_hashes", "Lora hashes"), ("ti_hashes", "TI hashes"),
           # the Ultimate SD upscale extension's labels, for refine()
           ("refine_tile", "Ultimate SD upscale tile_width"),
           ("refine_tile_height", "Ultimate SD upscale tile_height"),
           ("refine_overlap", "Ultimate SD upscale padding"),
           ("refine_strength", "Ultimate SD upscale denoise"),
           ("refine_seam_fix", "Ultimate SD upscale seams_fix"),
           ("refine_controlnet", "Ultimate SD upscale controlnet"),
           ("upscaler", "Postprocess upscaler"),
           ("upscale_by", "Postprocess upscale by"), ("upscale_size", "Postprocess upscale to"),
           ("version", "Version")]
_LABEL_TO_KEY = {label.lower(): key for key, label in _FIELDS}
_PAIR = re.compile(r'\s*([\w][\w \-/+.()]*?):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def _quote(value: Any) -> str:
    text = str(value)
    if any(c in text for c in ',:"\n'):
        return json.dumps(text, ensure_ascii=False)
    return text


def _num(v: float) -> str:
    return f"{v:g}" if float(v) != int(v) else str(int(v))


#: Source text chunks an image made from another (an upscale) keeps.
CARRIED_KEYS = ("parameters",)


def carried_over(info) -> dict[str, str]:
    """What an image made from another keeps of its text metadata: the generation ``parameters``
    only. An editor's ``Comment``, ``Software``, XMP or an earlier upscale's keys no longer
    describe the new file; the upscaler adds its own keys."""
    return {k: info[k] for k in CARRIED_KEYS if isinstance((info or {}).get(k), str)}


def _hashes(mapping: dict) -> str:
    return ", ".join(f"{name}: {digest}" for name, digest in mapping.items())


def _unhash(text: str) -> dict[str, str]:
    pairs = (part.rsplit(":", 1) for part in str(text).split(",") if ":" in part)
    return {name.strip(): digest.strip() for name, digest in pairs}


def _lora_name(source: str) -> str:
    """The name ``<lora:name:w>`` uses: a file's stem, a repo's last part (no folders leak)."""
    return Path(str(source).split("?")[0].rstrip("/")).stem


def _with_lora_tags(prompt: str, loras) -> str:
    """A1111 writes LoRAs into the prompt; ``generate(loras=...)`` ones are added as tags."""
    tags = [f"<lora:{_lora_name(src)}:{float(w):g}>" for src, w in (loras or [])]
    return " ".join([prompt, *tags]) if tags else prompt


def _extra_values(params: dict[str, Any]) -> dict[str, Any]:
    """The fields beyond txt2img's basics, in A1111's spelling."""
    out: dict[str, Any] = {}
    if params.get("hires_scale") is not None:
        out["hires_scale"] = _num(params["hires_scale"])
        out["denoising_strength"] = _num(params.get("hires_strength", 0.35))
        out["hires_steps"] = params.get("hires_steps") or None
    for key in ("lora_hashes", "ti_hashes"):
        if params.get(key):
            out[key] = _hashes(params[key])
    if params.get("refine_strength") is not None:
        out["refine_strength"] = _num(params["refine_strength"])
        out["refine_tile_height"] = params.get("refine_tile")
    return out


def _strip_line_ends(text: str) -> str:
    return "\n".join(line.rstrip(" \t") for line in text.split("\n"))


def format_parameters(params: dict[str, Any]) -> str:
    """The A1111 text for ``params`` (prompt, negative_prompt, steps, guidance, seed, width,
    height, model, scheduler, and optionally upscaler, upscale_by, upscale_size, version).

    Unicode, commas and newlines in the prompts survive a round trip; a prompt *line* that
    itself starts with ``Negative prompt:`` cannot (the A1111 format has no escape for it)."""
    prompt = _with_lora_tags(str(params.get("prompt", "")), params.get("loras"))
    lines = [_strip_line_ends(prompt)]
    if params.get("negative_prompt"):
        lines.append(f"Negative prompt: {_strip_line_ends(str(params['negative_prompt']))}")
    values = dict(params, **_extra_values(params))
    sched = params.get("scheduler") or "default"
    if sched in SCHEDULERS and sched != "default":  # "default" is no A1111 name: left out
        values["sampler"], values["schedule_type"] = a1111_sampler(sched)
    elif sched not in SCHEDULERS:
        values["sampler"] = sched
    if "guidance" in params:
        values["guidance"] = _num(params["guidance"])
    if "width" in params and "height" in params:
        values["size"] = f"{params['width']}x{params['height']}"
    if isinstance(params.get("upscale_by"), float):
        values["upscale_by"] = f"{params['upscale_by']:.4g}"
    fields = [f"{label}: {_quote(values[key])}" for key, label in _FIELDS
              if values.get(key) not in (None, "")]
    extras = params.get("extra") or {}
    fields += [f"{k}: {_quote(v)}" for k, v in extras.items()]
    lines.append(", ".join(fields))
    return "\n".join(lines)


def parse_parameters(text: str) -> dict[str, Any]:
    """Parse A1111 ``parameters`` text into our keys (unknown fields kept under their label)."""
    lines = text.rstrip("\n").split("\n")  # only the end: a prompt may start with a newline
    last = lines[-1] if lines else ""
    if re.search(r"(^|,\s*)Steps:\s*\d", last):
        body, fields_line = lines[:-1], last
    else:
        body, fields_line = lines, ""
    prompt_lines, neg_lines, in_neg = [], [], False
    for line in body:
        line = line.rstrip(" \t")  # as A1111 does; CLIP ignores them anyway
        if line.startswith("Negative prompt:"):
            in_neg = True
            line = line[len("Negative prompt:"):].lstrip()
        (neg_lines if in_neg else prompt_lines).append(line)
    out: dict[str, Any] = {"prompt": "\n".join(prompt_lines), "negative_prompt": "\n".join(neg_lines)}
    for label, raw in _PAIR.findall(fields_line):
        raw = raw.strip()
        if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
            try:
                raw = json.loads(raw)
            except json.JSONDecodeError:
                pass
        key = _LABEL_TO_KEY.get(label.strip().lower(), label.strip())
        out[key] = raw
    _typed_extras(out)
    for key, conv in (("steps", int), ("seed", int), ("guidance", float)):
        if key in out:
            try:
                out[key] = conv(out[key])
            except ValueError:
                pass
    size = out.pop("size", None)
    if isinstance(size, str) and re.fullmatch(r"\d+x\d+", size):
        out["width"], out["height"] = map(int, size.split("x"))
    sampler, schedule = out.pop("sampler", None), out.pop("schedule_type", None)
    if sampler is not None:
        out["scheduler"] = scheduler_from_label(sampler, schedule) or sampler
    return out


def _typed_extras(out: dict[str, Any]) -> None:
    """Numbers and lists for the extra fields; A1111's ``Denoising strength`` is the hires
    fix's when a ``Hires upscale`` is recorded."""
    for key, conv in (("clip_skip", int), ("hires_scale", float), ("hires_steps", int),
                      ("denoising_strength", float), ("refine_tile", int),
                      ("refine_tile_height", int), ("refine_overlap", int),
                      ("refine_strength", float)):
        if key in out:
            try:
                out[key] = conv(out[key])
            except (TypeError, ValueError):
                pass
    if "hires_scale" in out and "denoising_strength" in out:
        out["hires_strength"] = out.pop("denoising_strength")
    if isinstance(out.get("hires_upscaler"), str) and out["hires_upscaler"].lower() == "latent":
        out["hires_upscaler"] = "latent"
    for key in ("lora_hashes", "ti_hashes"):
        if key in out:
            out[key] = _unhash(out[key])
    if "ti_hashes" in out:  # the embeddings, by token: looked up in PIPELINE_LIB_EMBEDDINGS_DIR
        out["embeddings"] = list(out["ti_hashes"])
    if "refine_seam_fix" in out:
        out["refine_seam_fix"] = str(out["refine_seam_fix"]).lower() == "true"
    out.pop("refine_tile_height", None)


_EXIF_IFD, _USER_COMMENT = 0x8769, 0x9286


def _exif_user_comment(img) -> str | None:
    """A1111's JPEG/WebP parameters: EXIF UserComment, an 8-byte charset tag then the text
    (``UNICODE`` as UTF-16 — big-endian per the standard, little-endian from some writers)."""
    try:
        raw = img.getexif().get_ifd(_EXIF_IFD).get(_USER_COMMENT)
    except Exception:  # no or broken EXIF: simply no parameters there
        return None
    if isinstance(raw, str):
        return raw or None
    if not isinstance(raw, bytes) or len(raw) <= 8:
        return None
    tag, body = raw[:8], raw[8:]
    if tag.startswith(b"UNICODE"):
        texts = [body.decode(enc, errors="replace") for enc in ("utf-16-be", "utf-16-le")]
        return max(texts, key=lambda t: sum(c.isascii() and c.isprintable() or c == "\n" for c in t))
    return body.decode("utf-8", errors="replace").strip("\x00") or None


def read_metadata(path: str | os.PathLike, *, extra: bool = False) -> dict[str, Any]:
    """Generation parameters stored in an image, ready for ``generate(**read_metadata(path))``.

    Returns prompt, negative_prompt, steps, guidance, seed, width, height, model and scheduler
    (those present). ``extra=True`` adds everything else that was recorded (upscaler,
    upscale_by, upscale_size, version, unknown A1111 fields).

    Never returns an empty dict: raises :class:`ImageReadError` (naming the file) when it is
    missing or not an image, has no ``parameters`` text, or the text's Steps/Seed/CFG scale are
    not numbers. Text without a settings line is an A1111 prompt-only record: only ``prompt``
    (and ``negative_prompt``) come back.

    >>> meta = read_metadata("out/42.png")                    # doctest: +SKIP
    >>> again = generate(**meta)                              # doctest: +SKIP
    """
    from PIL import Image

    try:
        with Image.open(path) as img:
            text = (img.info.get("parameters") or getattr(img, "text", {}).get("parameters")
                    or _exif_user_comment(img))
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such file.") from None
    except OSError as exc:
        raise ImageReadError(f"{path}: not a readable image ({exc}).") from None
    if not text:
        raise ImageReadError(f"{path} carries no generation parameters (no 'parameters' text "
                             "chunk, no EXIF UserComment); only images saved by pipeline_lib or "
                             "A1111 have them.")
    if not isinstance(text, str):
        raise ImageReadError(f"{path}: its 'parameters' entry is not text ({type(text).__name__}).")
    parsed = parse_parameters(text)
    for key, label in (("steps", "Steps"), ("seed", "Seed"), ("guidance", "CFG scale")):
        value = parsed.get(key)
        if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value)):
            raise ImageReadError(f"{path}: garbled 'parameters' text: {label} is {value!r}, not a "
                                 "number; fix or remove the text chunk (e.g. with exiftool).")
    return parsed if extra else {k: parsed[k] for k in GENERATE_KEYS if k in parsed}
