"""Backgrounds for the realistic engine: crops of natural photographs and textures (scikit-image's bundled images,
the ``synth`` extra, or user folders) and procedural ones (flat, gradients, smooth noise, stripes), and text colours
at a minimum luminance contrast from them.

Images are decoded lazily, once per process, and never imported through scikit-image itself (only its data files are
read), so nothing heavy is imported.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

PACKAGED = "packaged"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
# scikit-image's bundled photographs and textures, each public domain or CC0 as skimage.data's docstrings state
# (the Middlebury motorcycle pair, whose licence is not stated, and the synthetic charts and masks are left out).
SKIMAGE_IMAGES = ("astronaut.png", "brick.png", "camera.png", "chelsea.png", "coffee.png", "grass.png", "gravel.png",
                  "rocket.jpg", "hubble_deep_field.jpg", "page.png", "text.png", "coins.png", "moon.png",
                  "clock_motion.png", "ihc.png", "retina.jpg")  # fmt: skip
_MAX_SIDE = 512  # textures are kept at most this large in memory
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
BACKGROUND_KINDS = ("texture", "noise", "gradient", "flat", "stripes")
_KIND_WEIGHTS = np.array([0.45, 0.2, 0.15, 0.12, 0.08])


def find_textures(entries: list[str | os.PathLike]) -> list[str]:
    """The image files named by ``entries``: ``"packaged"`` for scikit-image's data images, image files, and
    folders searched recursively."""
    found: list[str] = []
    for entry in entries:
        if isinstance(entry, str) and entry == PACKAGED:
            found.extend(packaged_textures())
            continue
        path = Path(entry)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not files:
                raise ValueError(
                    f"textures: the folder {str(path)!r} has no images; give a folder of .png/.jpg files."
                )
            found.extend(os.fspath(p) for p in files)
        elif path.is_file():
            found.append(os.fspath(path))
        else:
            raise ValueError(f"textures: {str(path)!r} is not an image file or folder; check the path.")
    return list(dict.fromkeys(found))


@functools.cache
def packaged_textures() -> tuple[str, ...]:
    """scikit-image's bundled photographs, found without importing scikit-image."""
    spec = importlib.util.find_spec("skimage")
    folder = None if spec is None or not spec.submodule_search_locations else Path(spec.submodule_search_locations[0])
    files = [] if folder is None else [folder / "data" / name for name in SKIMAGE_IMAGES]
    files = [os.fspath(f) for f in files if f.is_file()]
    if not files:
        raise ValueError(
            "textures: scikit-image is not installed; pip install 'text_recognition[synth]', or pass "
            "textures=[folder of images], or textures=[] for procedural backgrounds only."
        )
    return tuple(files)


@functools.lru_cache(maxsize=64)
def _texture(path: str, mode: str) -> Image.Image:
    with Image.open(path) as image:
        image.draft(mode, (_MAX_SIDE, _MAX_SIDE))  # JPEGs decode at a reduced size
        image = image.convert("RGB").convert(mode)
    image.thumbnail((_MAX_SIDE, _MAX_SIDE), Image.Resampling.BILINEAR)
    return image


def check_texture(path: str) -> None:
    try:
        _texture(path, "L")
    except OSError as error:
        raise ValueError(f"textures: Pillow cannot read {path!r} ({error}); remove it or convert it.") from None


def background(rng: np.random.Generator, size: tuple[int, int], textures: list[str], rgb: bool) -> np.ndarray:
    """A float32 background, ``(h, w)`` or ``(h, w, 3)`` in 0-255, of a random kind."""
    width, height = size
    weights = _KIND_WEIGHTS if textures else _KIND_WEIGHTS * (np.arange(5) > 0)
    kind = BACKGROUND_KINDS[int(rng.choice(5, p=weights / weights.sum()))]
    base = random_colour(rng, rgb)
    if kind == "texture":
        image = _texture(textures[int(rng.integers(len(textures)))], "RGB" if rgb else "L")
        scale = np.exp(rng.uniform(np.log(0.4), np.log(2.5)))
        crop_w, crop_h = min(image.width, max(2, width / scale)), min(image.height, max(2, height / scale))
        x0, y0 = rng.uniform(0, image.width - crop_w), rng.uniform(0, image.height - crop_h)
        crop = image.resize(size, Image.Resampling.BILINEAR, box=(x0, y0, x0 + crop_w, y0 + crop_h))
        pixels = np.asarray(crop, dtype=np.float32)
        if rng.random() < 0.5:
            pixels = pixels[:, ::-1]
        if rgb and rng.random() < 0.4:  # a tint: the photograph's shading in another colour
            pixels = _luma(pixels)[..., None] / 128.0 * np.asarray(base, dtype=np.float32)
        return np.clip(pixels, 0, 255)
    if kind == "flat":
        return np.broadcast_to(np.asarray(base, dtype=np.float32), (height, width, 3) if rgb else (height, width))
    if kind == "gradient":
        corners = np.asarray([base, _nearby(rng, base), _nearby(rng, base), _nearby(rng, base)], dtype=np.float32)
        grid = corners.reshape(2, 2, -1) if rgb else corners.reshape(2, 2)
        return smooth(grid, size)
    if kind == "noise":
        cells = (int(rng.integers(2, 6)), int(rng.integers(2, 12)))
        field = rng.normal(0, rng.uniform(10, 50), cells).astype(np.float32)
        field = smooth(field, size)
        colour = np.asarray(base, dtype=np.float32)
        return np.clip(colour + (field[..., None] if rgb else field), 0, 255)
    # stripes: ruled paper, sign panels, shop shutters
    image = Image.new("RGB" if rgb else "L", size, _ints(base))
    draw = ImageDraw.Draw(image)
    other = _ints(_nearby(rng, base, spread=60))
    period = rng.uniform(3, max(4.0, height / 2))
    thickness = max(1, int(period * rng.uniform(0.1, 0.5)))
    vertical = rng.random() < 0.4
    for k in range(int((width if vertical else height) / period) + 2):
        position = int(k * period + rng.uniform(0, 1))
        line = [(position, 0), (position, height)] if vertical else [(0, position), (width, position)]
        draw.line(line, fill=other, width=thickness)
    return np.asarray(image, dtype=np.float32)


def text_colour(rng: np.random.Generator, level: float, min_contrast: float, rgb: bool, side: int = 0):
    """A colour whose luminance is at least ``min_contrast`` from ``level``: darker (``side`` -1), lighter (+1), or
    either (0), whichever fits."""
    room_dark, room_light = level - min_contrast, 255 - level - min_contrast
    if side:
        room_dark, room_light = (room_dark, -1.0) if side < 0 else (-1.0, room_light)
    if room_dark < 0 and room_light < 0:
        target = 0.0 if (side < 0 if side else level > 127) else 255.0
    elif room_light < 0 or (room_dark >= 0 and rng.random() < room_dark / (room_dark + room_light + 1e-6)):
        target = rng.uniform(0, room_dark)
    else:
        target = rng.uniform(level + min_contrast, 255)
    return colour_with_luma(target, rng, rng.uniform(0, 1)) if rgb else float(target)


def random_colour(rng: np.random.Generator, rgb: bool):
    level = rng.uniform(0, 255)
    return colour_with_luma(level, rng, rng.uniform(0, 1)) if rgb else float(level)


def colour_with_luma(level: float, rng: np.random.Generator, saturation: float) -> tuple[float, float, float]:
    """An RGB colour of luminance ``level``: grey plus a random chroma that keeps the luminance."""
    direction = rng.normal(size=3).astype(np.float32)
    direction -= (direction @ _LUMA) / (_LUMA @ _LUMA) * _LUMA
    grey = np.full(3, level, dtype=np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        limits = np.where(direction > 0, (255 - grey) / direction, np.where(direction < 0, -grey / direction, np.inf))
    colour = grey + saturation * float(limits.min()) * direction
    return tuple(float(c) for c in np.clip(colour, 0, 255))


def luminance(pixels: np.ndarray) -> float:
    return float(pixels.mean()) if pixels.ndim == 2 else float(_luma(pixels).mean())


def _luma(pixels: np.ndarray) -> np.ndarray:
    return pixels @ _LUMA


def _nearby(rng: np.random.Generator, colour, spread: float = 40.0):
    if isinstance(colour, float):
        return float(np.clip(colour + rng.uniform(-spread, spread), 0, 255))
    return tuple(float(c) for c in np.clip(np.asarray(colour) + rng.uniform(-spread, spread, 3), 0, 255))


def _ints(colour):
    return int(colour) if isinstance(colour, float) else tuple(int(c) for c in colour)


def smooth(grid: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``grid`` (a few cells, float) bilinearly stretched to ``size``, per channel."""
    if grid.ndim == 3:
        return np.stack([smooth(grid[..., c], size) for c in range(grid.shape[2])], axis=-1)
    return np.asarray(
        Image.fromarray(np.ascontiguousarray(grid, dtype=np.float32)).resize(size, Image.Resampling.BILINEAR),
        dtype=np.float32,
    )
