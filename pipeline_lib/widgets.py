"""The notebook app (ipywidgets): prompt → images → upscaled, side by side, saved with metadata.

>>> import pipeline_lib as pl
>>> ui = pl.app()          # doctest: +SKIP
>>> ui                     # last expression in a cell: shows the app

Every control is an attribute (``ui.prompt``, ``ui.generate_button``, ...) so scripts and tests
can drive the app: set ``.value``, call ``.click()``. Results live in ``ui.results``. Errors appear
as one readable line in ``ui.message`` (details folded away) and the app keeps working.
"""
from __future__ import annotations

import io
import logging
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from . import notebook as nb
from .errors import ImageReadError, InvalidParameterError, OutputExistsError, PipelineError

log = logging.getLogger(__name__)

__all__ = ["App", "app", "Result"]

_AUTO, _CUSTOM = "model default", "custom"


@dataclass
class Result:
    """One picture in the app: its source, the upscaled version (once made) and how it was made."""

    original: Image.Image
    name: str
    generated: Any = None  # GeneratedImage when it came from generate()
    upscaled: Image.Image | None = None
    upscale_info: Any = None  # UpscaleResult of the last upscale

    @property
    def shown(self) -> Image.Image:
        return self.upscaled if self.upscaled is not None else self.original


def _png(img: Image.Image, max_side: int | None = None) -> bytes:
    if max_side and max(img.size) > max_side:  # the browser gets a preview, the file stays full size
        img = img.copy()
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


class App:
    """The widgets app. Build it with :func:`app`; display it (or ``app.widget``) in a notebook."""

    PREVIEW = 768  # px: larger results are shown scaled down (saved at full size)

    def __init__(self, test_mode: bool | None = None, output_dir: str | Path = "outputs"):
        import ipywidgets as w

        from .generate.presets import ASPECTS
        from .upscale import list_upscalers

        self.test_mode = nb.test_mode(test_mode)
        d = nb.defaults(self.test_mode)
        models = nb.model_choices(self.test_mode)
        self.results: list[Result] = []
        self.saved: list[Path] = []
        lay = w.Layout(width="100%")
        style = {"description_width": "110px"}

        self.prompt = w.Textarea(value="" if not self.test_mode else nb.demo_prompt(True),
                                 placeholder="describe the photo", description="prompt",
                                 layout=w.Layout(width="100%", height="64px"), style=style)
        self.negative_prompt = w.Textarea(placeholder="(empty: the preset's own)",
                                          description="negative", layout=lay, style=style)
        self.model = w.Dropdown(options=models, value=models[0], description="model", style=style)
        self.aspect = w.Dropdown(options=[_AUTO, *ASPECTS, _CUSTOM], value=_AUTO if d["size"] is None
                                 else _CUSTOM, description="aspect", style=style)
        size = d["size"] or (512, 512)
        self.width = w.IntText(value=size[0], description="width", style=style)
        self.height = w.IntText(value=size[1], description="height", style=style)
        self.steps = w.IntText(value=d["steps"] or 0, description="steps (0: preset)", style=style)
        self.guidance = w.FloatText(value=-1.0, description="guidance (<0: preset)", style=style)
        self.seed = w.Text(value="random", description="seed", placeholder="random or a number",
                           style=style)
        self.num_images = w.BoundedIntText(value=1, min=1, max=8, description="images", style=style)
        ups = [r["name"] for r in list_upscalers()]
        self.upscaler = w.Dropdown(options=ups, value=d["upscaler"], description="upscaler", style=style)
        self.target_size = w.Text(value=str(d["target_size"]), description="target size",
                                  placeholder="2048 (long side) or 1536x2048", style=style)
        self.output_dir = w.Text(value=str(output_dir), description="save to", style=style)
        self.upload = w.FileUpload(accept="image/*", multiple=False, description="upload image")
        self.generate_button = w.Button(description="Generate", button_style="primary", icon="magic")
        self.upscale_button = w.Button(description="Upscale", button_style="info", icon="expand")
        self.save_button = w.Button(description="Save", button_style="success", icon="save")
        self.progress = w.IntProgress(value=0, min=0, max=1, description="", layout=w.Layout(width="60%"))
        self.status = w.Label(value="ready")
        self.message = w.HTML(value="")
        self.details = w.HTML(value="")  # the traceback of an unexpected error, folded away
        self.details_box = w.Accordion(children=[self.details], titles=("details",),
                                       layout=w.Layout(display="none"))
        self.zoom_x = w.FloatSlider(value=0.5, min=0, max=1, step=0.01, description="zoom x")
        self.zoom_y = w.FloatSlider(value=0.35, min=0, max=1, step=0.01, description="zoom y")
        self.zoom = w.IntSlider(value=4, min=2, max=16, description="zoom ×")
        self.log = w.Output()  # the library's tqdm.auto bars (per step / per tile) draw here, live
        self.gallery = w.VBox()

        self.generate_button.on_click(self._guard(self._on_generate, "generating"))
        self.upscale_button.on_click(self._guard(self._on_upscale, "upscaling"))
        self.save_button.on_click(self._guard(self._on_save, "saving"))
        self.upload.observe(self._guard(self._on_upload, "reading the upload"), names="value")
        for s in (self.zoom_x, self.zoom_y, self.zoom):
            s.observe(lambda _change: self._render(), names="value")
        self.aspect.observe(lambda _c: self._sync_size_fields(), names="value")
        self._sync_size_fields()

        gen = w.VBox([self.prompt, self.negative_prompt,
                      w.HBox([self.model, self.aspect]), w.HBox([self.width, self.height]),
                      w.HBox([self.steps, self.guidance]), w.HBox([self.seed, self.num_images])])
        up = w.VBox([w.HBox([self.upscaler, self.target_size]), self.upload])
        self.buttons = (self.generate_button, self.upscale_button, self.save_button)
        self.widget = w.VBox([
            gen, up, w.HBox([*self.buttons, self.output_dir]),
            w.HBox([self.progress, self.status]), self.message, self.details_box, self.log,
            w.HBox([self.zoom_x, self.zoom_y, self.zoom]), self.gallery])

    # -------------------------------------------------------------- display
    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    # -------------------------------------------------------------- plumbing
    def _sync_size_fields(self) -> None:
        custom = self.aspect.value == _CUSTOM
        self.width.disabled = self.height.disabled = not custom

    def _guard(self, fn, doing: str):
        """Run a handler with the buttons locked; turn any failure into a readable message."""

        def handler(*args):
            for b in self.buttons:
                b.disabled = True
            self.message.value = ""
            self.details.value = ""
            self.details_box.layout.display = "none"
            try:
                fn(*args)
            except PipelineError as exc:  # our own errors already say what to do
                self._error(f"{type(exc).__name__}: {exc}")
            except Exception as exc:  # anything else: one line here, the traceback folded away
                log.exception("app: error while %s", doing)
                self._error(f"unexpected error while {doing}: {type(exc).__name__}: {exc}",
                            traceback.format_exc())
            finally:
                for b in self.buttons:
                    b.disabled = False
        return handler

    def _error(self, text: str, tb: str | None = None) -> None:
        import html

        self.status.value = "failed"
        self.progress.bar_style = "danger"
        self.message.value = (f"<div style='color:#a00;border-left:4px solid #a00;padding:4px 8px'>"
                              f"⚠ {html.escape(text, quote=False)}</div>")
        if tb:
            self.details.value = f"<pre style='font-size:11px'>{html.escape(tb, quote=False)}</pre>"
            self.details_box.layout.display = ""
            self.details_box.selected_index = None

    def _step(self, text: str, value: int | None = None, total: int | None = None) -> None:
        if total is not None:
            self.progress.max, self.progress.value, self.progress.bar_style = max(total, 1), 0, ""
        if value is not None:
            self.progress.value = value
        self.status.value = text

    def _info(self, text: str) -> None:
        self.message.value = f"<div style='color:#060'>{text}</div>"

    # -------------------------------------------------------------- reading the controls
    def _seed(self) -> int | None:
        text = self.seed.value.strip().lower()
        if text in ("", "random", "-1"):
            return None
        try:
            return int(text)
        except ValueError:
            raise InvalidParameterError(f"seed must be 'random' or a whole number, got {self.seed.value!r}.") from None

    def _size(self) -> tuple[int | None, int | None]:
        from .generate import size_for_aspect

        if self.aspect.value == _AUTO:
            return None, None
        if self.aspect.value == _CUSTOM:
            return self.width.value, self.height.value
        return size_for_aspect(self.aspect.value, self.model.value)

    def _target(self):
        from .upscale.sizing import parse_size

        target = parse_size(self.target_size.value.strip() or None)
        if target is None:
            raise InvalidParameterError("target size is empty; give a long side (2048) or WxH (1536x2048).")
        return target

    def generate_kwargs(self) -> dict[str, Any]:
        """What Generate passes to :func:`pipeline_lib.generate`, read from the controls."""
        prompt = self.prompt.value.strip()
        if not prompt:
            raise InvalidParameterError("the prompt is empty: describe the picture you want.")
        width, height = self._size()
        kw: dict[str, Any] = dict(model=self.model.value, width=width, height=height,
                                  seed=self._seed(), num_images=self.num_images.value)
        if self.negative_prompt.value.strip():
            kw["negative_prompt"] = self.negative_prompt.value
        if self.steps.value > 0:
            kw["steps"] = self.steps.value
        if self.guidance.value >= 0:
            kw["guidance"] = self.guidance.value
        return {"prompt": prompt, **kw}

    # -------------------------------------------------------------- actions
    def _on_generate(self, _button=None) -> None:
        from .generate import generate

        kw = self.generate_kwargs()
        self._target()  # a bad target size fails now, not after minutes of generation
        self._step(f"generating {kw['num_images']} image(s) with {kw['model']}…", 0, 1)
        self.log.clear_output()
        with self.log:
            out = generate(**kw, progress=True, on_progress=lambda done, total: self._step(
                f"denoising step {done}/{total}…", done, total if done == 1 else None))
        self.results = [Result(g.image, f"{g.params.get('model', 'image')}-{g.seed}", generated=g)
                        for g in out]
        self._step(f"generated {len(out)} image(s), seed {out[0].seed}"
                   f"{'…' + str(out[-1].seed) if len(out) > 1 else ''}", self.progress.max)
        self._render()

    def _on_upload(self, change=None) -> None:
        from .images import read_image, to_output

        files = self.upload.value
        if not files:
            return
        f = files[0]
        name = Path(f.get("name") or "upload").stem
        try:
            with Image.open(io.BytesIO(bytes(f["content"]))) as img:
                img.load()
                arr, meta = read_image(img)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise ImageReadError(f"{f.get('name', 'the upload')} is not an image Pillow can read "
                                 f"({type(exc).__name__}); upload a PNG, JPEG or WebP.") from None
        pil = to_output(arr, meta)
        if not isinstance(pil, Image.Image):  # 16-bit colour: show and upscale it at 8 bits
            pil = Image.fromarray((arr >> 8).astype("uint8"))
        self.results = [Result(pil, name)]
        self._step(f"uploaded {f.get('name')} ({pil.width}×{pil.height}); press Upscale", 1, 1)
        self._render()

    def _on_upscale(self, _button=None) -> None:
        from .upscale import upscale

        if not self.results:
            raise InvalidParameterError("nothing to upscale yet: press Generate or upload an image first.")
        target = self._target()
        self._step(f"upscaling with {self.upscaler.value}…", 0, len(self.results))
        self.log.clear_output()
        for i, r in enumerate(self.results):
            with self.log:
                res = upscale(r.original, self.upscaler.value, size=target, progress=True,
                              full_result=True)
            r.upscaled, r.upscale_info = res.image, res
            self._step(f"upscaled {i + 1}/{len(self.results)} to {res.size[0]}×{res.size[1]} with "
                       f"{res.model} ({res.backend}, {res.seconds:.1f}s)", i + 1)
        self._render()

    def _on_save(self, _button=None) -> None:
        if not self.results:
            raise InvalidParameterError("nothing to save yet: press Generate or upload an image first.")
        folder = Path(self.output_dir.value.strip() or "outputs")
        paths = [self._save_one(r, folder) for r in self.results]
        self.saved += paths
        self._step(f"saved {len(paths)} file(s)", self.progress.max)
        self._info("saved: " + ", ".join(str(p) for p in paths))

    def _save_one(self, r: Result, folder: Path) -> Path:
        from .generate import GeneratedImage
        from .images import save_image

        stem = r.name + (f"-{r.upscaled.width}x{r.upscaled.height}" if r.upscaled is not None else "")
        for n in range(10_000):  # next free name; never overwrite (OutputExistsError on a race)
            path = folder / (f"{stem}.png" if n == 0 else f"{stem}-{n}.png")
            if path.exists():
                continue
            try:
                if r.generated is not None:
                    params = dict(r.generated.params)
                    if r.upscale_info is not None:
                        res = r.upscale_info
                        params.update(upscaler=res.model, upscale_by=float(res.scale),
                                      upscale_size=f"{res.size[0]}x{res.size[1]}")
                    return GeneratedImage(r.shown, r.generated.seed, params).save(path)
                meta = r.upscale_info.as_metadata() if r.upscale_info is not None else None
                return save_image(r.shown, path, metadata=meta)
            except OutputExistsError:
                continue
        raise OutputExistsError(f"{folder}: no free name for {stem}.png; clean the folder up.")

    # -------------------------------------------------------------- showing results
    def _zoom_box(self) -> tuple[float, float, float, float]:
        half = 0.5 / self.zoom.value
        cx = min(max(self.zoom_x.value, half), 1 - half)
        cy = min(max(self.zoom_y.value, half), 1 - half)
        return cx - half, cy - half, cx + half, cy + half

    def _render(self) -> None:
        import ipywidgets as w

        from .compare import zoom_crops

        rows = []
        box = self._zoom_box()
        for r in self.results:
            pics = [r.original] + ([r.upscaled] if r.upscaled is not None else [])
            labels = ["original"] + ([f"upscaled ({r.upscale_info.model})"] if r.upscaled is not None else [])
            crops = zoom_crops(pics, box, as_figure=False, display=256)
            cells = []
            for pic, label in zip(pics, labels):
                cells.append(w.VBox([w.Label(f"{label}: {pic.width}×{pic.height}"),
                                     w.Image(value=_png(pic, self.PREVIEW), format="png",
                                             layout=w.Layout(max_width="384px"))]))
            cells.append(w.VBox([w.Label(f"zoom ×{self.zoom.value} (same region)"),
                                 w.HBox([w.Image(value=_png(c), format="png") for c in crops])]))
            rows.append(w.VBox([w.HTML(f"<b>{r.name}</b>"), w.HBox(cells)]))
        self.gallery.children = rows

    def shown_images(self) -> list[Image.Image]:
        """The full-view pictures now in the gallery (decoded from what the browser receives)."""
        out = []
        for row in self.gallery.children:
            for cell in row.children[1].children[:-1]:
                out.append(Image.open(io.BytesIO(cell.children[1].value)))
        return out


def app(test_mode: bool | None = None, output_dir: str | Path = "outputs") -> App:
    """Build the notebook app. ``test_mode`` (default: ``PIPELINE_LIB_NOTEBOOK_TEST``) offers the
    tiny offline pipelines and small sizes instead of the real models.

    >>> ui = app()                        # doctest: +SKIP
    >>> ui.prompt.value = "a red fox in snow"; ui.generate_button.click()   # doctest: +SKIP
    """
    return App(test_mode=test_mode, output_dir=output_dir)
