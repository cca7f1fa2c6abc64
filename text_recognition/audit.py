"""A look at the data before training: what each source holds and what DTRB's filter will do with it.

Labels first: every label is read once, streamed (an LMDB without its images, a datasets folder by its ``label``
column, a Hub dataset as a stream), counting symbols, lengths, symbols outside the charset (with examples) and the
samples DTRB's filter drops per reason for the given flags. With ``images=True`` every image is read too: sizes and
aspect ratios, undecodable images (their indices), exact duplicates (an 8-byte BLAKE2b hash per image) and the same
image stored with different labels. Memory stays bounded: counters over distinct values, and for images fixed-size
NumPy arrays (20 bytes per sample: 15M samples take 300 MB), never the images or labels themselves.
"""

from __future__ import annotations

import hashlib
import io
import os
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .config import ModelConfig
from .data.datasets import is_source, label_rules
from .data.labels import KEPT
from .data.lmdb import LmdbReader, find_sources, is_lmdb, select_sources
from .hub import is_repo_id
from .progress import progress

#: Examples kept per out-of-charset symbol, and corrupt indices / duplicate groups listed in full.
MAX_EXAMPLES = 3
MAX_LISTED = 100


@dataclass
class SourceAudit:
    """What one source holds. Indices are the source's own (1-based for LMDBs, as stored; 0-based rows otherwise)."""

    name: str
    samples: int = 0
    symbols: Counter = field(default_factory=Counter)
    out_of_charset: Counter = field(default_factory=Counter)
    out_of_charset_examples: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    lengths: Counter = field(default_factory=Counter)
    too_long: int = 0
    filter_reasons: Counter = field(default_factory=Counter)
    corrupt: int = 0
    corrupt_indices: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "symbols": dict(self.symbols.most_common()),
            "out_of_charset": {s: {"count": n, "examples": [{"index": i, "label": label} for i, label in
                                                            self.out_of_charset_examples.get(s, [])]}
                               for s, n in self.out_of_charset.most_common()},  # fmt: skip
            "label_lengths": {str(k): v for k, v in sorted(self.lengths.items())},
            "longer_than_batch_max_length": self.too_long,
            "filter": dict(self.filter_reasons),
            **({"corrupt_images": self.corrupt, "corrupt_indices": self.corrupt_indices}
               if self.corrupt or self.corrupt_indices else {}),
        }


@dataclass
class ImageStats:
    """Per-sample image facts, as arrays over every sample of every source in order."""

    widths: np.ndarray
    heights: np.ndarray
    hashes: np.ndarray  # uint64, 0 for an undecodable image
    label_crcs: np.ndarray  # uint32 of the stored label
    owners: list[tuple[str, int]]  # (source, first position in the arrays)

    def locate(self, position: int, index_base: dict[str, int]) -> tuple[str, int]:
        name, start = max((o for o in self.owners if o[1] <= position), key=lambda o: o[1])
        return name, position - start + index_base[name]


@dataclass
class AuditReport:
    data: str
    character: str
    batch_max_length: int
    sensitive: bool
    data_filtering_off: bool
    sources: list[SourceAudit]
    images: dict[str, Any] | None = None

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.sources)

    def to_json(self) -> dict[str, Any]:
        return {
            "data": self.data,
            "rules": {"character": self.character, "batch_max_length": self.batch_max_length,
                      "sensitive": self.sensitive, "data_filtering_off": self.data_filtering_off},  # fmt: skip
            "samples": self.samples,
            "sources": {s.name: s.to_json() for s in self.sources},
            "images": {k: v for k, v in self.images.items() if not k.startswith("_")} if self.images else None,
        }

    def label_table(self) -> str:
        """The label part: samples, what the filter keeps and drops, lengths and symbols outside the charset."""
        reasons = sorted({r for s in self.sources for r in s.filter_reasons} - {KEPT})
        head = ["source", "samples", "kept", *[f"dropped: {r}" for r in reasons], f"> {self.batch_max_length} chars",
                "max length", "symbols outside the charset"]  # fmt: skip
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for s in self.sources:
            outside = ", ".join(f"{symbol!r} x{n}" for symbol, n in s.out_of_charset.most_common(8))
            more = len(s.out_of_charset) - 8
            outside += f", and {more} more" if more > 0 else ""
            cells = [s.name, f"{s.samples:,}", f"{s.filter_reasons[KEPT]:,}",
                     *[f"{s.filter_reasons[r]:,}" for r in reasons], f"{s.too_long:,}",
                     str(max(s.lengths) if s.lengths else 0), outside or "none"]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
        examples = []
        for s in self.sources:
            for symbol, found in s.out_of_charset_examples.items():
                shown = "; ".join(f"#{i} {label!r}" for i, label in found)
                examples.append(f"  {s.name}: {symbol!r} e.g. {shown}")
        if examples:
            lines += ["", "Examples of symbols outside the charset:", *examples[:40]]
        return "\n".join(lines)

    def table(self) -> str:
        lines = [f"Audit of {self.data}: {self.samples:,} samples in {len(self.sources)} source(s); charset "
                 f"{len(self.character)} symbols, batch_max_length {self.batch_max_length}, "
                 f"{'case-sensitive' if self.sensitive else 'lowercased (not --sensitive)'}"
                 f"{', data_filtering_off' if self.data_filtering_off else ''}", "", self.label_table()]  # fmt: skip
        if self.images is not None:
            im = self.images
            lines += ["", f"Images: {im['decoded']:,} decoded, {im['corrupt']:,} undecodable; width "
                      f"{_range_text(im['width'])}, height {_range_text(im['height'])}, aspect ratio (w/h) "
                      f"{_range_text(im['aspect_ratio'])}",
                      f"Exact duplicates: {im['duplicate_samples']:,} samples repeat an earlier image "
                      f"({im['duplicate_groups']:,} groups); same image with different labels: "
                      f"{im['conflicting_groups']:,} groups"]  # fmt: skip
            for group in im["conflicting_examples"][:10]:
                lines.append("  " + "; ".join(f"{g['source']}#{g['index']} {g['label']!r}" for g in group))
        return "\n".join(lines)


def _range_text(summary: dict[str, float]) -> str:
    if not summary:
        return "n/a"
    return (f"median {summary['median']:g} (5th-95th percentile {summary['p5']:g}-{summary['p95']:g}, "
            f"min {summary['min']:g}, max {summary['max']:g})")  # fmt: skip


def _summary(values: np.ndarray) -> dict[str, float]:
    if not len(values):
        return {}
    p5, median, p95 = np.percentile(values, [5, 50, 95])
    return {"min": float(values.min()), "p5": round(float(p5), 3), "median": round(float(median), 3),
            "p95": round(float(p95), 3), "max": float(values.max())}  # fmt: skip


# ---- reading sources, labels first ---------------------------------------------------------------------------------


class _Source:
    """One source as two streams: its labels (cheap), and its (image bytes, label) pairs."""

    def __init__(self, name: str, kind: str, handle: Any, length: int | None, index_base: int) -> None:
        self.name, self.kind, self.handle, self.length, self.index_base = name, kind, handle, length, index_base

    def labels(self) -> Iterator[str]:
        if self.kind == "lmdb":
            yield from self.handle.labels()
        elif self.kind == "folder":
            for start in range(0, len(self.handle), 10_000):
                yield from self.handle[start : start + 10_000]["label"]
        else:
            for row in self.handle.select_columns(["label"]):
                yield row["label"]

    def samples(self) -> Iterator[tuple[bytes | None, str]]:
        if self.kind == "lmdb":
            yield from self.handle
            return
        rows = self.handle
        for row in rows:
            image = row["image"]
            yield (image.get("bytes") if isinstance(image, dict) else None), row["label"]


def open_sources(data: str | os.PathLike, select_data: str = "/") -> list[_Source]:
    """The sources under ``data`` (LMDB tree, datasets folders, or a Hub dataset id), streamed.

    Raises:
        FileNotFoundError: nothing at ``data``, or no source matching ``select_data``.
    """
    import datasets

    path = Path(data)
    if path.exists():
        found = find_sources(path, is_source)
        sources = select_sources(found, select_data)
        if not sources:
            raise FileNotFoundError(
                f"No dataset under {os.fspath(path)!r} matching select_data {select_data!r}: expected LMDB folders "
                f"(data.mdb) or datasets folders (save_to_disk). Found: {sorted(found)}"
            )
        opened = []
        for name, source in sources.items():
            if is_lmdb(source):
                reader = LmdbReader(source)
                opened.append(_Source(name, "lmdb", reader, len(reader), 1))
            else:
                dataset = datasets.load_from_disk(os.fspath(source)).cast_column("image", datasets.Image(decode=False))
                opened.append(_Source(name, "folder", dataset, len(dataset), 0))
        return opened
    name = os.fspath(data)
    if not is_repo_id(name):
        raise FileNotFoundError(f"Data folder not found: {name!r} (and it is no Hub dataset id).")
    configs = datasets.get_dataset_config_names(name)
    token = select_data.strip("/")
    opened = []
    for config in configs:
        if token and not config.startswith(token):
            continue
        stream = datasets.load_dataset(name, config, split="train", streaming=True)
        stream = stream.cast_column("image", datasets.Image(decode=False))
        opened.append(_Source(config if len(configs) > 1 else name, "stream", stream, None, 0))
    if not opened:
        raise FileNotFoundError(f"The Hub dataset {name!r} has no config matching select_data {select_data!r}.")
    return opened


def audit(
    data: str | os.PathLike,
    config: ModelConfig,
    *,
    select_data: str = "/",
    data_filtering_off: bool = False,
    images: bool = False,
    show_progress: bool = True,
) -> AuditReport:
    """Audit every source under ``data`` for a model of ``config`` (its charset, case mode and
    ``batch_max_length`` are the filter's rules).

    Args:
        data: an LMDB tree, datasets folders, or a Hub dataset id (streamed).
        config: the model's configuration.
        select_data: the sources to audit, as DTRB's ``select_data`` (one token; ``"/"``: all).
        data_filtering_off: report the filter of DTRB's ``--data_filtering_off``.
        images: read every image too (sizes, undecodable, duplicates); without it only labels are read.
        show_progress: a progress bar (plain lines off a terminal).
    """
    rules = label_rules(config, data_filtering_off)
    charset = set(config.character)
    sources = open_sources(data, select_data)
    audits = []
    for source in sources:
        result = SourceAudit(source.name)
        bar = progress(total=source.length, desc=f"labels of {source.name}", unit="label", disable=not show_progress)
        for position, label in enumerate(source.labels()):
            index = position + source.index_base
            result.samples += 1
            result.symbols.update(label)
            result.lengths[len(label)] += 1
            if len(label) > config.batch_max_length:
                result.too_long += 1
            seen = label if config.sensitive else label.lower()
            for symbol in set(seen) - charset:
                result.out_of_charset[symbol] += seen.count(symbol)
                examples = result.out_of_charset_examples.setdefault(symbol, [])
                if len(examples) < MAX_EXAMPLES:
                    examples.append((index, label))
            result.filter_reasons[rules.reason(label)] += 1
            bar.update(1)
        bar.close()
        result.filter_reasons[KEPT] += 0  # present even when nothing is kept
        audits.append(result)
    report = AuditReport(os.fspath(data), config.character, config.batch_max_length, config.sensitive,
                         data_filtering_off, audits)  # fmt: skip
    if images:
        report.images = _audit_images(sources, audits, show_progress)
    return report


def _audit_images(sources: list[_Source], audits: list[SourceAudit], show_progress: bool) -> dict[str, Any]:
    total = sum(a.samples for a in audits)
    widths = np.zeros(total, dtype=np.int32)
    heights = np.zeros(total, dtype=np.int32)
    hashes = np.zeros(total, dtype=np.uint64)
    crcs = np.zeros(total, dtype=np.uint32)
    owners, position = [], 0
    bar = progress(total=total, desc="images", unit="image", disable=not show_progress)
    for source, result in zip(sources, audits):
        owners.append((source.name, position))
        for offset, (image, label) in enumerate(source.samples()):
            if position >= total:  # a stream that grew between the passes
                break
            crcs[position] = zlib.crc32(label.encode("utf-8"))
            size = _image_size(image)
            if size is None:
                result.corrupt += 1
                if len(result.corrupt_indices) < MAX_LISTED:
                    result.corrupt_indices.append(offset + source.index_base)
            else:
                widths[position], heights[position] = size
                digest = hashlib.blake2b(image, digest_size=8).digest()
                hashes[position] = max(int.from_bytes(digest, "little"), 1)  # 0 marks an undecodable image
            position += 1
            bar.update(1)
    bar.close()
    decoded = hashes != 0
    stats = ImageStats(widths, heights, hashes, crcs, owners)
    index_base = {s.name: s.index_base for s in sources}
    aspect = widths[decoded] / np.maximum(heights[decoded], 1)

    # duplicates: sort the decoded hashes, find runs
    positions = np.flatnonzero(decoded)
    order = positions[np.argsort(hashes[positions], kind="stable")]
    sorted_hashes = hashes[order]
    starts = np.flatnonzero(np.r_[True, sorted_hashes[1:] != sorted_hashes[:-1]])
    sizes = np.diff(np.r_[starts, len(order)])
    repeated = np.flatnonzero(sizes > 1)
    conflicting, examples = 0, []
    for run in repeated:
        members = order[starts[run] : starts[run] + sizes[run]]
        if len(set(crcs[members].tolist())) > 1:
            conflicting += 1
            if len(examples) < MAX_LISTED:
                examples.append([_member(stats, index_base, sources, int(m)) for m in sorted(members)[:5]])
    return {
        "decoded": int(decoded.sum()),
        "corrupt": int((~decoded).sum()),
        "width": _summary(widths[decoded]),
        "height": _summary(heights[decoded]),
        "aspect_ratio": _summary(aspect),
        "duplicate_samples": int((sizes[repeated] - 1).sum()),
        "duplicate_groups": int(len(repeated)),
        "conflicting_groups": conflicting,
        "conflicting_examples": examples,
        "_arrays": stats,  # for plots; dropped from the JSON
    }


def _member(stats: ImageStats, index_base: dict[str, int], sources: list[_Source], position: int) -> dict[str, Any]:
    name, index = stats.locate(position, index_base)
    source = next(s for s in sources if s.name == name)
    label = ""
    if source.kind == "lmdb":
        label = source.handle.get(index)[1]
    elif source.kind == "folder":
        label = source.handle[index]["label"]
    return {"source": name, "index": index, "label": label}


def _image_size(data: bytes | None) -> tuple[int, int] | None:
    """(width, height) of encoded image bytes that PIL fully decodes; None when it cannot."""
    if not data:
        return None
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return (image.width, image.height) if image.width > 0 and image.height > 0 else None
    except Exception:  # PIL raises many types for bad data: all mean "undecodable"
        return None


def write_audit(report: AuditReport, folder: str | os.PathLike, plots: bool = False) -> list[Path]:
    """``audit.json`` (and with ``plots``, PNG histograms) under ``folder``; returns the files written."""
    import json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    values = report.to_json()
    arrays = report.images.get("_arrays") if report.images else None
    path = folder / "audit.json"
    tmp = folder / ".audit.json.tmp"
    tmp.write_text(json.dumps(values, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    written = [path]
    if plots:
        from .plots import histogram

        symbols = Counter()
        lengths = Counter()
        for s in report.sources:
            symbols.update(s.symbols)
            lengths.update(s.lengths)
        written.append(histogram(dict(symbols), folder / "symbols.png", "Symbols (60 most frequent)", "symbol",
                                 top=60))  # fmt: skip
        written.append(histogram(dict(lengths), folder / "label_lengths.png",
                                 f"Label lengths (batch_max_length {report.batch_max_length})", "characters"))
        if arrays is not None:
            decoded = arrays.hashes != 0
            aspect = arrays.widths[decoded] / np.maximum(arrays.heights[decoded], 1)
            written.append(histogram(aspect, folder / "aspect_ratios.png", "Aspect ratios (width / height)", "w / h"))
            written.append(histogram(arrays.heights[decoded], folder / "heights.png", "Image heights", "pixels"))
    return written
