"""Sampler (scheduler) names: our keys, the diffusers classes behind them, A1111's labels.

Neutral ground: generation sets schedulers from here and the metadata writer/reader translates
to and from A1111's ``Sampler:`` text, without either importing the other.

>>> check_scheduler("DPM++ 2M Karras")
'dpm++2m-karras'
"""
from __future__ import annotations

import difflib

from .errors import InvalidParameterError

__all__ = ["SCHEDULERS", "scheduler_label", "scheduler_from_label", "check_scheduler"]

#: key → (diffusers class or None for the model's own, extra config, A1111 label)
SCHEDULERS: dict[str, tuple[str | None, dict, str]] = {
    "default": (None, {}, "Default"),
    "dpm++2m-karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}, "DPM++ 2M Karras"),
    "dpm++2m": ("DPMSolverMultistepScheduler", {}, "DPM++ 2M"),
    "dpm++2m-sde-karras": ("DPMSolverMultistepScheduler",
                           {"use_karras_sigmas": True, "algorithm_type": "sde-dpmsolver++"},
                           "DPM++ 2M SDE Karras"),
    "euler": ("EulerDiscreteScheduler", {}, "Euler"),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}, "Euler a"),
    "ddim": ("DDIMScheduler", {}, "DDIM"),
    "deis": ("DEISMultistepScheduler", {}, "DEIS"),
    "unipc": ("UniPCMultistepScheduler", {}, "UniPC"),
    "lms": ("LMSDiscreteScheduler", {}, "LMS"),
    "pndm": ("PNDMScheduler", {}, "PLMS"),
}


def scheduler_label(name: str) -> str:
    return SCHEDULERS[name][2]


def scheduler_from_label(label: str) -> str | None:
    """Map an A1111 sampler label ("DPM++ 2M Karras") back to our scheduler key."""
    text = label.strip().lower()
    for key, (_cls, _cfg, lab) in SCHEDULERS.items():
        if text in (key, lab.lower()):
            return key
    return None


def check_scheduler(name: str | None) -> str | None:
    if name is None:
        return None
    key = str(name).strip().lower()
    if key not in SCHEDULERS:
        key = scheduler_from_label(str(name)) or key
    if key not in SCHEDULERS:
        close = difflib.get_close_matches(key, list(SCHEDULERS), n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise InvalidParameterError(f"unknown scheduler {name!r}.{hint} Use one of "
                                    f"{', '.join(SCHEDULERS)}.")
    return key
