"""Fonts for the realistic engine: the pip-installed families (``fontpkg-*`` packages, the ``synth`` extra), user
files and folders, which symbols each one really draws, and a per-process cache of loaded faces.

A symbol counts as covered only when the font's character map sends it to a glyph other than ``.notdef`` that has an
outline (whitespace excepted), read from the font file with fontTools, so a word is never drawn with the tofu box.
Unicase display fonts (lower-case letters drawn as capitals, as Bebas Neue does) do not cover the lower-case
letters of a case-sensitive charset.

Reading that from a font file takes a few milliseconds (about 1.3 s for the 197 packaged files, in every process
that builds the engine: scripts, DataLoader workers), so what it finds is also kept on disk, one small JSON file per
font keyed by its path, size and modification time, in ``$HF_DATASETS_CACHE/text_recognition/fonts/`` (where the
project keeps its LMDB label cache; ``~/.cache/huggingface/datasets`` by default). An edited font is read again; a
cache that cannot be read or written is passed over.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PACKAGED = "packaged"
FONT_SUFFIXES = (".ttf", ".otf")
ENTRY_POINT_GROUP = "fontpkg.family"  # every fontpkg-* package declares its family here
# Weights drawn for a variable font with a ``wght`` axis (clipped to its range): regular, light and bold faces.
VARIABLE_WEIGHTS = (300, 400, 700, 900)
_UNICASE_PROBES = "aer"


@dataclass(frozen=True)
class FontFace:
    """One font file and what it can draw."""

    path: str
    family: str
    category: str  # fontpkg's category (``sans_serif``, ``serif``, ``display``, ``handwriting``, ``monospace``)
    codepoints: frozenset[int]  # symbols with a real glyph
    unicase: bool  # lower-case letters drawn as the capitals
    weights: tuple[float, ...]  # ``wght`` values to draw for a variable font, () for a static one
    axes: tuple[float, ...]  # the default value of each variation axis, in the font's order


def find_fonts(entries: list[str | os.PathLike]) -> list[tuple[str, str, str]]:
    """``(path, family or "", category)`` of every font file named by ``entries``: ``"packaged"`` for the installed
    fontpkg families, font files, and folders searched recursively for ``.ttf``/``.otf``."""
    found: list[tuple[str, str, str]] = []
    for entry in entries:
        if isinstance(entry, str) and entry == PACKAGED:
            found.extend(packaged_fonts())
            continue
        path = Path(entry)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix.lower() in FONT_SUFFIXES and p.is_file())
            if not files:
                raise ValueError(f"fonts: the folder {str(path)!r} has no .ttf or .otf files; give a folder of fonts.")
            found.extend((os.fspath(p), "", "") for p in files)
        elif path.is_file():
            found.append((os.fspath(path), "", ""))
        else:
            raise ValueError(f"fonts: {str(path)!r} is not a font file or folder; check the path.")
    return list({item[0]: item for item in found}.values())  # first occurrence of each path, in order


@functools.cache
def packaged_fonts() -> tuple[tuple[str, str, str], ...]:
    """The font files of every installed ``fontpkg-*`` family, sorted by family."""
    from importlib import resources
    from importlib.metadata import entry_points

    found = []
    for entry in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        root = resources.files(entry.value)
        meta = json.loads((root / "metadata.json").read_text(encoding="utf-8"))
        category = (meta.get("category") or ["unknown"])[0].lower()
        for file in meta["files"]:
            found.append((os.fspath(root.joinpath(*file["path"].split("/"))), meta["family"], category))
    if not found:
        raise ValueError(
            "fonts: no packaged fonts are installed; pip install 'text_recognition[synth]', or pass fonts=[folder]."
        )
    return tuple(found)


def load_faces(entries: list[tuple[str, str, str]], symbols: str) -> list[FontFace]:
    """A ``FontFace`` for each readable font file that covers at least one of ``symbols``."""
    faces = []
    for path, family, category in entries:
        stat = os.stat(path)
        info = _cached_font(path, stat.st_size, stat.st_mtime_ns)
        if info is None:
            continue
        name, codepoints, unicase, weights, axes = info
        if not any(ord(symbol) in codepoints for symbol in symbols):
            continue
        faces.append(FontFace(path, family or name, category or "unknown", codepoints, unicase, weights, axes))
    return faces


_CACHE_VERSION = 1  # bump when _read_font's result changes for the same file


def font_cache_dir() -> Path:
    """``$HF_DATASETS_CACHE/text_recognition/fonts``, resolved as ``datasets`` resolves its cache (without importing
    it: a DataLoader worker should not pay for that)."""
    root = os.environ.get("HF_DATASETS_CACHE")
    if not root:
        home = os.environ.get("HF_HOME") or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface"
        )
        root = os.path.join(home, "datasets")
    return Path(root) / "text_recognition" / "fonts"


@functools.lru_cache(maxsize=4096)
def _cached_font(path: str, size: int, mtime_ns: int):
    """``_read_font``'s result, from the disk cache when a process has read this file before."""
    key = hashlib.sha1(f"{_CACHE_VERSION}|{os.path.abspath(path)}|{size}|{mtime_ns}|{VARIABLE_WEIGHTS}".encode())
    entry = font_cache_dir() / f"{key.hexdigest()}.json"
    try:
        stored = json.loads(entry.read_text(encoding="utf-8"))
        if stored is None:
            return None
        codepoints = frozenset(c for first, last in stored["codepoints"] for c in range(first, last + 1))
        return (stored["name"], codepoints, bool(stored["unicase"]), tuple(stored["weights"]),
                tuple(stored["axes"]))  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError):
        pass  # not cached yet, or an unreadable entry: read the font
    info = _read_font(path)
    stored = None
    if info is not None:
        name, codepoints, unicase, weights, axes = info
        ranges: list[list[int]] = []
        for c in sorted(codepoints):
            if ranges and ranges[-1][1] == c - 1:
                ranges[-1][1] = c
            else:
                ranges.append([c, c])
        stored = {"name": name, "codepoints": ranges, "unicase": unicase, "weights": weights, "axes": axes}
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        temporary = entry.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(stored), encoding="utf-8")
        os.replace(temporary, entry)  # atomic: a process reading beside this one sees all of it or nothing
    except OSError:
        pass  # a read-only cache: the font is read again next time
    return info


def _read_font(path: str):
    """(family name, covered code points, unicase, weights, axis defaults), or None for a file that is not a font."""
    from fontTools.ttLib import TTFont, TTLibError

    try:
        font = TTFont(path, lazy=True, fontNumber=0)
        cmap = font.getBestCmap() or {}
        order = font.getGlyphOrder()
    except (TTLibError, OSError, KeyError, ValueError, AssertionError, IndexError, TypeError):
        return None
    try:
        name = font["name"].getBestFamilyName() or Path(path).stem if "name" in font else Path(path).stem
        empty: set[str] = {".notdef"}
        if "loca" in font and "glyf" in font:
            locations = font["loca"].locations  # a glyph without outline data has no bytes in ``glyf``
            empty |= {order[i] for i in range(min(len(order), len(locations) - 1)) if locations[i] == locations[i + 1]}
        codepoints = frozenset(c for c, glyph in cmap.items() if glyph not in empty or chr(c).isspace())
        unicase = _is_unicase(font, cmap)
        weights, axes = (), ()
        if "fvar" in font:
            fvar = font["fvar"].axes
            axes = tuple(float(axis.defaultValue) for axis in fvar)
            wght = next((axis for axis in fvar if axis.axisTag == "wght"), None)
            if wght is not None:
                weights = tuple(sorted({min(max(w, wght.minValue), wght.maxValue) for w in VARIABLE_WEIGHTS}))
    except Exception:  # noqa: BLE001 - a damaged table: the file is not a usable font
        return None
    finally:
        font.close()
    return str(name), codepoints, unicase, weights, axes


def _is_unicase(font, cmap: dict[int, str]) -> bool:
    """Whether the lower-case probe letters have the same outlines as their capitals."""
    if "glyf" not in font:
        return False
    glyf = font["glyf"]

    def outline(symbol: str):
        glyph = cmap.get(ord(symbol))
        return None if glyph is None else glyf[glyph].getCoordinates(glyf)[0].array.tobytes()

    same = [outline(s) is not None and outline(s) == outline(s.upper()) for s in _UNICASE_PROBES]
    return sum(same) >= 2


def covered_symbols(face: FontFace, symbols: str, case_sensitive: bool) -> set[str]:
    """The symbols of ``symbols`` that ``face`` draws as themselves."""
    covered = {s for s in symbols if ord(s) in face.codepoints}
    if face.unicase and case_sensitive:
        covered = {s for s in covered if not (s.islower() and s.upper() in symbols)}
    return covered


@functools.lru_cache(maxsize=512)  # about 200 kB each; once its glyphs are cached, a face is rarely needed
def load_font(path: str, size: int, weight: float | None, axes: tuple[float, ...]) -> ImageFont.FreeTypeFont:
    """A face at ``size`` pixels (and ``weight`` on a variable font's ``wght`` axis), cached in this process."""
    font = ImageFont.truetype(path, size=size, layout_engine=ImageFont.Layout.BASIC)
    if weight is not None and axes:
        values = list(axes)
        for i, axis in enumerate(font.get_variation_axes()):
            name = axis.get("name", b"")
            name = name.decode("ascii", "replace") if isinstance(name, bytes) else str(name)
            if name.strip().lower() in ("weight", "wght"):
                values[i] = weight
        font.set_variation_by_axes(values)
    return font


FontKey = tuple[str, int, "float | None", tuple[float, ...]]  # (path, size, weight, axes): one face of one font


@functools.lru_cache(maxsize=40_000)  # about 2 kB each: at most 80 MB per process
def glyph(key: FontKey, symbol: str, stroke: int) -> tuple[np.ndarray, int, int, float]:
    """``symbol``'s coverage mask (uint8), its offset from the pen position on the baseline, and its advance.

    Words are laid out from these cached glyphs rather than by FreeType each time: hinted fonts run their bytecode
    for every glyph drawn, which made drawing a word up to 50 times slower than copying it."""
    font = load_font(*key)
    x0, y0, x1, y1 = font.getbbox(symbol, anchor="ls", stroke_width=stroke)
    image = Image.new("L", (max(1, x1 - x0), max(1, y1 - y0)), 0)
    ImageDraw.Draw(image).text((-x0, -y0), symbol, fill=255, font=font, anchor="ls", stroke_width=stroke,
                               stroke_fill=255)  # fmt: skip
    return np.asarray(image), x0, y0, font.getlength(symbol)


@functools.lru_cache(maxsize=4096)
def cap_top(key: FontKey) -> int:
    """How far above the baseline capitals reach (a negative offset), so that words without ascenders are drawn at the
    scale of those with them."""
    return load_font(*key).getbbox("H", anchor="ls")[1]


@functools.lru_cache(maxsize=4096)
def ink_density(key: FontKey) -> float:
    """The share of an "H"'s box that is ink: about 0.1 for a thin face, 0.3 for a regular one, 0.7 for a heavy
    display face."""
    mask = glyph(key, "H", 0)[0]
    return float(mask.mean()) / 255


def draw_text(key: FontKey, text: str, strokes: tuple[int, ...], spacing: float, margin: tuple[int, int]):
    """``text`` laid out from cached glyphs: one uint8 mask per stroke width in ``strokes`` on a canvas with
    ``margin`` (x, y) around the text, and the text's height (cap height or ascenders to baseline or descenders)."""
    layouts = []
    for stroke in strokes:
        pen, placed = 0.0, []
        for symbol in text:
            mask, dx, dy, advance = glyph(key, symbol, stroke)
            placed.append((mask, int(round(pen)) + dx, dy))
            pen += advance + spacing
        layouts.append(placed)
    everything = [item for placed in layouts for item in placed]
    left = min(x for _, x, _ in everything)
    right = max(x + m.shape[1] for m, x, _ in everything)
    top = min(min(y for _, _, y in everything), cap_top(key))
    bottom = max(max(y + m.shape[0] for m, _, y in everything), 0)
    width, height = right - left + 2 * margin[0], bottom - top + 2 * margin[1]
    canvases = []
    for placed in layouts:
        canvas = np.zeros((height, width), dtype=np.uint8)
        for mask, x, y in placed:
            x, y = x - left + margin[0], y - top + margin[1]
            region = canvas[y : y + mask.shape[0], x : x + mask.shape[1]]
            np.maximum(region, mask, out=region)
        canvases.append(canvas)
    return canvases, float(bottom - top)
