"""Text-safe data augmentation for word images, in the spirit of strhub's RandAugment for text: each sample gets
``num_ops`` operations drawn at random from a geometric and a photometric family, each at a random magnitude up to
``strength``. Nothing flips or mirrors a word, and no operation moves text out of the crop.

- geometric: small rotation, shear, perspective, a curve (sine warp), crop and pad jitter;
- photometric: contrast, brightness, gamma, Gaussian blur, Gaussian noise, JPEG artefacts, colour inversion.

It works on PIL images (``"L"`` or ``"RGB"``, before the model's resize) with Pillow and NumPy only, so it runs in
the DataLoader workers without torchvision. The randomness is a pure function of ``(seed, draw, sample)``: training
passes the iteration that drew the sample and its index, so a resumed run augments every batch exactly as an
uninterrupted one, and the same seed gives the same images on any number of workers.

Why no augmentation library: Albumentations, the usual choice, stopped at 2.0.8 (MIT) and continues as
AlbumentationsX under the AGPL, which an Apache-2.0 library cannot depend on; imgaug is unmaintained since 2020.
``benchmarks/augment.py`` measures this module's throughput on real word crops.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

Op = Callable[[Image.Image, float, np.random.Generator], Image.Image]


def _fill(image: Image.Image) -> int | tuple[int, ...]:
    """The median colour of the border: what newly exposed pixels get, so no black wedge appears."""
    array = np.asarray(image)
    border = np.concatenate([array[0], array[-1], array[:, 0], array[:, -1]])
    value = np.median(border, axis=0)
    return int(value) if np.ndim(value) == 0 else tuple(int(v) for v in value)


def rotate(image: Image.Image, m: float, rng: np.random.Generator) -> Image.Image:
    """Up to 6 degrees at full strength, the canvas expanded so no stroke is cut."""
    angle = rng.uniform(-1, 1) * 6.0 * m
    return image.rotate(angle, resample=Image.Resampling.BILINEAR, expand=True, fillcolor=_fill(image))


def shear(image: Image.Image, m: float, rng: np.random.Generator) -> Image.Image:
    """A horizontal shear of up to 0.35 (italic-like), the width grown to keep every pixel."""
    factor = rng.uniform(-1, 1) * 0.35 * m
    w, h = image.size
    extra = int(np.ceil(abs(factor) * h))
    shift = -extra if factor > 0 else 0
    return image.transform((w + extra, h), Image.Transform.AFFINE, (1, factor, shift, 0, 1, 0),
                           resample=Image.Resampling.BILINEAR, fillcolor=_fill(image))  # fmt: skip


def _perspective_coefficients(source: np.ndarray, target: np.ndarray) -> list[float]:
    """The 8 coefficients PIL's PERSPECTIVE transform takes to map output corners ``target`` to input ``source``."""
    rows = []
    for (x, y), (u, v) in zip(target, source):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    return np.linalg.solve(np.asarray(rows, dtype=np.float64), source.reshape(-1)).tolist()


def perspective(image: Image.Image, m: float, rng: np.random.Generator) -> Image.Image:
    """Each corner moved inwards by up to 12 % of the width and 15 % of the height."""
    w, h = image.size
    corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float64)
    jitter = rng.uniform(0, 1, size=(4, 2)) * m * np.array([0.12 * w, 0.15 * h])
    moved = corners + jitter * np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]])
    coefficients = _perspective_coefficients(corners, moved)
    return image.transform((w, h), Image.Transform.PERSPECTIVE, coefficients, resample=Image.Resampling.BILINEAR,
                           fillcolor=_fill(image))  # fmt: skip


def curve(image: Image.Image, m: float, rng: np.random.Generator) -> Image.Image:
    """A sine warp of the columns: up to 12 % of the height up and down, half to one and a half periods."""
    w, h = image.size
    amplitude = rng.uniform(-1, 1) * 0.12 * h * m
    periods, phase = rng.uniform(0.5, 1.5), rng.uniform(0, 2 * np.pi)
    pad = int(np.ceil(abs(amplitude)))
    canvas = Image.new(image.mode, (w, h + 2 * pad), _fill(image))
    canvas.paste(image, (0, pad))
    strips = max(2, min(w // 4, 24))
    edges = np.linspace(0, w, strips + 1)
    offsets = amplitude * np.sin(2 * np.pi * periods * edges / max(w, 1) + phase)
    mesh = []
    for k in range(strips):
        x0, x1 = edges[k], edges[k + 1]
        top0, top1 = pad + offsets[k], pad + offsets[k + 1]
        # output box (x0, 0)-(x1, h + 2 pad) samples the input quad shifted by the offsets at each edge
        quad = (x0, top0 - pad, x0, top0 - pad + h + 2 * pad, x1, top1 - pad + h + 2 * pad, x1, top1 - pad)
        mesh.append(((int(round(x0)), 0, int(round(x1)), h + 2 * pad), quad))
    return canvas.transform(canvas.size, Image.Transform.MESH, mesh, resample=Image.Resampling.BILINEAR,
                            fillcolor=_fill(image))  # fmt: skip


def crop_pad(image: Image.Image, m: float, rng: np.random.Generator) -> Image.Image:
    """Each side cropped by up to 4 % or padded by up to 10 % of the size (negative margins crop)."""
    w, h = image.size
    margins = rng.uniform(-0.04, 0.10, size=4) * m * np.array([w, h, w, h])
    left, top, right, bottom = (int(round(v)) for v in margins)
    canvas = Image.new(image.mode, (max(w + left + right, 1), max(h + top + bottom, 1)), _fill(image))
    canvas.paste(image, (left, top))
    return canvas


def contrast(image: Image.Image, m: float, rng: np.random.Generator) -> Image.Image:
    return ImageEnhance.Contrast(image).enhance(1.0 + rng.uniform(-0.6, 0.6) * m)


def brightness(image: Image.Image, m: float, rng: np.random.Generator) -> Image.Image:
    return ImageEnhance.Brightness(image).enhance(1.0 + rng.uniform(-0.5, 0.5) * m)


def gamma(image: Image.Image, m: float, rng: np.random.Generator) -> Image.Image:
    exponent = float(np.exp(rng.uniform(-0.7, 0.7) * m))
    table = [int(round(255 * (i / 255) ** exponent)) for i in range(256)]
    return image.point(table * len(image.getbands()))


def blur(image: Image.Image, m: float, rng: np.random.Generator) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.3, 1.0) * 1.6 * m))


def noise(image: Image.Image, m: float, rng: np.random.Generator) -> Image.Image:
    array = np.asarray(image, dtype=np.float32)
    noisy = array + rng.normal(0.0, rng.uniform(0.3, 1.0) * 20.0 * m, size=array.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), image.mode)


def jpeg(image: Image.Image, m: float, rng: np.random.Generator) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(round(95 - rng.uniform(0.3, 1.0) * 75 * m)))
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert(image.mode)


def invert(image: Image.Image, m: float, rng: np.random.Generator) -> Image.Image:
    return ImageOps.invert(image)


GEOMETRIC: dict[str, Op] = {"rotate": rotate, "shear": shear, "perspective": perspective, "curve": curve,
                            "crop_pad": crop_pad}  # fmt: skip
PHOTOMETRIC: dict[str, Op] = {"contrast": contrast, "brightness": brightness, "gamma": gamma, "blur": blur,
                              "noise": noise, "jpeg": jpeg, "invert": invert}  # fmt: skip
OPERATIONS: dict[str, Op] = {**GEOMETRIC, **PHOTOMETRIC}


class TextAugment:
    """Random text-safe augmentation of word images.

    Args:
        strength: the largest magnitude, in (0, 1]; each operation draws its magnitude uniformly up to it.
        num_ops: operations per image, drawn without replacement (at most one of them geometric, as strhub
            keeps text legible); ``invert`` is drawn at a third of the others' rate.
        seed: with ``draw`` and ``sample``, the only source of randomness.

    Raises:
        ValueError: a strength outside (0, 1] or a number of operations outside [1, 12].
    """

    def __init__(self, strength: float = 0.5, num_ops: int = 2, seed: int = 0) -> None:
        if not (isinstance(strength, (int, float)) and 0 < strength <= 1):
            raise ValueError(f"augment_strength must be in (0, 1] (0.5 is a good start), got {strength!r}.")
        if not 1 <= num_ops <= len(OPERATIONS):
            raise ValueError(f"num_ops must be between 1 and {len(OPERATIONS)}, got {num_ops}.")
        self.strength, self.num_ops, self.seed = float(strength), int(num_ops), int(seed)
        names = list(OPERATIONS)
        weights = np.array([1 / 3 if name == "invert" else 1.0 for name in names])
        self._names, self._weights = names, weights / weights.sum()

    def rng(self, draw: int, *sample: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, int(draw), *(int(key) for key in sample)])

    def choose(self, rng: np.random.Generator) -> list[tuple[str, float]]:
        """The operations and magnitudes for one image."""
        chosen: list[tuple[str, float]] = []
        candidates = list(range(len(self._names)))
        while len(chosen) < self.num_ops and candidates:
            weights = self._weights[candidates] / self._weights[candidates].sum()
            k = candidates.pop(int(rng.choice(len(candidates), p=weights)))
            name = self._names[k]
            if name in GEOMETRIC and any(n in GEOMETRIC for n, _ in chosen):
                continue
            chosen.append((name, float(rng.uniform(0, self.strength))))
        return chosen

    def __call__(self, image: Image.Image, draw: int = 0, *sample: int) -> Image.Image:
        """``image`` augmented for training iteration ``draw`` and the sample's keys (e.g. source id, index)."""
        rng = self.rng(draw, *sample)
        for name, magnitude in self.choose(rng):
            image = OPERATIONS[name](image, magnitude, rng)
        return image

    def __repr__(self) -> str:
        return f"TextAugment(strength={self.strength}, num_ops={self.num_ops}, seed={self.seed})"
