"""Training: DTRB's train.py on Accelerate, in rooms by job.

``loop`` holds ``train()`` and the steps of one optimizer step; it calls the rooms, which never call it back:

- ``start``: the accelerator, run folder, model, optimizer, resumed state, data and the first run files;
- ``validation``: DTRB's validation, its logs, and the best models saved and pushed;
- ``finish``: calibration of the bests, validation curves, ``all_results.json``;
- ``optim``: optimizers, schedules, EMA, frozen stages, fp16 on the CPU;
- ``run_dir``: the run folder's guards, best-model folders, checkpoints (atomic, with manifests) and their rotation;
- ``resume``: which checkpoint to resume from and whether the configuration may go on from it;
- ``hub_push``: the background pusher of ``--push_to_hub``;
- ``distributed``: agreement across processes;
- ``streams``: the place of a ``--streaming`` run in its stream;
- ``state``: what they share (``Run``, ``TrainState``, ``Throughput``, ``TrainingStopped``).

Every name the former ``training.py`` module had is importable from here.
"""

from .distributed import FailedElsewhere, agreed_across_processes, main_process_first, main_reports
from .finish import calibrate_bests, finish, plot_validation_curves
from .hub_push import HubPusher
from .loop import (
    count_skipped_step,
    is_checkpoint_step,
    is_validation_step,
    log_step,
    optimizer_step,
    save_checkpoint,
    skip_schedule_step,
    train,
)
from .optim import EMA, build_optimizer, build_scheduler, enable_cpu_fp16, freeze_stages, lr_factor
from .resume import (
    RESUME_KEYS,
    check_resumed_config,
    config_differences,
    resume_checkpoint,
    run_configs,
    truncate_log,
)
from .run_dir import (
    CHECKPOINT_PREFIX,
    DEFAULT_CHECKPOINTS_LIMIT,
    MANIFEST,
    OVERWRITTEN,
    RUN_FILES,
    VALIDATION_HISTORY,
    check_run_dir,
    check_shared_run_dir,
    checkpoint_problem,
    clear_run_dir,
    finite_or_none,
    holds_a_run,
    latest_checkpoint,
    list_checkpoints,
    prune_checkpoints,
    remove_leftovers,
    save_model_folder,
    write_checkpoint,
)
from .start import (
    build_data,
    build_model_and_optimizer,
    label_audit,
    load_fitting_weights,
    load_saved_model,
    only_charset_differs,
    start_run,
    training_samples,
    write_run_files,
)
from .state import DASHED, Run, Throughput, TrainingStopped, TrainState
from .streams import STREAM_STATE, load_stream_state, stream_filtering, stream_states
from .validation import (
    Validation,
    card_kwargs,
    evaluate_model,
    format_validation_log,
    validate_and_save_bests,
    validation_protocol,
    weights_are_finite,
)

__all__ = [
    "CHECKPOINT_PREFIX", "DASHED", "DEFAULT_CHECKPOINTS_LIMIT", "EMA", "MANIFEST", "OVERWRITTEN", "RESUME_KEYS",
    "RUN_FILES", "STREAM_STATE", "VALIDATION_HISTORY", "FailedElsewhere", "HubPusher", "Run", "Throughput",
    "TrainState", "TrainingStopped", "Validation", "agreed_across_processes", "build_data",
    "build_model_and_optimizer", "build_optimizer", "build_scheduler", "calibrate_bests", "card_kwargs",
    "check_resumed_config", "check_run_dir", "check_shared_run_dir", "checkpoint_problem", "clear_run_dir",
    "config_differences", "count_skipped_step", "enable_cpu_fp16", "evaluate_model", "finish", "finite_or_none",
    "format_validation_log", "freeze_stages", "holds_a_run", "is_checkpoint_step", "is_validation_step",
    "label_audit", "latest_checkpoint", "list_checkpoints", "load_fitting_weights", "load_saved_model",
    "load_stream_state", "log_step", "lr_factor", "main_process_first", "main_reports", "only_charset_differs",
    "optimizer_step", "plot_validation_curves", "prune_checkpoints", "remove_leftovers", "resume_checkpoint",
    "run_configs", "save_checkpoint", "save_model_folder", "skip_schedule_step", "start_run", "stream_filtering",
    "stream_states", "train", "training_samples", "truncate_log", "validate_and_save_bests", "validation_protocol",
    "weights_are_finite", "write_checkpoint", "write_run_files",
]  # fmt: skip
