"""Out-of-memory during generation: recognise it, free what it left, say what to change."""
from __future__ import annotations

import gc

__all__ = ["is_out_of_memory", "free_after_oom", "oom_advice"]


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    text = str(exc).lower()
    return (isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in text
            or "not enough memory" in text or "can't allocate memory" in text)


def free_after_oom(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


def oom_advice(what: str, plan, num_images: int, w: int, h: int) -> str:
    """The message: what ran out, then the settings that lower the peak, biggest effect first."""
    tips = []
    if plan.profile not in ("low", "cpu"):  # on the CPU the profiles change nothing
        tips.append("memory='low' (CLI: --memory low; offloads sub-models and slices attention)")
    if num_images > 1:
        tips.append(f"fewer images per call (num_images=1 instead of {num_images}; CLI: -n 1)")
    tips.append(f"a smaller size than {w}x{h} (width=/height=, CLI: --size), then reach big "
                "outputs with text_to_image(size=...) / --upscale")
    if plan.device != "cpu":
        tips.append("device='cpu' (slow, but limited by RAM only)")
    return (f"out of {plan.device} memory generating {num_images} image(s) of {w}x{h} "
            f"(memory profile {plan.profile!r}): {what}. Try " + "; or ".join(tips) + ".")
