"""``--streaming`` runs: each process's place in the stream, saved in every checkpoint (``stream_state.json``) and
put back on resume, and the stream's filtering counts for ``all_results.json``."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..data.streaming import StreamBatchSampler
from .distributed import from_every_process
from .state import TrainingStopped

if TYPE_CHECKING:
    from .state import Run


STREAM_STATE = "stream_state.json"  # in a checkpoint of a --streaming run: each process's place in the stream


def marking_consumed(batches: Iterator[dict[str, Any]], sampler: StreamBatchSampler) -> Iterator[dict[str, Any]]:
    """The loader's batches, each marked as consumed by the stream sampler when it is handed to training (the
    DataLoader reads ahead: what a checkpoint saves is where the last batch trained on left the stream)."""
    for batch in batches:
        sampler.consumed(batch["draw"])
        yield batch


def stream_sampler(run: Run) -> StreamBatchSampler | None:
    sampler = run.train_data.sampler if run.train_data is not None else None
    return sampler if isinstance(sampler, StreamBatchSampler) else None


def stream_states(run: Run) -> dict[str, Any] | None:
    """Every process's stream state (on the main process; ``None`` elsewhere and without ``--streaming``)."""
    sampler = stream_sampler(run)
    if sampler is None:
        return None
    states = from_every_process(run, sampler.state_dict())
    return {"num_processes": run.accelerator.num_processes, "states": states} if run.main else None


def load_stream_state(run: Run) -> None:
    """Put this process's stream where the resumed checkpoint left it."""
    path = run.resume_dir / STREAM_STATE
    if not path.is_file():
        raise TrainingStopped(f"Cannot resume a --streaming run from {run.resume_dir}: it has no {STREAM_STATE} (it "
                              f"was written by a run that did not stream). Resume without --streaming, or start "
                              f"afresh with --overwrite_output_dir.")  # fmt: skip
    saved = json.loads(path.read_text())
    if saved["num_processes"] != run.accelerator.num_processes:
        raise TrainingStopped(f"Cannot resume the stream of {run.resume_dir} on {run.accelerator.num_processes} "
                              f"process(es): it was split across {saved['num_processes']}. Resume with as many.")
    run.train_data.sampler.load_state_dict(saved["states"][run.accelerator.process_index])


def stream_filtering(run: Run) -> dict[str, dict[str, int]] | None:
    """With ``--streaming``: per source, the samples read by every process, by filter reason (``kept``, ...)."""
    sampler = stream_sampler(run)
    if sampler is None:
        return None
    total: dict[str, Counter] = {}
    for counts in from_every_process(run, sampler.filtering_counts()):
        for name, reasons in counts.items():
            total.setdefault(name, Counter()).update(reasons)
    return {name: dict(sorted(reasons.items())) for name, reasons in total.items()}
