"""Agreement across processes: flags every process decides alike, the main process first (failing together), one
report of a refusal, and values gathered from every process."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from .state import TrainingStopped

if TYPE_CHECKING:
    from .state import Run


class FailedElsewhere(TrainingStopped):
    """This process stops because another one failed; that one prints the error (``cli.run`` prints nothing)."""

    quiet = True


@contextlib.contextmanager
def main_reports(accelerator: Accelerator) -> Iterator[None]:
    """For a check that every process makes alike: only the main process reports its refusal; the others stop
    quietly, so the message appears once."""
    try:
        yield
    except TrainingStopped:
        if accelerator.is_main_process:
            raise
        raise FailedElsewhere("the main process refused to go on (see its error)") from None


def main_process_first(accelerator: Accelerator, step: Callable[[], None]) -> None:
    """``accelerator.main_process_first()`` that fails together: when the main process fails (a missing folder),
    the others do not wait for it at a barrier, nor try again; every process stops, and only the one that failed
    prints its error (under ``accelerate launch``, no other process adds a traceback)."""

    def attempt() -> BaseException | None:
        try:
            step()
        except Exception as error:
            return error
        return None

    error = attempt() if accelerator.is_main_process else None
    (main_failed,) = agreed_across_processes(accelerator, [error is not None])  # also the barrier
    if not main_failed and not accelerator.is_main_process:
        error = attempt()
    (any_failed,) = agreed_across_processes(accelerator, [error is not None])
    if error is not None:
        raise error
    if any_failed:
        raise FailedElsewhere("another process failed (see its error)")


def agreed_across_processes(accelerator: Accelerator, flags: list[bool]) -> list[bool]:
    """Each flag true when it is true on any process (one all-reduce), so that every process decides alike."""
    if accelerator.num_processes == 1:
        return flags
    tensor = torch.tensor([float(flag) for flag in flags], device=accelerator.device)
    return [bool(value > 0) for value in accelerator.reduce(tensor, reduction="sum").tolist()]


def from_every_process(run: Run, value: Any) -> list[Any]:
    """``value`` of every process, in process order (a collective: every process calls it)."""
    return gather_object([value]) if run.accelerator.num_processes > 1 else [value]
