"""DTRB LMDBs trained in place: one pass over the labels (images are not read) gives the rows that DTRB's filter
keeps, cached by the LMDB's fingerprint; ``LmdbSource`` then serves ``image`` bytes and ``label`` per batch, from
each DataLoader worker's own read-only environment. No Arrow copy is made.

The cache is a ``.npy`` of kept rows (``uint32``, or ``int64`` past 4 billion samples; none when every row is kept)
and a ``.json`` of counts, in ``$HF_DATASETS_CACHE/text_recognition/lmdb_labels/`` (where the Arrow conversion
used to go). It is not written beside the LMDB: data folders are often read-only or shared between users, and a
training run must not write into them. Nor in the run's output folder: every run would then scan again. The kept
rows are memory-mapped, so DataLoader workers share one copy of the pages instead of each holding its own.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .labels import KEPT, OUT_OF_CHARSET, LabelRules
from .lmdb import LmdbFormatError, LmdbReader, image_key, label_key, lmdb_fingerprint

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
NUM_EXAMPLES = 5  # labels kept per reason for the report


def default_cache_dir() -> Path:
    import datasets.config

    return Path(datasets.config.HF_DATASETS_CACHE) / "text_recognition" / "lmdb_labels"


def _fix_hint(path: Path) -> str:
    return (
        f"Rewrite it with scripts/create_lmdb_dataset.py, or move {str(path)!r} out of --train_data/--valid_data "
        f"to train without it."
    )


@dataclass
class LabelScan:
    """What the label pass over one LMDB found."""

    num_samples: int
    kept: np.ndarray | None  # 0-based rows (LMDB index - 1) kept, ascending; None when every row is kept
    counts: Counter = field(default_factory=Counter)  # reason -> samples
    examples: dict[str, list[list[Any]]] = field(default_factory=dict)  # reason -> [[row, label], ...]
    dtrb_differs: Counter = field(default_factory=Counter)  # "kept_by_dtrb" / "dropped_by_dtrb": where the
    # unescaped regex of a custom charset would have decided otherwise
    changed: int = 0  # kept samples whose trained label differs from the stored one beyond lowercasing
    changed_examples: list[list[Any]] = field(default_factory=list)  # [[row, stored, trained], ...]
    seconds: float = 0.0
    cached: bool = False

    @property
    def num_kept(self) -> int:
        return self.num_samples if self.kept is None else len(self.kept)


def _rules_key(rules: LabelRules) -> str:
    return json.dumps([CACHE_VERSION, rules.character, rules.batch_max_length, rules.sensitive,
                       rules.data_filtering_off])  # fmt: skip


def scan(labels: Iterable[str], num_samples: int, rules: LabelRules) -> LabelScan:
    """Decide for each of ``num_samples`` labels (in row order) whether it is kept, counting reasons and keeping
    a few examples of each; the kept rows are a numpy array (one byte per row while scanning)."""
    start = time.perf_counter()
    keep = np.ones(num_samples, dtype=bool)
    counts: Counter = Counter()
    examples: dict[str, list[list[Any]]] = {}
    differs: Counter = Counter()
    changed, changed_examples = 0, []
    reason_of, dtrb_reason = rules.reason, rules.dtrb_reason
    compare_dtrb = not rules.dtrb_charset and not rules.data_filtering_off
    report_changes = rules.data_filtering_off
    row = -1
    for row, label in enumerate(labels):
        reason = reason_of(label)
        counts[reason] += 1
        if reason != KEPT:
            keep[row] = False
            shown = examples.setdefault(reason, [])
            if len(shown) < NUM_EXAMPLES:
                shown.append([row, label])
        if compare_dtrb and reason in (KEPT, OUT_OF_CHARSET):
            theirs = dtrb_reason(label)
            if theirs != reason:
                differs["kept_by_dtrb" if theirs == KEPT else "dropped_by_dtrb"] += 1
        if report_changes and reason == KEPT:
            trained = rules.clean(label)
            if trained != rules.trained_label(label):
                changed += 1
                if len(changed_examples) < NUM_EXAMPLES:
                    changed_examples.append([row, label, trained])
    if row + 1 != num_samples:
        raise ValueError(f"Expected {num_samples} labels, got {row + 1}.")
    dtype = np.uint32 if num_samples < 2**32 else np.int64
    kept = None if counts[KEPT] == num_samples else np.flatnonzero(keep).astype(dtype)
    return LabelScan(num_samples, kept, counts, examples, differs, changed, changed_examples,
                     time.perf_counter() - start)  # fmt: skip


def _lmdb_labels(reader: LmdbReader, txn) -> Iterator[str]:
    """Every label in key order through one cursor, checking that the keys run label-000000001 .. num-samples."""
    path, n = reader.path, reader.num_samples
    cursor = txn.cursor()
    row, expected = 0, label_key(1)
    if n and cursor.set_range(b"label-"):
        for key, value in cursor:
            if key != expected:
                break  # a gap or the end of the labels: reported below
            try:
                yield value.decode("utf-8")
            except UnicodeDecodeError as error:
                raise LmdbFormatError(
                    f"The LMDB at {str(path)!r} has a label that is not UTF-8 at key {key.decode()} "
                    f"({error.reason} at byte {error.start}: {value[:40]!r}). {_fix_hint(path)}"
                ) from None
            row += 1
            if row == n:
                break
            expected = label_key(row + 1)
    if row < n:
        raise LmdbFormatError(
            f"The LMDB at {str(path)!r} says num-samples={n} but has no key {expected.decode()} (sample "
            f"{row + 1}): it is truncated, or num-samples is wrong. {_fix_hint(path)}"
        )


def _check_image_keys(reader: LmdbReader, txn) -> None:
    """Every image key from image-000000001 to num-samples exists (keys only: image bytes are not read)."""
    path, n = reader.path, reader.num_samples
    cursor = txn.cursor()
    row, expected = 0, image_key(1)
    if n and cursor.set_range(b"image-"):
        for key in cursor.iternext(keys=True, values=False):
            if key != expected:
                break
            row += 1
            if row == n:
                break
            expected = image_key(row + 1)
    if row < n:
        raise LmdbFormatError(
            f"The LMDB at {str(path)!r} has no key {expected.decode()} (the image of sample {row + 1} of {n}): "
            f"it is truncated or corrupt. {_fix_hint(path)}"
        )


def scan_labels(reader: LmdbReader, rules: LabelRules) -> LabelScan:
    """Read every label of the LMDB in key order (one cursor, no image read) and decide which rows are kept.
    Image keys are checked to exist (keys only), so that a missing image is found here, not mid-training.

    Raises:
        LmdbFormatError: a missing label or image key (``num-samples`` larger than the entries), or a label that
            is not UTF-8; the message names the LMDB, the key and what to do.
    """
    start = time.perf_counter()
    with reader.env.begin(buffers=False) as txn:
        result = scan(_lmdb_labels(reader, txn), reader.num_samples, rules)
        _check_image_keys(reader, txn)
    result.seconds = time.perf_counter() - start
    return result


def _cache_stem(reader: LmdbReader, rules: LabelRules) -> str:
    key = f"{lmdb_fingerprint(reader.path)}|{_rules_key(rules)}"
    return hashlib.sha256(key.encode()).hexdigest()[:24]


def _write_atomically(path: Path, write) -> None:
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _save(scan: LabelScan, stem: Path, reader: LmdbReader) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    if scan.kept is not None:
        _write_atomically(stem.with_suffix(".npy"), lambda f: np.save(f, scan.kept, allow_pickle=False))
    meta = {
        "version": CACHE_VERSION, "lmdb": str(reader.path.resolve()), "num_samples": scan.num_samples,
        "all_kept": scan.kept is None, "counts": dict(scan.counts), "examples": scan.examples,
        "dtrb_differs": dict(scan.dtrb_differs), "changed": scan.changed, "changed_examples": scan.changed_examples,
        "seconds": scan.seconds,
    }  # fmt: skip
    _write_atomically(stem.with_suffix(".json"), lambda f: f.write(json.dumps(meta).encode()))  # written last


def _load(stem: Path, num_samples: int) -> LabelScan | None:
    try:
        meta = json.loads(stem.with_suffix(".json").read_text())
        if meta.get("version") != CACHE_VERSION or meta["num_samples"] != num_samples:
            return None
        kept = None if meta["all_kept"] else np.load(stem.with_suffix(".npy"), mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, KeyError):
        return None  # absent or damaged: scan again
    return LabelScan(num_samples, kept, Counter(meta["counts"]), meta["examples"], Counter(meta["dtrb_differs"]),
                     meta["changed"], meta["changed_examples"], meta["seconds"], cached=True)  # fmt: skip


def cached_scan(reader: LmdbReader, rules: LabelRules, cache_dir: str | os.PathLike | None = None) -> LabelScan:
    """``scan_labels``, served from the cache when the LMDB (by fingerprint) and the rules are unchanged. A cache
    that cannot be written (read-only, full disk) only costs a warning: the scan is used from memory."""
    stem = Path(cache_dir or default_cache_dir()) / _cache_stem(reader, rules)
    scan = _load(stem, reader.num_samples)
    if scan is not None:
        return scan
    scan = scan_labels(reader, rules)
    try:
        _save(scan, stem, reader)
    except OSError as error:
        logger.warning("Could not cache the label pass of %s in %s (%s); it runs again next time.",
                       reader.path, stem.parent, error)  # fmt: skip
        return scan
    loaded = _load(stem, reader.num_samples)  # memory-mapped: shared by the DataLoader workers
    return loaded if loaded is not None else scan


class LmdbSource:
    """The kept rows of one DTRB LMDB, read in place: ``len()``, ``source[i]`` -> ``{"image": {"bytes", "path"},
    "label"}`` and ``source[[i, j, ...]]`` -> ``{"image": [...], "label": [...]}`` (one read transaction), the same
    shapes as a ``datasets.Dataset`` with ``Image(decode=False)``, so ``MixedSources`` and the collator take it.

    Args:
        path: the LMDB folder.
        rows: 0-based LMDB rows to serve, in order (a numpy array, possibly memory-mapped); ``None``: all.
    """

    index_base = 1  # its samples are named by their 1-based LMDB index (keys image-%09d), not by their row

    def __init__(self, path: str | os.PathLike, rows: np.ndarray | None = None) -> None:
        self.reader = LmdbReader(path)
        self.rows = rows
        self.num_rows = self.reader.num_samples if rows is None else len(rows)

    @property
    def path(self) -> Path:
        return self.reader.path

    def __len__(self) -> int:
        return self.num_rows

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        rows = self.rows
        if isinstance(rows, np.memmap) and rows.filename:  # a spawned worker maps the file, not a pickled copy
            state["rows"] = ("memmap", rows.filename)
        return state

    def __setstate__(self, state: dict) -> None:
        rows = state.get("rows")
        if isinstance(rows, tuple) and rows[0] == "memmap":
            state["rows"] = np.load(rows[1], mmap_mode="r", allow_pickle=False)
        self.__dict__.update(state)

    def _lmdb_index(self, position: int) -> int:
        if not -self.num_rows <= position < self.num_rows:
            raise IndexError(f"Row {position} out of range for {self.num_rows} rows of {str(self.path)!r}.")
        position %= self.num_rows
        return (position if self.rows is None else int(self.rows[position])) + 1

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            image, label = self.reader.get(self._lmdb_index(int(key)))
            return {"image": {"bytes": image, "path": None}, "label": label}
        if isinstance(key, str):
            if key != "label":
                raise KeyError("LmdbSource has columns 'image' and 'label'; column access is for 'label' only.")
            with self.reader.env.begin() as txn:
                return [txn.get(label_key(self._lmdb_index(i))).decode("utf-8") for i in range(self.num_rows)]
        if isinstance(key, slice):
            key = range(*key.indices(self.num_rows))
        images, labels = [], []
        with self.reader.env.begin(buffers=False) as txn:
            for position in key:
                image, label = self.reader._read(txn, self._lmdb_index(int(position)))
                images.append({"bytes": image, "path": None})
                labels.append(label)
        return {"image": images, "label": labels}

    def __repr__(self) -> str:
        return f"LmdbSource({str(self.path)!r}, rows={self.num_rows} of {self.reader.num_samples})"
