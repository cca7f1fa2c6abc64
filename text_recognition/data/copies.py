"""Two sources of one data tree that hold the same samples (a datasets folder converted inside the LMDB tree it
came from), told apart from sources that merely have the same length by a few reads."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import datasets

from .lmdb import LmdbReader, is_lmdb

PROBED_ROWS = 16  # rows compared, spread over two sources of the same length, to tell a copy


def check_no_copies(root: str | os.PathLike, sources: dict[str, Path]) -> None:
    """No two of ``sources`` hold the same samples: a datasets folder that ``convert_lmdb.py`` wrote inside the LMDB
    tree it converted (``data/MJ`` and ``data/MJ_arrow``) would be read as a second source, each sample counting
    twice. Told by the same sample count and the same label and image bytes at ``PROBED_ROWS`` rows spread over
    them (the first and last included), so a copy is found whatever its name, at the cost of a few reads.

    Raises:
        ValueError: two sources hold the same samples; names both, and how to keep one.
    """
    if len(sources) < 2:
        return
    by_length: dict[int, list[str]] = {}
    for name, path in sources.items():
        by_length.setdefault(_num_samples(path), []).append(name)
    for length, names in by_length.items():
        if length == 0 or len(names) < 2:
            continue
        rows = sorted({round(i * (length - 1) / (PROBED_ROWS - 1)) for i in range(PROBED_ROWS)})
        probes: dict[tuple, str] = {}
        for name in names:
            probe = _probe(sources[name], rows)
            if probe not in probes:
                probes[probe] = name
                continue
            first, second = sorted((probes[probe], name), key=lambda n: (not is_lmdb(sources[n]), n))
            converted = (f"{second} looks like a datasets folder that scripts/convert_lmdb.py wrote from the LMDB "
                         f"{first}; " if is_lmdb(sources[first]) and not is_lmdb(sources[second]) else "")  # fmt: skip
            raise ValueError(
                f"{os.fspath(root)!r} holds the same {length:,} samples twice: the sources {first} and {second} have "
                f"the same labels and images (compared at {len(rows)} rows spread over them). {converted}every "
                f"sample would count twice. Keep one in the tree: move the other out of {os.fspath(root)!r} "
                f"(scripts/convert_lmdb.py --output_dir outside the LMDB tree)."
            )


def _num_samples(path: Path) -> int:
    if is_lmdb(path):
        with LmdbReader(path) as reader:
            return len(reader)
    return datasets.load_from_disk(os.fspath(path)).num_rows


def _probe(path: Path, rows: list[int]) -> tuple:
    """(label, hash of the image bytes) at 0-based ``rows`` of a source."""
    if is_lmdb(path):
        with LmdbReader(path) as reader:
            samples = [reader.get(row + 1) for row in rows]
    else:
        dataset = datasets.load_from_disk(os.fspath(path))
        if not {"image", "label"} <= set(dataset.column_names):
            return (os.fspath(path),)  # not text data: the loader says so
        picked = dataset.cast_column("image", datasets.Image(decode=False)).select(rows)
        samples = [(image.get("bytes") or image.get("path"), label)
                   for image, label in zip(picked["image"], picked["label"], strict=True)]  # fmt: skip
    return tuple((label, hashlib.blake2b(image if isinstance(image, bytes) else str(image).encode()).digest())
                 for image, label in samples)  # fmt: skip
