"""DTRB LMDBs as Hugging Face ``datasets``: conversion (image bytes kept as they are), loading from a folder, an
LMDB tree or the Hub, and DTRB's label filtering done on the labels alone, without decoding images."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import datasets
import numpy as np
from PIL import Image

from ..hub import is_repo_id
from .labels import LabelRules
from .copies import check_no_copies
from .lmdb_index import LabelScan, scan
from ..progress import progress as progress_bar
from .lmdb import LmdbFormatError, LmdbReader, find_sources, image_key, is_lmdb, lmdb_fingerprint, select_sources

if TYPE_CHECKING:
    from ..config import ModelConfig

logger = logging.getLogger(__name__)

FEATURES = datasets.Features({"image": datasets.Image(), "label": datasets.Value("string")})


def is_dataset_folder(path: str | os.PathLike) -> bool:
    """A folder written by ``Dataset.save_to_disk``."""
    path = Path(path)
    return (path / "state.json").is_file() and (path / "dataset_info.json").is_file()


def is_source(path: str | os.PathLike) -> bool:
    return is_lmdb(path) or is_dataset_folder(path)


def image_is_readable(data: bytes, full_decode: bool = False) -> bool:
    """Whether PIL can identify (or, with ``full_decode``, fully decode) encoded image bytes."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if full_decode:
                image.load()
            return image.width > 0 and image.height > 0
    except Exception:  # PIL raises many types for bad data: all mean "not decodable"
        return False


@dataclass
class ConversionStats:
    """What a conversion found, per source."""

    samples: int = 0
    image_bytes: int = 0
    undecodable: list[int] = field(default_factory=list)  # 1-based LMDB indices
    seconds: float = 0.0


def _lmdb_rows(path: str, stats: ConversionStats, full_decode: bool, progress: bool) -> Iterator[dict]:
    reader = LmdbReader(path)
    bar = progress_bar(total=len(reader), desc=f"converting {Path(path).name}", unit=" samples", disable=not progress)
    with reader, bar:
        for index, (image, label) in enumerate(reader, start=1):
            stats.samples += 1
            stats.image_bytes += len(image)
            if not image_is_readable(image, full_decode):
                stats.undecodable.append(index)
            yield {"image": {"bytes": image, "path": None}, "label": label}
            if index % 1000 == 0:
                bar.update(1000)
        bar.update(len(reader) % 1000)


def lmdb_to_dataset(
    path: str | os.PathLike,
    *,
    stats: ConversionStats | None = None,
    full_decode: bool = False,
    progress: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> datasets.Dataset:
    """One DTRB LMDB as a ``datasets.Dataset`` with columns ``image`` (``datasets.Image()``, the LMDB's encoded bytes
    kept as they are) and ``label`` (str), in LMDB order.

    The Arrow files go to the datasets cache (or ``cache_dir``) under a fingerprint of the LMDB (path, count, size,
    modification time), so a rewritten LMDB is converted again instead of being served from a stale cache.

    Args:
        path: the LMDB folder (holding ``data.mdb``).
        stats: filled with the sample count, image bytes and undecodable images (PIL cannot identify them; with
            ``full_decode`` PIL must also decode them fully, which is slower). Only filled when the conversion
            runs, not on a cache hit; pass a fresh ``cache_dir`` to always convert.
        progress: show a progress bar.

    Raises:
        LmdbFormatError: the LMDB is not in DTRB's format (no or a wrong ``num-samples``, a missing key, a label
            that is not UTF-8), as the generator found it, not wrapped in ``datasets``' ``DatasetGenerationError``.
        ValueError: the LMDB holds no sample.
    """
    with LmdbReader(path) as reader:  # num-samples checked here, before datasets wraps the errors
        if len(reader) == 0:
            raise ValueError(f"The LMDB at {os.fspath(path)!r} holds no sample (num-samples 0): nothing to read. "
                             f"Remove it, or leave it out with --select_data.")  # fmt: skip
    stats = stats if stats is not None else ConversionStats()
    start = time.perf_counter()
    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        dataset = datasets.Dataset.from_generator(
            _lmdb_rows,
            features=FEATURES,
            gen_kwargs={"path": os.fspath(path), "stats": stats, "full_decode": full_decode, "progress": progress},
            cache_dir=os.fspath(cache_dir) if cache_dir else None,
            fingerprint=lmdb_fingerprint(path),
        )
    except datasets.exceptions.DatasetGenerationError as error:
        cause = _lmdb_format_error(error)
        if cause is None:
            raise
        raise cause from None  # the project's own one-line message, found inside datasets' wrapper
    finally:
        if was_enabled:
            datasets.enable_progress_bars()
    stats.seconds = time.perf_counter() - start
    return dataset


def _lmdb_format_error(error: BaseException) -> LmdbFormatError | None:
    """The ``LmdbFormatError`` that caused ``error`` (in its chain of causes), if one did."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, LmdbFormatError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _save_atomically(dataset: datasets.Dataset, output: Path) -> None:
    """``save_to_disk`` into a sibling temporary folder, then rename: an interrupted save leaves no half folder."""
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        was_enabled = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()
        try:
            dataset.save_to_disk(tmp, max_shard_size="500MB")
        finally:
            if was_enabled:
                datasets.enable_progress_bars()
        if output.exists():
            shutil.rmtree(output)
        tmp.rename(output)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


class ConversionSummary(NamedTuple):
    sources: dict[str, ConversionStats]

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.sources.values())

    @property
    def image_bytes(self) -> int:
        return sum(s.image_bytes for s in self.sources.values())

    @property
    def undecodable(self) -> int:
        return sum(len(s.undecodable) for s in self.sources.values())

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.sources.values())

    def report(self) -> str:
        lines = []
        for name, stats in self.sources.items():
            bad = ""
            if stats.undecodable:
                first, more = stats.undecodable[0], len(stats.undecodable) - 10
                listed = f"{stats.undecodable[:10]}" + (f" (+{more} more)" if more > 0 else "")
                bad = (f", undecodable images at LMDB indices {listed} (1-based, as the LMDB's keys: "
                       f"{image_key(first).decode()} is row {first - 1} of the datasets folder)")  # fmt: skip
            lines.append(f"  {name}: {stats.samples} samples, {stats.image_bytes / 1e6:.1f} MB{bad}")
        rate = self.samples / self.seconds if self.seconds else float("nan")
        lines.append(
            f"total: {self.samples} samples, {self.image_bytes / 1e6:.1f} MB of images, "
            f"{self.undecodable} undecodable,"
            f" {self.seconds:.1f} s ({rate:,.0f} samples/s)"
        )
        return "\n".join(lines)


def convert_lmdb_tree(
    root: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    select_data: str = "/",
    full_decode: bool = False,
    progress: bool = True,
    overwrite: bool = False,
    parquet: bool = False,
) -> ConversionSummary:
    """Convert every LMDB under ``root`` into a ``datasets`` folder under ``output_dir`` with the same relative name,
    or, with ``parquet``, into ``output_dir`` laid out as a Hub dataset repo (a folder of Parquet files per source,
    ``MJ--MJ_train``, and the configs in ``README.md``): what ``--streaming`` streams, locally or once uploaded.

    Raises:
        FileNotFoundError: no LMDB under ``root`` (matching ``select_data``).
        FileExistsError: an output folder exists and ``overwrite`` is False.
    """
    sources = select_sources(find_sources(root, is_lmdb), select_data)
    if not sources:
        raise FileNotFoundError(
            f"No LMDB (a folder with data.mdb) under {os.fspath(root)!r} matching {select_data!r}."
        )
    output_dir = Path(output_dir)
    single = is_lmdb(root)
    if parquet:
        from .streaming import parquet_config, write_parquet_readme, write_parquet_source

        targets = {name: output_dir / parquet_config(name) for name in sources}
    else:
        targets = {name: output_dir if single else output_dir / name for name in sources}
    existing = [str(t) for t in targets.values() if t.exists() and any(t.iterdir())]
    if existing and not overwrite:
        raise FileExistsError(f"Output folders already exist: {existing[:3]}; pass --overwrite to replace them.")
    summary = ConversionSummary({})
    for name, path in sources.items():
        stats = ConversionStats()
        targets[name].parent.mkdir(parents=True, exist_ok=True)
        # A fresh cache beside the output: the conversion always runs (so stats are complete) and is then moved.
        with tempfile.TemporaryDirectory(prefix=".convert_", dir=targets[name].parent) as cache_dir:
            dataset = lmdb_to_dataset(
                path, stats=stats, full_decode=full_decode, progress=progress, cache_dir=cache_dir
            )
            start = time.perf_counter()
            if parquet:
                shutil.rmtree(targets[name], ignore_errors=True)
                write_parquet_source(dataset, targets[name])
            else:
                _save_atomically(dataset, targets[name])
            del dataset
        stats.seconds += time.perf_counter() - start
        summary.sources[name] = stats
    if parquet:
        write_parquet_readme(output_dir, list(sources))
    return summary


def local_sources(path: str | os.PathLike, select_data: str = "/") -> dict[str, Path]:
    """``{source name: folder}`` of the LMDBs and ``datasets`` folders under ``path`` matching ``select_data``.

    Raises:
        FileNotFoundError: none there (the message lists what was found).
    """
    sources = select_sources(find_sources(path, is_source), select_data)
    if not sources:
        raise FileNotFoundError(
            f"No dataset under {os.fspath(path)!r} matching select_data {select_data!r}: expected LMDB folders "
            f"(data.mdb) or datasets folders (save_to_disk). Found: {sorted(find_sources(path, is_source))}"
        )
    check_no_copies(path, sources)
    return sources


def load_text_dataset(path_or_id: str | os.PathLike, select_data: str = "/") -> datasets.DatasetDict:
    """Load text-recognition data as ``{source name: Dataset}`` with columns ``image`` and ``label``.

    Args:
        path_or_id: a ``datasets`` folder, an LMDB, a tree of either (each leaf is a source named by its path below
            the root, e.g. ``MJ/MJ_train``), or a Hub dataset id (each config is a source).
        select_data: keep the sources whose name starts with this (``"/"``: all), as DTRB's ``select_data``.

    Raises:
        FileNotFoundError: nothing loadable at that path / id, or no source matching ``select_data``.
    """
    path = Path(path_or_id)
    if path.exists():
        sources = local_sources(path, select_data)
        loaded = {
            name: lmdb_to_dataset(source, progress=True)
            if is_lmdb(source)
            else datasets.load_from_disk(os.fspath(source))
            for name, source in sources.items()
        }
        return datasets.DatasetDict(loaded)
    if not is_repo_id(os.fspath(path_or_id)):
        raise FileNotFoundError(f"Data folder not found: {os.fspath(path_or_id)!r}")
    return _load_hub_dataset(os.fspath(path_or_id), select_data)


def _load_hub_dataset(repo_id: str, select_data: str) -> datasets.DatasetDict:
    try:
        configs = datasets.get_dataset_config_names(repo_id)
    except Exception as error:  # offline, missing repo, bad id: all mean "cannot load"
        raise FileNotFoundError(
            f"{repo_id!r} is neither a local folder nor a loadable Hub dataset ({type(error).__name__}: {error})."
        ) from None
    names = {config.replace("--", "/"): config for config in configs}
    selected = select_sources(dict.fromkeys(names), select_data)  # type: ignore[arg-type]
    if not selected:
        raise FileNotFoundError(f"The Hub dataset {repo_id!r} has no config matching {select_data!r}: {sorted(names)}")
    return datasets.DatasetDict(
        {name: datasets.load_dataset(repo_id, names[name], split="train") for name in selected}
    )


def push_dataset_tree(output_dir: str | os.PathLike, repo_id: str, private: bool | None = None) -> list[str]:
    """Push every converted source under ``output_dir`` to one Hub dataset repo, one config per source
    (``MJ/MJ_train`` becomes config ``MJ--MJ_train``), so ``load_text_dataset(repo_id)`` gets the same names back."""
    pushed = []
    for name, source in find_sources(output_dir, is_dataset_folder).items():
        config_name = name.replace("/", "--")
        datasets.load_from_disk(os.fspath(source)).push_to_hub(
            repo_id, config_name=config_name, split="train", private=private
        )
        pushed.append(config_name)
    return pushed


class FilterResult(NamedTuple):
    dataset: datasets.Dataset
    counts: Counter  # reason -> samples (``kept``, ``too_long``, ``out_of_charset``, ``too_long_after_cleaning``)
    kept: np.ndarray | None  # rows of the input that were kept (int64, ascending); None when all were


def label_rules(config: ModelConfig, data_filtering_off: bool = False) -> LabelRules:
    return LabelRules(config.character, config.batch_max_length, config.sensitive, data_filtering_off)


def filter_labels_with_counts(
    dataset: datasets.Dataset, config: ModelConfig, data_filtering_off: bool = False
) -> FilterResult:
    """``filter_labels`` plus the number of samples kept and dropped for each reason."""
    filtered, result = filter_dataset(dataset, label_rules(config, data_filtering_off))
    return FilterResult(filtered, result.counts, result.kept)


def dataset_labels(dataset: datasets.Dataset) -> Iterator[str]:
    for batch in dataset.select_columns("label").iter(batch_size=100_000):
        yield from batch["label"]


def filter_dataset(dataset: datasets.Dataset, rules: LabelRules) -> tuple[datasets.Dataset, LabelScan]:
    """The kept rows of ``dataset`` (labels only are read) and the scan's counts, examples and kept rows (a numpy
    array, not a Python list)."""
    result = scan(dataset_labels(dataset), len(dataset), rules)
    if result.kept is None:
        return dataset, result
    return dataset.select(result.kept, keep_in_memory=True), result


def filter_labels(
    dataset: datasets.Dataset, config: ModelConfig, data_filtering_off: bool = False
) -> datasets.Dataset:
    """Keep exactly the samples DTRB's LmdbDataset keeps for ``config``'s charset, ``sensitive`` and
    ``batch_max_length`` (and ``data_filtering_off``), reading labels only. Labels are cleaned later, at load time
    (``LabelRules.clean``), so the stored ones stay raw."""
    return filter_labels_with_counts(dataset, config, data_filtering_off).dataset


class GtEntry(NamedTuple):
    line: int  # 1-based line of the gt file
    path: Path
    label: str


def read_gt_file(gt_file: str | os.PathLike, input_path: str | os.PathLike) -> list[GtEntry]:
    """Parse DTRB's gt file: UTF-8, one ``<image path relative to input_path>\\t<label>`` per line.

    A UTF-8 byte-order mark at the start is ignored. Line ends (``\\n`` and ``\\r\\n``) are removed; DTRB kept a
    trailing ``\\r`` in labels of CRLF files.
    Blank lines are skipped.

    Raises:
        FileNotFoundError: the gt file is missing.
        ValueError: a line without exactly one tab, a line that is not UTF-8, or no line at all (the whole file is
            checked before anything is written).
    """
    gt_file = Path(gt_file)
    if not gt_file.is_file():
        raise FileNotFoundError(f"gt file not found: {str(gt_file)!r}")
    entries, bad = [], []
    raw = gt_file.read_bytes().removeprefix(b"\xef\xbb\xbf")  # a BOM (Windows editors) is not part of the first path
    for number, raw_line in enumerate(raw.splitlines(), start=1):  # \n, \r\n and \r, as text mode reads them
        try:
            line = raw_line.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(
                f"{str(gt_file)!r} is not UTF-8: line {number}, byte {error.start + 1} ({raw_line[:60]!r}). Save "
                f"the gt file as UTF-8, as DTRB's are."
            ) from None
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2:
            bad.append((number, line))
            continue
        entries.append(GtEntry(number, Path(input_path) / parts[0], parts[1]))
    if bad:
        shown = "; ".join(f"line {n}: {line[:60]!r}" for n, line in bad[:3])
        raise ValueError(
            f"{len(bad)} line(s) of {str(gt_file)!r} are not '<image path>\\t<label>' with exactly one TAB ({shown}). "
            f"DTRB's gt files separate path and label with a tab, not a space."
        )
    if not entries:
        raise ValueError(f"{str(gt_file)!r} holds no '<image path>\\t<label>' line: there is nothing to write.")
    return entries


@dataclass
class FolderStats:
    accepted: int = 0
    missing: list[GtEntry] = field(default_factory=list)
    undecodable: list[GtEntry] = field(default_factory=list)

    def report(self) -> str:
        lines = [f"{self.accepted} samples written"]
        for title, entries in (("missing image files", self.missing), ("undecodable images", self.undecodable)):
            if entries:
                shown = ", ".join(f"{e.path} (line {e.line})" for e in entries[:5])
                more = f" and {len(entries) - 5} more" if len(entries) > 5 else ""
                lines.append(f"skipped {len(entries)} {title}: {shown}{more}")
        return "\n".join(lines)


def image_folder_samples(
    entries: list[GtEntry], stats: FolderStats, check_valid: bool = True, progress: bool = True
) -> Iterator[tuple[bytes, str]]:
    """The ``(image bytes, label)`` of each gt entry whose file exists (and decodes, with ``check_valid``)."""
    for entry in progress_bar(entries, desc="reading images", unit=" images", disable=not progress):
        if not entry.path.is_file():
            stats.missing.append(entry)
            continue
        data = entry.path.read_bytes()
        if check_valid and not image_is_readable(data, full_decode=True):
            stats.undecodable.append(entry)
            continue
        stats.accepted += 1
        yield data, entry.label


def _sample_rows(samples: Iterator[tuple[bytes, str]]) -> Iterator[dict]:
    for image, label in samples:
        yield {"image": {"bytes": image, "path": None}, "label": label}


def save_samples_as_dataset(samples: Iterator[tuple[bytes, str]], output: str | os.PathLike) -> datasets.Dataset:
    """Write ``(image bytes, label)`` pairs straight to a ``datasets`` folder (bytes kept as they are)."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        with tempfile.TemporaryDirectory(prefix=".samples_", dir=output.parent) as cache_dir:
            # A unique fingerprint: the generator's input is not hashable content, so never reuse a cache.
            fingerprint = hashlib.sha256(f"{output.resolve()}|{time.time_ns()}".encode()).hexdigest()[:20]
            dataset = datasets.Dataset.from_generator(
                _sample_rows, features=FEATURES, gen_kwargs={"samples": samples}, cache_dir=cache_dir,
                fingerprint=fingerprint,
            )  # fmt: skip
            _save_atomically(dataset, output)
            del dataset
    finally:
        if was_enabled:
            datasets.enable_progress_bars()
    return datasets.load_from_disk(os.fspath(output))
