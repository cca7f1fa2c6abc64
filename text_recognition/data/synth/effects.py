"""Appearance and camera effects of the realistic engine, on float32 numpy crops (``(h, w)`` or ``(h, w, 3)``, 0-255)
and Pillow images: alpha compositing, shadows, occluders, uneven lighting, blur, resampling, noise and JPEG."""

from __future__ import annotations

from io import BytesIO

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

_RESAMPLERS = (Image.Resampling.NEAREST, Image.Resampling.BILINEAR, Image.Resampling.BICUBIC,
               Image.Resampling.LANCZOS, Image.Resampling.BOX)  # fmt: skip


def blend(pixels: np.ndarray, alpha: np.ndarray, colour) -> np.ndarray:
    """``colour`` (a level, an RGB triple, or an array like ``pixels``) laid over ``pixels`` with ``alpha`` (0-1)."""
    if pixels.ndim == 3:
        alpha = alpha[..., None]
    colour = np.asarray(colour, dtype=np.float32)
    return pixels + alpha * (colour - pixels)


def shifted(mask: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """``mask`` moved by ``(dx, dy)`` pixels, zeros coming in."""
    out = np.zeros_like(mask)
    h, w = mask.shape
    if abs(dx) >= w or abs(dy) >= h:
        return out
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = mask[max(-dy, 0) : h - max(dy, 0),
                                                                         max(-dx, 0) : w - max(dx, 0)]  # fmt: skip
    return out


def blurred(mask: np.ndarray, radius: float) -> np.ndarray:
    if radius < 0.3:
        return mask
    image = Image.fromarray(np.clip(mask * 255, 0, 255).astype(np.uint8))
    return np.asarray(image.filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32) / 255


def occluder(rng: np.random.Generator, size: tuple[int, int], box: tuple[int, int, int, int], text_height: float,
             symbol_width: float):  # fmt: skip
    """The alpha (0-1) of something in front of the text: a thin wire or pole across it, or a patch over at most a
    third of the first or last symbol, so the word stays readable."""
    width, height = size
    x0, y0, x1, y1 = box
    image = Image.new("L", size, 0)
    draw = ImageDraw.Draw(image)
    kind = int(rng.integers(3))
    if kind == 0:  # a thin line across
        thickness = max(1, int(rng.uniform(0.04, 0.12) * text_height))
        ya, yb = rng.uniform(0, height, 2)
        draw.line([(0, ya), (width, yb)], fill=255, width=thickness)
    elif kind == 1:  # a thin pole
        thickness = max(1, int(rng.uniform(0.05, 0.15) * text_height))
        x = rng.uniform(x0, x1)
        draw.line([(x, 0), (x + rng.uniform(-0.3, 0.3) * height, height)], fill=255, width=thickness)
    else:  # a patch over one end
        reach = rng.uniform(0.1, 0.35) * symbol_width
        left = rng.random() < 0.5
        xa = x0 - symbol_width if left else x1 - reach
        xb = x0 + reach if left else x1 + symbol_width
        ya, yb = sorted(rng.uniform(-0.3, 1.3, 2) * height)
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape([xa, ya, xb, max(yb, ya + 2)], fill=255)
    return np.asarray(image, dtype=np.float32) / 255


def shading(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """A smooth multiplicative lighting field (uneven light, vignetting), shaped to broadcast over ``shape``."""
    gains = rng.uniform(0.7, 1.2, (2, 3)).astype(np.float32)
    field = np.asarray(Image.fromarray(gains).resize((shape[1], shape[0]), Image.Resampling.BILINEAR))
    return field[..., None] if len(shape) == 3 else field


def camera(rng: np.random.Generator, image: Image.Image, p: dict[str, float], height: int | None) -> Image.Image:
    """Blur, down- and re-sampling to ``height``, sensor noise and JPEG, each with its probability in ``p``."""
    scale = image.height / 32  # effects are sized for a 32-pixel-high crop
    if rng.random() < p["blur"]:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0) * scale))
    if rng.random() < p["motion_blur"]:
        length = 3 if scale < 1.5 else 5
        kernel = np.zeros((length, length), dtype=np.float32)
        kernel[length // 2, :] = 1 if rng.random() < 0.7 else 0
        if not kernel.any():
            np.fill_diagonal(kernel, 1)
        image = image.filter(ImageFilter.Kernel((length, length), kernel.ravel().tolist(), scale=float(kernel.sum())))
    target_h = height or image.height
    target_w = max(1, round(image.width * target_h / image.height))
    if rng.random() < p["resample"]:  # seen at a lower resolution, then enlarged
        factor = rng.uniform(0.45, 0.85)
        small = (max(1, round(target_w * factor)), max(1, round(target_h * factor)))
        image = image.resize(small, _RESAMPLERS[int(rng.integers(len(_RESAMPLERS)))])
        image = image.resize((target_w, target_h), _RESAMPLERS[int(rng.integers(1, 3))])
    elif image.size != (target_w, target_h):
        image = image.resize((target_w, target_h), Image.Resampling.BILINEAR, reducing_gap=2.0)
    if rng.random() < p["noise"]:
        pixels = np.asarray(image, dtype=np.float32)
        sigma = rng.uniform(2, 14)
        noise = rng.normal(0, sigma, pixels.shape[:2]).astype(np.float32)
        pixels = pixels + (noise[..., None] if pixels.ndim == 3 else noise)
        image = Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8))
    if rng.random() < p["jpeg"]:
        buffer = BytesIO()
        image.save(buffer, format="JPEG", quality=int(rng.integers(20, 85)))
        buffer.seek(0)
        image = Image.open(buffer)
        image.load()
    return image
