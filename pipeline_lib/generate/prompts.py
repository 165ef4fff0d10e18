"""A1111 prompt syntax: ``<lora:name:0.8>`` tags, attention weights, prompts past 77 tokens.

Weighting and chunking are done by compel (its weighted-fragment encoder). compel's own prompt
parser speaks a different language (``(red)1.3``, ``red++``; it reads A1111's ``(red:1.3)`` as
the literal text "red:1 . 3"), so the A1111 grammar is parsed here into (text, weight) fragments
and those go straight to compel's ``get_embeddings_for_weighted_prompt_fragments`` — no
translation to compel syntax, hence no escaping to get wrong.

>>> parse_attention("a (red:1.5) apple, [dull] ((shiny))")
[('a ', 1.0), ('red', 1.5), (' apple, ', 1.0), ('dull', 0.9091), (' ', 1.0), ('shiny', 1.21)]
>>> extract_lora_tags("a cat <lora:film grain:0.6>")
('a cat', [('film grain', 0.6)])
"""
from __future__ import annotations

import re
from typing import Any

from ..errors import InvalidParameterError

__all__ = ["parse_attention", "plain_text", "extract_lora_tags", "lora_tag", "is_weighted",
           "encode_prompts", "ROUND_WEIGHT", "SQUARE_WEIGHT"]

ROUND_WEIGHT = 1.1  # A1111: each (...) multiplies by 1.1
SQUARE_WEIGHT = 1 / 1.1  # each [...] divides by 1.1

_LORA = re.compile(r"<(?:lora|lyco):([^:>]+)(?::([^:>]*))?(?::[^>]*)?>", re.IGNORECASE)
_TOKEN = re.compile(r"\\[()\[\]\\]|\\|\(|\[|:\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*\)|\)|\]|[^\\()\[\]:]+|:")


def lora_tag(name: str, weight: float) -> str:
    return f"<lora:{name}:{weight:g}>"


def extract_lora_tags(prompt: str) -> tuple[str, list[tuple[str, float]]]:
    """The prompt without its ``<lora:name:weight>`` tags, and the (name, weight) pairs."""
    found = []
    for m in _LORA.finditer(prompt):
        raw = (m.group(2) or "1").strip()
        try:
            weight = float(raw)
        except ValueError:
            raise InvalidParameterError(f"{m.group(0)!r} in the prompt: the weight {raw!r} is not a "
                                        "number; write <lora:name:0.8>.") from None
        found.append((m.group(1).strip(), weight))
    text = _LORA.sub("", prompt)
    return re.sub(r"[ \t]{2,}", " ", text).strip(), found


def parse_attention(text: str) -> list[tuple[str, float]]:
    """A1111's attention syntax → merged (text, weight) fragments, weights rounded to 4 places.

    ``(x)`` ×1.1, ``((x))`` ×1.21, ``[x]`` ÷1.1, ``(x:1.3)`` ×1.3, ``\\(`` a literal parenthesis;
    an unclosed bracket weights everything after it, as in A1111."""
    parts: list[list] = []  # [text, weight]
    round_open: list[int] = []
    square_open: list[int] = []

    def scale(start: int, factor: float) -> None:
        for part in parts[start:]:
            part[1] *= factor

    for m in _TOKEN.finditer(text):
        tok, number = m.group(0), m.group(1)
        if tok.startswith("\\") and len(tok) == 2:
            parts.append([tok[1], 1.0])
        elif tok == "(":
            round_open.append(len(parts))
        elif tok == "[":
            square_open.append(len(parts))
        elif number is not None and round_open:
            scale(round_open.pop(), float(number))
        elif tok == ")" and round_open:
            scale(round_open.pop(), ROUND_WEIGHT)
        elif tok == "]" and square_open:
            scale(square_open.pop(), SQUARE_WEIGHT)
        else:
            parts.append([tok, 1.0])
    for start in round_open:
        scale(start, ROUND_WEIGHT)
    for start in square_open:
        scale(start, SQUARE_WEIGHT)
    merged: list[tuple[str, float]] = []
    for piece, weight in parts:
        weight = round(weight, 4)
        if merged and merged[-1][1] == weight:
            merged[-1] = (merged[-1][0] + piece, weight)
        elif piece:
            merged.append((piece, weight))
    return merged


def plain_text(fragments: list[tuple[str, float]]) -> str:
    return "".join(piece for piece, _ in fragments)


def is_weighted(fragments: list[tuple[str, float]]) -> bool:
    return any(weight != 1.0 for _, weight in fragments)


def _token_count(pipe, text: str) -> int:
    tok = getattr(pipe, "tokenizer", None) or getattr(pipe, "tokenizer_2", None)
    if tok is None or not text:
        return 0
    return len(tok(text, truncation=False, add_special_tokens=True, verbose=False).input_ids)


def needs_encoder(pipe, *fragment_lists) -> bool:
    """Whether the pipeline's own text encoding would lose something (weights, or tokens past
    the model's limit, which it truncates): then compel encodes the prompts instead."""
    tok = getattr(pipe, "tokenizer", None) or getattr(pipe, "tokenizer_2", None)
    limit = tok.model_max_length if tok is not None else 77
    return any(is_weighted(f) or _token_count(pipe, plain_text(f)) > limit for f in fragment_lists)


class _SkippedEncoder:
    """A text encoder that ends ``skip`` layers early (A1111's clip skip), for compel, which
    itself knows only 'last' and 'penultimate'. ``normalized`` (SD-1.x): the chosen layer goes
    through the final layer norm into ``last_hidden_state``; otherwise (SDXL, which reads
    ``hidden_states[-2]``) the hidden states are cut short. Everything else is the encoder."""

    def __init__(self, encoder, skip: int, normalized: bool):
        self._encoder, self._skip, self._normalized = encoder, skip, normalized

    def __getattr__(self, name):
        return getattr(self._encoder, name)

    def __call__(self, *args, **kwargs):
        if self._skip and self._normalized:
            kwargs["output_hidden_states"] = True
        out = self._encoder(*args, **kwargs)
        if not self._skip:
            return out
        if self._normalized:
            norm = getattr(getattr(self._encoder, "text_model", self._encoder), "final_layer_norm")
            out.last_hidden_state = norm(out.hidden_states[-1 - self._skip])
        elif getattr(out, "hidden_states", None) is not None:
            out.hidden_states = out.hidden_states[:len(out.hidden_states) - self._skip]
        return out


def _provider(tokenizer, encoder, kind, skip: int):
    from compel import SplitLongTextMode
    from compel.embeddings_provider import EmbeddingsProvider

    # PHRASES: long prompts are cut into 75-token chunks at commas, as A1111 does
    return EmbeddingsProvider(tokenizer=tokenizer, text_encoder=_SkippedEncoder(encoder, skip, kind == kind.LAST_HIDDEN_STATES_NORMALIZED),
                              truncate=False, returned_embeddings_type=kind,
                              split_long_text_mode=SplitLongTextMode.PHRASES,
                              dtype_for_device_getter=lambda _device: encoder.dtype)


def _fragments_for(pipe, tokenizer, fragments) -> tuple[list[str], list[float]]:
    # multi-vector textual inversions: "tok" → "tok tok_1 ...", as the pipeline does for text
    convert = getattr(pipe, "maybe_convert_prompt", None)
    texts = [convert(t, tokenizer) if convert else t for t, _ in fragments] or [""]
    return texts, [w for _, w in fragments] or [1.0]


def _encode_with(pipe, providers, fragment_lists) -> tuple[list, Any]:
    """Embeddings of each prompt, concatenated across the encoders, padded to one length."""
    import torch

    per_prompt = []
    for fragments in fragment_lists:
        parts = []
        for tokenizer, provider in providers:
            texts, weights = _fragments_for(pipe, tokenizer, fragments)
            parts.append(provider.get_embeddings_for_weighted_prompt_fragments(
                [texts], [weights], device=provider.device))
        per_prompt.append(parts)
    length = max(p[0].shape[1] for p in per_prompt)
    for index, (tokenizer, provider) in enumerate(providers):
        chunk = provider.max_token_count
        empty = provider.get_embeddings_for_weighted_prompt_fragments([[""]], [[1.0]],
                                                                      device=provider.device)
        for parts in per_prompt:  # pad with empty-prompt chunks, like compel's own padding
            missing = (length - parts[index].shape[1]) // chunk
            if missing:
                parts[index] = torch.cat([parts[index], empty.repeat(1, missing, 1)], dim=1)
    return [torch.cat(parts, dim=-1) for parts in per_prompt], providers


def encode_prompts(pipe, positive, negative, clip_skip: int, count: int) -> dict[str, Any]:
    """Pipeline kwargs (``prompt_embeds`` …) for weighted and/or long prompts; SD-1.x uses one
    text encoder, SDXL both (and the second one's pooled output). ``clip_skip`` is A1111's
    (1 = last layer, 2 = the one before …), applied as diffusers applies it."""
    from compel import ReturnedEmbeddingsType as Kind

    skip = clip_skip - 1
    if getattr(pipe, "text_encoder_2", None) is not None:
        kind = Kind.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED
        pairs = [(pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)]
        if pipe.text_encoder is None:
            pairs = pairs[1:]
    else:
        kind = Kind.LAST_HIDDEN_STATES_NORMALIZED
        pairs = [(pipe.tokenizer, pipe.text_encoder)]
    for tok, _enc in pairs:  # chunked, not cut: transformers' "longer than 77" note is moot
        getattr(tok, "deprecation_warnings", {})["sequence-length-is-longer-than-the-specified-maximum"] = True
    providers = [(tok, _provider(tok, enc, kind, skip)) for tok, enc in pairs]
    (pos, neg), _ = _encode_with(pipe, providers, [positive, negative])
    out = {"prompt_embeds": pos.repeat(count, 1, 1), "negative_prompt_embeds": neg.repeat(count, 1, 1)}
    if getattr(pipe, "text_encoder_2", None) is not None:
        tok, provider = providers[-1]
        pooled = [provider.get_pooled_embeddings([plain_text(f)], device=provider.device)
                  for f in (positive, negative)]
        out["pooled_prompt_embeds"] = pooled[0].repeat(count, 1)
        out["negative_pooled_prompt_embeds"] = pooled[1].repeat(count, 1)
    return out
