"""Training from streamed datasets (``--streaming``): a Hub dataset, or a local folder laid out as one, read as
``datasets`` IterableDatasets without downloading or converting it first.

Each ``select_data`` token's sources are read in turn (DTRB concatenated them), forever, one epoch after another:
- **Ranks** get disjoint parts of every source (``datasets.distributed.split_dataset_by_node``: whole shards when
  the shard count divides the number of processes, every N-th sample otherwise).
- **Workers** get no stream of their own. The batch sampler, in the main process, reads labels and image bytes
  (no image is decoded there), filters on the fly with DTRB's rules, and hands each batch's rows to a DataLoader
  worker, which decodes, resizes and augments them. So no sample is read twice, whatever the number of workers or
  shards.
- **Mixing** is exact: every batch holds ``max(round(batch_size * ratio), 1)`` kept samples of each token.
- **Shuffling** is by block: ``shuffle_block`` consecutive samples are permuted with a generator keyed by (seed,
  token, epoch, source, block), and ``datasets`` shuffles the shard order at every epoch after the first. A
  larger block shuffles more and holds more image bytes in memory.
- **Resume is exact**: the state after each batch is (epoch, source, block, the ``datasets`` state where the block
  began, samples of the block already used). Resuming loads that state, reads the block again and skips what was
  used, so the batches go on as if the run had not stopped.
"""

from __future__ import annotations

import atexit
import copy
import logging
import os
import weakref
from collections import Counter
from collections.abc import Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from torch.utils.data import Dataset, Sampler

from .labels import KEPT, LabelRules
from .lmdb import find_sources, is_lmdb, select_sources

logger = logging.getLogger(__name__)

README_CONFIGS = "configs:"
_OPEN_STREAMS: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_open_streams() -> None:
    """Close the streams' readers before the interpreter tears down the modules they use (a Parquet reader closed
    after pyarrow is gone prints a traceback)."""
    for stream in list(_OPEN_STREAMS):
        stream.close()


def is_parquet_source(path: Path) -> bool:
    """A folder holding Parquet files (a streamable source)."""
    return path.is_dir() and any(path.glob("*.parquet"))


def _is_stream_source(path: Path) -> bool:
    """A folder of Parquet files, or a ``save_to_disk`` dataset folder."""
    return is_parquet_source(path) or ((path / "dataset_info.json").is_file() and (path / "state.json").is_file())


def _has_config_metadata(path: Path) -> bool:
    readme = path / "README.md"
    return readme.is_file() and README_CONFIGS in readme.read_text(encoding="utf-8", errors="replace")


def stream_sources(data: str | os.PathLike, select: str) -> dict[str, datasets.IterableDataset]:
    """``{source name: IterableDataset}`` of the sources of ``data`` whose name starts with ``select``.

    ``data`` is a Hub dataset id, or a local folder laid out as one (each config a source, ``MJ--MJ_train`` naming
    ``MJ/MJ_train``, as ``convert_lmdb.py --push_to_hub`` and ``write_parquet_repo`` write it), or a tree of
    folders holding Parquet files or ``save_to_disk`` datasets (each such folder a source, named by its path).

    Raises:
        FileNotFoundError: nothing streamable there, or no source matching ``select``.
        ValueError: LMDBs (they are read in place without ``--streaming``).
    """
    path = Path(data)
    if path.exists() and not _has_config_metadata(path):
        leaves = find_sources(path, lambda folder: is_lmdb(folder) or _is_stream_source(folder))
        if any(is_lmdb(folder) for folder in leaves.values()):
            raise ValueError(
                f"{os.fspath(data)!r} holds LMDBs: they are read in place, without --streaming (which streams Hub "
                f"datasets and folders of Parquet files)."
            )
        found = {name: folder for name, folder in leaves.items() if not is_lmdb(folder)}
        if not found:
            raise FileNotFoundError(f"Nothing to stream under {os.fspath(data)!r}: expected folders of Parquet "
                                    f"files, save_to_disk folders, or a dataset repo with configs in its README.md.")
        selected = select_sources(found, select)
        if not selected:
            raise FileNotFoundError(f"No streamable source under {os.fspath(data)!r} matches select_data {select!r}: "
                                    f"{sorted(found)}")  # fmt: skip
        return {name: _open_folder(folder) for name, folder in selected.items()}
    try:
        configs = datasets.get_dataset_config_names(os.fspath(data))
    except Exception as error:  # offline, missing repo, bad id: all mean "cannot stream"
        raise FileNotFoundError(
            f"{os.fspath(data)!r} is neither a local folder nor a Hub dataset that can be streamed "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})."
        ) from None
    names = {config.replace("--", "/"): config for config in configs}
    selected_names = select_sources(dict.fromkeys(names), select)  # type: ignore[arg-type]
    if not selected_names:
        raise FileNotFoundError(f"The dataset {os.fspath(data)!r} has no config matching select_data {select!r}: "
                                f"{sorted(names)}")  # fmt: skip
    return {name: datasets.load_dataset(os.fspath(data), names[name], split="train", streaming=True)
            for name in sorted(selected_names)}  # fmt: skip


def _open_folder(folder: Path) -> datasets.IterableDataset:
    if is_parquet_source(folder):
        files = sorted(str(f) for f in folder.glob("*.parquet"))
        return datasets.load_dataset("parquet", data_files=files, split="train", streaming=True)
    dataset = datasets.load_from_disk(os.fspath(folder))
    return dataset.to_iterable_dataset(num_shards=max(1, len(dataset.cache_files)))


def write_parquet_repo(
    sources: dict[str, datasets.Dataset], output_dir: str | os.PathLike, rows_per_file: int = 100_000
) -> Path:
    """Write ``{source name: Dataset}`` as a Hub dataset repo holds them: Parquet files under one folder per config
    (``MJ/MJ_train`` becomes ``MJ--MJ_train``) and the configs in ``README.md``. ``--streaming`` reads the folder
    as it reads the Hub; ``huggingface-cli upload --repo-type dataset`` publishes it as it is."""
    output = Path(output_dir)
    for name, dataset in sources.items():
        write_parquet_source(dataset, output / parquet_config(name), rows_per_file)
    write_parquet_readme(output, list(sources))
    return output


def parquet_config(name: str) -> str:
    """The config (and folder) name of source ``name`` in a dataset repo: ``MJ/MJ_train`` -> ``MJ--MJ_train``."""
    return name.replace("/", "--")


def write_parquet_source(dataset: datasets.Dataset, folder: Path, rows_per_file: int = 100_000) -> None:
    """``dataset`` as ``train-0000k-of-0000n.parquet`` files of at most ``rows_per_file`` rows (each a shard that
    processes and epochs shuffle) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    files = max(1, -(-len(dataset) // rows_per_file))
    for k in range(files):
        part = dataset.select(range(k * rows_per_file, min((k + 1) * rows_per_file, len(dataset))))
        part.to_parquet(str(folder / f"train-{k:05d}-of-{files:05d}.parquet"))


def write_parquet_readme(output: Path, names: Sequence[str]) -> None:
    """The ``README.md`` that declares each source's Parquet files as a config, as the Hub reads it."""
    lines = ["---", README_CONFIGS]
    for name in names:
        config = parquet_config(name)
        lines += [f"- config_name: {config}", "  data_files:", "  - split: train", f"    path: {config}/train-*"]
    output.mkdir(parents=True, exist_ok=True)
    (output / "README.md").write_text("\n".join([*lines, "---", ""]), encoding="utf-8")


class TokenStream:
    """The endless stream of kept samples of one ``select_data`` token on one process: its sources in turn, epoch
    after epoch, filtered, block-shuffled, with an exact state."""

    def __init__(
        self, token: str, number: int, sources: dict[str, datasets.IterableDataset], rules: LabelRules, seed: int,
        block: int, rank: int, world_size: int,
    ) -> None:  # fmt: skip
        from datasets.distributed import split_dataset_by_node

        self.token, self.number, self.rules, self.seed, self.block_size = token, number, rules, seed, block
        self.rank = rank
        self.names = list(sources)
        self.datasets = []
        for name, dataset in sources.items():
            columns = dataset.column_names
            if columns is not None and not {"image", "label"} <= set(columns):
                raise ValueError(f"The streamed source {name!r} has columns {columns}; expected 'image' and 'label' "
                                 f"(as scripts/convert_lmdb.py writes them).")  # fmt: skip
            dataset = dataset.cast_column("image", datasets.Image(decode=False)).select_columns(["image", "label"])
            self.datasets.append(split_dataset_by_node(dataset, rank=rank, world_size=world_size))
        self.counts: dict[str, Counter] = {name: Counter() for name in self.names}
        # Where the stream is: source `source` of epoch `epoch`, block `block` of it, which began `position` samples
        # into the source at the datasets state `block_state` (None: the source's start); `offset` kept samples of
        # the block are used.
        self.epoch = self.source = self.block = self.position = self.offset = 0
        self.block_state: dict | None = None
        self.kept_this_epoch = 0
        self._iterator: Iterator[dict] | None = None
        self._loaded = False  # the current block's rows are in `_rows`
        self._rows: list[dict] = []
        self._next_block: tuple[int, dict] = (0, {})  # (position, datasets state) where the next block begins
        self._recount = True  # count the filter's reasons of the next block read (not when it is read again)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "source": self.source, "block": self.block, "position": self.position,
                "offset": self.offset, "block_state": copy.deepcopy(self.block_state), "loaded": self._loaded,
                "kept_this_epoch": self.kept_this_epoch,
                "counts": {name: dict(counts) for name, counts in self.counts.items()}}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.source, self.block = int(state["epoch"]), int(state["source"]), int(state["block"])
        self.position, self.offset = int(state["position"]), int(state["offset"])
        self.block_state = copy.deepcopy(state["block_state"])
        self.kept_this_epoch = int(state["kept_this_epoch"])
        self.counts = {name: Counter(state["counts"].get(name, {})) for name in self.names}
        self.close()
        self._loaded, self._rows = False, []
        self._recount = not state["loaded"]  # a block that was loaded is read again, as it was, without counting

    def close(self) -> None:
        """Close the current reader (a later ``take`` opens it again where the state says)."""
        if self._iterator is not None and hasattr(self._iterator, "close"):
            self._iterator.close()
        self._iterator = None

    def _open(self) -> None:
        _OPEN_STREAMS.add(self)
        dataset = self.datasets[self.source]
        dataset.set_epoch(self.epoch)  # datasets reshuffles the shard order at every epoch after the first
        if self.block_state is not None:
            dataset.load_state_dict(copy.deepcopy(self.block_state))
        self._iterator = iter(dataset)

    def _load_block(self) -> None:
        """Read the current block (moving on to the next source, or epoch, where the source has ended)."""
        while True:
            if self._iterator is None:
                self._open()
            raw = list(islice(self._iterator, self.block_size))
            if raw:
                break
            self._next_source()
        name, recount = self.names[self.source], self._recount
        kept = []
        for k, row in enumerate(raw):
            label = row["label"]
            reason = self.rules.reason(label) if isinstance(label, str) else "not_a_string"
            if recount:
                self.counts[name][reason] += 1
            if reason == KEPT:
                kept.append({"image": row["image"], "label": label, "source": name, "index": self.position + k})
        rng = np.random.default_rng([self.seed, self.number, self.epoch, self.source, self.block])
        self._rows = [kept[k] for k in rng.permutation(len(kept))]
        if recount:
            self.kept_this_epoch += len(kept)
        self._recount, self._loaded = True, True
        self._next_block = (self.position + len(raw), copy.deepcopy(self.datasets[self.source].state_dict()))

    def _next_source(self) -> None:
        """The current source has ended: the next source, or the next epoch after the last one."""
        self.source += 1
        if self.source == len(self.names):
            if not self.kept_this_epoch:
                raise self._empty_error()
            self.source, self.epoch, self.kept_this_epoch = 0, self.epoch + 1, 0
        self.close()
        self.block, self.position, self.offset, self.block_state = 0, 0, 0, None

    def _empty_error(self) -> ValueError:
        seen = sum((self.counts[name] for name in self.names), Counter())
        if not sum(seen.values()):
            return ValueError(f"The streamed data of {self.token!r} ({', '.join(self.names)}) gave process "
                              f"{self.rank} no sample at all: the sources are empty, or hold fewer samples (or "
                              f"shards) than there are processes.")  # fmt: skip
        dropped = ", ".join(f"{reason} {n}" for reason, n in sorted(seen.items()) if reason != KEPT)
        return ValueError(
            f"No sample of {self.token!r} ({', '.join(self.names)}) is left after filtering: {sum(seen.values())} "
            f"read, all dropped ({dropped}). 'too_long' means longer than batch_max_length="
            f"{self.rules.batch_max_length}; 'out_of_charset' a symbol outside --character. Adjust "
            f"--character/--sensitive/--batch_max_length, or pass --data_filtering_off."
        )

    def take(self, count: int) -> list[dict]:
        """The next ``count`` kept samples (across blocks, sources and epochs as needed)."""
        rows: list[dict] = []
        while len(rows) < count:
            if not self._loaded:
                self._load_block()
            if self.offset == len(self._rows):  # the block is used up: the next begins where it ended
                self.position, self.block_state = self._next_block
                self.block, self.offset, self._loaded, self._rows = self.block + 1, 0, False, []
                continue
            take = min(count - len(rows), len(self._rows) - self.offset)
            rows += [dict(row) for row in self._rows[self.offset : self.offset + take]]
            self.offset += take
        return rows


class StreamBatchSampler(Sampler[list[dict]]):
    """Yields each batch as its rows (image bytes, label, source, stream position, and ``draw``, the batch number):
    ``counts[j]`` kept samples of token ``j``. It runs in the main process; ``StreamRows`` hands the rows to the
    collator in the worker. ``consumed(draw)`` marks a batch as trained on; ``state_dict()`` is the state after the
    last such batch (the DataLoader reads ahead, so the sampler keeps the state of every batch in flight)."""

    def __init__(self, streams: Sequence[TokenStream], counts: Sequence[int]) -> None:
        self.streams, self.counts = list(streams), [int(c) for c in counts]
        self.iteration = 0  # the next batch's number (a resumed state sets it)
        self._states: dict[int, dict[str, Any]] = {}
        self._consumed: dict[str, Any] | None = None

    @property
    def batch_size(self) -> int:
        return sum(self.counts)

    def _state(self) -> dict[str, Any]:
        return {"iteration": self.iteration, "streams": [stream.state_dict() for stream in self.streams]}

    def __iter__(self) -> Iterator[list[dict]]:
        if self._consumed is None:
            self._consumed = self._state()
        while True:
            rows = []
            for stream, count in zip(self.streams, self.counts):
                rows += stream.take(count)
            draw = self.iteration
            for row in rows:
                row["draw"] = draw
            self.iteration += 1
            self._states[draw] = self._state()
            yield rows

    def consumed(self, draw: int) -> None:
        """Batch ``draw`` was trained on: the state to save is the one after it."""
        if draw in self._states:
            self._consumed = self._states[draw]
            for old in [k for k in self._states if k <= draw]:
                del self._states[old]

    def state_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self._consumed if self._consumed is not None else self._state())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["streams"]) != len(self.streams):
            raise ValueError(f"The stream state has {len(state['streams'])} token(s), this run {len(self.streams)}.")
        self.iteration = int(state["iteration"])
        for stream, stream_state in zip(self.streams, state["streams"]):
            stream.load_state_dict(stream_state)
        self._states, self._consumed = {}, self._state()

    def filtering_counts(self) -> dict[str, dict[str, int]]:
        """Per source, the samples read so far by reason (kept, too_long, ...), on this process."""
        return {name: dict(counts) for stream in self.streams for name, counts in stream.counts.items()}


class StreamRows(Dataset):
    """The map-style face of a stream for the DataLoader: the "indices" a ``StreamBatchSampler`` yields are the
    rows themselves."""

    def __getitems__(self, rows: list[dict]) -> list[dict]:
        return rows

    def __getitem__(self, row: dict) -> dict:
        return row


__all__ = ["StreamBatchSampler", "StreamRows", "TokenStream", "stream_sources", "write_parquet_readme",
           "write_parquet_repo", "write_parquet_source"]
