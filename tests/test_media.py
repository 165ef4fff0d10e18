"""upscale_file: still images, animated GIF/WebP/APNG, video with audio, and the CLI on folders."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageSequence

from pipeline_lib import OutputExistsError, upscale_file
from pipeline_lib.cli import main as cli_main
from pipeline_lib.media import media_kind

MODEL = "realesr-animevideov3"
av = pytest.importorskip("av")


def _frames(n=3, w=16, h=12):
    out = []
    for i in range(n):
        a = np.zeros((h, w, 4), np.uint8)
        a[..., i % 3] = 220
        a[..., 3] = 255
        a[h // 2:, w // 2:, 3] = 0  # transparent corner
        a[2:5, 2 + 3 * i:5 + 3 * i, :3] = 255  # a moving white square
        out.append(Image.fromarray(a, "RGBA"))
    return out


def _read_anim(path):
    with Image.open(path) as im:
        frames = [(f.convert("RGBA"), f.info.get("duration")) for f in ImageSequence.Iterator(im)]
        return frames, im.info.get("loop"), im.format, getattr(im, "disposal_method", None)


def test_animated_gif_keeps_frames_timing_loop_transparency(tmp_path):
    src, dest = tmp_path / "anim.gif", tmp_path / "out" / "anim_x2.gif"
    fr = _frames()
    fr[0].save(src, save_all=True, append_images=fr[1:], duration=[40, 80, 120], loop=0,
               disposal=2)
    assert media_kind(src) == "animated"
    assert upscale_file(src, dest, model=MODEL, scale=2, progress=False) == dest
    frames, loop, fmt, disposal = _read_anim(dest)
    assert fmt == "GIF" and loop == 0 and disposal == 2
    assert [d for _, d in frames] == [40, 80, 120]
    for (img, _), orig in zip(frames, fr):
        assert img.size == (32, 24)
        alpha = np.asarray(img)[..., 3]
        assert (alpha[14:, 18:] == 0).all() and (alpha[:10, :14] == 255).all()
        # content follows its own frame: the colour channel that frame was painted with wins
        rgb = np.asarray(img)[:10, 18:, :3].reshape(-1, 3).mean(0)
        assert rgb.argmax() == np.asarray(orig)[0, 10, :3].argmax()
    assert not list(dest.parent.glob(".*part*"))  # no temp files left behind


@pytest.mark.parametrize("suffix, fmt", [(".webp", "WEBP"), (".png", "PNG")])
def test_animated_webp_and_apng(tmp_path, suffix, fmt):
    src, dest = tmp_path / f"anim{suffix}", tmp_path / f"anim_up{suffix}"
    fr = _frames()
    extra = {"lossless": True} if fmt == "WEBP" else {}
    fr[0].save(src, save_all=True, append_images=fr[1:], duration=[50, 100, 150], loop=3,
               **extra)
    upscale_file(src, dest, model=MODEL, scale=2, progress=False)
    frames, loop, out_fmt, _ = _read_anim(dest)
    assert out_fmt == fmt and loop == 3 and len(frames) == 3
    assert [d for _, d in frames] == [50, 100, 150]
    for img, _ in frames:
        assert img.size == (32, 24)
        alpha = np.asarray(img)[..., 3]
        assert alpha[16:, 20:].max() <= 8 and alpha[:10, :14].min() >= 247
    if fmt == "PNG":
        with Image.open(dest) as im:
            assert im.info["upscaler"] == MODEL


def _make_video(path, n=6, w=32, h=24, audio=True):
    out = av.open(str(path), "w")
    v = out.add_stream("libx264", rate=12)
    v.width, v.height, v.pix_fmt = w, h, "yuv420p"
    a = out.add_stream("aac", rate=16000, layout="mono") if audio else None
    for i in range(n):
        arr = np.zeros((h, w, 3), np.uint8)
        arr[..., 0] = i * 40
        arr[:, i * 4:i * 4 + 4, 1] = 255
        for p in v.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
            out.mux(p)
    for p in v.encode(None):
        out.mux(p)
    if a is not None:
        fs = a.codec_context.frame_size or 1024
        for k in range(8):
            t = (np.arange(fs) + k * fs) / 16000
            fr = av.AudioFrame.from_ndarray((0.3 * np.sin(2 * np.pi * 440 * t))
                                            .astype(np.float32)[None], format="fltp", layout="mono")
            fr.sample_rate, fr.pts = 16000, k * fs
            for p in a.encode(fr):
                out.mux(p)
        for p in a.encode(None):
            out.mux(p)
    out.close()


def _video_facts(path):
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        size = (vs.codec_context.width, vs.codec_context.height)
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    with av.open(str(path)) as c:
        audio = [bytes(p) for p in c.demux(audio=0) if p.size] if c.streams.audio else []
        codec = c.streams.audio[0].codec_context.name if c.streams.audio else None
    return size, frames, audio, codec


def test_video_frames_upscaled_audio_copied(tmp_path):
    src, dest = tmp_path / "clip.mp4", tmp_path / "clip_up.mp4"
    _make_video(src)
    upscale_file(src, dest, model=MODEL, scale=2, progress=False)
    size, frames, audio, codec = _video_facts(dest)
    _, src_frames, src_audio, _ = _video_facts(src)
    assert size == (64, 48) and len(frames) == len(src_frames) == 6
    assert codec == "aac" and len(audio) > 0 and audio == src_audio  # copied bit for bit
    # frame order kept: the green bar moves right by 8 output px per frame
    cols = [int(np.argmax(f[:, :, 1].mean(0))) for f in frames]
    assert cols == sorted(cols) and cols[-1] - cols[0] >= 30


def test_video_odd_size_rounded_to_even(tmp_path, caplog):
    src, dest = tmp_path / "odd.mp4", tmp_path / "odd_up.mkv"
    _make_video(src, n=3, w=30, h=22, audio=False)
    upscale_file(src, dest, model=MODEL, scale=1.5, progress=False)
    size, frames, audio, _ = _video_facts(dest)
    assert size == (44, 32) and len(frames) == 3 and audio == []
    assert "cropping 45x33 to 44x32" in caplog.text


def test_existing_output_is_not_overwritten(tmp_path):
    src, dest = tmp_path / "clip.mp4", tmp_path / "clip_up.mp4"
    _make_video(src, n=2, audio=False)
    dest.write_bytes(b"keep me")
    with pytest.raises(OutputExistsError, match="already exists; pass overwrite=True"):
        upscale_file(src, dest, model=MODEL, scale=2, progress=False)
    assert dest.read_bytes() == b"keep me"
    upscale_file(src, dest, model=MODEL, scale=2, progress=False, overwrite=True)
    assert _video_facts(dest)[0] == (64, 48)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "clip_up.mp4"]


def test_still_image_keeps_and_adds_metadata(tmp_path):
    from PIL.PngImagePlugin import PngInfo

    src, dest = tmp_path / "still.png", tmp_path / "still_up.png"
    info = PngInfo()
    info.add_text("parameters", "a cat, 20 steps")
    Image.new("RGB", (16, 12), (10, 120, 200)).save(src, pnginfo=info)
    upscale_file(src, dest, model=MODEL, scale=2, progress=False)
    with Image.open(dest) as im:
        assert im.size == (32, 24)
        assert im.info["parameters"] == "a cat, 20 steps" and im.info["upscaler"] == MODEL


def test_cli_folder_with_animations_and_video(tmp_path, capsys):
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    fr = _frames()
    fr[0].save(root / "sub" / "a.gif", save_all=True, append_images=fr[1:], duration=[40, 80, 120],
               loop=0, disposal=2)
    Image.new("RGB", (16, 12), (200, 10, 10)).save(root / "still.png")
    _make_video(root / "sub" / "v.mp4", n=3)
    out = tmp_path / "out"
    args = ["upscale", str(root), "-o", str(out), "-m", MODEL, "-s", "2", "--device", "cpu"]
    assert cli_main(args) == 0
    assert "3 upscaled, 0 skipped, 0 failed" in capsys.readouterr().out
    gif, still, vid = out / "sub" / "a_upscaled.gif", out / "still_upscaled.png", out / "sub" / "v_upscaled.mp4"
    frames, loop, _, _ = _read_anim(gif)
    assert len(frames) == 3 and frames[0][0].size == (32, 24) and loop == 0
    with Image.open(still) as im:
        assert im.size == (32, 24)
    size, vframes, audio, _ = _video_facts(vid)
    assert size == (64, 48) and len(vframes) == 3 and audio
    before = {p: p.stat().st_mtime_ns for p in (gif, still, vid)}
    assert cli_main(args) == 0  # second run: everything exists, nothing rewritten
    assert "0 upscaled, 3 skipped, 0 failed" in capsys.readouterr().out
    assert before == {p: p.stat().st_mtime_ns for p in (gif, still, vid)}
