"""The run folder: what it holds, the guards that keep a new run off an old one, best-model folders swapped in
whole, and checkpoints written atomically with a manifest, found (the newest complete one) and pruned."""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import gather_object
from safetensors import SafetensorError

from ..config import TrainConfig
from ..model import TextRecognitionModel
from .distributed import fail_together, where
from .state import TrainingStopped, TrainState

logger = get_logger(__name__)  # main process only, unless a call says main_process_only=False


CHECKPOINT_PREFIX = "checkpoint-"


VALIDATION_HISTORY = "validation_history.jsonl"


DEFAULT_CHECKPOINTS_LIMIT = 2  # without --checkpoints_total_limit: the last two checkpoints are kept


MANIFEST = "manifest.json"  # in every checkpoint: the size of each file, to tell a truncated one


#: What a failed write (a full disk) raises: OSError, torch.save's RuntimeError("... unexpected pos ..."), and
#: safetensors' SafetensorError ("... No space left on device (os error 28)"), which is neither.
WRITE_ERRORS = (OSError, RuntimeError, SafetensorError)


RESUME_HINT = "resume with --resume_from_checkpoint latest"


def write_failure(error: BaseException, what: str, then: str = RESUME_HINT) -> OSError:
    """The one-line error of a failed write of ``what`` (whose temporary folder was removed), saying whether the
    disk is full, and how to go on."""
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    full = getattr(error, "errno", None) == errno.ENOSPC or any(
        sign in reason for sign in ("unexpected pos", "No space left", "os error 28", "StorageFull")
    )
    hint = "the disk is full: free space" if full else "check that the folder is writable and has space"
    code = getattr(error, "errno", None) or (errno.ENOSPC if full else errno.EIO)
    return OSError(code, f"Cannot write {what} ({reason}); {hint}, then {then}. The temporary folder was removed.")


#: What a run folder holds; a new run refuses to start where any of these exist (see ``check_run_dir``).
RUN_FILES = ("run_config.json", "log_train.txt", "all_results.json", "best_accuracy", "best_norm_ED")


#: What ``--overwrite_output_dir`` removes (only these: anything else in the folder stays).
OVERWRITTEN = (*RUN_FILES, "checkpoints", "opt.txt", "log_dataset.txt", "logs",
              VALIDATION_HISTORY, "validation_curves.png")


def holds_a_run(run_dir: Path) -> list[str]:
    """What in ``run_dir`` shows that a run was started there (empty when none was)."""
    found = [name for name in RUN_FILES if (run_dir / name).exists()]
    if list_checkpoints(run_dir / "checkpoints"):
        found.append("checkpoints/")
    return found


def check_run_dir(run_dir: Path, train_config: TrainConfig) -> None:
    """A new run never starts over an old one: re-running a command would replace its ``best_accuracy/`` and prune
    its checkpoints. Starting in a folder that holds a run needs ``--resume_from_checkpoint`` (with a checkpoint to
    resume from) or ``--overwrite_output_dir``."""
    if train_config.overwrite_output_dir:
        return
    found = holds_a_run(run_dir)
    if not found:
        return
    resume = train_config.resume_from_checkpoint
    if resume and (resume != "latest" or list_checkpoints(run_dir / "checkpoints")):
        return
    what = ", ".join(found)
    if resume == "latest":
        raise TrainingStopped(
            f"--resume_from_checkpoint latest: {run_dir} holds a run ({what}) but no checkpoint to resume from; "
            f"give --overwrite_output_dir to start afresh there (its bests are deleted), or another --exp_name."
        )
    raise TrainingStopped(
        f"{run_dir} already holds a run ({what}): give --resume_from_checkpoint latest to continue it, "
        f"--overwrite_output_dir to start afresh there (its checkpoints and bests are deleted), or another --exp_name."
    )


def clear_run_dir(run_dir: Path) -> None:
    """``--overwrite_output_dir``: remove the old run's files (only those this trainer writes)."""
    for name in OVERWRITTEN:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    for path in run_dir.glob("run_config.resume-*.json"):
        path.unlink()


def remove_leftovers(run_dir: Path) -> None:
    """What a killed run leaves: temporary best-model and checkpoint folders are removed; a best-model folder caught
    between its old and new version (``.best_accuracy.old`` without ``best_accuracy``) gets its old one back."""
    for name in ("best_accuracy", "best_norm_ED"):
        old = run_dir / f".{name}.old"
        if old.is_dir() and not (run_dir / name).exists():
            old.rename(run_dir / name)
            logger.warning("Restored %s from %s, left by an interrupted save.", run_dir / name, old.name)
    leftovers = [*run_dir.glob(".best_*.tmp*"), *run_dir.glob(".best_*.old"),
                 *(run_dir / "checkpoints").glob(f".tmp-{CHECKPOINT_PREFIX}*")]  # fmt: skip
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)
    if leftovers:
        logger.warning("Removed %d temporary folder(s) left by an interrupted run: %s", len(leftovers),
                       ", ".join(path.name for path in leftovers))  # fmt: skip


def check_shared_run_dir(accelerator: Accelerator, run_dir: Path) -> None:
    """Several processes (nodes): the run folder must be one folder that every node sees, since checkpoints and
    best models are written by the global main process and resumed by all. The main process writes a marker file,
    the local main process of every node looks for it. Every node that does not see it says so on its own terminal
    (naming the folder as it resolves there), and the main process names those nodes."""
    if accelerator.num_processes == 1:
        return
    from accelerate.utils import broadcast_object_list

    here = where(accelerator)
    token = [(f".shared-{time.time_ns()}-{os.getpid()}", str(run_dir.absolute()), here)
             if accelerator.is_main_process else None]  # fmt: skip
    broadcast_object_list(token)
    name, main_path, main_place = token[0]
    marker = run_dir / name
    if accelerator.is_main_process:
        marker.write_text("written by the main process to check that every node sees this folder\n")
    accelerator.wait_for_everyone()
    seen = marker.is_file() if accelerator.is_local_main_process else True
    views = gather_object([(here, seen)])
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        marker.unlink(missing_ok=True)
    fix = ("Checkpoints and best models are written by the main process and resumed by every node, so --output_dir "
           "must be a folder on a filesystem shared by all nodes (e.g. NFS), given as the same path on each node.")
    error = None
    if not seen:
        exists = "is another folder" if run_dir.is_dir() else "does not exist"
        error = TrainingStopped(
            f"{run_dir} is not the run folder the main process writes to: {main_place} wrote a file into "
            f"{main_path}, which this node does not see (here {run_dir.absolute()} {exists}). {fix}"
        )
    elif accelerator.is_main_process and not all(sees for _, sees in views):
        blind = ", ".join(place for place, sees in views if not sees)
        error = TrainingStopped(
            f"{run_dir} is not shared by every node: {blind} does not see a file the main "
            f"process wrote there. {fix}"
        )
    fail_together(accelerator, error)


def save_model_folder(model: TextRecognitionModel, target: Path, card_kwargs: dict[str, Any]) -> None:
    """``save_pretrained`` into a temporary sibling, then swap it in: a crash never leaves half a model folder, and a
    failed write (a full disk) keeps the previous one and says so in one line."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp", dir=target.parent))
    try:
        try:
            model.save_pretrained(tmp, model_card_kwargs=card_kwargs)
        except WRITE_ERRORS as error:
            shutil.rmtree(tmp, ignore_errors=True)
            kept = " (the previous one is kept)" if target.exists() else ""
            then = f"{RESUME_HINT} (or, before the first checkpoint, start again with --overwrite_output_dir)"
            raise write_failure(error, f"the best model {target}{kept}", then) from None
        _replace_dir(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _replace_dir(tmp: Path, target: Path) -> None:
    """Move a finished folder into place; the old one is removed only once the new one is complete."""
    old = target.with_name(f".{target.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    if old.exists():
        shutil.rmtree(old)


def list_checkpoints(checkpoints_dir: Path) -> list[Path]:
    """The finished checkpoint folders, highest step first (temporary folders of an interrupted save are ignored)."""
    found = []
    for path in checkpoints_dir.glob(f"{CHECKPOINT_PREFIX}*"):
        step = path.name[len(CHECKPOINT_PREFIX) :]
        if path.is_dir() and step.isdigit():
            found.append((int(step), path))
    return [path for _, path in sorted(found, reverse=True)]


def checkpoint_problem(path: Path) -> str | None:
    """Why the checkpoint ``path`` cannot be resumed from (a missing or truncated file), or None when it is whole.
    Checked against the file sizes its ``manifest.json`` recorded when it was written."""
    try:
        json.loads((path / "train_state.json").read_text())
    except (OSError, ValueError):
        return "train_state.json is missing or not valid JSON"
    manifest = path / MANIFEST
    if not manifest.is_file():
        return None  # written before manifests: accepted as it is
    try:
        sizes = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return f"{MANIFEST} is not valid JSON"
    for name, size in sizes.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != size:
            return f"{name} is truncated ({file.stat().st_size:,} bytes of {size:,})"
    return None


def latest_checkpoint(checkpoints_dir: Path) -> Path | None:
    """The complete checkpoint with the highest step; a newer one with a missing or truncated file is passed over,
    with a warning that says which file and which checkpoint is used instead."""
    for path in list_checkpoints(checkpoints_dir):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        logger.warning("Checkpoint %s cannot be resumed from (%s): falling back to the previous complete one.",
                       path, problem)  # fmt: skip
    return None


def write_checkpoint(
    accelerator: Accelerator, checkpoints_dir: Path, state: TrainState, limit: int | None,
    run_config: dict[str, Any] | None = None, extra: dict[str, Any] | None = None,
) -> None:  # fmt: skip
    """``save_state`` into a temporary folder, then rename: resume never sees a half-written checkpoint. The folder's
    ``manifest.json`` records each file's size, so that a file truncated later is told. A failed write (a full disk)
    removes the temporary folder and says so."""
    target = checkpoints_dir / f"{CHECKPOINT_PREFIX}{state.iteration}"
    tmp = checkpoints_dir / f".tmp-{CHECKPOINT_PREFIX}{state.iteration}"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            (tmp / "train_state.json").write_text(json.dumps(finite_or_none(state.state_dict()), indent=2) + "\n")
            if run_config is not None:
                (tmp / "run_config.json").write_text(json.dumps(run_config, indent=2, sort_keys=True) + "\n")
            for name, value in (extra or {}).items():  # more JSON files (the stream state)
                (tmp / name).write_text(json.dumps(value) + "\n")
            sizes = {str(f.relative_to(tmp)): f.stat().st_size for f in sorted(tmp.rglob("*")) if f.is_file()}
            (tmp / MANIFEST).write_text(json.dumps(sizes, indent=2) + "\n")
    except WRITE_ERRORS as error:
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_failure(error, f"the checkpoint {target}") from None
    if accelerator.is_main_process:
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
        prune_checkpoints(checkpoints_dir, limit)
    accelerator.wait_for_everyone()


def prune_checkpoints(checkpoints_dir: Path, limit: int | None) -> None:
    limit = limit or DEFAULT_CHECKPOINTS_LIMIT
    steps = sorted(int(p.name[len(CHECKPOINT_PREFIX) :]) for p in checkpoints_dir.glob(f"{CHECKPOINT_PREFIX}*")
                   if p.name[len(CHECKPOINT_PREFIX) :].isdigit())  # fmt: skip
    for step in steps[:-limit]:
        shutil.rmtree(checkpoints_dir / f"{CHECKPOINT_PREFIX}{step}", ignore_errors=True)


def finite_or_none(value: Any) -> Any:
    """JSON has no NaN or Infinity: a non-finite number is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, list):
        return [finite_or_none(item) for item in value]
    return value
