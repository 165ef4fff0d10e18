"""The app's state and actions — generate (LoRAs, hires fix), upload, upscale (+ refine), save,
zoom, LoRA uploads — with no ipywidgets.

The view (:mod:`pipeline_lib.widgets.view`) reads its controls into a :class:`GenerateForm` or
plain values, calls an action here and redraws what ``on_change(what)`` names. An action never
raises: the library's own error message (or, for an unexpected error, one line plus the folded
traceback) becomes :attr:`Controller.message`, and the app keeps working. That matters in a real
kernel, where an ipywidgets ``Output`` context swallows exceptions instead of passing them on.

>>> c = Controller(test_mode=True)                                  # doctest: +SKIP
>>> c.generate(GenerateForm("a red fox in snow", model=c.models[0]))   # doctest: +SKIP
True
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
import logging
import tempfile
import time
import traceback

from .. import notebook as nb
from ..errors import InvalidParameterError, PipelineError
from ..generate.job import HIRES_LATENT
from ..outputs import save_to_free_name
from ..presentation import as_8bit, pixel_box, preview_png, save_result, zoom_box
from ..validation import check_strength, parse_seed
from .loras import lora_files, lora_path, save_lora
from .progress import JobProgress, Progress

log = logging.getLogger(__name__)

__all__ = ["AUTO", "CUSTOM", "PREVIEW", "CROP_RATIOS", "GenerateForm", "Result", "Message", "Picture",
           "Row", "Controller"]

AUTO, CUSTOM = "model default", "custom"  # the aspect choices besides the named aspects
PREVIEW = 768  # px: larger pictures reach the browser scaled down (files stay full size)
CROP_DISPLAY = 384  # px: the side the zoom crops are drawn at (the browser scales them to fit)
CROP_RATIOS = (1, 2)  # the GAN-vs-refined crops: screen pixels per picture pixel


@dataclass
class GenerateForm:
    """What the Generate controls hold, as typed by a person."""

    prompt: str = ""
    model: str = ""  # a preset name (Controller.models) or what generate() accepts
    negative_prompt: str = ""
    aspect: str = AUTO  # AUTO, CUSTOM (use width/height) or a name from ASPECTS
    width: int = 512
    height: int = 512
    steps: int = 0  # 0: the preset's
    guidance: float = -1.0  # < 0: the preset's
    seed: str = "random"
    num_images: int = 1
    loras: list = field(default_factory=list)  # [(file name in the LoRA folder, weight)]
    hires: bool = False  # the hires fix: generate, upscale, img2img at the larger size
    hires_scale: float = 2.0
    hires_strength: float = 0.35
    hires_upscaler: str = HIRES_LATENT  # or any upscaler name
    refine_strength: float = 0.0  # Upscale then refines at this strength; 0: off


@dataclass
class Result:
    """One picture in the app: its source, the upscaled version (once made) and how it was made."""

    original: Any  # PIL image
    name: str
    generated: Any = None  # GeneratedImage when it came from generate()
    upscaled: Any = None
    upscale_info: Any = None  # UpscaleResult of the last upscale
    refined: Any = None  # GeneratedImage refine() made of the upscaled picture
    previews: dict = field(default_factory=dict, repr=False)  # id(picture) → (picture, PNG)

    def preview(self, picture) -> bytes:
        """The browser's copy of ``picture`` (made once: zooming re-draws only the crops)."""
        key = id(picture)
        if key not in self.previews or self.previews[key][0] is not picture:
            self.previews[key] = (picture, preview_png(picture, PREVIEW))
        return self.previews[key][1]

    @property
    def shown(self):
        if self.refined is not None:
            return self.refined.image
        return self.upscaled if self.upscaled is not None else self.original


@dataclass
class Message:
    kind: str  # "error" or "info"
    text: str
    details: str = ""  # the traceback of an unexpected error, shown folded


@dataclass
class Picture:
    caption: str
    png: bytes  # what the browser gets (a preview for large pictures)
    size: tuple[int, int]  # the real picture's


@dataclass
class Row:
    name: str
    pictures: list[Picture]  # the original, then the upscaled (and refined) versions
    crops: list[Picture]  # the same region of each (once refined: of those two), same size


class _Notes(logging.Handler):
    """Collects the library's warnings during an action (e.g. "generating 72x64 instead")."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if text not in self.lines:
            self.lines.append(text)


class Controller:
    """State and actions of the notebook app.

    ``on_change(what)`` tells the view what to redraw: "progress", "status", "message", "notes",
    "results", "loras" (the LoRA folder's files) or "busy". ``clock`` (seconds) times the jobs
    for the time-left estimate.
    """

    def __init__(self, test_mode: bool | None = None, output_dir: str | Path = "outputs", *,
                 on_change: Callable[[str], object] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        from ..upscale import list_upscalers

        self.test_mode = nb.test_mode(test_mode)
        self.defaults = nb.defaults(self.test_mode)
        self.models = nb.model_choices(self.test_mode)
        self.prompt_default = nb.demo_prompt(True) if self.test_mode else ""
        self.upscalers = [r["name"] for r in list_upscalers()]
        self.output_dir = Path(output_dir)
        self.on_change = on_change or (lambda _what: None)
        self.clock = clock
        self.results: list[Result] = []
        self.saved: list[Path] = []
        self.status = "ready"
        self.message: Message | None = None
        self.notes: list[str] = []  # the library's warnings during the last action
        self.progress = Progress()
        self.busy = False
        self.zoom: tuple[float, float, float] = (0.5, 0.35, 4)  # centre x, y (fractions), factor
        self.crop_ratio = CROP_RATIOS[0]
        self.loras: list[str] = lora_files()
        self._job: JobProgress | None = None

    # ------------------------------------------------------------ running an action
    def _run(self, doing: str, action: Callable[..., object], *args) -> bool:
        """Run ``action`` as one job: buttons locked, warnings collected, errors shown. True when
        it succeeded."""
        if self.busy:
            self._show(Message("error", f"still busy ({self.status}); wait for it to finish."))
            return False
        self.busy, self.message, self.notes, self._job = True, None, [], None
        for what in ("busy", "message", "notes"):
            self.on_change(what)
        notes, library_log = _Notes(), logging.getLogger("pipeline_lib")
        library_log.addHandler(notes)
        try:
            action(*args)
            return True
        except PipelineError as exc:  # the library's own errors already say what to do
            self._failed(f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # anything else: one line here, the traceback folded away
            self._failed(f"unexpected error while {doing}: {type(exc).__name__}: {exc}",
                         traceback.format_exc())
        finally:
            library_log.removeHandler(notes)
            self.busy, self.notes = False, notes.lines
            self.on_change("notes")
            self.on_change("busy")
        return False

    def _failed(self, text: str, details: str = "") -> None:
        if self._job is None:  # refused before any work started
            self._job = JobProgress(1, None, self.clock)
        self._show(Message("error", text, details))
        self.progress = self._job.finish(failed=True)
        self.on_change("progress")
        self._set_status("failed")  # the last signal: the message is in place by then

    def _start_job(self, parts: int, status: str) -> JobProgress:
        def update(state: Progress) -> None:
            self.progress = state
            self.on_change("progress")

        self._job = JobProgress(parts, update, self.clock)
        update(self._job.state)
        self._set_status(status)
        return self._job

    def _finish_job(self, status: str) -> None:
        """The job succeeded: the new pictures shown, the bar at 100 %, then ``status`` said (the
        last signal, so whoever waits for it finds the pictures in place)."""
        self.on_change("results")
        self._job.finish()
        self._set_status(status)

    def _reporting(self, part: int, describe: Callable[[int, int], str]) -> Callable[[int, int], None]:
        """The ``on_progress`` for part ``part`` of the job: moves the bar, says where it is."""
        on_progress = self._job.callback(part)

        def report(done: int, total: int) -> None:
            self._set_status(describe(done, max(total, done)))
            on_progress(done, total)
        return report

    def _set_status(self, text: str) -> None:
        self.status = text
        self.on_change("status")

    def _show(self, message: Message | None) -> None:
        self.message = message
        self.on_change("message")

    # ------------------------------------------------------------ reading the form
    def generate_kwargs(self, form: GenerateForm) -> dict[str, Any]:
        """What Generate passes to :func:`pipeline_lib.generate` for ``form``."""
        from ..generate import size_for_aspect

        prompt = form.prompt.strip()
        if not prompt:
            raise InvalidParameterError("the prompt is empty: describe the picture you want.")
        if form.aspect == AUTO:
            width = height = None
        elif form.aspect == CUSTOM:
            width, height = form.width, form.height
        else:
            width, height = size_for_aspect(form.aspect, form.model)
        kw: dict[str, Any] = dict(prompt=prompt, model=form.model, width=width, height=height,
                                  seed=parse_seed(form.seed), num_images=form.num_images)
        if form.negative_prompt.strip():
            kw["negative_prompt"] = form.negative_prompt
        if form.steps > 0:
            kw["steps"] = form.steps
        if form.guidance >= 0:
            kw["guidance"] = form.guidance
        if form.loras:
            kw["loras"] = [(lora_path(name), weight) for name, weight in form.loras]
        if form.hires:  # the values go as typed: generate() says what is wrong with them
            kw.update(hires_scale=form.hires_scale, hires_strength=form.hires_strength,
                      hires_upscaler=form.hires_upscaler)
        return kw

    def refine_kwargs(self, result: Result, form: GenerateForm) -> dict[str, Any]:
        """What Upscale passes to :func:`pipeline_lib.refine` for ``result`` (besides the
        picture): a generated picture's own prompt, model, LoRAs and seed; for an upload the
        form's."""
        if result.generated is not None:
            p = result.generated.params
            kw = dict(prompt=p.get("prompt", ""), model=p.get("model") or form.model,
                      seed=result.generated.seed)
            kw.update({k: p[k] for k in ("negative_prompt", "loras", "embeddings", "clip_skip")
                       if p.get(k)})
        else:
            gen = self.generate_kwargs(form)  # an upload needs a prompt to be refined
            kw = {k: gen[k] for k in ("prompt", "model", "seed", "negative_prompt", "loras")
                  if k in gen}
        if form.steps > 0:
            kw["steps"] = form.steps
        return dict(kw, strength=form.refine_strength)

    @staticmethod
    def target(text: str):
        """The upscale target typed in the form: a long side (``2048``) or ``WxH``."""
        from ..upscale.sizing import parse_size

        target = parse_size(text.strip() or None)
        if target is None:
            raise InvalidParameterError("target size is empty; give a long side (2048) or WxH "
                                        "(1536x2048).")
        return target

    # ------------------------------------------------------------ actions
    def generate(self, form: GenerateForm, target: str | None = None) -> bool:
        """Make pictures from ``form``; ``target`` (the upscale size field) is checked first, so a
        typo there fails now rather than after minutes of generation."""
        return self._run("generating", self._generate, form, target)

    def _generate(self, form: GenerateForm, target: str | None) -> None:
        from ..generate import generate
        from ..multi_gpu import usable_gpus

        kw = self.generate_kwargs(form)
        gpus = usable_gpus()
        if form.num_images > 1 and len(gpus) > 1:  # Kaggle's T4 ×2: the pictures split over both
            kw["devices"] = gpus
        if target is not None:
            self.target(target)
        self._start_job(1, f"loading {kw['model']}…")
        step = self._reporting(0, lambda done, total: f"generating with {kw['model']}: denoising "
                                                      f"step {done}/{total}")
        out = generate(**kw, progress=False, on_progress=step)
        self.results = [Result(g.image, f"{g.params.get('model', 'image')}-{g.seed}", generated=g)
                        for g in out]
        w, h = out[0].image.size
        seeds = f"{out[0].seed}" + (f"…{out[-1].seed}" if len(out) > 1 else "")
        on = f" on {' + '.join(kw['devices'])}" if "devices" in kw else ""
        self._finish_job(f"generated {len(out)} image(s) of {w}×{h}{on}, seed {seeds}")

    def upload(self, name: str, content: bytes) -> bool:
        """Take an uploaded file (its name and bytes) as the picture to upscale."""
        return self._run("reading the upload", self._upload, name, content)

    def _upload(self, name: str, content: bytes) -> None:
        from ..images import read_image, to_output

        shown_name = Path(str(name or "upload").replace("\\", "/")).name or "upload"
        # read from a file: the library then applies EXIF orientation, keeps 16-bit PNGs and
        # checks the size before decoding, exactly as for a path given in Python
        with tempfile.TemporaryDirectory(prefix="pipeline_lib-upload-") as tmp:
            path = Path(tmp) / shown_name
            path.write_bytes(bytes(content))
            try:
                arr, meta = read_image(path)
            except PipelineError as exc:  # name the upload, not the temporary file
                raise type(exc)(str(exc).replace(str(path), shown_name)) from None
        pil = as_8bit(to_output(arr, meta))  # 16-bit colour: shown and upscaled at 8 bits
        self.results = [Result(pil, Path(shown_name).stem)]
        self._start_job(1, "reading the upload")
        self._finish_job(f"uploaded {shown_name} ({pil.width}×{pil.height}); press Upscale")

    def upscale(self, model: str, target: str, form: GenerateForm | None = None) -> bool:
        """Upscale every picture with ``model`` (exactly that model: never a substitute) to
        ``target`` (``2048`` or ``WxH``); then, when ``form.refine_strength`` is not 0, refine
        each upscaled picture at that strength (:func:`pipeline_lib.refine`)."""
        return self._run("upscaling", self._upscale, model, target, form)

    def _upscale(self, model: str, target: str, form: GenerateForm | None) -> None:
        from ..upscale import upscale

        if not self.results:
            raise InvalidParameterError("nothing to upscale yet: press Generate or upload an image "
                                        "first.")
        size = self.target(target)
        form = form or GenerateForm()
        refining = form.refine_strength != 0
        if refining:  # checked before minutes of upscaling, with the library's rule and words
            check_strength(form.refine_strength, "refine_strength")
            plans = [self.refine_kwargs(r, form) for r in self.results]
        n = len(self.results)
        job = self._start_job(n * (2 if refining else 1), f"upscaling with {model}…")
        for i, r in enumerate(self.results):
            what = f"upscaling {f'picture {i + 1}/{n} ' if n > 1 else ''}with {model}"
            self._set_status(f"{what}…")
            tiles = self._reporting(i, lambda done, total, what=what: f"{what}: tile {done}/{total}")
            # a named model is never swapped: it runs (on any of its backends) or says why not
            res = upscale(r.original, model, size=size, progress=False, full_result=True,
                          on_progress=tiles)
            r.upscaled, r.upscale_info, r.refined = res.image, res, None
            job.part_done(i)
            if refining:
                self._refine(r, plans[i], n + i,
                             "refining" + (f" picture {i + 1}/{n}" if n > 1 else ""))
        last = self.results[-1].upscale_info
        self._finish_job(f"upscaled {n} picture(s) to {last.size[0]}×{last.size[1]} with "
                         f"{last.model} ({last.backend} on {last.device})"
                         + (f", refined at {form.refine_strength:g}" if refining else ""))

    def _refine(self, result: Result, kwargs: dict, part: int, what: str) -> None:
        from ..compose import refine

        self._set_status(f"{what} with {kwargs['model']}…")
        tiles = self._reporting(part, lambda done, total: f"{what}: tile {done}/{total}")
        result.refined = refine(result.upscaled, **kwargs, progress=False, on_progress=tiles)
        self._job.part_done(part)

    def save(self, folder: str | Path | None = None) -> bool:
        """Save every picture (upscaled where it was) under a free name in ``folder``."""
        return self._run("saving", self._save, folder)

    def _save(self, folder: str | Path | None) -> None:
        if not self.results:
            raise InvalidParameterError("nothing to save yet: press Generate or upload an image "
                                        "first.")
        folder = Path(str(folder).strip() if folder is not None and str(folder).strip()
                      else self.output_dir)
        paths = []
        for r in self.results:
            stem = r.name + (f"-{r.upscaled.width}x{r.upscaled.height}" if r.upscaled is not None
                             else "") + ("-refined" if r.refined is not None else "")
            paths.append(save_to_free_name(folder, stem, lambda dest, r=r: save_result(
                dest, r.shown, generated=r.generated, upscaled=r.upscale_info, refined=r.refined)))
        self.saved += paths
        self._show(Message("info", "saved: " + ", ".join(str(p) for p in paths)))
        self._set_status(f"saved {len(paths)} file(s) in {folder}")

    # ------------------------------------------------------------ showing results
    def set_zoom(self, x: float, y: float, factor: float) -> None:
        """Move the zoom window (centre as fractions of the picture, magnification)."""
        zoom_box(x, y, factor)  # checks the values
        self.zoom = (float(x), float(y), factor)
        self.on_change("results")

    def set_crop_ratio(self, ratio: int) -> None:
        """How the GAN-vs-refined crops are drawn: 1 (1:1, a screen pixel per picture pixel) or
        2 (2:1, each picture pixel as 2×2)."""
        if ratio not in CROP_RATIOS:
            raise InvalidParameterError(f"crop ratio must be one of {CROP_RATIOS} (1:1 or 2:1), "
                                        f"got {ratio!r}.")
        self.crop_ratio = int(ratio)
        self.on_change("results")

    def rows(self) -> list[Row]:
        """What the gallery shows: per result, the pictures and the same zoomed region of each;
        once refined, the GAN upscale and the refined picture cut at the same pixels, 1:1 or 2:1."""
        rows = []
        for r in self.results:
            pics = [r.original] + ([r.upscaled] if r.upscaled is not None else [])
            captions = ["original"] + ([f"upscaled with {r.upscale_info.model}"]
                                       if r.upscaled is not None else [])
            if r.refined is not None:
                pics.append(r.refined.image)
                captions.append(f"refined at {r.refined.params.get('refine_strength', 0):g}")
            shown = [Picture(f"{c}, {p.width}×{p.height}", r.preview(p), p.size)
                     for p, c in zip(pics, captions)]
            crops = self._pixel_crops(pics[1:], captions[1:]) if r.refined is not None else \
                self._zoom_crops(pics, captions)
            rows.append(Row(r.name, shown, crops))
        return rows

    def _zoom_crops(self, pics: list, captions: list[str]) -> list[Picture]:
        from ..compare import zoom_crops

        crops = zoom_crops(pics, zoom_box(*self.zoom), as_figure=False, display=CROP_DISPLAY)
        return [Picture(f"{c.split(',')[0]}, zoom ×{self.zoom[2]:g}", preview_png(z), p.size)
                for z, c, p in zip(crops, captions, pics)]

    def _pixel_crops(self, pics: list, captions: list[str]) -> list[Picture]:
        """The same whole pixels of the (same-size) GAN and refined pictures, drawn at the crop
        ratio: what the refine changed, undistorted by any scaling."""
        from ..compare import zoom_crops

        side = CROP_DISPLAY // self.crop_ratio
        box = pixel_box(pics[0].size, self.zoom[0], self.zoom[1], side)
        crops = zoom_crops(pics, box, as_figure=False,
                           display=min(side, max(pics[0].size)) * self.crop_ratio)
        return [Picture(f"{c.split(',')[0]}, crop {z.width // self.crop_ratio}×"
                        f"{z.height // self.crop_ratio} px at {self.crop_ratio}:1",
                        preview_png(z), p.size) for z, c, p in zip(crops, captions, pics)]

    # ------------------------------------------------------------ the LoRA folder
    def refresh_loras(self) -> None:
        """Read the LoRA folder's files again (after files were added there by hand)."""
        self.loras = lora_files()
        self.on_change("loras")

    def upload_lora(self, name: str, content: bytes) -> bool:
        """Save an uploaded .safetensors LoRA into the LoRA folder (never over another file)."""
        return self._run("saving the LoRA", self._upload_lora, name, content)

    def _upload_lora(self, name: str, content: bytes) -> None:
        path, new = save_lora(name, content)
        self.refresh_loras()
        self._show(Message("info", f"{'saved' if new else 'already there, unchanged'}: {path}; "
                                   f"tick {path.name} under LoRAs to use it"))
        self._set_status(f"LoRA {path.name} {'saved' if new else 'already in the folder'}")
