"""Agreement across processes: flags every process decides alike, the main process first (failing together), one
report of a refusal on each node, and values gathered from every process."""

from __future__ import annotations

import contextlib
import os
import socket
import time
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


class FailedOnAnotherNode(TrainingStopped):
    """This node stops because a process on another node failed: printed on this node too (a node's terminal
    otherwise shows only the launcher's "process(es) failed"), naming where it failed."""


#: How long a process that stops quietly waits before it exits: torch elastic's agent sends SIGTERM to the other
#: processes of its node as soon as one exits with an error, which could cut off the reporting one before it prints.
QUIET_EXIT_DELAY_S = 1.0


def where(accelerator: Accelerator) -> str:
    """This process as a user can find it: its index, its node (torchrun's ``GROUP_RANK``, accelerate's
    ``--machine_rank``) and host."""
    node = os.environ.get("GROUP_RANK")
    on_node = f" on node {node}" if node else ""
    return f"process {accelerator.process_index}{on_node} (host {socket.gethostname()})"


def fail_together(accelerator: Accelerator, error: BaseException | None) -> None:
    """Every process calls it after a step that may fail on some: when any failed, every process stops (none waits
    for the others at a later collective), and one process of each node says why. That is the node's first process
    that failed, with its own error; on a node where none failed, its local main process, quoting the main
    process's error (or the first one) and where it happened. Every other process stops quietly."""
    if accelerator.num_processes == 1:
        if error is not None:
            raise error
        return
    message = None if error is None else (str(error).splitlines() or [type(error).__name__])[0]
    node = accelerator.process_index - accelerator.local_process_index  # the node's first process
    failures = [(rank, place, text, first) for rank, place, text, first
                in gather_object([(accelerator.process_index, where(accelerator), message, node)])
                if text is not None]  # fmt: skip
    if not failures:
        return
    on_this_node = [rank for rank, _, _, first in failures if first == node]
    if error is not None and accelerator.process_index == min(on_this_node):
        raise error
    if not on_this_node and accelerator.is_local_main_process:
        _, place, text, _ = failures[0]  # the lowest process: the main process when it failed
        raise FailedOnAnotherNode(f"stopped because {place} failed: {text}")
    time.sleep(QUIET_EXIT_DELAY_S)
    raise FailedElsewhere("another process failed (see its error)")


@contextlib.contextmanager
def main_reports(accelerator: Accelerator) -> Iterator[None]:
    """For a check that every process makes (a collective: every process enters it): when it fails on any process,
    all stop, and one process of each node reports (``fail_together``), so a refusal appears once on each node."""
    error = None
    try:
        yield
    except Exception as raised:
        error = raised
    fail_together(accelerator, error)


def main_process_first(accelerator: Accelerator, step: Callable[[], None]) -> None:
    """``accelerator.main_process_first()`` that fails together: when the main process fails (a missing folder),
    the others do not wait for it at a barrier, nor try again; every process stops, and one process of each node
    prints the error (under ``accelerate launch``, no other process adds a traceback)."""

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
    fail_together(accelerator, error)


def agreed_across_processes(accelerator: Accelerator, flags: list[bool]) -> list[bool]:
    """Each flag true when it is true on any process (one all-reduce), so that every process decides alike."""
    if accelerator.num_processes == 1:
        return flags
    tensor = torch.tensor([float(flag) for flag in flags], device=accelerator.device)
    return [bool(value > 0) for value in accelerator.reduce(tensor, reduction="sum").tolist()]


def from_every_process(run: Run, value: Any) -> list[Any]:
    """``value`` of every process, in process order (a collective: every process calls it)."""
    return gather_object([value]) if run.accelerator.num_processes > 1 else [value]


def exit_process(code: int) -> None:
    """End a process of a multi-process run with ``code``, without the interpreter's teardown.

    The ``atexit`` functions run (stream readers close, logs flush), then the process exits at once. The teardown
    after them, where C++ objects are destroyed, aborted one rank in about six of a two-process CPU run on streamed
    data after training had finished and every file was written ("terminate called without an active exception",
    SIGABRT), so that torch's launcher reported the run as failed. A single process exits as usual.
    """
    import atexit
    import sys

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
