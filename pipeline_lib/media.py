"""Upscale files of any kind: still images, animated GIF/WebP/APNG, and videos (PyAV).

>>> from pipeline_lib import upscale_file
>>> upscale_file("clip.gif", "clip_x2.gif", model="realesr-animevideov3", scale=2)  # doctest: +SKIP
PosixPath('clip_x2.gif')

Every frame goes through :func:`pipeline_lib.upscale` with the same (cached) model; one progress
bar counts frames. Outputs are written atomically and never replace an existing file unless
``overwrite=True``. Of a source's text metadata only the generation parameters are carried over
(:func:`pipeline_lib.metadata.carried_over`).
"""
from __future__ import annotations

import dataclasses
import io
import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageSequence, UnidentifiedImageError

from .errors import (BackendUnavailableError, ImageReadError, ImageTooLargeError,
                     InvalidParameterError, PipelineError)
from .images import max_input_pixels, save_image
from .metadata import carried_over
from .outputs import (ANIMATED_SUFFIXES, VIDEO_SUFFIXES, atomic_output, atomic_write,
                      refuse_existing)
from .upscale import UpscaleResult, upscale
from .upscale.sizing import max_output_pixels

__all__ = ["media_kind", "upscale_file", "upscale_media"]

log = logging.getLogger(__name__)

_ANIM_FORMATS = {".gif": "GIF", ".webp": "WEBP", ".png": "PNG", ".apng": "PNG"}
# Encoders to try for a source codec, best first (PyAV wheels ship libx264, libvpx and mpeg4).
_ENCODERS = {"h264": ("libx264", "h264", "mpeg4"), "hevc": ("libx265", "libx264", "mpeg4"),
             "vp9": ("libvpx-vp9", "libvpx"), "vp8": ("libvpx", "libvpx-vp9"),
             "av1": ("libaom-av1", "libsvtav1", "libvpx-vp9")}
_WEBM = ("libvpx-vp9", "libvpx", "libaom-av1")


def media_kind(path: str | os.PathLike) -> str:
    """``"video"``, ``"animated"`` (GIF/WebP/APNG with more than one frame) or ``"still"``."""
    p = Path(path)
    if p.suffix.lower() in VIDEO_SUFFIXES:
        return "video"
    if p.suffix.lower() in ANIMATED_SUFFIXES:
        try:
            with Image.open(p) as im:
                if getattr(im, "is_animated", False):
                    return "animated"
        except Exception:  # a probe only: read_image reports bombs, damage etc. with the file name
            pass
    return "still"


def upscale_file(path: str | os.PathLike, out: str | os.PathLike, *, model: str | None = None,
                 scale: float | None = None, size=None, overwrite: bool = False,
                 progress: bool = True, **upscale_kwargs) -> Path:
    """Upscale the image, animation or video at ``path`` into ``out``; return ``out``.

    - still images: read, upscale, save (the source's generation parameters kept, upscaler info
      added);
    - animated GIF/WebP/APNG: every frame upscaled; durations, loop count, disposal and
      transparency kept (the output format follows ``out``'s suffix: .gif, .webp, .png/.apng);
    - videos (.mp4 .mov .mkv .webm .avi .m4v): frames decoded, upscaled and re-encoded with the
      source's codec family (yuv420p, so odd sizes are cropped to even and a warning says so);
      audio streams are copied without re-encoding.

    ``model``/``scale``/``size`` and any other keyword (``backend``, ``device``, ``tile``, ...)
    are those of :func:`pipeline_lib.upscale` (``model=None``: its default upscaler).
    """
    upscale_media(path, out, model=model, scale=scale, size=size, overwrite=overwrite,
                  progress=progress, **upscale_kwargs)
    return Path(out)


def upscale_media(path: str | os.PathLike, out: str | os.PathLike, *,
                  model: str | None = None, scale: float | None = None, size=None,
                  overwrite: bool = False, progress: bool = True,
                  **upscale_kwargs) -> UpscaleResult:
    """:func:`upscale_file`, returning how it ran: the :class:`UpscaleResult` of a still, or of
    an animation's or video's last frame (``size`` is then the written frame size) — which
    model and backend ran, for reports. Its ``image`` is that frame, not the whole file."""
    src, dest = Path(path), Path(out)
    if "full_result" in upscale_kwargs:
        raise InvalidParameterError("upscale_file() writes a file; full_result is not accepted.")
    if not src.is_file():
        raise ImageReadError(f"{src}: no such file.")
    if dest.exists() and dest.resolve() == src.resolve():
        raise InvalidParameterError(f"{dest}: refusing to write the output over its own input.")
    refuse_existing(dest, overwrite)
    kw = dict(scale=scale, size=size, **upscale_kwargs)
    if model is not None:  # unnamed: upscale()'s default, which may fall back automatically
        kw["model"] = model
    kind = media_kind(src)
    if kind == "video":
        return _video(src, dest, kw, overwrite, progress)
    # a one-frame GIF is a still, but only the animation writer makes .gif files
    if kind == "animated" or dest.suffix.lower() == ".gif":
        return _animation(src, dest, kw, overwrite, progress)
    res = upscale(src, progress=progress, full_result=True, **kw)
    save_image(res.image, dest, metadata=res.as_metadata(), overwrite=overwrite)
    return res


# ---------------------------------------------------------------- animated images
def _animation(src: Path, dest: Path, kw: dict, overwrite: bool, progress: bool) -> UpscaleResult:
    from tqdm.auto import tqdm

    fmt = _ANIM_FORMATS.get(dest.suffix.lower())
    if fmt is None:
        raise InvalidParameterError(f"{dest}: {src.name} is animated; save it as .gif, .webp or "
                                    ".png (APNG) to keep the animation.")
    frames: list[Image.Image] = []
    durations: list[int] = []
    disposals: list[int] = []
    try:
        with Image.open(src) as im:
            _check_input_pixels(src, *im.size)
            loop = im.info.get("loop")  # absent in a GIF means "play once"; keep that too
            meta = carried_over(im.info)
            n_frames = getattr(im, "n_frames", 1)
            with tqdm(total=n_frames, desc=f"upscale {src.name}", unit="frame",
                      disable=not progress, leave=False) as bar:
                for frame in ImageSequence.Iterator(im):
                    frame.load()  # WebP fills in the frame's duration only when it is decoded
                    durations.append(int(frame.info.get("duration", 0) or 0))
                    # Pillow hands out every frame fully composited, so each source frame's own
                    # disposal stays correct for the full frames written back (see _save_animation).
                    disposals.append(int(getattr(im, "disposal_method", None)
                                         or frame.info.get("disposal", 0) or 0))
                    rgba = np.asarray(frame.convert("RGBA"))
                    with _naming(src):
                        res = upscale(rgba, progress=False, full_result=True, **kw)
                    if not frames:  # every upscaled frame is held until the file is written
                        _check_frames_fit(src, n_frames, res.image.shape)
                    frames.append(Image.fromarray(res.image, "RGBA"))
                    bar.update(1)
    except PipelineError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"{src}: {exc}; raise PIPELINE_LIB_MAX_INPUT_PIXELS if it is "
                                 "genuine.") from None
    except (OSError, EOFError, SyntaxError, UnidentifiedImageError) as exc:  # Pillow's read errors
        raise ImageReadError(f"{src}: damaged or truncated animation, or not an image ({exc}); "
                             "re-export it, or convert the frames that open to a new file.") from None
    meta.update(res.as_metadata())
    data = _save_animation(frames, fmt, durations, disposals, loop, meta)
    log.info("%s → %s: %d frames, %dx%d", src, dest, len(frames), *frames[0].size)
    atomic_write(dest, data, overwrite=overwrite)
    return res


def _check_input_pixels(src: Path, w: int, h: int) -> None:
    limit = max_input_pixels()
    if w * h > limit:
        raise ImageTooLargeError(f"{src}: {w}×{h} = {w * h:,} pixels exceeds the limit of "
                                 f"{limit:,}; raise PIPELINE_LIB_MAX_INPUT_PIXELS if it is genuine.")


def _check_frames_fit(src: Path, n_frames: int, shape) -> None:
    h, w = shape[:2]
    total, limit = n_frames * w * h, max_output_pixels()
    if total > limit:
        raise InvalidParameterError(
            f"{src}: {n_frames} frames of {w}×{h} = {total:,} output pixels, past the limit of "
            f"{limit:,} (all frames are held until the file is written); ask for a smaller "
            "scale/size, shorten the animation, or raise PIPELINE_LIB_MAX_OUTPUT_PIXELS.")


class _naming:
    """Put the file's name in front of a parameter error raised for one of its frames."""

    def __init__(self, src: Path):
        self.src = src

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if isinstance(exc, InvalidParameterError) and str(self.src) not in str(exc):
            raise InvalidParameterError(f"{self.src}: {exc}") from None
        return False


def _save_animation(frames: list[Image.Image], fmt: str, durations: list[int],
                    disposals: list[int], loop: int | None, meta: dict[str, str]) -> bytes:
    # Pillow takes per-frame lists only for several frames (a one-frame GIF is a still)
    one = len(frames) == 1
    params: dict = {"save_all": True, "append_images": frames[1:],
                    "duration": durations[0] if one else durations}
    if loop is not None:
        params["loop"] = loop
    if fmt == "GIF":
        # GIF alpha is 1 bit: upscaling softens it, so cut it back at half-way before Pillow
        # maps alpha 0 to the transparent palette index.
        for f in frames:
            a = np.asarray(f.getchannel("A"))
            f.putalpha(Image.fromarray(np.where(a >= 128, 255, 0).astype(np.uint8)))
        params.update(disposal=disposals[0] if one else disposals, optimize=False)
    elif fmt == "PNG":
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        for k, v in meta.items():
            info.add_itxt(k, v)
        # blend SOURCE: each written frame is a full composite that replaces what was there
        params.update(disposal=min(disposals[0], 2) if one else [min(d, 2) for d in disposals],
                      blend=0, pnginfo=info,
                      default_image=False)
    else:  # WEBP composites frames itself; lossless keeps the upscaler's output exact
        params.update(lossless=True)
    buf = io.BytesIO()
    frames[0].save(buf, format=fmt, **params)
    return buf.getvalue()


# ---------------------------------------------------------------- video
def _pick_encoder(codec_name: str, suffix: str) -> str:
    import av

    candidates = _WEBM if suffix == ".webm" else _ENCODERS.get(codec_name, ()) + ("libx264", "mpeg4")
    for name in candidates:
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:  # av raises different errors for unknown / decoder-only codecs
            continue
    raise InvalidParameterError(f"no video encoder for {suffix} among {', '.join(candidates)} in "
                                "this PyAV build; write .mp4 or .mkv instead.")


def _video(src: Path, dest: Path, kw: dict, overwrite: bool, progress: bool) -> UpscaleResult:
    av = _import_av(src)
    if dest.suffix.lower() not in VIDEO_SUFFIXES:
        raise InvalidParameterError(f"{dest}: a video needs a video suffix "
                                    f"({', '.join(sorted(VIDEO_SUFFIXES))}).")
    try:
        inp = av.open(str(src))
    except av.error.FFmpegError as exc:
        raise ImageReadError(f"{src}: not a video PyAV can read ({exc}).") from None
    try:
        # FFmpeg picks the container from the temp file's suffix, hence keep_suffix
        with inp, atomic_output(dest, overwrite=overwrite, keep_suffix=True) as tmp, \
                av.open(str(tmp), "w") as out:
            writer = _VideoWriter(out, inp, src, dest)
            res = _transcode(inp, writer, src, kw, progress)
    except av.error.FFmpegError as exc:
        raise ImageReadError(f"{src}: video decoding/encoding failed ({exc}).") from None
    log.info("%s → %s: %d frames, %dx%d, %s, %d audio stream(s) copied", src, dest,
             writer.frames, *writer.crop, writer.encoder, len(writer.audio))
    return dataclasses.replace(res, size=writer.crop)


def _import_av(src: Path):
    try:
        import av
    except ImportError:
        raise BackendUnavailableError(f"{src}: videos need PyAV: pip install av") from None
    return av


def _transcode(inp, writer: "_VideoWriter", src: Path, kw: dict, progress: bool) -> UpscaleResult:
    """Demux the source once: audio packets are copied as they come, video frames upscaled."""
    from tqdm.auto import tqdm

    res = None
    with tqdm(total=writer.vin.frames or None, desc=f"upscale {src.name}", unit="frame",
              disable=not progress, leave=False) as bar:
        for packet in inp.demux(writer.vin, *inp.streams.audio):
            if packet.stream.index in writer.audio:
                writer.audio_packet(packet)
                continue
            for frame in packet.decode():
                with _naming(src):
                    res = upscale(frame.to_ndarray(format="rgb24"), progress=False,
                                  full_result=True, **kw)
                writer.video_frame(res.image, frame)
                bar.update(1)
    writer.finish(_expected_frames(inp, writer.vin))
    return res


class _VideoWriter:
    """The output container: the source's audio streams copied, video encoded from our frames."""

    def __init__(self, out, inp, src: Path, dest: Path) -> None:
        if not inp.streams.video:
            raise ImageReadError(f"{src}: the file has no video stream.")
        self.out, self.src, self.vin = out, src, inp.streams.video[0]
        self.encoder = _pick_encoder(self.vin.codec_context.name, dest.suffix.lower())
        self.audio = _copy_audio_streams(out, inp, src, dest)
        self.vout = self.crop = None
        self.held: list = []
        self.frames = 0

    def audio_packet(self, packet) -> None:
        if packet.dts is None:  # the demuxer's empty flush packets
            return
        packet.stream = self.audio[packet.stream.index]
        # the header is written on the first mux, so every stream must exist by then: hold
        # audio back until the video stream is made
        if self.vout is None:
            self.held.append(packet)
        else:
            self.out.mux(packet)

    def video_frame(self, img: np.ndarray, frame) -> None:
        import av

        if self.vout is None:
            self.vout, self.crop = _open_video_stream(self.out, self.vin, self.encoder, img.shape,
                                                      self.src)
            self.out.mux(self.held)
            self.held.clear()
        new = av.VideoFrame.from_ndarray(np.ascontiguousarray(img[:self.crop[1], :self.crop[0]]),
                                         format="rgb24")
        new.pts, new.time_base = frame.pts, frame.time_base
        self.out.mux(self.vout.encode(new))
        self.frames += 1

    def finish(self, expected: int) -> None:
        """Refuse a truncated source, then flush the encoder."""
        if self.vout is None:
            raise ImageReadError(f"{self.src}: the video stream holds no decodable frame.")
        if expected and self.frames < 0.9 * expected - 1:  # 10 %: frame rates of VFR files are rough
            raise ImageReadError(f"{self.src}: the video looks truncated: {self.frames} frames "
                                 f"decoded of about {expected} its header announces; re-download "
                                 "or re-encode it (ffmpeg -i in -c copy out repairs some files).")
        self.out.mux(self.vout.encode(None))


def _copy_audio_streams(out, inp, src: Path, dest: Path) -> dict:
    """Output audio streams made from the source's (input stream index → output stream)."""
    import av

    audio = {}
    for a in inp.streams.audio:
        try:
            audio[a.index] = out.add_stream_from_template(a)
        except (ValueError, av.error.FFmpegError) as exc:
            raise InvalidParameterError(f"{dest}: the {a.codec_context.name} audio of {src.name} "
                                        f"cannot be copied into {dest.suffix} ({exc}); use "
                                        ".mkv.") from None
    return audio


def _expected_frames(inp, vin) -> int:
    """Frames the container announces: its frame count, else duration × frame rate (0 = unknown)."""
    if vin.frames:
        return int(vin.frames)
    rate = vin.average_rate or vin.guessed_rate
    if inp.duration and rate:
        return int(round(inp.duration / 1_000_000 * float(rate)))
    return 0


def _open_video_stream(out, vin, encoder: str, shape, src: Path):
    h, w = shape[:2]
    ew, eh = max(2, w - w % 2), max(2, h - h % 2)
    if (ew, eh) != (w, h):
        log.warning("%s: yuv420p video needs even sizes; cropping %dx%d to %dx%d", src, w, h,
                    ew, eh)
    vout = out.add_stream(encoder, rate=vin.average_rate or vin.guessed_rate or 25)
    vout.width, vout.height, vout.pix_fmt = ew, eh, "yuv420p"
    vout.time_base = vin.time_base
    if encoder == "libx264":
        vout.options = {"crf": "16", "preset": "medium"}  # visually lossless: keep the detail we made
    elif encoder == "mpeg4":
        vout.options = {"qscale": "2"}
    return vout, (ew, eh)
