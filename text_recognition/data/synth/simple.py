"""The simple synthetic word generator: random strings or a word list, one font family, flat backgrounds, mild
distortions. Fast, for smoke tests, tutorials and quick CPU runs (``RealisticWords`` is the engine that transfers to
real photographs).

Sample ``i`` depends only on ``(seed, i)``, so a set can be regenerated, resumed or split across processes and give
the same bytes (with the same Pillow, FreeType, zlib and NumPy). The label is exactly the rendered text. Samples
are written in DTRB's LMDB format (``write_lmdb``) or as a ``datasets.Dataset`` of encoded bytes (``to_dataset``).
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from ...config import CHARSET_36, CHARSET_PRESETS
from .writer import IMAGE_FORMATS, SampleWriter, files_fingerprint

FontType = ImageFont.FreeTypeFont | ImageFont.ImageFont

CASES = ("as_is", "lower", "upper", "mixed")
FONT_SUFFIXES = (".ttf", ".otf")
_PADDING = (1, 4)  # pixels on each side, at the font's size, before scaling to ``height``
_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601-2, as Image.convert("L")
# Bump when a change to the renderer changes the images, so ``to_dataset`` never reuses a stale cache.
_RENDERER_VERSION = 1


def _checked_settings(charset, min_length, max_length, height, min_contrast, seed, font_size, rotation, blur, noise,
                      case, image_format) -> str:  # fmt: skip
    """``SyntheticWords``' argument checks (see its Raises); returns the charset with a preset name resolved."""
    charset = CHARSET_PRESETS.get(charset, charset)
    if not isinstance(charset, str) or not charset:
        raise ValueError(f"charset must be a non-empty string of symbols, got {charset!r}.")
    duplicates = "".join(symbol for symbol, count in Counter(charset).items() if count > 1)
    if duplicates:
        raise ValueError(f"charset has duplicate symbols {duplicates!r}: each symbol must appear once.")
    if charset.isspace():
        raise ValueError(f"charset has only whitespace {charset!r}: nothing would be visible.")
    for name, value in (("min_length", min_length), ("max_length", max_length), ("height", height),
                        ("min_contrast", min_contrast), ("seed", seed)):  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name} must be an integer, got {value!r}.")
    if min_length < 1 or min_length > max_length:
        raise ValueError(f"Need 1 <= min_length <= max_length, got min_length={min_length}, max_length={max_length}.")
    if height <= 0:
        raise ValueError(f"height must be positive, got {height}.")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}.")
    if not 0 <= min_contrast <= 255:
        raise ValueError(f"min_contrast must be in [0, 255], got {min_contrast}.")
    if (
        len(font_size) != 2
        or not all(isinstance(size, (int, np.integer)) for size in font_size)
        or not 1 <= font_size[0] <= font_size[1]
    ):
        raise ValueError(f"font_size must be (min, max) with 1 <= min <= max, got {font_size!r}.")
    for name, value in (("rotation", rotation), ("blur", blur), ("noise", noise)):
        if not value >= 0:  # also rejects NaN
            raise ValueError(f"{name} must be >= 0, got {value!r}.")
    if rotation > 45:
        raise ValueError(f"rotation is the maximum absolute angle in degrees, at most 45, got {rotation}.")
    if case not in CASES:
        raise ValueError(f"Unknown case {case!r}. Choose one of: {', '.join(CASES)}.")
    if not isinstance(image_format, str) or image_format.upper() not in IMAGE_FORMATS:
        raise ValueError(f"Unknown image_format {image_format!r}. Choose one of: {', '.join(IMAGE_FORMATS)}.")
    return charset


class SyntheticWords(SampleWriter):
    """A deterministic generator of ``(word image, label)`` samples.

    Each sample draws a label (a random string from ``charset``, or a word from ``words``), a font and size, a
    text and background colour at least ``min_contrast`` apart in luminance, and mild distortions: a rotation, a
    Gaussian blur and additive Gaussian noise. The text is cropped with a few pixels of padding and scaled to
    ``height``; the width follows the text.

    Args:
        charset: the symbols of random labels, or a preset name (``"36_lowercase"``, ``"94_full"``). Word-list
            labels must use these symbols too.
        min_length: shortest random label (ignored for ``words``).
        max_length: longest random label (ignored for ``words``).
        words: draw labels uniformly from this list instead of random strings.
        fonts: TrueType/OpenType files, or folders searched recursively for ``.ttf``/``.otf``; each sample picks
            one uniformly. ``None`` uses Pillow's built-in font (``ImageFont.load_default``).
        font_size: inclusive range of font sizes in points, before scaling to ``height``.
        height: image height in pixels.
        rotation: maximum absolute rotation in degrees.
        blur: maximum Gaussian blur radius in pixels (at ``height``).
        noise: maximum standard deviation of the additive Gaussian pixel noise (0-255 scale).
        min_contrast: minimum luminance difference between text and background (0-255).
        rgb: coloured text and background (``"RGB"`` images) instead of grayscale (``"L"``).
        case: ``"as_is"``, or ``"lower"``, ``"upper"``, ``"mixed"`` (each letter at random) applied to every label
            before rendering; a letter only changes into a symbol of ``charset``.
        image_format: ``"PNG"`` (lossless) or ``"JPEG"``, the encoding of ``encoded``, LMDB and dataset bytes.
        seed: with the sample index, the only source of randomness.

    Raises:
        ValueError: for an empty charset or one with duplicate symbols, a bad length range, an empty word list or
            words with symbols outside ``charset``, a missing font path, a folder without fonts, a font Pillow
            cannot load or that lacks a symbol, an unknown ``case`` or ``image_format``, or a value out of range.

    Example:
        >>> synth = SyntheticWords(seed=1)
        >>> image, label = synth.render(0)
        >>> image.height, image.mode
        (32, 'L')
        >>> synth.write_lmdb("data/synth_train", 10_000)  # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        charset: str = CHARSET_36,
        min_length: int = 3,
        max_length: int = 10,
        words: Sequence[str] | None = None,
        fonts: Sequence[str | os.PathLike] | None = None,
        font_size: tuple[int, int] = (22, 30),
        height: int = 32,
        rotation: float = 2.0,
        blur: float = 0.6,
        noise: float = 6.0,
        min_contrast: int = 80,
        rgb: bool = False,
        case: str = "as_is",
        image_format: str = "PNG",
        seed: int = 0,
    ) -> None:
        charset = _checked_settings(
            charset,
            min_length,
            max_length,
            height,
            min_contrast,
            seed,
            font_size,
            rotation,
            blur,
            noise,
            case,
            image_format,
        )

        self.charset = charset
        self.min_length = int(min_length)
        self.max_length = int(max_length)
        self.words = None if words is None else _check_words(words, charset)
        self.font_size = (int(font_size[0]), int(font_size[1]))
        self.height = int(height)
        self.rotation = float(rotation)
        self.blur = float(blur)
        self.noise = float(noise)
        self.min_contrast = int(min_contrast)
        self.rgb = bool(rgb)
        self.case = case
        self.image_format = image_format.upper()
        self.seed = int(seed)

        # Symbol -> the symbols ``case`` may turn it into (itself included), all within the charset.
        self._case_variants = _case_variants(charset, case)
        self._visible = "".join(symbol for symbol in charset if not symbol.isspace())
        self.fonts: list[Path] | None = None if fonts is None else _find_fonts(fonts)
        self._font_cache: dict[tuple[int, int], FontType] = {}
        self._check_glyphs()

    # ----------------------------------------------------------------------------------------------- sampling

    def _label(self, rng: np.random.Generator) -> str:
        if self.words is not None:
            text = self.words[rng.integers(len(self.words))]
        else:
            length = int(rng.integers(self.min_length, self.max_length + 1))
            symbols = [self.charset[i] for i in rng.integers(len(self.charset), size=length)]
            # Leading or trailing spaces would be invisible, so the label could not be read off the image.
            for end in {0, length - 1}:
                if symbols[end].isspace():
                    symbols[end] = self._visible[rng.integers(len(self._visible))]
            text = "".join(symbols)
        if self.case != "as_is":
            text = "".join(self._change_case(symbol, rng) for symbol in text)
        return text

    def _change_case(self, symbol: str, rng: np.random.Generator) -> str:
        variants = self._case_variants.get(symbol)
        if variants is None:
            return symbol
        return variants[rng.integers(len(variants))] if self.case == "mixed" else variants[0]

    def _colours(self, rng: np.random.Generator) -> tuple[int | tuple[int, ...], int | tuple[int, ...]]:
        """(text, background): grey levels, or RGB colours with those luminances, ``min_contrast`` apart."""
        dark = rng.uniform(0, 255 - self.min_contrast)
        light = rng.uniform(dark + self.min_contrast, 255)
        levels = (dark, light) if rng.random() < 0.5 else (light, dark)
        if not self.rgb:
            return int(round(levels[0])), int(round(levels[1]))
        return tuple(_colour_with_luma(level, rng) for level in levels)

    def _font(self, font_index: int, size: int) -> FontType:
        key = (font_index, size)
        if key not in self._font_cache:
            if self.fonts is None:
                self._font_cache[key] = ImageFont.load_default(size=size)
            else:
                self._font_cache[key] = ImageFont.truetype(os.fspath(self.fonts[font_index]), size=size)
        return self._font_cache[key]

    # ---------------------------------------------------------------------------------------------- rendering

    def render(self, index: int) -> tuple[Image.Image, str]:
        """Sample ``index`` (0-based) as a PIL image (``"L"``, or ``"RGB"`` with ``rgb``) ``height`` pixels high.

        Args:
            index: any non-negative integer; the sample depends only on ``(seed, index)``.

        Returns:
            ``(image, label)``, the label being exactly the rendered text.
        """
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
            raise ValueError(f"index must be a non-negative integer, got {index!r}.")
        rng = np.random.default_rng([self.seed, int(index)])
        label = self._label(rng)
        font_index = int(rng.integers(len(self.fonts))) if self.fonts is not None else 0
        font = self._font(font_index, int(rng.integers(self.font_size[0], self.font_size[1] + 1)))
        text_colour, background = self._colours(rng)
        left_pad, top_pad, right_pad, bottom_pad = (int(p) for p in rng.integers(_PADDING[0], _PADDING[1] + 1, 4))

        # Crop from the cap height to the baseline (or the text's own extent, if larger), so that words without
        # ascenders or descenders are drawn at the same scale as those with them.
        x0, y0, x1, y1 = font.getbbox(label)
        _, cap_top, _, baseline = font.getbbox("H")
        y0, y1 = min(y0, cap_top), max(y1, baseline)
        size = (max(1, x1 - x0) + left_pad + right_pad, max(1, y1 - y0) + top_pad + bottom_pad)
        image = Image.new("RGB" if self.rgb else "L", size, background)
        ImageDraw.Draw(image).text((left_pad - x0, top_pad - y0), label, fill=text_colour, font=font)

        angle = rng.uniform(-self.rotation, self.rotation)
        if angle:
            image = image.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=background)
        width = max(1, round(image.width * self.height / image.height))
        image = image.resize((width, self.height), Image.Resampling.LANCZOS)
        radius = rng.uniform(0, self.blur)
        if radius > 0.05:
            image = image.filter(ImageFilter.GaussianBlur(radius))
        sigma = rng.uniform(0, self.noise)
        if sigma > 0:
            pixels = np.asarray(image, dtype=np.float32)
            pixels = pixels + rng.normal(0, sigma, pixels.shape).astype(np.float32)
            image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))
        return image, label

    def _fingerprint_settings(self) -> dict:
        return {
            **{k: v for k, v in vars(self).items() if not k.startswith("_") and k not in ("fonts", "words")},
            "words": None if self.words is None else hashlib.sha256("\n".join(self.words).encode()).hexdigest(),
            "fonts": None if self.fonts is None else files_fingerprint(self.fonts),
            "renderer_version": _RENDERER_VERSION,
        }

    # ------------------------------------------------------------------------------------------- validation

    def _check_glyphs(self) -> None:
        """Every symbol a label can hold must have a glyph in every font, or the image would not match its label."""
        symbols = set(self.charset if self.words is None else "".join(self.words))
        symbols |= {variant for symbol in list(symbols) for variant in self._case_variants.get(symbol, "")}
        symbols = sorted(symbol for symbol in symbols if not symbol.isspace())
        for font_index in range(1 if self.fonts is None else len(self.fonts)):
            name = "Pillow's default font" if self.fonts is None else f"The font {str(self.fonts[font_index])!r}"
            try:
                font = self._font(font_index, self.font_size[1])
            except OSError as error:
                raise ValueError(f"Pillow cannot load the font {str(self.fonts[font_index])!r}: {error}.") from None
            # A symbol without a glyph renders the font's .notdef glyph, as U+FFFF (never mapped) does.
            notdef = font.getmask("\uffff")
            notdef_key = (notdef.size, bytes(notdef))
            missing = "".join(s for s in symbols if (font.getmask(s).size, bytes(font.getmask(s))) == notdef_key)
            if missing:
                more = f" (and {len(missing) - 20} more)" if len(missing) > 20 else ""
                raise ValueError(
                    f"{name} has no glyph for {missing[:20]!r}{more}, so its images would not match their labels; "
                    f"use fonts that cover the charset."
                )

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_font_cache": {}}  # fonts are reloaded in each process

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_") and k != "words")
        words = "" if self.words is None else f", words=<{len(self.words)} words>"
        return f"{type(self).__name__}({settings}{words})"


def _check_words(words: Sequence[str], charset: str) -> list[str]:
    if isinstance(words, str):
        raise ValueError("words must be a sequence of words, not a single string.")
    words = list(words)
    if not words:
        raise ValueError("words is empty: give at least one word, or None for random strings.")
    # Surrounding whitespace would not show in the image, so the label could not be read off it.
    bad = [i for i, word in enumerate(words) if not isinstance(word, str) or not word or word.strip() != word]
    if bad:
        raise ValueError(
            f"words has {len(bad)} empty, non-string or whitespace-padded entries (the first is {words[bad[0]]!r} "
            f"at position {bad[0]})."
        )
    allowed = set(charset)
    bad = [word for word in words if not set(word) <= allowed]
    if bad:
        symbols = "".join(sorted(set("".join(bad)) - allowed))
        shown = ", ".join(repr(word) for word in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise ValueError(f"{len(bad)} words have symbols outside the charset ({symbols!r}): {shown}.")
    return words


def _case_variants(charset: str, case: str) -> dict[str, str]:
    """For each letter in ``charset``, the symbols ``case`` may render it as (first choice first), all in charset."""
    if case == "as_is":
        return {}
    allowed = set(charset)
    variants: dict[str, str] = {}
    for symbol in charset:
        if not symbol.isalpha():
            continue
        lower, upper = symbol.lower(), symbol.upper()
        options = {"lower": [lower], "upper": [upper], "mixed": [lower, upper]}[case]
        options = [o for o in dict.fromkeys(options) if len(o) == 1 and o in allowed]
        if options:
            variants[symbol] = "".join(options)
    needs = {"lower": [str.islower], "upper": [str.isupper], "mixed": [str.islower, str.isupper]}[case]
    targets = "".join(variants.values())
    if not all(any(test(t) for t in targets) for test in needs):
        kind = {"lower": "lower-case", "upper": "upper-case", "mixed": "both lower- and upper-case"}[case]
        raise ValueError(
            f"case={case!r} needs {kind} letters in the charset, which has none; use a charset such as '94_full'."
        )
    return variants


def _find_fonts(fonts: Sequence[str | os.PathLike]) -> list[Path]:
    if isinstance(fonts, (str, os.PathLike)):
        fonts = [fonts]
    found: list[Path] = []
    for entry in fonts:
        path = Path(entry)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix.lower() in FONT_SUFFIXES and p.is_file())
            if not files:
                raise ValueError(f"The font folder {str(path)!r} has no .ttf or .otf files.")
            found.extend(files)
        elif path.is_file():
            found.append(path)
        else:
            raise ValueError(f"Font not found: {str(path)!r}.")
    if not found:
        raise ValueError("fonts is empty: give font files or folders, or None for Pillow's default font.")
    return list(dict.fromkeys(found))


def _colour_with_luma(level: float, rng: np.random.Generator) -> tuple[int, int, int]:
    """A random RGB colour whose luminance is ``level``: grey plus a random chroma that keeps the luminance."""
    direction = rng.normal(size=3)
    direction -= (direction @ _LUMA) / (_LUMA @ _LUMA) * _LUMA  # orthogonal to the luma weights
    grey = np.full(3, level)
    # The largest step along ``direction`` that keeps every channel in [0, 255], scaled by a random saturation.
    with np.errstate(divide="ignore"):
        limits = np.where(direction > 0, (255 - grey) / direction, np.where(direction < 0, -grey / direction, np.inf))
    colour = grey + rng.uniform(0, 1) * float(limits.min()) * direction
    return tuple(int(c) for c in np.clip(np.rint(colour), 0, 255))
