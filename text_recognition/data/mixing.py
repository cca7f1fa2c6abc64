"""Exact per-batch mixing of several sources, as DTRB's Batch_Balanced_Dataset: every batch holds
``max(round(batch_size * ratio), 1)`` samples of each source.

DTRB ran one DataLoader per source and concatenated their batches; the end of a source's epoch then gave a short
batch, a ``ValueError`` silently dropped a source, and nothing was resumable. Here one sampler draws every batch:
each source is an endless stream of reshuffled epochs (a permutation per (seed, source, epoch)), cut into
consecutive slices. Process ``rank`` of ``world_size`` takes slice ``iteration * world_size + rank``, so processes
never overlap, and any iteration's batch is computed directly, which makes resuming exact and free.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset, Sampler

from ..config import parse_batch_ratio, parse_select_data

__all__ = ["BatchBalancedSampler", "MixedSources", "parse_batch_ratio", "parse_select_data", "source_batch_sizes"]


def source_batch_sizes(batch_size: int, ratios: Sequence[float]) -> list[int]:
    """DTRB's per-source batch sizes: ``max(round(batch_size * ratio), 1)`` (Python's round: half to even)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    return [max(round(batch_size * float(ratio)), 1) for ratio in ratios]


class BatchBalancedSampler(Sampler[list[int]]):
    """Yields batches of indices into the concatenation of the sources, ``counts[j]`` from source ``j`` each.

    Args:
        sizes: number of samples of each source (in the concatenation, source ``j`` starts after sources < ``j``).
        counts: samples per batch from each source (``source_batch_sizes``).
        seed: shuffling seed; the same seed gives the same batches.
        rank, world_size: this process's share in distributed training; processes see disjoint samples.
        start_iteration: the first batch to yield (resume).
        num_batches: stop after this many batches (``None``: endless, as training by iteration needs).
        tag_draws: yield ``(iteration, index)`` pairs instead of indices, so that ``MixedSources`` tags each row
            with the iteration that drew it (``"draw"``): what augmentation seeds itself with.
        in_order: per source, True to read it in order instead of shuffled (the synthetic source, whose samples
            are random draws already and whose size is too large to permute); default all False.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        counts: Sequence[int],
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start_iteration: int = 0,
        num_batches: int | None = None,
        tag_draws: bool = False,
        in_order: Sequence[bool] | None = None,
    ) -> None:
        if len(sizes) != len(counts) or not sizes:
            raise ValueError(f"sizes and counts must have one entry per source, got {list(sizes)} and {list(counts)}.")
        empty = [j for j, n in enumerate(sizes) if n <= 0]
        if empty:
            raise ValueError(f"Source(s) {empty} have no samples; a batch cannot draw from an empty source.")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank {rank} of {world_size}.")
        self.sizes = [int(n) for n in sizes]
        self.counts = [int(c) for c in counts]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.int64)
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.iteration = start_iteration
        self.num_batches = num_batches
        self.tag_draws = tag_draws
        self.in_order = [bool(flag) for flag in in_order] if in_order is not None else [False] * len(self.sizes)
        if len(self.in_order) != len(self.sizes):
            raise ValueError(f"in_order must have one entry per source, got {list(in_order)} for {len(self.sizes)}.")
        self._perm_cache: dict[tuple[int, int], np.ndarray] = {}

    @property
    def batch_size(self) -> int:
        return sum(self.counts)

    def _permutation(self, source: int, epoch: int) -> np.ndarray:
        """The source's order in ``epoch``: a numpy array (``int32`` below 2**31 samples), at most two epochs per
        source held (the one being read and the next), so memory stays at 4-8 bytes per sample."""
        key = (source, epoch)
        if key not in self._perm_cache:
            for old in [k for k in self._perm_cache if k[0] == source and not epoch - 1 <= k[1] <= epoch]:
                del self._perm_cache[old]
            rng = np.random.default_rng([self.seed, source, epoch])
            permutation = rng.permutation(self.sizes[source])
            if self.sizes[source] < 2**31:
                permutation = permutation.astype(np.int32)
            self._perm_cache[key] = permutation
        return self._perm_cache[key]

    def _take(self, source: int, start: int, count: int) -> np.ndarray:
        """``count`` indices of the source's endless stream from stream position ``start`` (an int64 array)."""
        size = self.sizes[source]
        if self.in_order[source]:
            positions = np.arange(start, start + count, dtype=np.int64) % size
            return self.offsets[source] + positions
        parts = []
        while count:
            epoch, offset = divmod(start, size)
            take = min(count, size - offset)
            parts.append(self.offsets[source] + self._permutation(source, epoch)[offset : offset + take])
            start += take
            count -= take
        return np.concatenate(parts).astype(np.int64, copy=False) if parts else np.empty(0, np.int64)

    def batch(self, iteration: int) -> list[int]:
        """The batch of this process at ``iteration``."""
        slot = iteration * self.world_size + self.rank
        return np.concatenate([self._take(j, slot * count, count) for j, count in enumerate(self.counts)]).tolist()

    def __iter__(self) -> Iterator[list[int]]:
        while self.num_batches is None or self.iteration < self.num_batches:
            batch = self.batch(self.iteration)
            if self.tag_draws:
                batch = [(self.iteration, index) for index in batch]  # type: ignore[misc]
            self.iteration += 1
            yield batch

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("An endless BatchBalancedSampler has no length; give num_batches for a finite one.")
        return max(self.num_batches - self.iteration, 0)

    def state_dict(self) -> dict[str, int]:
        return {"iteration": self.iteration, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.iteration = int(state["iteration"])
        self.seed = int(state["seed"])
        self._perm_cache.clear()


class MixedSources(Dataset):
    """The concatenation of several sources (``datasets.Dataset`` with ``Image(decode=False)`` or ``LmdbSource``)
    with rows tagged by source and index (and, from an LMDB, its 1-based ``lmdb_index``).

    ``sources`` is ``[(name, dataset, used, original_rows)]``: the first ``used`` rows of each dataset take part
    (DTRB's ``total_data_usage_ratio`` takes the first N samples); ``original_rows`` (or ``None``) maps a row of a
    filtered dataset back to its row in the stored source, for reporting. Rows are ``{"image", "label", "source",
    "index"}``; fetching a batch reads each source's rows in one call (``__getitems__``), without decoding images.
    """

    def __init__(self, sources: Sequence[tuple[str, Any, int, Sequence[int] | np.ndarray | None]]) -> None:
        self.names = [source[0] for source in sources]
        self.datasets = [source[1] for source in sources]
        self.sizes = [int(source[2]) for source in sources]
        # numpy arrays (memory-mapped for in-place LMDBs) or None: never Python lists, which every DataLoader
        # worker would copy page by page as it touches their reference counts.
        self.original_rows = [None if source[3] is None else np.asarray(source[3]) for source in sources]
        # an LMDB's samples are named by their 1-based index (its keys), others by their 0-based row (see collate)
        self.lmdb = [getattr(source[1], "index_base", 0) == 1 for source in sources]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitems__(self, indices: Sequence[int] | Sequence[tuple[int, int]]) -> list[dict[str, Any]]:
        draws = None
        if len(indices) and isinstance(indices[0], tuple):  # (iteration, index) from a tag_draws sampler
            draws = [draw for draw, _ in indices]
            indices = [index for _, index in indices]
        indices = np.asarray(indices, dtype=np.int64)
        if len(indices) and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"Index out of range for {len(self)} samples.")
        owners = np.searchsorted(self.offsets, indices, side="right") - 1
        rows: list[dict[str, Any] | None] = [None] * len(indices)
        for source in np.unique(owners):
            positions = np.nonzero(owners == source)[0]
            local = (indices[positions] - self.offsets[source]).tolist()
            columns = self.datasets[source][local]
            original = self.original_rows[source]
            for k, position in enumerate(positions):
                rows[position] = {
                    "image": columns["image"][k],
                    "label": columns["label"][k],
                    "source": self.names[source],
                    "index": local[k] if original is None else int(original[local[k]]),
                }
                if self.lmdb[source]:
                    rows[position]["lmdb_index"] = rows[position]["index"] + 1
                if draws is not None:
                    rows[position]["draw"] = draws[position]
        return rows  # type: ignore[return-value]

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([index])[0]
