"""What every synthetic source shares: encoding, the endless index stream, and writing samples to an LMDB, a
``datasets.Dataset``, a folder of images + ``gt.txt``, or Parquet files, all from ``render(index)``."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import tempfile
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import PIL
from PIL import Image

from ...progress import progress as progress_bar
from ..lmdb import write_lmdb

if TYPE_CHECKING:
    import datasets

IMAGE_FORMATS = ("PNG", "JPEG")
_JPEG_QUALITY = 90


class SampleWriter:
    """Mixin over ``render(index) -> (PIL image, label)``: a subclass sets ``image_format`` and implements
    ``_fingerprint_settings()`` (every setting that changes the images, JSON-able)."""

    image_format: str = "PNG"

    def render(self, index: int) -> tuple[Image.Image, str]:  # pragma: no cover - implemented by subclasses
        raise NotImplementedError

    def _fingerprint_settings(self) -> dict:  # pragma: no cover - implemented by subclasses
        raise NotImplementedError

    def encoded(self, index: int) -> tuple[bytes, str]:
        """Sample ``index`` as ``(image bytes in image_format, label)``, ready for an LMDB or a dataset."""
        image, label = self.render(index)
        buffer = BytesIO()
        if self.image_format == "JPEG":
            image.save(buffer, format="JPEG", quality=_JPEG_QUALITY)
        else:
            image.save(buffer, format="PNG")
        return buffer.getvalue(), label

    def generate(self, count: int, start: int = 0) -> Iterator[tuple[bytes, str]]:
        """Samples ``start`` to ``start + count - 1`` as ``(image bytes, label)``."""
        if count < 0 or start < 0:  # checked here, not at the first ``next``
            raise ValueError(f"count and start must be non-negative, got count={count}, start={start}.")
        return map(self.encoded, range(start, start + count))

    def __iter__(self) -> Iterator[tuple[bytes, str]]:
        """Every sample from index 0 on, without end: ``itertools.islice(synth, n)`` takes the first ``n``."""
        for index in itertools.count():
            yield self.encoded(index)

    def write_lmdb(self, path: str | os.PathLike, count: int, progress: bool = True) -> int:
        """Write samples ``0`` to ``count - 1`` to a new DTRB-format LMDB at ``path``.

        Args:
            path: the LMDB folder (created).
            count: number of samples.
            progress: show a progress bar on stderr.

        Returns:
            The number of samples written.

        Raises:
            FileExistsError: if ``path`` already holds an LMDB.
        """
        samples = progress_bar(self.generate(count), total=count, disable=not progress, desc="rendering",
                               unit=" images")  # fmt: skip
        return write_lmdb(samples, path)

    def to_dataset(self, count: int, cache_dir: str | os.PathLike | None = None) -> datasets.Dataset:
        """Samples ``0`` to ``count - 1`` as a ``datasets.Dataset`` with ``image`` (encoded bytes, stored as they
        are) and ``label`` columns.

        Args:
            count: number of samples.
            cache_dir: where the Arrow file is written (default: the ``datasets`` cache). The cache key is derived
                from every setting, the renderer version and the Pillow and NumPy versions, never from the
                function alone, so different settings never reuse a stale cache.
        """
        import datasets

        from ..datasets import FEATURES  # here: ``datasets`` is slow to import, and write_lmdb needs none of it

        if count < 0:
            raise ValueError(f"count must be non-negative, got {count}.")
        return datasets.Dataset.from_generator(
            _dataset_examples,
            features=FEATURES,
            cache_dir=None if cache_dir is None else os.fspath(cache_dir),
            gen_kwargs={"synth": self, "count": count},
            fingerprint=self._fingerprint(count),
        )

    def save_dataset(self, path: str | os.PathLike, count: int) -> None:
        """``to_dataset(count)`` saved with ``save_to_disk`` at ``path``, without leaving a copy in the cache.

        Raises:
            FileExistsError: if ``path`` exists and is not an empty folder.
        """
        path = _empty_folder(path)
        with tempfile.TemporaryDirectory(prefix="synth_cache_", ignore_cleanup_errors=True) as cache_dir:
            dataset = self.to_dataset(count, cache_dir=cache_dir)
            dataset.save_to_disk(os.fspath(path))
            del dataset  # release the memory map before the cache is deleted

    def write_parquet(self, path: str | os.PathLike, count: int, name: str = "synth") -> Path:
        """``to_dataset(count)`` as a Hub dataset repo folder (Parquet files under ``name/`` and a ``README.md``
        declaring them), ready for ``huggingface-cli upload --repo-type dataset`` or ``--streaming``.

        Raises:
            FileExistsError: if ``path`` exists and is not an empty folder.
        """
        from ..streaming import write_parquet_repo

        path = _empty_folder(path)
        with tempfile.TemporaryDirectory(prefix="synth_cache_", ignore_cleanup_errors=True) as cache_dir:
            dataset = self.to_dataset(count, cache_dir=cache_dir)
            write_parquet_repo({name: dataset}, path)
            del dataset
        return path

    def write_folder(self, path: str | os.PathLike, count: int, progress: bool = True) -> int:
        """Write ``count`` image files and a DTRB gt file (``gt.txt``: ``<file>\t<label>`` per line) into ``path``,
        the input format of ``scripts/create_lmdb_dataset.py``.

        Raises:
            FileExistsError: if ``path`` exists and is not an empty folder.
        """
        path = _empty_folder(path)
        (path / "images").mkdir(parents=True)
        suffix = ".jpg" if self.image_format == "JPEG" else ".png"
        lines = []
        for index, (data, label) in enumerate(
            progress_bar(self.generate(count), total=count, desc="rendering", unit=" images", disable=not progress)
        ):
            name = f"images/word_{index + 1:06d}{suffix}"
            (path / name).write_bytes(data)
            lines.append(f"{name}\t{label}\n")
        (path / "gt.txt").write_text("".join(lines), encoding="utf-8")
        return count

    def _fingerprint(self, count: int) -> str:
        settings = {
            **self._fingerprint_settings(),
            "class": type(self).__name__,
            "count": count,
            "versions": [PIL.__version__, np.__version__],
        }
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()
        return f"synthetic-words-{digest[:32]}"


def _dataset_examples(synth: SampleWriter, count: int) -> Iterator[dict]:
    for image, label in synth.generate(count):
        yield {"image": {"bytes": image, "path": None}, "label": label}


def _empty_folder(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise FileExistsError(f"{str(path)!r} already exists and is not empty; choose another path or delete it.")
    return path


def files_fingerprint(paths) -> list:
    """(resolved path, size, mtime) of each file: a changed font or texture file changes the cache key."""
    return [(os.fspath(Path(p).resolve()), Path(p).stat().st_size, Path(p).stat().st_mtime_ns) for p in paths]
