"""The realistic synthetic engine: word crops that look like scene text, from the ingredients that made MJSynth,
SynthText and SynthTIGER transfer to photographs.

Each sample draws a text (``text.py``: words by real frequency, numbers, prices, codes, random strings, case
variants), a font that really has every glyph of it (``fonts.py``: 56 pip-installed families and user fonts), a
weight (bold, thin) and letter spacing, an outline, a shadow, a geometry (``geometry.py``: rotation, shear,
perspective, curved baseline, elastic), a tight or loose crop, a background (``backgrounds.py``: photographs,
textures, procedural) with a text colour at a minimum contrast, a distractor line of text and an occluder, uneven
lighting, and a camera (``effects.py``: blur, motion blur, down- and re-sampling, noise, JPEG). Text is drawn at one
size from glyphs cached per process (``fonts.draw_text``) and only then scaled, which keeps it fast.

Sample ``i`` is a function of ``(seed, i)`` only: every random choice comes from ``numpy.random.default_rng([seed,
i])``, and nothing depends on the process, the order of calls or what is cached, so DataLoader workers, processes
and resumed runs see the same pixels (with the same Pillow, FreeType and NumPy, and the same font and texture files).
"""

from __future__ import annotations

import difflib
import hashlib
import os
from collections import Counter

import numpy as np
from PIL import Image, ImageFilter

from ...config import CHARSET_36, CHARSET_PRESETS
from . import backgrounds, effects, fonts, geometry
from .text import CASE_KINDS, TEXT_KINDS, TextSampler, read_word_list, wordfreq_lexicon
from .writer import IMAGE_FORMATS, SampleWriter, files_fingerprint

# The probability of each effect per sample; ``effects={...}`` overrides some of them.
DEFAULT_EFFECTS = {
    "rotation": 0.45, "shear": 0.15, "perspective": 0.35, "curve": 0.08, "elastic": 0.2,  # geometry
    "spacing": 0.2, "bold": 0.1, "thin": 0.08, "outline": 0.1, "shadow": 0.15, "gradient_fill": 0.1,  # text
    "loose_crop": 0.35, "distractor": 0.3, "occlusion": 0.08, "shading": 0.2,  # scene
    "blur": 0.35, "motion_blur": 0.08, "resample": 0.4, "noise": 0.4, "jpeg": 0.35,  # camera
}  # fmt: skip
DEFAULT_TEXT_MIX = {"word": 0.72, "number": 0.08, "price": 0.04, "code": 0.06, "random": 0.10}
DEFAULT_CASE_MIX = {"as_is": 0.55, "capitalized": 0.25, "upper": 0.2, "lower": 0.0}
FONT_SIZE = 34  # pixels: one size keeps the per-process glyph and face caches small; the scale varies later
_CATEGORY_WEIGHT = {"handwriting": 0.4}  # script faces are rarer on signs than sans and serif ones
_INK = 40  # a mask level (0-255) above which a pixel counts as text when the crop is placed
# Bump when a change to the renderer changes the images, so ``to_dataset`` never reuses a stale cache.
_RENDERER_VERSION = 1


class RealisticWords(SampleWriter):
    """An endless, deterministic source of realistic ``(word crop, label)`` samples.

    Every option is a plain JSON value, so a source is described by a dict (``RealisticWords(**options)``,
    ``synth.options``) and rebuilt anywhere; the object pickles small (fonts and images reload lazily in each
    process) for DataLoader workers.

    Args:
        charset: the label symbols, or a preset name (``"36_lowercase"``, ``"94_full"``). Only texts whose label is
            in the charset are drawn; a letter outside it whose lower-case form is in it is drawn as it is and
            labelled in lower case (an upper-case "A" is labelled "a" for the 36-symbol charset).
        max_length: longest label.
        languages: ``wordfreq`` language code(s) of the lexicon (ignored with ``words``).
        words: a list of words, or a UTF-8 file with one per line (``word<TAB>count`` gives frequencies), instead of
            ``wordfreq``.
        lexicon_size: the most frequent words taken per language.
        frequency_power: words are drawn with probability proportional to frequency ** power: 1 follows the
            language, 0 is uniform over the lexicon.
        text_mix: probability of each kind of text (``word``, ``number``, ``price``, ``code``, ``random``).
        case_mix: probability of each case of a word (``as_is``, ``capitalized``, ``upper``, ``lower``).
        fonts: font files and folders; ``"packaged"`` (the default) stands for the pip-installed families.
        textures: image files and folders for backgrounds; ``"packaged"`` (the default) stands for scikit-image's
            photographs; ``[]`` leaves procedural backgrounds only.
        effects: the probability of some effects (see ``DEFAULT_EFFECTS``), overriding the defaults.
        min_contrast: minimum luminance difference (0-255) between the text and its background.
        height: output height in pixels (the width follows the crop), or None to keep the crop's size.
        rgb: ``"RGB"`` images instead of ``"L"``.
        image_format: ``"PNG"`` or ``"JPEG"``, the encoding of ``encoded``, LMDB, dataset and Parquet bytes.
        seed: with the sample index, the only source of randomness.

    Raises:
        ValueError: a one-line message naming the option and the fix, for an unknown option, a bad value, a lexicon
            with no word in the charset, fonts that are missing, unusable or do not cover the charset, and missing
            textures or extras.

    Example:
        >>> synth = RealisticWords(charset="94_full", languages=["en", "de"], seed=1)
        >>> image, label = synth.render(0)
        >>> synth.write_lmdb("data/synth_train", 100_000)  # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        charset: str = CHARSET_36,
        max_length: int = 25,
        languages: str | list[str] = "en",
        words: str | os.PathLike | list[str] | None = None,
        lexicon_size: int = 50_000,
        frequency_power: float = 0.5,
        text_mix: dict[str, float] | None = None,
        case_mix: dict[str, float] | None = None,
        fonts: str | os.PathLike | list[str | os.PathLike] | None = None,
        textures: str | os.PathLike | list[str | os.PathLike] | None = None,
        effects: dict[str, float] | None = None,
        min_contrast: int = 50,
        height: int | None = 32,
        rgb: bool = False,
        image_format: str = "PNG",
        seed: int = 0,
        **unknown,
    ) -> None:
        if unknown:
            name = sorted(unknown)[0]
            close = difflib.get_close_matches(name, _OPTION_NAMES, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(f"Unknown synth option {name!r}: {hint}options are {', '.join(_OPTION_NAMES)}.")
        charset = CHARSET_PRESETS.get(charset, charset)
        _check_charset(charset)
        for name, value, low in (("max_length", max_length, 1), ("lexicon_size", lexicon_size, 1),
                                 ("min_contrast", min_contrast, 0), ("seed", seed, 0)):  # fmt: skip
            _check_int(name, value, low)
        if min_contrast > 200:
            raise ValueError(f"min_contrast must be at most 200 (of 255), got {min_contrast}; lower it.")
        if height is not None:
            _check_int("height", height, 8)
        if not (isinstance(frequency_power, (int, float)) and 0 <= frequency_power <= 2):
            raise ValueError(f"frequency_power must be a number in [0, 2], got {frequency_power!r}.")
        if not isinstance(image_format, str) or image_format.upper() not in IMAGE_FORMATS:
            raise ValueError(f"image_format must be one of {', '.join(IMAGE_FORMATS)}, got {image_format!r}.")
        self.charset = charset
        self.max_length = int(max_length)
        self.languages = [languages] if isinstance(languages, str) else list(languages)
        self.words = os.fspath(words) if isinstance(words, (str, os.PathLike)) else words
        self.lexicon_size = int(lexicon_size)
        self.frequency_power = float(frequency_power)
        self.text_mix = _mix("text_mix", text_mix, DEFAULT_TEXT_MIX, TEXT_KINDS)
        self.case_mix = _mix("case_mix", case_mix, DEFAULT_CASE_MIX, CASE_KINDS)
        self.fonts = [os.fspath(f) for f in _as_list(fonts)]
        self.textures = [os.fspath(t) for t in _as_list(textures)]
        self.effects = _effects(effects)
        self.min_contrast = int(min_contrast)
        self.height = None if height is None else int(height)
        self.rgb = bool(rgb)
        self.image_format = image_format.upper()
        self.seed = int(seed)

        self._text = self._build_text()
        self._build_fonts()
        self._texture_files = backgrounds.find_textures(self.textures)

    # ------------------------------------------------------------------------------------------ construction

    def _build_text(self) -> TextSampler:
        if self.words is not None:
            words, weights = read_word_list(self.words)
            source = f"the word list {self.words!r}" if isinstance(self.words, str) else "words"
        else:
            if not self.languages:
                raise ValueError("languages is empty: give wordfreq language codes such as ['en'], or words=[...].")
            lexicons = [wordfreq_lexicon(language, self.lexicon_size) for language in self.languages]
            words = [word for lexicon, _ in lexicons for word in lexicon]
            weights = np.concatenate([w / w.sum() for _, w in lexicons])  # each language weighs the same
            source = f"wordfreq {'+'.join(self.languages)}"
        sampler = TextSampler(self.charset, words, weights, self.max_length, self.text_mix, self.case_mix,
                              self.frequency_power)  # fmt: skip
        if not sampler.words and self.text_mix.get("word", 0) > 0:
            raise ValueError(
                f"words: no word of {source} ({len(words)} words) fits the charset and max_length={self.max_length}; "
                f"use a lexicon in the charset's language, or text_mix={{'word': 0, ...}}."
            )
        return sampler

    def _build_fonts(self) -> None:
        drawable = self._text.drawable
        entries = fonts.find_fonts(self.fonts)
        faces = fonts.load_faces(entries, drawable)
        if not faces:
            raise ValueError(
                f"fonts: none of the {len(entries)} font files in {self.fonts} is a readable font with glyphs for "
                f"this charset; give .ttf/.otf fonts that cover it."
            )
        case_sensitive = any(s.isupper() for s in self.charset) and any(s.islower() for s in self.charset)
        covered = [fonts.covered_symbols(face, drawable, case_sensitive) for face in faces]
        missing = "".join(s for s in self.charset if not s.isspace() and not any(s in c for c in covered))
        if missing:
            raise ValueError(
                f"charset: no font has a glyph for {missing[:20]!r}{' ...' if len(missing) > 20 else ''}; add fonts "
                f"that cover them (fonts=['packaged', folder]) or remove them from the charset."
            )
        self._faces = faces
        self._font_files = len(entries)
        self._covered = ["".join(sorted(c)) for c in covered]
        # Symbol -> the set of fonts that draw it, as a bit mask (bit i: font i); a text's fonts are the AND of its
        # symbols' masks, and texts share few distinct masks, so their font weights are computed once each.
        self._symbol_fonts = {s: sum(1 << i for i, c in enumerate(covered) if s in c) for s in drawable}
        self._all_fonts = (1 << len(faces)) - 1
        families = Counter(face.family for face in faces)
        weights = np.array([_CATEGORY_WEIGHT.get(f.category, 1.0) / families[f.family] for f in faces])
        self._font_weights = weights / weights.sum()  # each family (not each file) equally likely
        self._face_choices: dict[int, np.ndarray] = {}  # a mask of fonts -> their cumulative weights

    # -------------------------------------------------------------------------------------------- sampling

    def _text_and_face(self, rng: np.random.Generator) -> tuple[str, str, fonts.FontFace]:
        for _ in range(8):
            text, label = self._text.sample(rng)
            face = self._face_for(rng, text)
            if face is not None:
                return text, label, face
        face = self._faces[int(rng.choice(len(self._faces), p=self._font_weights))]
        symbols = "".join(s for s in self._covered[self._faces.index(face)] if s in self.charset)
        text, label = self._text.random_from(rng, symbols.replace(" ", "") or symbols)
        return text, label, face

    def _face_for(self, rng: np.random.Generator, text: str) -> fonts.FontFace | None:
        """A font with a real glyph for every symbol of ``text``, families equally likely."""
        mask = self._all_fonts
        for symbol in text:
            if not symbol.isspace():
                mask &= self._symbol_fonts[symbol]
        cumulative = self._face_choices.get(mask)
        if cumulative is None:
            chosen = np.array([(mask >> i) & 1 for i in range(len(self._faces))], dtype=np.float64)
            cumulative = np.cumsum(self._font_weights * chosen)
            if len(self._face_choices) > 4096:
                self._face_choices.clear()
            self._face_choices[mask] = cumulative
        if cumulative[-1] <= 0:
            return None
        index = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
        return self._faces[min(index, len(cumulative) - 1)]

    # ------------------------------------------------------------------------------------------- rendering

    def font_coverage(self) -> str:
        """One line for the logs: how many of the fonts found draw this charset, and the symbols the fewest draw (a
        word is drawn only in a font that has every one of its symbols)."""
        counts = {s: bin(self._symbol_fonts.get(s, 0)).count("1") for s in self.charset if not s.isspace()}
        rarest = sorted(counts, key=lambda s: (counts[s], s))[:4]
        families = len({face.family for face in self._faces})
        return (f"fonts: {len(self._faces)} of {self._font_files} font files ({families} families) draw this charset; "
                f"the symbols the fewest draw: " + ", ".join(f"{s!r} {counts[s]}" for s in rarest))  # fmt: skip

    def describe(self, index: int) -> dict:
        """What sample ``index`` draws, before any pixel: ``text`` (as drawn), ``label``, ``font`` (the file),
        ``family``, ``size`` (pixels) and ``weight`` (on a variable font's axis, else None)."""
        _, text, label, face, size, weight = self._first_choices(index)
        return {"text": text, "label": label, "font": face.path, "family": face.family, "size": size, "weight": weight}

    def _first_choices(self, index: int):
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
            raise ValueError(f"index must be a non-negative integer, got {index!r}.")
        rng = np.random.default_rng([self.seed, int(index)])
        text, label, face = self._text_and_face(rng)
        size = FONT_SIZE
        weight = face.weights[int(rng.integers(len(face.weights)))] if face.weights else None
        return rng, text, label, face, size, weight

    def render(self, index: int) -> tuple[Image.Image, str]:
        """Sample ``index`` as ``(PIL image, label)``: ``"L"`` (or ``"RGB"``), ``height`` pixels high.

        Args:
            index: any non-negative integer; the sample depends only on ``(seed, index)``.
        """
        rng, text, label, face, size, weight = self._first_choices(index)
        p = self.effects
        masks, text_height = _draw_text(rng, text, (face.path, size, weight, face.axes), p)
        warped = np.asarray(geometry.warp(masks, rng, p, text_height))
        ink = _ink_box(warped if warped.ndim == 2 else warped[..., 0])
        if ink is None:  # the text left the canvas: keep it flat
            warped = np.asarray(masks)
            ink = _ink_box(warped if warped.ndim == 2 else warped[..., 0]) or (0, 0, warped.shape[1], warped.shape[0])
        x0, y0, x1, y1 = _crop_box(rng, ink, warped.shape[:2], text_height, loose=rng.random() < p["loose_crop"])
        planes = warped[y0:y1, x0:x1].astype(np.float32) / 255
        fill = planes if planes.ndim == 2 else planes[..., 0]
        outline = None if planes.ndim == 2 else planes[..., 1]
        box = (max(ink[0] - x0, 0), max(ink[1] - y0, 0), min(ink[2] - x0, x1 - x0), min(ink[3] - y0, y1 - y0))
        pixels = self._compose(rng, fill, outline, box, text_height, len(text))
        image = Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8))
        return effects.camera(rng, image, p, self.height), label

    def _compose(self, rng, fill, outline, box, text_height, length) -> np.ndarray:
        p = self.effects
        h, w = fill.shape
        pixels = backgrounds.background(rng, (w, h), self._texture_files, self.rgb)
        contrast = self.min_contrast + rng.uniform(0, 60)
        spread = float(pixels[::3, ::3].std()) + 1e-6  # a busy texture is calmed so the text keeps its contrast
        if spread > 0.35 * contrast:
            mean = pixels.mean(axis=(0, 1), keepdims=True)
            pixels = mean + (pixels - mean) * (0.35 * contrast / spread)
        under = fill[..., None] if pixels.ndim == 3 else fill
        level = _level((pixels * under).sum(axis=(0, 1)) / (fill.sum() + 1e-6))  # the background under the text
        colour = backgrounds.text_colour(rng, level, contrast, self.rgb)
        if rng.random() < p["distractor"]:
            pixels = self._distractor(rng, pixels, box, text_height, level)
        if rng.random() < p["shadow"]:
            reach = max(1, int(rng.uniform(0.04, 0.12) * text_height))
            dx, dy = (int(v) for v in rng.integers(-reach, reach + 1, 2))
            source = fill if outline is None else np.maximum(fill, outline)
            alpha = effects.blurred(effects.shifted(source, dx, dy), rng.uniform(0, 0.12) * text_height)
            side = 1 if _level(colour) < level else -1  # away from the text, or it would swell into a blob
            shade = backgrounds.text_colour(rng, level, self.min_contrast / 2, self.rgb, side)
            pixels = effects.blend(pixels, alpha * rng.uniform(0.4, 0.9), shade)
        if outline is not None:
            edge = backgrounds.text_colour(rng, _level(colour), self.min_contrast, self.rgb)
            pixels = effects.blend(pixels, outline, edge)
        if rng.random() < p["gradient_fill"]:
            side = -1 if _level(colour) < level else 1  # both ends on the same side of the background
            ends = [colour, backgrounds.text_colour(rng, level, self.min_contrast, self.rgb, side)]
            grid = np.asarray([ends, ends[::-1]] if rng.random() < 0.5 else [ends, ends], dtype=np.float32)
            colour = backgrounds.smooth(grid, (w, h))
        pixels = effects.blend(pixels, fill, colour)
        if rng.random() < p["occlusion"] and length > 2:  # a short word could vanish behind it
            alpha = effects.occluder(rng, (w, h), box, text_height, (box[2] - box[0]) / length) * rng.uniform(0.7, 1.0)
            pixels = effects.blend(pixels, alpha, backgrounds.random_colour(rng, self.rgb))
        if rng.random() < p["shading"]:
            pixels = pixels * effects.shading(rng, pixels.shape)
        return pixels

    def _distractor(self, rng, pixels, box, text_height, level) -> np.ndarray:
        """Another line of text above or below the word, or a word beside it, cut by the crop's edge."""
        h, w = pixels.shape[:2]
        x0, y0, x1, y1 = box
        text, _, face = self._text_and_face(rng)
        key = (face.path, FONT_SIZE, face.weights[0] if face.weights else None, face.axes)
        (mask,), _ = fonts.draw_text(key, text, (0,), 0.0, (0, 0))
        scale = rng.uniform(0.55, 1.05)  # smaller print nearby, or a line of the same size
        if scale < 0.95:
            size = (max(1, round(mask.shape[1] * scale)), max(1, round(mask.shape[0] * scale)))
            mask = np.asarray(Image.fromarray(mask).resize(size, Image.Resampling.BILINEAR))
        mh, mw = mask.shape
        side = int(rng.integers(4))
        if side < 2:  # a line above or below, its nearer edge a gap from the word
            gap = rng.uniform(0.12, 0.4) * text_height
            x, y = rng.uniform(-0.5, 0.8) * w, (y0 - gap - mh) if side == 0 else (y1 + gap)
        else:  # the next word before or after, a space away, showing at most a sliver at the crop's edge
            sliver, space = rng.uniform(0, 0.25) * text_height, 0.3 * text_height
            if side == 2:
                x = min(sliver, x0 - space) - mw
            else:
                x = max(w - sliver, x1 + space)
            y = (y0 + y1 - mh) / 2
        alpha = np.zeros((h, w), dtype=np.float32)
        _paste(alpha, mask, int(x), int(y))
        colour = backgrounds.text_colour(rng, level, self.min_contrast, self.rgb)
        return effects.blend(pixels, alpha * rng.uniform(0.5, 1.0), colour)

    # ---------------------------------------------------------------------------------------------- options

    @property
    def options(self) -> dict:
        """The settings as a JSON-able dict: ``RealisticWords(**synth.options)`` renders the same samples."""
        return {name: getattr(self, name) for name in _OPTION_NAMES}

    def _fingerprint_settings(self) -> dict:
        words = self.words
        if isinstance(words, list):
            words = hashlib.sha256("\n".join(words).encode()).hexdigest()
        elif isinstance(words, str):
            words = files_fingerprint([words])
        return {
            **self.options,
            "words": words,
            "font_files": files_fingerprint(face.path for face in self._faces),
            "texture_files": files_fingerprint(self._texture_files),
            "renderer_version": _RENDERER_VERSION,
        }

    def __getstate__(self) -> dict:
        # Loaded faces, glyphs and images live in per-process caches, never in the object.
        return {**self.__dict__, "_face_choices": {}}

    def __repr__(self) -> str:
        shown = {k: v for k, v in self.options.items() if k != "words"}
        if self.words is not None:
            shown["words"] = self.words if isinstance(self.words, str) else f"<{len(self.words)} words>"
        return f"RealisticWords({', '.join(f'{k}={v!r}' for k, v in shown.items())})"


_OPTION_NAMES = ("charset", "max_length", "languages", "words", "lexicon_size", "frequency_power", "text_mix",
                 "case_mix", "fonts", "textures", "effects", "min_contrast", "height", "rgb", "image_format",
                 "seed")  # fmt: skip


def _draw_text(rng: np.random.Generator, text: str, key: fonts.FontKey, p: dict[str, float]):
    """The text's masks on a canvas with room for geometry and loose crops: ``"L"`` (fill), or ``"RGB"`` (fill,
    outline, unused) when the text has an outline; and the text's height (cap height to baseline or more)."""
    size = key[1]
    bold = int(rng.integers(1, 3)) if rng.random() < p["bold"] else 0
    if bold and fonts.ink_density(key) > 0.45:  # a heavy face made bolder fills its counters: "65K" becomes a blob
        bold = 0
    outline = int(rng.integers(1, 4)) + bold if rng.random() < p["outline"] else 0
    spacing = rng.uniform(0.05, 0.5) * size if rng.random() < p["spacing"] and len(text) > 1 else 0.0
    thin = rng.random() < p["thin"] and not bold
    strokes = (bold, outline) if outline else (bold,)
    canvases, text_height = fonts.draw_text(key, text, strokes, spacing, (int(0.6 * size) + 2, int(0.5 * size) + 2))
    fill = Image.fromarray(canvases[0])
    if thin:
        eroded = fill.filter(ImageFilter.MinFilter(3))
        if np.asarray(eroded).sum() > 0.5 * canvases[0].sum():  # a light face would vanish
            fill = eroded
    if not outline:
        return fill, text_height
    return Image.merge("RGB", (fill, Image.fromarray(canvases[1]), Image.new("L", fill.size, 0))), text_height


def _paste(alpha: np.ndarray, mask: np.ndarray, x: int, y: int) -> None:
    """``mask`` (uint8) into ``alpha`` (0-1) with its top-left corner at ``(x, y)``, clipped to ``alpha``."""
    h, w = alpha.shape
    mh, mw = mask.shape
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + mw, w), min(y + mh, h)
    if x0 < x1 and y0 < y1:
        region = alpha[y0:y1, x0:x1]
        np.maximum(region, mask[y0 - y : y1 - y, x0 - x : x1 - x] / np.float32(255), out=region)


def _ink_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """The bounding box of the pixels of ``mask`` (uint8) above the ink level, or None."""
    ink = mask > _INK
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _crop_box(rng: np.random.Generator, ink, shape: tuple[int, int], text_height: float, loose: bool):
    """A crop around the ``ink`` box: tight (a few pixels, sometimes touching the glyphs) or loose."""
    x0, y0, x1, y1 = ink
    if loose:
        dx0, dx1 = rng.uniform(0.1, 0.6, 2) * text_height
        dy0, dy1 = rng.uniform(0.1, 0.45, 2) * text_height
    else:
        dx0, dx1 = rng.uniform(0.0, 0.15, 2) * text_height
        dy0, dy1 = rng.uniform(-0.02, 0.12, 2) * text_height
    h, w = shape
    box = (
        max(0, int(x0 - dx0)),
        max(0, int(y0 - dy0)),
        min(w, int(np.ceil(x1 + dx1))),
        min(h, int(np.ceil(y1 + dy1))),
    )
    return box[0], box[1], max(box[2], box[0] + 2), max(box[3], box[1] + 2)


def _level(colour) -> float:
    """The luminance of a level or an RGB colour."""
    return float(colour) if np.ndim(colour) == 0 else float(np.dot(colour, [0.299, 0.587, 0.114]))


def _check_charset(charset) -> None:
    if not isinstance(charset, str) or not charset or charset.isspace():
        raise ValueError(f"charset must be a non-empty string of symbols or a preset name, got {charset!r}.")
    duplicates = "".join(s for s, n in Counter(charset).items() if n > 1)
    if duplicates:
        raise ValueError(f"charset has duplicate symbols {duplicates!r}; list each symbol once.")


def _check_int(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")


def _as_list(value) -> list:
    if value is None:
        return [fonts.PACKAGED]
    return [value] if isinstance(value, (str, os.PathLike)) else list(value)


def _mix(name: str, given: dict | None, default: dict[str, float], kinds: tuple[str, ...]) -> dict[str, float]:
    mix = dict(default if given is None else given)
    for key, value in mix.items():
        if key not in kinds:
            raise ValueError(f"Unknown {name} key {key!r}; use some of {', '.join(kinds)}.")
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
            raise ValueError(f"{name}[{key!r}] must be a number >= 0, got {value!r}.")
    if sum(mix.values()) <= 0:
        raise ValueError(f"{name} gives every kind probability 0; give at least one a positive weight.")
    return {key: float(value) for key, value in mix.items()}


def _effects(given: dict | None) -> dict[str, float]:
    given = {} if given is None else dict(given)
    for key, value in given.items():
        if key not in DEFAULT_EFFECTS:
            close = difflib.get_close_matches(str(key), DEFAULT_EFFECTS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(f"Unknown effect {key!r} in effects: {hint}effects are {', '.join(DEFAULT_EFFECTS)}.")
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
            raise ValueError(f"effects[{key!r}] is a probability in [0, 1], got {value!r}.")
    return {**DEFAULT_EFFECTS, **{key: float(value) for key, value in given.items()}}
