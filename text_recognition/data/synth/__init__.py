"""Synthetic word images: ``SyntheticWords``, the simple and fast generator (random strings or a word list, one
font, flat backgrounds) for smoke tests and tutorials, and ``RealisticWords``, the engine whose crops look like scene
text (real word frequencies, 56 pip-installed font families, photographs and textures, geometry, clutter and camera
effects). Both are deterministic in ``(seed, index)``, render with ``render(index)`` and write LMDBs, datasets,
folders and Parquet files."""

from .realistic import DEFAULT_CASE_MIX, DEFAULT_EFFECTS, DEFAULT_TEXT_MIX, RealisticWords
from .simple import CASES, FONT_SUFFIXES, SyntheticWords
from .text import CASE_KINDS, TEXT_KINDS
from .writer import IMAGE_FORMATS

__all__ = [
    "CASES",
    "CASE_KINDS",
    "DEFAULT_CASE_MIX",
    "DEFAULT_EFFECTS",
    "DEFAULT_TEXT_MIX",
    "FONT_SUFFIXES",
    "IMAGE_FORMATS",
    "RealisticWords",
    "SyntheticWords",
    "TEXT_KINDS",
]
