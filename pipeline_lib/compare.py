"""Side-by-side figures, linked zoom crops and timing/metric tables for upscalers and models.

Usable outside notebooks: figures are plain ``matplotlib.figure.Figure`` objects built without
pyplot (no global state, any backend), so ``fig.savefig("x.png")`` works in scripts and tests.

>>> from pipeline_lib import compare_upscalers, side_by_side
>>> ref = Image.open("assets/astronaut.png").convert("RGB")                  # doctest: +SKIP
>>> low = shrink(ref, 4)                                                     # doctest: +SKIP
>>> images, rows = compare_upscalers(low, reference=ref)                     # doctest: +SKIP
>>> side_by_side(list(images.values()), list(images)).savefig("grid.png")    # doctest: +SKIP
"""
from __future__ import annotations

import logging
import math
import sys
import time
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image

from .errors import InvalidParameterError, PipelineError
from .presentation import as_8bit

log = logging.getLogger(__name__)

__all__ = ["side_by_side", "zoom_crops", "crop_box", "compare_upscalers", "compare_refine",
           "compare_models", "available_upscalers", "shrink", "Table", "figure_to_image", "BICUBIC"]

BICUBIC = "bicubic"
Box = Sequence[float]
_EPS = 1e-6  # pixel positions closer than this to a whole number are that number


# ------------------------------------------------------------------ figures
def side_by_side(images: Sequence, labels: Sequence[str] | None = None, *, cols: int | None = None,
                 panel: float = 3.2, dpi: int = 100):
    """A grid of ``images`` (PIL or arrays; any sizes) with ``labels`` as titles → ``Figure``.

    Each panel shows its whole image at the same on-screen size, with its pixel size under the
    label, so an upscaled picture and its source line up. ``cols`` defaults to all in one row
    (up to 4). ``panel`` is the panel side in inches.

    >>> fig = side_by_side([Image.new("RGB", (8, 8)), Image.new("RGB", (32, 32))], ["a", "b"])
    >>> [round(v) for v in fig.get_size_inches() * fig.dpi]
    [640, 352]
    """
    from matplotlib.figure import Figure

    if not images:
        raise InvalidParameterError("side_by_side needs at least one image.")
    labels = list(labels) if labels is not None else [""] * len(images)
    if len(labels) != len(images):
        raise InvalidParameterError(f"got {len(images)} images but {len(labels)} labels; give one "
                                    "label per image.")
    n = len(images)
    cols = cols or min(n, 4)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(panel * cols, (panel + 0.32) * rows), dpi=dpi, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, img, label in zip(axes.flat, images, labels):
        pil = as_8bit(img)
        # nearest: a small source must show its real pixels, not a smoothed guess
        ax.imshow(np.asarray(pil), interpolation="nearest" if max(pil.size) < 512 else "antialiased",
                  cmap="gray" if pil.mode in ("L", "I;16") else None)
        ax.set_title(f"{label}\n{pil.width}×{pil.height}" if label else f"{pil.width}×{pil.height}",
                     fontsize=9)
    return fig


def crop_box(image, box: Box) -> Image.Image:
    """Crop ``box`` = (left, top, right, bottom) given as *fractions* of the image (0..1), so the
    same box picks the same region from a picture and from its upscaled version."""
    pil = as_8bit(image)
    if len(box) != 4:
        raise InvalidParameterError(f"box must be (left, top, right, bottom), got {box!r}.")
    l, t, r, b = (float(v) for v in box)
    if not (0 <= l < r <= 1 and 0 <= t < b <= 1):
        raise InvalidParameterError(f"box {box!r} must be fractions of the image with "
                                    "0 ≤ left < right ≤ 1 and 0 ≤ top < bottom ≤ 1.")
    w, h = pil.size
    # a box made from whole pixels (left / width, ...) must cut exactly those pixels: the
    # product may land a hair beside the integer, which floor/ceil alone would turn into one more
    left, top = math.floor(l * w + _EPS), math.floor(t * h + _EPS)
    px = (left, top, max(left + 1, math.ceil(r * w - _EPS)), max(top + 1, math.ceil(b * h - _EPS)))
    return pil.crop(px)


def zoom_crops(images: Sequence, box: Box = (0.375, 0.2, 0.625, 0.45), labels: Sequence[str] | None = None,
               *, display: int | None = None, as_figure: bool = True, **figure_kwargs):
    """The same region (``box`` in fractions, see :func:`crop_box`) cut from every image and shown
    at one display size (nearest-neighbour, so every source pixel stays visible).

    Returns a ``Figure`` (``as_figure=False``: the list of resized PIL crops). ``display`` is the
    crop side in pixels; default: the largest crop's long side.

    >>> crops = zoom_crops([Image.new("RGB", (10, 10)), Image.new("RGB", (40, 40))], (0, 0, .5, .5),
    ...                    as_figure=False)
    >>> [c.size for c in crops]
    [(20, 20), (20, 20)]
    """
    cut = [crop_box(img, box) for img in images]
    if not cut:
        raise InvalidParameterError("zoom_crops needs at least one image.")
    big = max(cut, key=lambda c: c.width * c.height)
    display = display or max(big.size)
    scale = display / max(big.size)
    size = (max(1, round(big.width * scale)), max(1, round(big.height * scale)))
    shown = [c.resize(size, Image.Resampling.NEAREST) for c in cut]
    if not as_figure:
        return shown
    labels = list(labels) if labels is not None else [""] * len(shown)
    fig = side_by_side(shown, [f"{lab} (zoom)".strip() for lab in labels], **figure_kwargs)
    for ax, c in zip(fig.axes, cut):  # title the crop with its real source size
        ax.set_title(ax.get_title().rsplit("\n", 1)[0] + f"\n{c.width}×{c.height} px crop",
                     fontsize=9)
    return fig


def figure_to_image(fig) -> Image.Image:
    """Render a Figure (any backend) to a PIL RGBA image — what ``savefig`` would write."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba()).copy())


# ------------------------------------------------------------------ tables
class Table(list):
    """Rows (dicts) that print as an aligned text table and render as HTML in notebooks."""

    def columns(self) -> list[str]:
        cols: list[str] = []
        for row in self:
            cols += [k for k in row if k not in cols]
        return cols

    @staticmethod
    def _fmt(v) -> str:
        if v is None:
            return "n/a"
        if isinstance(v, float):
            return "inf" if math.isinf(v) else f"{v:.3g}" if abs(v) < 1 else f"{v:.2f}"
        if isinstance(v, tuple) and len(v) == 2:
            return f"{v[0]}×{v[1]}"
        return str(v)

    def __str__(self) -> str:
        cols = self.columns()
        cells = [[self._fmt(r.get(c)) for c in cols] for r in self]
        widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
        line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths))  # noqa: E731
        return "\n".join([line(cols), line("-" * w for w in widths)] + [line(r) for r in cells])

    def _repr_pretty_(self, p, cycle) -> None:  # IPython's text/plain
        p.text(str(self))

    def _repr_html_(self) -> str:
        import html

        cols = self.columns()
        head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(self._fmt(r.get(c)))}</td>" for c in cols)
                       + "</tr>" for r in self)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# ------------------------------------------------------------------ upscalers
def shrink(image, factor: int = 4) -> Image.Image:
    """A ``factor``× smaller copy (bicubic, as super-resolution papers make test inputs), cropped
    first so the sides divide exactly; the cropped original is its PSNR reference."""
    pil = as_8bit(image).convert("RGB")
    w, h = pil.width - pil.width % factor, pil.height - pil.height % factor
    if w < factor or h < factor:
        raise InvalidParameterError(f"image {pil.size} is too small to shrink {factor}×.")
    return pil.crop((0, 0, w, h)).resize((w // factor, h // factor), Image.Resampling.BICUBIC)


def available_upscalers(scale: int = 4, *, ncnn: bool = True) -> list[str]:
    """Registry models that run here without any download, one per distinct network.

    OpenCV families contribute their ×``scale`` model; Real-ESRGAN networks are listed once (the
    x2/x3 aliases of animevideov3 share its weights). With ``ncnn`` and the ncnn package
    importable, models that also run on ncnn are added as ``"name@ncnn"``.
    """
    from .upscale.backends import BACKENDS
    from .upscale.registry import MODELS
    from .upscale.weights import weights_available

    torch_ok = _importable("torch")
    names, seen = [], set()
    for spec in MODELS.values():
        if "opencv" in spec.backends:
            ok = spec.scale == scale and (spec.weights is None or weights_available(spec))
        else:
            network = spec.ncnn_stem or (spec.weights.filename if spec.weights else spec.name)
            ok = torch_ok and network not in seen and weights_available(spec)
            seen.add(network)
        if ok:
            names.append(spec.name)
    if ncnn and "ncnn" in BACKENDS and _importable("ncnn"):
        names += [f"{n}@ncnn" for n in list(names) if "ncnn" in MODELS[n].backends]
    return names


def _importable(module: str) -> bool:
    import importlib.util

    return module in sys.modules or importlib.util.find_spec(module) is not None


def _split(name: str) -> tuple[str, str]:
    model, _, backend = str(name).partition("@")
    return model, backend or "auto"


def compare_upscalers(image, models: Iterable[str] | None = None, reference=None, *,
                      scale: float | None = None, size=None, device=None, progress: bool = True
                      ) -> tuple[dict[str, Image.Image], Table]:
    """Run ``image`` through each upscaler (plus bicubic, the baseline) to one output size.

    ``models``: registry names, ``"name@backend"`` for a specific backend (``"realesrgan-x4plus@ncnn"``);
    default :func:`available_upscalers`. The output size is ``reference``'s size when a reference
    is given (PSNR is then measured against it), else ``size`` / ``scale`` (default ×4).
    A model that cannot run here gets a row with its error (``note``) instead of stopping the comparison.

    Returns ``(images, table)``: images by label (bicubic first), and rows with model, backend,
    device, seconds (upscale only), load_seconds (first load; 0 when cached), size and psnr.

    >>> images, table = compare_upscalers(shrink(ref), reference=ref)   # doctest: +SKIP
    >>> print(table)                                                   # doctest: +SKIP
    """
    import cv2

    from .upscale import load_upscaler, upscale
    from .upscale.sizing import target_size

    src = as_8bit(image).convert("RGB")
    ref = as_8bit(reference).convert("RGB") if reference is not None else None
    if ref is not None:
        if size is not None or scale is not None:
            raise InvalidParameterError("with a reference the output size is the reference's; "
                                        "leave size and scale unset.")
        out_size = ref.size
    else:
        out_size = target_size(src.width, src.height, scale=scale, size=size, default_scale=4.0)
    factor = out_size[0] / src.width
    models = list(models) if models is not None else available_upscalers(max(2, round(factor)))
    images: dict[str, Image.Image] = {}
    rows = Table()

    def add(label, backend, dev, out, seconds, load_s=0.0, error=None, note=None):
        row = {"model": label, "backend": backend, "device": dev, "seconds": seconds,
               "load_seconds": load_s, "size": out.size if out is not None else None}
        if ref is not None:
            row["psnr"] = (float(cv2.PSNR(np.asarray(out), np.asarray(ref)))
                           if out is not None else None)
        if error or note:
            row["note"] = error or note
        rows.append(row)
        if out is not None:
            images[label] = out

    t = time.perf_counter()
    add(BICUBIC, "pillow", "cpu", src.resize(out_size, Image.Resampling.BICUBIC), time.perf_counter() - t)
    for name in models:
        model, backend = _split(name)
        if model == BICUBIC:
            continue
        try:
            t = time.perf_counter()
            load_upscaler(model, device=device, backend=backend, progress=progress)
            load_s = time.perf_counter() - t
            res = upscale(src, model, size=out_size, backend=backend, device=device,
                          progress=progress, full_result=True)
        except PipelineError as exc:
            log.warning("compare_upscalers: %s skipped: %s", name, exc)
            add(name, backend, None, None, None, None, error=str(exc))
            continue
        add(name, res.backend, res.device, res.image, res.seconds, load_s, note=res.fallback)
    return images, rows


def compare_refine(image, prompt: str, *, upscaler: str, model: str | None = None,
                   strength: float = 0.3, reference=None, scale: float | None = None, size=None,
                   seed: int = 0, label: str | None = None, device=None, progress: bool = True,
                   **refine_kwargs) -> tuple[dict[str, Image.Image], Table]:
    """A GAN upscale alone vs the same upscale followed by :func:`pipeline_lib.refine` at
    ``strength`` (tiled img2img with ``model``, guided by ``prompt``): does the diffusion pass put
    texture back (skin, foliage) that the GAN smeared?

    The output size is ``reference``'s when given (PSNR is then measured against it), else
    ``size`` / ``scale`` (default ×4). ``label`` names the upscaler in the titles (default: its
    name): ``"Real-ESRGAN ×4"`` and ``"Real-ESRGAN ×4 + refine 0.3"``. Extra keyword arguments go
    to ``refine()`` (steps, tile, loras, ...). Returns ``(images, table)`` like
    :func:`compare_upscalers`; a refine that cannot run here (e.g. the model is not downloaded
    and downloads are off) gets a row with its error instead of an image.

    >>> images, table = compare_refine(shrink(ref), "a portrait", upscaler="realesrgan-x4plus",
    ...                                reference=ref, label="Real-ESRGAN")   # doctest: +SKIP
    >>> list(images)                                                         # doctest: +SKIP
    ['Real-ESRGAN ×4', 'Real-ESRGAN ×4 + refine 0.3']
    """
    import cv2

    from .compose import refine
    from .generate import DEFAULT_PRESET
    from .upscale import upscale
    from .upscale.sizing import target_size
    from .validation import check_strength

    strength = check_strength(strength)  # a typo fails before minutes of upscaling
    src = as_8bit(image).convert("RGB")
    ref = as_8bit(reference).convert("RGB") if reference is not None else None
    out_size = ref.size if ref is not None else target_size(src.width, src.height, scale=scale,
                                                            size=size, default_scale=4.0)
    up = upscale(src, upscaler, size=out_size, device=device, progress=progress, full_result=True)
    base = f"{label or upscaler} ×{out_size[0] / src.width:.3g}"
    images: dict[str, Image.Image] = {base: up.image}
    rows = Table([{"model": base, "seconds": up.seconds, "size": up.image.size}])
    t = time.perf_counter()
    try:
        out = refine(up.image, prompt, model=model or DEFAULT_PRESET, strength=strength, seed=seed,
                     device=device, progress=progress, **refine_kwargs)
        images[f"{base} + refine {strength:g}"] = out.image
        rows.append({"model": f"{base} + refine {strength:g}", "seconds": time.perf_counter() - t,
                     "size": out.image.size})
    except PipelineError as exc:
        log.warning("compare_refine: refine skipped: %s", exc)
        rows.append({"model": f"{base} + refine {strength:g}", "note": str(exc)})
    if ref is not None:
        for row in rows:
            img = images.get(row["model"])
            row["psnr"] = (float(cv2.PSNR(np.asarray(img), np.asarray(ref)))
                           if img is not None else None)
    return images, rows


# ------------------------------------------------------------------ diffusion models
def _peak_rss_mb() -> float | None:
    """The process's peak resident memory so far (a high-water mark over its whole life)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2 ** 20 if sys.platform == "darwin" else 2 ** 10), 1)  # bytes on macOS, KiB on Linux


def compare_models(prompt: str, presets: Sequence[str], seed: int = 0, *, progress: bool = True,
                   unload: bool = True, **generate_kwargs) -> tuple[dict[str, Image.Image], Table]:
    """Generate ``prompt`` with the same ``seed`` on each preset (the model study of seed 001).

    Rows: model, seconds (generation), load_seconds, size, and memory: ``peak_gpu_mb`` (peak
    allocated during that model's load + run, CUDA only, else n/a) and ``peak_rss_mb`` (the
    process's resident high-water mark after that model: cumulative, so on CPU only a rise
    tells that a model needed more than the ones before). ``unload`` frees each model before the
    next. Extra keyword arguments go to :func:`pipeline_lib.generate` (steps, width, ...).
    A preset that fails to load gets a row with its error; the others still run.
    """
    from .generate import generate, load_pipeline, unload_pipeline

    if not presets:
        raise InvalidParameterError("compare_models needs at least one preset name.")
    device = generate_kwargs.get("device")
    images: dict[str, Image.Image] = {}
    rows = Table()
    for name in presets:
        cuda = _cuda_reset(device)
        row: dict[str, Any] = {"model": name}
        try:
            t = time.perf_counter()
            load_pipeline(name, device=device, memory=generate_kwargs.get("memory", "auto"),
                          progress=progress)
            row["load_seconds"] = time.perf_counter() - t
            t = time.perf_counter()
            out = generate(prompt, model=name, seed=seed, progress=progress, **generate_kwargs)[0]
            row["seconds"] = time.perf_counter() - t
            row["size"] = out.image.size
            images[name] = out.image
        except PipelineError as exc:
            log.warning("compare_models: %s skipped: %s", name, exc)
            row["note"] = str(exc)
        row["peak_gpu_mb"] = _cuda_peak(cuda)
        row["peak_rss_mb"] = _peak_rss_mb()
        rows.append(row)
        if unload:
            unload_pipeline()
    return images, rows


def _cuda_reset(device):
    import torch

    if not torch.cuda.is_available() or (device is not None and not str(device).startswith("cuda")):
        return None
    dev = torch.device(device) if device is not None else torch.device("cuda", torch.cuda.current_device())
    torch.cuda.reset_peak_memory_stats(dev)
    return dev


def _cuda_peak(dev) -> float | None:
    if dev is None:
        return None
    import torch

    return round(torch.cuda.max_memory_allocated(dev) / 2 ** 20, 1)
