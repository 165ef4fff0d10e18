"""The app's ipywidgets: controls laid out to fit a 1024-px window, events wired to the controller.

Works the same on ipywidgets 7.7.1 (Colab) and 8.x: only what both offer is used, and the two
places they differ (an upload's value; tooltips) go through :func:`uploaded_files` and
:func:`set_tooltip`. Every control is an attribute (``ui.prompt``, ``ui.generate_button``, ...) so
scripts and tests can drive the app: set ``.value``, call ``.click()``. CSS classes ``pl-*`` name
the parts a browser test looks for.
"""
from __future__ import annotations

import io
import html
from collections.abc import Mapping
from pathlib import Path

import ipywidgets as w

from ..generate.adapters import lora_dir
from ..generate.job import HIRES_LATENT
from ..generate.presets import ASPECTS
from .controller import AUTO, CROP_RATIOS, CUSTOM, Controller, GenerateForm, Row

__all__ = ["App", "uploaded_files", "set_tooltip"]

_FIELD = {"description_width": "150px"}  # fits "guidance (<0: preset)" at the default font
_CELL = "repeat(auto-fill, minmax(220px, 1fr))"  # 4 pictures a row at 1024 px, more when wider
_CAPTION = "<div style='font-size:12px;line-height:1.35;white-space:normal;overflow-wrap:anywhere'>{}</div>"
# picture captions take two lines, so the pictures of a row start at the same height
_PICTURE_CAPTION = _CAPTION.replace("'>", ";min-height:2.7em'>", 1)


def uploaded_files(value) -> list[tuple[str, bytes]]:
    """(name, content) of each file in a ``FileUpload`` value. ipywidgets 8 gives a tuple of dicts
    with ``name`` and ``content``; 7.x a dict name → ``{"metadata": {...}, "content": bytes}``."""
    if not value:
        return []
    if isinstance(value, Mapping):
        return [(item.get("metadata", {}).get("name", name), bytes(item["content"]))
                for name, item in value.items()]
    return [(item.get("name") or "upload", bytes(item["content"])) for item in value]


def set_tooltip(widget, text: str) -> None:
    """The hover text of a control: ``tooltip`` on ipywidgets 8 (and 7's buttons),
    ``description_tooltip`` on 7's other controls."""
    name = "tooltip" if widget.has_trait("tooltip") else "description_tooltip"
    setattr(widget, name, text)


def _field(widget, tooltip: str | None = None):
    # the grid cell's width (side margins off: 100 % plus margins would stick out)
    widget.layout = w.Layout(width="100%", min_width="0", margin="2px 0")
    if tooltip:
        set_tooltip(widget, tooltip)
    return widget


def _button(text: str, style: str, icon: str, tooltip: str, css: str) -> w.Button:
    b = w.Button(description=text, button_style=style, icon=icon,
                 layout=w.Layout(width="auto", min_width="118px", flex="0 0 auto"))
    set_tooltip(b, tooltip)
    b.add_class(css)
    return b


def _grid(children, columns: str = "repeat(auto-fill, minmax(300px, 1fr))") -> w.GridBox:
    return w.GridBox(children, layout=w.Layout(grid_template_columns=columns, grid_gap="4px 16px",
                                               width="100%"))


def _wrap_row(children) -> w.HBox:
    return w.HBox(children, layout=w.Layout(flex_flow="row wrap", align_items="center",
                                            width="100%"))


def _close_tree(widget) -> None:
    for child in getattr(widget, "children", ()):
        _close_tree(child)
    widget.close()


class App:
    """The widgets app. Build it with :func:`pipeline_lib.app`; display it in a notebook."""

    def __init__(self, test_mode: bool | None = None, output_dir: str | Path = "outputs"):
        self.controller = Controller(test_mode, output_dir, on_change=self._refresh)
        self._shape: list[tuple] = []
        self._build_generate_controls()
        self._build_photoreal_controls()
        self._build_lora_controls()
        self._build_upscale_controls(output_dir)
        self._build_feedback()
        self._wire()
        self.widget = w.VBox([
            self.prompt, self.negative_prompt,
            _grid([self.model, self.aspect, self.width, self.height, self.steps, self.guidance,
                   self.seed, self.num_images, self.upscaler, self.target_size]),
            _grid([self.hires, self.hires_scale, self.hires_strength, self.hires_upscaler,
                   self.refine_strength]),
            self.lora_panel,
            _wrap_row([*self.buttons, self.upload, self.output_dir]),
            w.HBox([self.progress, self.progress_text], layout=w.Layout(width="100%")),
            self.status, self.message, self.notes, self.details_box,
            _wrap_row([self.zoom_x, self.zoom_y, self.zoom, self.crop_ratio]), self.gallery,
        ], layout=w.Layout(width="100%", max_width="1600px"))
        self.widget.add_class("pl-app")

    # ------------------------------------------------------------ building
    def _build_generate_controls(self) -> None:
        c, d = self.controller, self.controller.defaults
        self.prompt = w.Textarea(value=c.prompt_default, style=_FIELD,
                                 placeholder="describe the photo", description="prompt",
                                 layout=w.Layout(width="100%", height="64px", margin="2px 0"))
        self.negative_prompt = w.Textarea(placeholder="(empty: the preset's own)", style=_FIELD,
                                          description="negative",
                                          layout=w.Layout(width="100%", margin="2px 0"))
        self.model = _field(w.Dropdown(options=c.models, value=c.models[0], description="model",
                                       style=_FIELD))
        self.aspect = _field(w.Dropdown(options=[AUTO, *ASPECTS, CUSTOM], description="aspect",
                                        value=AUTO if d["size"] is None else CUSTOM, style=_FIELD))
        size = d["size"] or (512, 512)
        self.width = _field(w.IntText(value=size[0], description="width", style=_FIELD),
                            "rounded to the model's multiple (8; SDXL 64); the app says so")
        self.height = _field(w.IntText(value=size[1], description="height", style=_FIELD))
        self.steps = _field(w.IntText(value=d["steps"] or 0, description="steps (0: preset)",
                                      style=_FIELD), "denoising steps; 0 uses the preset's own")
        self.guidance = _field(w.FloatText(value=-1.0, description="guidance (<0: preset)",
                                           style=_FIELD), "CFG scale; below 0 uses the preset's own")
        self.seed = _field(w.Text(value="random", description="seed", style=_FIELD,
                                  placeholder="random or a number"))
        self.num_images = _field(w.BoundedIntText(value=1, min=1, max=8, description="images",
                                                  style=_FIELD))

    def _build_photoreal_controls(self) -> None:
        """Hires fix and refine: the names and meaning of generate()'s and refine()'s arguments."""
        f = GenerateForm()  # the form's defaults: generate()'s own
        self.hires = _field(w.Checkbox(value=f.hires, description="hires fix", style=_FIELD),
                            "generate at the model's size, upscale, then img2img at the larger size")
        self.hires_scale = _field(w.FloatText(value=f.hires_scale, description="hires scale",
                                              style=_FIELD), "output size = this × the base size")
        self.hires_strength = _field(w.FloatText(value=f.hires_strength, style=_FIELD,
                                                 description="hires strength"),
                                     "denoising strength of the hires pass: 0 < s ≤ 1")
        self.hires_upscaler = _field(w.Dropdown(options=[HIRES_LATENT, *self.controller.upscalers],
                                                value=f.hires_upscaler, style=_FIELD,
                                                description="hires upscaler"),
                                     "latent: upscale the latents; or an upscaler model")
        self.refine_strength = _field(w.FloatText(value=f.refine_strength, style=_FIELD,
                                                  description="refine (0: off)"),
                                      "Upscale then repaints detail tile by tile at this strength "
                                      "(0.2-0.4; 0 = off)")
        for widget, css in ((self.hires, "pl-hires"), (self.hires_scale, "pl-hires-scale"),
                            (self.hires_strength, "pl-hires-strength"),
                            (self.hires_upscaler, "pl-hires-upscaler"),
                            (self.refine_strength, "pl-refine")):
            widget.add_class(css)

    def _build_lora_controls(self) -> None:
        """One row per file in the LoRA folder (tick + weight) and an upload for new ones."""
        self.lora_rows: dict[str, tuple[w.Checkbox, w.FloatText]] = {}
        self.lora_grid = _grid([], "repeat(auto-fill, minmax(300px, 1fr))")
        self.lora_upload = w.FileUpload(accept=".safetensors", multiple=False, icon="upload",
                                        description="Upload LoRA",
                                        layout=w.Layout(width="auto", min_width="150px"))
        set_tooltip(self.lora_upload, "a LoRA .safetensors file: saved into the LoRA folder "
                                      "(never over a different file of that name)")
        self.lora_folder = w.HTML(layout=w.Layout(flex="1 1 300px", min_width="0"))
        self.lora_panel = w.VBox([_wrap_row([self.lora_folder, self.lora_upload]), self.lora_grid],
                                 layout=w.Layout(width="100%"))
        for widget, css in ((self.lora_panel, "pl-loras"), (self.lora_upload, "pl-lora-upload")):
            widget.add_class(css)
        self._fill_loras()

    def _fill_loras(self) -> None:
        """Rows for the controller's LoRA list; rows of files still there keep their values."""
        rows = {}
        for name in self.controller.loras:
            rows[name] = self.lora_rows.get(name) or (
                w.Checkbox(value=False, description=name, indent=False,
                           layout=w.Layout(flex="1 1 auto", width="auto", min_width="0")),
                w.FloatText(value=1.0, layout=w.Layout(width="72px", flex="0 0 auto")))
            set_tooltip(rows[name][0], name)  # a long name may be cut short in its row
            set_tooltip(rows[name][1], f"weight of {name} (usually 0..1.5)")
        old_rows, old_boxes, self.lora_rows = self.lora_rows, self.lora_grid.children, rows
        self.lora_grid.children = [w.HBox(list(row), layout=w.Layout(min_width="0", overflow="hidden"))
                                   for row in rows.values()]
        for box in old_boxes:  # the containers only: the controls of kept rows live on
            box.close()
        for control in (c for name, row in old_rows.items() if name not in rows for c in row):
            control.close()
        where = html.escape(str(lora_dir()), quote=False)
        self.lora_folder.value = _CAPTION.format(
            f"<b>LoRAs</b> (tick to use, with a weight) from {where}" if rows else
            f"<b>LoRAs</b>: none in {where} yet; upload a .safetensors file or put files there")

    def _build_upscale_controls(self, output_dir) -> None:
        c = self.controller
        self.upscaler = _field(w.Dropdown(options=c.upscalers, value=c.defaults["upscaler"],
                                          description="upscaler", style=_FIELD),
                               "this model exactly: if it cannot be loaded, the app says why")
        self.target_size = _field(w.Text(value=str(c.defaults["target_size"]), style=_FIELD,
                                         description="target size",
                                         placeholder="2048 (long side) or 1536x2048"))
        # beside the buttons, taking the rest of their row: folder paths are long
        self.output_dir = w.Text(value=str(output_dir), description="save to", style=_FIELD,
                                 layout=w.Layout(flex="1 1 360px", width="auto", min_width="300px"))
        for widget, css in ((self.prompt, "pl-prompt"), (self.aspect, "pl-aspect"),
                            (self.width, "pl-width"), (self.height, "pl-height"),
                            (self.upscaler, "pl-upscaler"), (self.target_size, "pl-target"),
                            (self.output_dir, "pl-output-dir")):
            widget.add_class(css)
        self.upload = w.FileUpload(accept="image/*", multiple=False, description="Upload image",
                                   icon="upload", layout=w.Layout(width="auto", min_width="150px"))
        set_tooltip(self.upload, "a PNG, JPEG or WebP picture to upscale (replaces the pictures shown)")
        self.upload.add_class("pl-upload")
        self.generate_button = _button("Generate", "primary", "magic",
                                       "make pictures from the prompt", "pl-generate")
        self.upscale_button = _button("Upscale", "info", "expand",
                                      "upscale the pictures shown to the target size", "pl-upscale")
        self.save_button = _button("Save", "success", "save",
                                   "save the pictures shown (never overwrites)", "pl-save")
        self.buttons = (self.generate_button, self.upscale_button, self.save_button)

    def _build_feedback(self) -> None:
        self.progress = w.IntProgress(value=0, min=0, max=100,
                                      layout=w.Layout(flex="1 1 auto", width="auto"))
        self.progress_text = w.Label(value="", layout=w.Layout(flex="0 0 auto", min_width="170px"))
        self.status = w.HTML(value=_CAPTION.format("ready"), layout=w.Layout(width="100%"))
        self.message = w.HTML(value="", layout=w.Layout(width="100%"))
        self.notes = w.HTML(value="", layout=w.Layout(width="100%"))
        self.details = w.HTML(value="")  # the traceback of an unexpected error, folded away
        self.details_box = w.Accordion(children=[self.details], selected_index=None,
                                       layout=w.Layout(display="none", width="100%"))
        self.details_box.set_title(0, "details")  # 7.7.1 has no `titles` argument
        zoom = dict(layout=w.Layout(width="auto", flex="1 1 260px", min_width="260px"),
                    continuous_update=False)
        x, y, factor = self.controller.zoom
        self.zoom_x = w.FloatSlider(value=x, min=0, max=1, step=0.01, description="zoom x", **zoom)
        self.zoom_y = w.FloatSlider(value=y, min=0, max=1, step=0.01, description="zoom y", **zoom)
        self.zoom = w.IntSlider(value=factor, min=2, max=16, description="zoom ×", **zoom)
        self.crop_ratio = w.Dropdown(options=[(f"{r}:1", r) for r in CROP_RATIOS],
                                     value=self.controller.crop_ratio, description="refined crop",
                                     style={"description_width": "initial"},
                                     layout=w.Layout(width="auto", flex="0 1 220px", min_width="200px"))
        set_tooltip(self.crop_ratio, "after a refine: the same pixels of the upscaled and the refined "
                                     "picture, drawn 1:1 or 2:1")
        self.gallery = w.VBox(layout=w.Layout(width="100%"))
        for widget, css in ((self.progress, "pl-progress"), (self.progress_text, "pl-progress-text"),
                            (self.status, "pl-status"), (self.message, "pl-message"),
                            (self.notes, "pl-notes"), (self.gallery, "pl-gallery")):
            widget.add_class(css)

    def _wire(self) -> None:
        c = self.controller
        self.generate_button.on_click(lambda _b: c.generate(self.form(), self.target_size.value))
        self.upscale_button.on_click(lambda _b: c.upscale(self.upscaler.value, self.target_size.value,
                                                          self.form()))
        self.save_button.on_click(lambda _b: c.save(self.output_dir.value))
        self.upload.observe(self._on_upload, names="value")
        self.lora_upload.observe(self._on_lora_upload, names="value")
        self.crop_ratio.observe(lambda change: c.set_crop_ratio(change["new"]), names="value")
        self.hires.observe(lambda _c: self._sync_hires_fields(), names="value")
        self._sync_hires_fields()
        for s in (self.zoom_x, self.zoom_y, self.zoom):
            s.observe(lambda _change: c.set_zoom(self.zoom_x.value, self.zoom_y.value,
                                                 self.zoom.value), names="value")
        self.aspect.observe(lambda _c: self._sync_size_fields(), names="value")
        self._sync_size_fields()

    # ------------------------------------------------------------ reading the controls
    def form(self) -> GenerateForm:
        """The Generate controls' values."""
        return GenerateForm(self.prompt.value, self.model.value, self.negative_prompt.value,
                            self.aspect.value, self.width.value, self.height.value, self.steps.value,
                            self.guidance.value, self.seed.value, self.num_images.value,
                            loras=[(name, weight.value) for name, (tick, weight)
                                   in self.lora_rows.items() if tick.value],
                            hires=self.hires.value, hires_scale=self.hires_scale.value,
                            hires_strength=self.hires_strength.value,
                            hires_upscaler=self.hires_upscaler.value,
                            refine_strength=self.refine_strength.value)

    def generate_kwargs(self) -> dict:
        """What Generate passes to :func:`pipeline_lib.generate`, read from the controls."""
        return self.controller.generate_kwargs(self.form())

    # the change's value, not the widget's: the value handed over is what is read, in either
    # ipywidgets shape (pipeline_lib.testing.simulate_upload hands 7.x's to 8.x and back)
    def _on_upload(self, change) -> None:
        files = uploaded_files(change["new"])
        if files:
            self.controller.upload(*files[0])

    def _on_lora_upload(self, change) -> None:
        files = uploaded_files(change["new"])
        if files:
            self.controller.upload_lora(*files[0])

    def _sync_size_fields(self) -> None:
        self.width.disabled = self.height.disabled = self.aspect.value != CUSTOM

    def _sync_hires_fields(self) -> None:
        for field in (self.hires_scale, self.hires_strength, self.hires_upscaler):
            field.disabled = not self.hires.value

    @property
    def results(self):
        return self.controller.results

    @property
    def saved(self):
        return self.controller.saved

    # ------------------------------------------------------------ showing the controller's state
    def _refresh(self, what: str) -> None:
        c = self.controller
        if what == "progress":
            p = c.progress
            self.progress.value = p.percent
            self.progress.bar_style = "danger" if p.failed else "success" if p.finished else ""
            self.progress_text.value = p.text()
        elif what == "status":
            self.status.value = _CAPTION.format(html.escape(c.status, quote=False))
        elif what == "message":
            self._show_message()
        elif what == "notes":
            self.notes.value = "".join(
                f"<div style='color:#7a4b00;border-left:4px solid #d08c00;padding:2px 8px;"
                f"white-space:normal'>note: {html.escape(n, quote=False)}</div>" for n in c.notes)
        elif what == "busy":
            for b in (*self.buttons, self.upload, self.lora_upload):
                b.disabled = c.busy
        elif what == "loras":
            self._fill_loras()
        elif what == "results":
            self._render()

    def _show_message(self) -> None:
        m = self.controller.message
        if m is None:
            self.message.value, self.details.value = "", ""
            self.details_box.layout.display = "none"
            return
        text = html.escape(m.text, quote=False)
        self.message.value = (
            f"<div style='color:#a00;border-left:4px solid #a00;padding:4px 8px;white-space:normal'>"
            f"⚠ {text}</div>" if m.kind == "error" else
            f"<div style='color:#060;white-space:normal;overflow-wrap:anywhere'>{text}</div>")
        if m.details:
            self.details.value = f"<pre style='font-size:11px'>{html.escape(m.details, quote=False)}</pre>"
            self.details_box.layout.display = ""
            self.details_box.selected_index = None

    def _render(self) -> None:
        """Show the controller's rows; when only the pictures changed (zoom), swap them in place."""
        rows = self.controller.rows()
        shape = [(r.name, len(r.pictures), len(r.crops)) for r in rows]
        if shape != self._shape:
            self._shape, old = shape, self.gallery.children
            self.gallery.children = [self._row(r) for r in rows]
            for row in old:  # free the kernel's copies of the pictures no longer shown
                _close_tree(row)
            return
        for row, box in zip(rows, self.gallery.children):
            for pic, cell in zip(row.pictures + row.crops, box.children[1].children):
                cell.children[0].value = _PICTURE_CAPTION.format(html.escape(pic.caption, quote=False))
                cell.children[1].value = pic.png

    @staticmethod
    def _row(row: Row) -> w.VBox:
        cells = []
        for pic in row.pictures + row.crops:
            img = w.Image(value=pic.png, format="png", layout=w.Layout(
                width="100%", height="auto", object_fit="contain", margin="0"))
            cell = w.VBox([w.HTML(_PICTURE_CAPTION.format(html.escape(pic.caption, quote=False))), img],
                          layout=w.Layout(min_width="0", overflow="hidden"))
            cell.add_class("pl-picture")
            cells.append(cell)
        return w.VBox([w.HTML(f"<b>{html.escape(row.name, quote=False)}</b>"), _grid(cells, _CELL)],
                      layout=w.Layout(width="100%"))

    def shown_images(self) -> list:
        """The full-view pictures now in the gallery (decoded from what the browser receives)."""
        from PIL import Image

        out = []
        for (_name, n_pictures, _n_crops), row in zip(self._shape, self.gallery.children):
            for cell in row.children[1].children[:n_pictures]:
                out.append(Image.open(io.BytesIO(cell.children[1].value)))
        return out

    def shown_crops(self) -> list:
        """The zoom crops now in the gallery, per row."""
        from PIL import Image

        return [[Image.open(io.BytesIO(cell.children[1].value))
                 for cell in row.children[1].children[n_pictures:]]
                for (_name, n_pictures, _n), row in zip(self._shape, self.gallery.children)]

    # ------------------------------------------------------------ display
    def _repr_mimebundle_(self, **kwargs):
        bundle = getattr(self.widget, "_repr_mimebundle_", None)  # 8.x; 7.x displays itself
        return bundle(**kwargs) if bundle is not None else None

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)


def app(test_mode: bool | None = None, output_dir: str | Path = "outputs") -> App:
    """Build the notebook app. ``test_mode`` (default: ``PIPELINE_LIB_NOTEBOOK_TEST``) offers the
    tiny offline pipelines and small sizes instead of the real models.

    >>> ui = app()                        # doctest: +SKIP
    >>> ui.prompt.value = "a red fox in snow"; ui.generate_button.click()   # doctest: +SKIP
    """
    return App(test_mode=test_mode, output_dir=output_dir)
