"""The training loop: DTRB's train.py on Accelerate (devices, mixed precision, DDP on any number of processes or
nodes), with exact resume, atomic checkpoints, safetensors best models and DTRB-compatible text logs.

Iterations count optimizer steps, as DTRB's ``num_iter``; with gradient accumulation each one consumes
``gradient_accumulation_steps`` batches. The training sampler is a pure function of (seed, batch number, rank), so
resuming at step k continues exactly as an uninterrupted run would. ``train`` reads as the run's steps in order;
each step lives in the room of its job (``start``, ``validation``, ``finish``, ``run_dir``, ...).
"""

from __future__ import annotations

import contextlib
import time
import warnings
from typing import Any

import torch
from accelerate.logging import get_logger

from ..config import DataConfig, ModelConfig, TrainConfig
from ..progress import progress
from .distributed import agreed_across_processes
from .finish import finish
from .resume import run_configs
from .run_dir import write_checkpoint
from .start import build_data, build_model_and_optimizer, start_run, write_run_files
from .state import Run, Throughput, TrainingStopped, TrainState
from .streams import STREAM_STATE, stream_states
from .validation import validate_and_save_bests

logger = get_logger(__name__)  # main process only, unless a call says main_process_only=False


def train(model_config: ModelConfig, data_config: DataConfig, train_config: TrainConfig) -> dict[str, Any]:
    """Train a model; return the final results (also written to ``all_results.json`` in the run folder).

    Raises:
        FileNotFoundError / ValueError: bad data paths, empty data after filtering, a checkpoint that does not fit.
    """
    run = start_run(model_config, data_config, train_config)
    build_model_and_optimizer(run)
    # Resuming: the checkpoint's random generators (restored by load_state) are what the next step draws from
    # (dropout, PARSeq's permutations), not what building the data left of them (an uninterrupted run built it first).
    generators = torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    build_data(run)
    write_run_files(run)
    if run.resume_dir is not None:
        torch.set_rng_state(generators[0])
        if generators[1] is not None:
            torch.cuda.set_rng_state_all(generators[1])
    bar = progress(total=train_config.num_iter, initial=run.state.iteration, desc="training", unit="it",
                   disable=not run.accelerator.is_local_main_process, every=train_config.log_interval)  # fmt: skip
    run.meter = Throughput()
    start_time = time.perf_counter() - run.state.elapsed
    while run.state.iteration < train_config.num_iter and not run.state.stopped_early:
        outcome = optimizer_step(run)
        run.state.iteration += 1
        count_skipped_step(run, outcome)
        log_step(run, bar)
        validated = is_validation_step(run.state.iteration, train_config)
        if validated:
            with run.meter.paused():
                validate_and_save_bests(run, bar, elapsed=time.perf_counter() - start_time)
        if is_checkpoint_step(run.state, train_config, validated):
            with run.meter.paused():
                run.state.elapsed = time.perf_counter() - start_time
                save_checkpoint(run)
    bar.close()
    return finish(run, runtime=time.perf_counter() - start_time)


def optimizer_step(run: Run) -> str:
    """One optimizer step: ``gradient_accumulation_steps`` batches forward and backward, clipping, the update.
    Returns ``"updated"``, ``"empty"`` (no batch had a decodable image) or ``"nonfinite"`` (not applied).

    Collective-safe: the step's batches are fetched first, and a batch whose images were all corrupt on any process
    is skipped on every process (one all-reduce of a flag per batch), so DDP's collectives stay in step. The last
    batch kept is the one whose backward synchronises the gradients, and the losses are averaged over the batches
    kept, so the accumulation count stays right. A step whose loss or gradient norm is not finite (on any process)
    is not applied: the gradients are dropped and the weights stay as they were.
    """
    accelerator, model, config = run.accelerator, run.model, run.model_config
    tokenizer = run.unwrapped.tokenizer
    for module in run.frozen:  # validation put the model back in train mode
        module.eval()
    accumulation = run.train_config.gradient_accumulation_steps
    batches = [next(run.batches) for _ in range(accumulation)]
    for batch in batches:
        run.skips.update(batch["skipped"])
    empty = agreed_across_processes(accelerator, [not batch["labels"] for batch in batches])
    kept = [batch for batch, skip in zip(batches, empty) if not skip]
    run.state.empty_batches += len(batches) - len(kept)
    if not kept:
        skip_schedule_step(run)
        return "empty"
    losses = []
    for number, batch in enumerate(kept):
        images = batch["pixel_values"].to(accelerator.device, non_blocking=True)
        targets, lengths = tokenizer.encode(batch["labels"], config.batch_max_length)
        targets = targets.to(accelerator.device)
        last = number == len(kept) - 1
        with contextlib.nullcontext() if last else accelerator.no_sync(model):
            with accelerator.autocast():
                logits = model(images, targets if run.unwrapped.teacher_forced else None)
            loss = run.unwrapped.loss(logits, targets, lengths, **run.loss_kwargs)
            accelerator.backward(loss * (accumulation / len(kept)))  # backward divides by `accumulation`
        losses.append((loss.detach().float(), len(batch["labels"])))
    grad_norm = accelerator.clip_grad_norm_(model.parameters(), run.train_config.grad_clip)
    checks = [value for value, _ in losses]
    # fp16's scaler skips overflowing steps itself (and lowers its scale): only a non-finite loss counts there
    if accelerator.scaler is None and grad_norm is not None:
        checks.append(grad_norm.detach().float())
    finite = bool(torch.isfinite(torch.stack([value.reshape(()) for value in checks])).all())  # one host sync
    (nonfinite,) = agreed_across_processes(accelerator, [not finite])
    if nonfinite:
        run.optimizer.zero_grad(set_to_none=True)
        skip_schedule_step(run)
        return "nonfinite"
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    for value, count in losses:
        run.meter.add(value, count)  # device tensors: read (synced) only when the loss is shown
    run.scheduler.step()
    if run.ema is not None:
        run.ema.update(run.unwrapped)
    return "updated"


def skip_schedule_step(run: Run) -> None:
    """A skipped step still advances the schedule (it follows the iteration count); torch's warning about a
    scheduler stepped without its optimizer does not apply to a ``LambdaLR`` of the step number."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
        run.scheduler.step()


def count_skipped_step(run: Run, outcome: str) -> None:
    """Count a skipped step; stop with a message after ``max_skipped_steps`` in a row."""
    state, limit = run.state, run.train_config.max_skipped_steps
    if outcome == "updated":
        state.skipped_in_a_row = 0
        return
    state.skipped_in_a_row += 1
    if outcome == "nonfinite":
        state.nonfinite_steps += 1
        if state.skipped_in_a_row == 1:
            logger.warning("Iteration %d: non-finite loss or gradient, the step is skipped (the weights are kept).",
                           state.iteration)  # fmt: skip
    if state.skipped_in_a_row < limit:
        return
    if outcome == "empty":
        corrupt = ", ".join(f"{source}: {n:,}" for source, n in sorted(run.skips.counts.items())) or "none counted"
        raise TrainingStopped(
            f"No decodable training image in the last {limit} optimizer steps (up to iteration {state.iteration}; "
            f"corrupt images skipped: {corrupt}): check --train_data, whose images cannot be read."
        )
    best = run.run_dir / "best_accuracy"
    kept = f"the best model so far is in {best}" if best.is_dir() else "no best model was saved"
    raise TrainingStopped(
        f"Training diverged: the last {limit} optimizer steps (up to iteration {state.iteration}) had a non-finite "
        f"loss or gradient and were skipped ({state.nonfinite_steps} in all). Lower --lr ({run.train_config.lr}) or "
        f"--grad_clip, or check the data; {kept}."
    )


def is_checkpoint_step(state: TrainState, train_config: TrainConfig, validated: bool) -> bool:
    """A resumable checkpoint every ``checkpointing_steps`` steps when given, else at every validation; and at the
    end of the run either way."""
    if state.iteration >= train_config.num_iter or state.stopped_early:
        return True
    if train_config.checkpointing_steps:
        return state.iteration % train_config.checkpointing_steps == 0
    return validated


def log_step(run: Run, bar: Any) -> None:
    """The progress line, and every ``log_interval`` steps the trackers' training loss, rate and learning rate."""
    iteration, meter = run.state.iteration, run.meter
    rate = meter.window_rate(run.accelerator.num_processes)
    logged = iteration % run.train_config.log_interval == 0 or iteration == 1
    loss = meter.train_loss if logged else None  # reading the loss syncs the device: only when it is shown
    if logged:
        bar.set_postfix(loss="n/a" if loss is None else f"{loss:.4f}", img_s=f"{rate:.0f}", refresh=False)
    bar.update(1)
    if logged:
        values = {"train/images_per_second": rate, "train/lr": run.optimizer.param_groups[0]["lr"]}
        if loss is not None:  # no step applied since the last validation: no mean to log
            values["train/loss"] = loss
        run.accelerator.log(values, step=iteration)
        meter.window_start, meter.window_images = time.perf_counter(), 0


def is_validation_step(iteration: int, train_config: TrainConfig) -> bool:
    """DTRB validates at the first step, every ``valInterval`` steps, and at the last."""
    return iteration == 1 or iteration % train_config.val_interval == 0 or iteration == train_config.num_iter


def save_checkpoint(run: Run) -> None:
    """A resumable checkpoint (model, optimizer, RNG, sampler position, bests, the run's configuration), written
    atomically."""
    run.state.skipped = dict(run.skips.counts)
    streams = stream_states(run)
    write_checkpoint(run.accelerator, run.checkpoints_dir, run.state, run.train_config.checkpoints_total_limit,
                     run_config=run_configs(run), extra={STREAM_STATE: streams} if streams else None)  # fmt: skip
