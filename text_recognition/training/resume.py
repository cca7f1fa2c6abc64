"""Resuming a run: which checkpoint ``--resume_from_checkpoint`` names, whether this run's configuration may go on
from it (``run_config.json`` compared setting by setting), and the log entries the resumed steps will write again."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from accelerate.logging import get_logger

from ..config import TrainConfig
from .run_dir import checkpoint_problem, latest_checkpoint, list_checkpoints
from .state import TrainingStopped

if TYPE_CHECKING:
    from .state import Run

logger = get_logger(__name__)  # main process only, unless a call says main_process_only=False


def resume_checkpoint(train_config: TrainConfig, checkpoints_dir: Path, main: bool) -> Path | None:
    """The checkpoint ``--resume_from_checkpoint`` names (a folder, or ``latest``), or None to start fresh. ``latest``
    with checkpoints of which none is complete is refused: the folder holds a run that a fresh start would replace."""
    if not train_config.resume_from_checkpoint:
        return None
    if train_config.resume_from_checkpoint == "latest":
        found = latest_checkpoint(checkpoints_dir)
        broken = list_checkpoints(checkpoints_dir) if found is None else []
        if broken:  # the folder holds a run: starting fresh would replace its bests and prune its checkpoints
            raise TrainingStopped(
                f"--resume_from_checkpoint latest: none of the {len(broken)} checkpoint(s) in {checkpoints_dir} can "
                f"be resumed from ({', '.join(path.name for path in broken)}: a file is missing or truncated), and "
                f"nothing was changed; restore a checkpoint from a copy, or give --overwrite_output_dir without "
                f"--resume_from_checkpoint to start afresh there (its checkpoints and bests are deleted)."
            )
        if found is None and main:
            logger.warning("--resume_from_checkpoint latest: no checkpoint in %s yet, starting fresh.",
                           checkpoints_dir)  # fmt: skip
        return found
    resume_dir = Path(train_config.resume_from_checkpoint)
    if not (resume_dir / "train_state.json").is_file():
        raise FileNotFoundError(f"{str(resume_dir)!r} is not a complete checkpoint (no train_state.json).")
    problem = checkpoint_problem(resume_dir)
    if problem is not None:
        raise TrainingStopped(f"Cannot resume from {resume_dir}: {problem}. Resume from an earlier checkpoint, or "
                              f"--resume_from_checkpoint latest to take the newest complete one.")  # fmt: skip
    return resume_dir


_LOG_ENTRY = re.compile(r"^\[(\d+)/\d+\] Train loss")


def truncate_log(path: Path, iteration: int) -> None:
    """Drop the ``log_train.txt`` entries of steps after ``iteration`` (written after the checkpoint resumed from):
    they are replayed, and logged again, by the resumed run."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    for number, line in enumerate(lines):
        match = _LOG_ENTRY.match(line)
        if match and int(match.group(1)) > iteration:
            path.write_text("".join(lines[:number]), encoding="utf-8")
            return


#: What a resumed run must share with its checkpoint's: what changes the data stream or the model.
RESUME_KEYS = {
    "train": ("batch_size", "seed", "gradient_accumulation_steps"),
    "data": ("train_data", "select_data", "batch_ratio", "total_data_usage_ratio", "data_filtering_off", "streaming",
             "shuffle_block"),
}


def run_configs(run: Run) -> dict[str, Any]:
    """What ``run_config.json`` records: the three configs, the number of processes and a fingerprint of the
    training data (its sources, their filtered sizes and the mixed length)."""
    size = len(run.train_data.dataset) if hasattr(run.train_data.dataset, "__len__") else "streamed"
    data = f"{run.train_data.log}|{size}"
    return {"model": asdict(run.model_config), "data": asdict(run.data_config), "train": asdict(run.train_config),
            "num_processes": run.accelerator.num_processes,
            "data_fingerprint": hashlib.sha256(data.encode()).hexdigest()[:16]}  # fmt: skip


def config_differences(saved: dict[str, Any], now: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(name, checkpoint's value, this run's value)`` of each resume-relevant setting that differs."""
    differ = []
    pairs = [(f"{group}.{key}", saved.get(group, {}).get(key), now[group].get(key))
             for group, keys in RESUME_KEYS.items() for key in keys]  # fmt: skip
    pairs += [(f"model.{key}", saved.get("model", {}).get(key), value) for key, value in now["model"].items()]
    pairs += [(key, saved.get(key), now[key]) for key in ("num_processes", "data_fingerprint") if key in saved]
    for name, old, new in pairs:
        if old != new:
            differ.append((name, old, new))
    return differ


def changed_model_flags(run: Run) -> list[str]:
    """``name (checkpoint: old, now: new)`` of each model flag that differs from the resumed checkpoint's
    ``run_config.json`` (the run folder's for older checkpoints); empty when none does or none is recorded."""
    for source in (run.resume_dir / "run_config.json", run.run_dir / "run_config.json"):
        if source.is_file():
            try:
                saved = json.loads(source.read_text()).get("model", {})
            except (ValueError, AttributeError):
                return []
            return [f"{key} (checkpoint: {saved.get(key)!r}, now: {value!r})"
                    for key, value in asdict(run.model_config).items() if saved.get(key) != value]  # fmt: skip
    return []


def check_resumed_config(run: Run, configs: dict[str, Any]) -> None:
    """Resume refuses a changed batch size, data, seed, model or data content (listed in a table) unless
    ``--allow_config_change``, which logs the table instead. Compared with the checkpoint's own ``run_config.json``
    (the run folder's for checkpoints written before checkpoints held one)."""
    source = run.resume_dir / "run_config.json"
    if not source.is_file():
        source = run.run_dir / "run_config.json"
    if not source.is_file():
        return
    try:
        saved = json.loads(source.read_text())
    except ValueError:
        raise TrainingStopped(f"{source} is not valid JSON: cannot check what the resumed run was.") from None
    differ = config_differences(saved, configs)
    if not differ:
        return
    width = max(len(name) for name, _, _ in differ)
    table = "\n".join(f"  {name:{width}s}  checkpoint: {old!r}  now: {new!r}" for name, old, new in differ)
    if run.train_config.allow_config_change:
        logger.warning("--allow_config_change: resuming from %s with a changed configuration:\n%s",
                       run.resume_dir, table)  # fmt: skip
        return
    raise TrainingStopped(
        f"Cannot resume from {run.resume_dir}: the configuration differs from the checkpoint's ({source}):\n{table}\n"
        f"Give the checkpoint's values, or --allow_config_change to resume anyway (the batches will not continue as "
        f"the checkpointed run's)."
    )
