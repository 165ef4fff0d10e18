"""Sampler (scheduler) names: our keys, the diffusers classes behind them, A1111's labels.

Neutral ground: generation sets schedulers from here and the metadata writer/reader translates
to and from A1111's ``Sampler:`` text, without either importing the other.

>>> check_scheduler("DPM++ 2M Karras")
'dpm++2m-karras'
"""
from __future__ import annotations

import difflib

from .errors import InvalidParameterError

__all__ = ["SCHEDULERS", "scheduler_label", "scheduler_from_label", "check_scheduler",
           "a1111_sampler", "scheduler_of"]

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


def a1111_sampler(name: str) -> tuple[str, str | None]:
    """(``Sampler``, ``Schedule type``) as A1111 ≥ 1.9 writes them: "DPM++ 2M", "Karras"."""
    label = SCHEDULERS[name][2]
    if label.endswith(" Karras"):
        return label[:-len(" Karras")], "Karras"
    return label, None


def scheduler_from_label(label: str, schedule: str | None = None) -> str | None:
    """Map an A1111 sampler label back to our key: "DPM++ 2M Karras" (before 1.9), or "DPM++ 2M"
    with ``schedule`` "Karras" (1.9 and later; "Automatic" means the sampler's own schedule)."""
    text = label.strip().lower()
    if schedule and schedule.strip().lower() not in ("", "automatic", "uniform"):
        text = f"{text} {schedule.strip().lower()}"
    for key, (_cls, _cfg, lab) in SCHEDULERS.items():
        if text in (key, lab.lower()):
            return key
    return None


def scheduler_of(scheduler) -> str | None:
    """Our key for a diffusers scheduler object (a model's own one), None when it has none."""
    cls = type(scheduler).__name__
    config = getattr(scheduler, "config", {})
    for key, (name, extra, _label) in SCHEDULERS.items():
        if name == cls and all(config.get(k) == v for k, v in extra.items()) and (
                key != "dpm++2m" or not config.get("use_karras_sigmas")):
            if key == "dpm++2m" and config.get("algorithm_type") == "sde-dpmsolver++":
                continue
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
