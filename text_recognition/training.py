"""The training loop: DTRB's train.py on Accelerate (devices, mixed precision, DDP on any number of processes or
nodes), with exact resume, atomic checkpoints, safetensors best models and DTRB-compatible text logs.

Iterations count optimizer steps, as DTRB's ``num_iter``; with gradient accumulation each one consumes
``gradient_accumulation_steps`` batches. The training sampler is a pure function of (seed, batch number, rank), so
resuming at step k continues exactly as an uninterrupted run would.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import errno
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, gather_object, set_seed
from torch.utils.data import DataLoader

from .checkpoints import check_state_dict, read_dtrb_state_dict
from .augment import TextAugment
from .config import DataConfig, ModelConfig, TrainConfig, parse_select_data, parse_stage_names
from .data.collate import SkipTracker
from .data.loaders import TextData, build_eval_data, build_stream_train_data, build_train_data
from .data.streaming import StreamBatchSampler
from .evaluation import calibrate, predict_records, score_records, write_temperature
from .fastpath import compile_encoder
from .metrics import Protocol
from .model import TextRecognitionModel, load_model
from .progress import progress

logger = get_logger(__name__)  # main process only, unless a call says main_process_only=False

DASHED = "-" * 80
CHECKPOINT_PREFIX = "checkpoint-"
VALIDATION_HISTORY = "validation_history.jsonl"
DEFAULT_CHECKPOINTS_LIMIT = 2  # without --checkpoints_total_limit: the last two checkpoints are kept
MANIFEST = "manifest.json"  # in every checkpoint: the size of each file, to tell a truncated one
#: What a run folder holds; a new run refuses to start where any of these exist (see ``check_run_dir``).
RUN_FILES = ("run_config.json", "log_train.txt", "all_results.json", "best_accuracy", "best_norm_ED")
#: What ``--overwrite_output_dir`` removes (only these: anything else in the folder stays).
OVERWRITTEN = (*RUN_FILES, "checkpoints", "opt.txt", "log_dataset.txt", "logs",
              VALIDATION_HISTORY, "validation_curves.png")


class TrainingStopped(ValueError):
    """Training cannot go on: ``max_skipped_steps`` optimizer steps in a row were skipped (a non-finite loss or
    gradient, or no decodable image), or a run folder or resumed configuration was refused."""


# ---- building blocks ----------------------------------------------------------------------------------------------


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """DTRB's optimizers, Adadelta(lr, rho, eps) by default and Adam(lr, (beta1, 0.999)) with ``--adam``, plus AdamW;
    ``weight_decay`` for each (0, DTRB's, by default). Frozen parameters are left out."""
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, betas=(config.beta1, 0.999), weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, betas=(config.beta1, 0.999), weight_decay=config.weight_decay)
    return torch.optim.Adadelta(params, lr=config.lr, rho=config.rho, eps=config.eps, weight_decay=config.weight_decay)


def lr_factor(step: int, config: TrainConfig) -> float:
    """The multiple of ``lr`` at optimizer step ``step`` (0-based): a linear warm-up from 0 over ``warmup_steps``,
    then ``constant``, ``linear`` decay to 0, ``cosine`` decay to 0, or ``onecycle`` (a cosine rise from lr/25 over
    the warm-up, or the first 30 % without one, then a cosine fall to lr/10^4, as torch's OneCycleLR)."""
    total, warmup = config.num_iter, config.warmup_steps
    if config.scheduler == "onecycle":  # torch's OneCycleLR(pct_start=rise / total, cycle_momentum=False)
        peak = (warmup or max(2, int(0.3 * total))) - 1  # the step at which lr peaks
        start, end = 1 / 25, 1 / 25e4
        if step <= peak:
            return start + (1 - start) * (1 - math.cos(math.pi * step / peak)) / 2
        progress = min((step - peak) / max(total - 1 - peak, 1), 1.0)
        return end + (1 - end) * (1 + math.cos(math.pi * progress)) / 2
    if step < warmup:
        return (step + 1) / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    if config.scheduler == "linear":
        return 1.0 - progress
    if config.scheduler == "cosine":
        return (1 + math.cos(math.pi * progress)) / 2
    return 1.0


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """``lr_factor`` as a ``LambdaLR``, stepped once per optimizer step (not prepared by Accelerate, which would step
    it once per process)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, config))


def freeze_stages(model: TextRecognitionModel, stages: str | None) -> list[torch.nn.Module]:
    """``--freeze``: no gradient for those stages' parameters, and their BatchNorm statistics kept (the stages stay
    in eval mode; ``optimizer_step`` re-applies it after each validation). Returns the frozen modules."""
    frozen = [getattr(model, name) for name in parse_stage_names(stages)] if stages else []
    for module in frozen:
        module.requires_grad_(False)
        module.eval()
    return frozen


class EMA:
    """An exponential moving average of a model's weights (``ema = decay * ema + (1 - decay) * weights`` after each
    optimizer step; buffers are copied). It is what validation scores and ``best_*`` folders save, and its state is
    saved in every checkpoint."""

    def __init__(self, model: TextRecognitionModel, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        own = dict(self.model.named_parameters())
        names = [name for name, _ in model.named_parameters()]
        ema_params = [own[name] for name in names]
        torch._foreach_lerp_(ema_params, [p.detach().to(e.dtype) for p, e in zip(model.parameters(), ema_params)],
                             1.0 - self.decay)  # fmt: skip
        for (name, buffer), ema_buffer in zip(model.named_buffers(), self.model.buffers()):
            ema_buffer.copy_(buffer)

    def state_dict(self) -> dict[str, Any]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state)


def load_saved_model(saved_model: str) -> tuple[dict[str, torch.Tensor], TextRecognitionModel | None]:
    """The weights of ``--saved_model`` (a model folder, a Hub id or a DTRB .pth), and the model itself when it
    records its configuration (not a .pth)."""
    path = Path(saved_model)
    if path.is_file():
        return read_dtrb_state_dict(path), None
    model = load_model(saved_model)
    return model.state_dict(), model


def only_charset_differs(saved: ModelConfig, wanted: ModelConfig) -> bool:
    return dataclasses.replace(saved, character=wanted.character, sensitive=wanted.sensitive) == wanted


def load_fitting_weights(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> list[str]:
    """``--FT``: copy every weight whose name and shape fit; return what kept its fresh initialisation."""
    own = model.state_dict()
    fitting = {k: v for k, v in state_dict.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(fitting, strict=False)
    return sorted(
        f"{key} {tuple(value.shape)}" + (f" (checkpoint {tuple(state_dict[key].shape)})" if key in state_dict else "")
        for key, value in own.items()
        if key not in fitting and not key.endswith("num_batches_tracked")
    )


@dataclass
class TrainState:
    """What resume needs besides model, optimizer and RNG (saved by Accelerate with the checkpoint)."""

    iteration: int = 0
    best_accuracy: float = -1.0
    best_norm_ED: float = -1.0
    elapsed: float = 0.0
    skipped: dict[str, int] = field(default_factory=dict)
    validations_without_gain: int = 0
    stopped_early: bool = False
    nonfinite_steps: int = 0  # optimizer steps skipped for a non-finite loss or gradient
    empty_batches: int = 0  # batches skipped on every process because one process had no decodable image in it
    skipped_in_a_row: int = 0

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


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


def prune_checkpoints(checkpoints_dir: Path, limit: int | None) -> None:
    limit = limit or DEFAULT_CHECKPOINTS_LIMIT
    steps = sorted(int(p.name[len(CHECKPOINT_PREFIX) :]) for p in checkpoints_dir.glob(f"{CHECKPOINT_PREFIX}*")
                   if p.name[len(CHECKPOINT_PREFIX) :].isdigit())  # fmt: skip
    for step in steps[:-limit]:
        shutil.rmtree(checkpoints_dir / f"{CHECKPOINT_PREFIX}{step}", ignore_errors=True)


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


def save_model_folder(model: TextRecognitionModel, target: Path, card_kwargs: dict[str, Any]) -> None:
    """``save_pretrained`` into a temporary sibling, then swap it in: a crash never leaves half a model folder."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp", dir=target.parent))
    try:
        model.save_pretrained(tmp, model_card_kwargs=card_kwargs)
        _replace_dir(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


# ---- validation ---------------------------------------------------------------------------------------------------


@dataclass
class Validation:
    loss: float
    accuracy: float
    norm_ED: float
    mean_confidence: float
    num_samples: int
    examples: list[tuple[str, str, float]]  # (ground truth, prediction, confidence) of the last batch, first 5


@torch.no_grad()
def evaluate_model(
    model: torch.nn.Module,
    data: TextData,
    accelerator: Accelerator,
    batch_size: int,
    *,
    num_workers: int = 0,
    protocol: Protocol | None = None,
    baidu_ctc: bool = False,
    skips: SkipTracker | None = None,
) -> Validation:
    """DTRB's ``validation()``: greedy decoding, loss, accuracy, norm_ED and confidence over every sample once,
    scored under ``protocol`` (default ``dtrb``; training passes ``validation_protocol``).

    Each process evaluates a contiguous share of the samples; the results are gathered, so every sample counts
    exactly once whatever the number of processes.
    """
    total = len(data.dataset)
    share = -(-total // accelerator.num_processes)
    start = min(accelerator.process_index * share, total)
    records, losses, _ = predict_records(
        accelerator.unwrap_model(model), data, list(range(start, min(start + share, total))), batch_size,
        device=accelerator.device, num_workers=num_workers, autocast=accelerator.autocast, skips=skips,
        loss_kwargs={"baidu": True} if baidu_ctc else None, persistent=True,
    )  # fmt: skip
    gathered_records = gather_object(records) if accelerator.num_processes > 1 else records
    gathered_losses = gather_object(losses) if accelerator.num_processes > 1 else losses
    result = score_records(gathered_records, protocol)
    return Validation(
        loss=sum(gathered_losses) / len(gathered_losses) if gathered_losses else 0.0,
        accuracy=result.accuracy,
        norm_ED=result.norm_ED,
        mean_confidence=result.mean_confidence,
        num_samples=result.num_samples,
        examples=[(r.ground_truth, r.prediction, r.confidence) for r in records[-5:]],
    )


def format_validation_log(
    iteration: int, num_iter: int, train_loss: float, valid: Validation, elapsed: float, state: TrainState
) -> str:
    """The block DTRB appends to ``log_train.txt`` after each validation."""
    lines = [
        f"[{iteration}/{num_iter}] Train loss: {train_loss:0.5f}, Valid loss: {valid.loss:0.5f}, "
        f"Elapsed_time: {elapsed:0.5f}",
        f"{'Current_accuracy':17s}: {valid.accuracy:0.3f}, {'Current_norm_ED':17s}: {valid.norm_ED:0.2f}",
        f"{'Best_accuracy':17s}: {state.best_accuracy:0.3f}, {'Best_norm_ED':17s}: {state.best_norm_ED:0.2f}",
        DASHED,
        f"{'Ground Truth':25s} | {'Prediction':25s} | Confidence Score & T/F",
        DASHED,
    ]
    lines += [f"{gt:25s} | {pred:25s} | {conf:0.4f}\t{pred == gt}" for gt, pred, conf in valid.examples]
    lines.append(DASHED)
    return "\n".join(lines)


# ---- the loop -----------------------------------------------------------------------------------------------------


def _report_to(requested: str | None) -> str | None:
    if requested in (None, ""):
        try:
            import tensorboard  # noqa: F401

            return "tensorboard"
        except ImportError:
            return None
    if requested == "none":
        return None
    if requested == "tensorboard":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise ValueError(
                "--report_to tensorboard needs the tensorboard package: pip install tensorboard"
            ) from None
    return requested


class _Pusher:
    """Pushes best-accuracy model folders to the Hub in the background; failures are logged, never raised.

    One upload at a time, from one temporary copy (the folder is replaced by the next best while uploading), removed
    as soon as its upload ends. A best that comes while an upload runs waits as the one pending push; a newer best
    replaces it (the stale one is skipped, never uploaded), so at most one copy exists and the last best is always
    pushed."""

    def __init__(self, repo_id: str, private: bool, api: Any = None) -> None:
        if api is None:
            from huggingface_hub import HfApi

            api = HfApi()
        self.api = api
        self.current: tuple[Any, Path, str] | None = None  # (future, temporary copy, message) of the upload in flight
        self.pending: tuple[Path, str] | None = None  # (folder, message) of the next one
        self.errors: list[str] = []
        self.pushed: list[str] = []  # commit messages of the uploads that succeeded
        self.skipped_stale = 0
        try:
            self.repo_id = self.api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        except Exception as error:  # token, permission, network: training goes on without pushing
            self.errors.append(f"cannot create or reach {repo_id!r}: " + (str(error).splitlines()[0] if str(error)
                               else type(error).__name__))  # fmt: skip
            logger.error("Cannot create or reach the Hub repo %r (%s): training continues without --push_to_hub.",
                         repo_id, str(error).splitlines()[0] if str(error) else type(error).__name__)  # fmt: skip
            self.repo_id = None

    def push(self, folder: Path, message: str) -> None:
        """Upload ``folder`` now, or once the upload in flight ends (replacing a best still waiting)."""
        if self.repo_id is None:
            return
        self.poll()
        if self.current is None:
            self._start(folder, message)
            return
        if self.pending is not None:
            self.skipped_stale += 1
            logger.info("Hub push skipped (a newer best replaced it): %s", self.pending[1])
        self.pending = (folder, message)

    def poll(self) -> None:
        """Collect an upload that ended (its copy removed, an error logged), and start the pending one."""
        if self.current is not None and self.current[0].done():
            self._collect()
        if self.current is None and self.pending is not None:
            folder, message = self.pending
            self.pending = None
            self._start(folder, message)

    def _start(self, folder: Path, message: str) -> None:
        snapshot = Path(tempfile.mkdtemp(prefix="push_"))
        try:
            shutil.copytree(folder, snapshot, dirs_exist_ok=True)  # the folder may be replaced while uploading
            future = self.api.upload_folder(repo_id=self.repo_id, folder_path=snapshot, commit_message=message,
                                            run_as_future=True)  # fmt: skip
        except Exception as error:  # a full /tmp, a refused request
            shutil.rmtree(snapshot, ignore_errors=True)
            self._failed(message, error)
            return
        self.current = (future, snapshot, message)

    def _collect(self) -> None:
        future, snapshot, message = self.current
        self.current = None
        try:
            future.result()
            self.pushed.append(message)
        except Exception as error:  # report every failed push, keep the run's results
            self._failed(message, error)
        finally:
            shutil.rmtree(snapshot, ignore_errors=True)

    def _failed(self, message: str, error: Exception) -> None:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        self.errors.append(reason)
        logger.error("A push to the Hub failed (%s): %s", message, reason)

    def wait(self) -> list[str]:
        """Wait for the upload in flight and the pending one; return the errors (creating the repo included)."""
        while self.current is not None or self.pending is not None:
            if self.current is not None:
                try:
                    self.current[0].exception()  # blocks until it ends
                except Exception:  # cancelled: collected as an error below
                    pass
            self.poll()
        return list(self.errors)


@dataclass
class Run:
    """One training run: its configuration, where it writes, and what the loop's steps share."""

    model_config: ModelConfig
    data_config: DataConfig
    train_config: TrainConfig
    accelerator: Accelerator
    exp_name: str
    run_dir: Path
    state: TrainState = field(default_factory=TrainState)
    model: torch.nn.Module | None = None
    optimizer: torch.optim.Optimizer | None = None
    train_data: TextData | None = None
    valid_data: TextData | None = None
    batches: Iterator[dict[str, Any]] | None = None
    scheduler: torch.optim.lr_scheduler.LambdaLR | None = None
    ema: EMA | None = None
    frozen: list[torch.nn.Module] = field(default_factory=list)
    skips: SkipTracker = field(default_factory=SkipTracker)
    pusher: _Pusher | None = None
    meter: Throughput = field(default_factory=lambda: Throughput())
    last_valid: Validation | None = None
    resume_dir: Path | None = None

    @property
    def checkpoints_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def unwrapped(self) -> TextRecognitionModel:
        return self.accelerator.unwrap_model(self.model)

    @property
    def evaluated(self) -> TextRecognitionModel:
        """What validation scores and ``best_*`` saves: the EMA weights when ``--ema_decay`` is on."""
        return self.ema.model if self.ema is not None else self.unwrapped

    @property
    def loss_kwargs(self) -> dict[str, Any]:
        if self.model_config.prediction == "Attn":
            return {"label_smoothing": self.train_config.label_smoothing} if self.train_config.label_smoothing else {}
        return {"baidu": True} if self.train_config.baidu_ctc else {}

    @property
    def total_batch_size(self) -> int:
        per_process = sum(self.train_data.batch_sizes)
        return per_process * self.accelerator.num_processes * self.train_config.gradient_accumulation_steps


@dataclass
class Throughput:
    """The training loss since the last validation, and images per second of optimizer steps only."""

    loss_sum: float | torch.Tensor = 0.0  # a device tensor between reads: no host sync per step
    loss_count: int = 0
    images: int = 0  # since the start of this process's loop
    excluded: float = 0.0  # seconds of validation and checkpointing, left out of the throughput
    loop_start: float = field(default_factory=time.perf_counter)
    window_start: float = field(default_factory=time.perf_counter)
    window_images: int = 0

    @property
    def train_loss(self) -> float:
        return float(self.loss_sum) / max(self.loss_count, 1)

    def add(self, loss: float | torch.Tensor, images: int) -> None:
        self.loss_sum += loss
        self.loss_count += 1
        self.images += images
        self.window_images += images

    def window_rate(self, num_processes: int) -> float:
        return self.window_images * num_processes / max(time.perf_counter() - self.window_start, 1e-9)

    def rate(self, num_processes: int) -> float:
        return self.images * num_processes / max(time.perf_counter() - self.loop_start - self.excluded, 1e-9)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Time spent inside is not training time (validation, checkpoints)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.excluded += time.perf_counter() - start
            self.window_start = time.perf_counter()


def train(model_config: ModelConfig, data_config: DataConfig, train_config: TrainConfig) -> dict[str, Any]:
    """Train a model; return the final results (also written to ``all_results.json`` in the run folder).

    Raises:
        FileNotFoundError / ValueError: bad data paths, empty data after filtering, a checkpoint that does not fit.
    """
    run = start_run(model_config, data_config, train_config)
    build_model_and_optimizer(run)
    build_data(run)
    write_run_files(run)
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


# ---- the steps of a run, in order ---------------------------------------------------------------------------------


def start_run(model_config: ModelConfig, data_config: DataConfig, train_config: TrainConfig) -> Run:
    """The accelerator (devices, precision, processes), the run folder (checked, and cleared of what a killed run
    left behind) and the seeds."""
    exp_name = train_config.exp_name or f"{model_config.stage_string}-Seed{train_config.seed}"
    run_dir = Path(train_config.output_dir) / exp_name
    accelerator = Accelerator(
        gradient_accumulation_steps=train_config.gradient_accumulation_steps,
        log_with=_report_to(train_config.report_to),
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "logs")),
    )
    enable_cpu_fp16(accelerator)
    run = Run(model_config, data_config, train_config, accelerator, exp_name, run_dir)
    with main_reports(accelerator):
        check_run_dir(run_dir, train_config)  # every process reads the folder before any writes to it
    accelerator.wait_for_everyone()
    if run.main:
        if train_config.overwrite_output_dir and not train_config.resume_from_checkpoint:
            clear_run_dir(run_dir)
        remove_leftovers(run_dir)
        run.checkpoints_dir.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    with main_reports(accelerator):
        check_shared_run_dir(accelerator, run_dir)
    set_seed(train_config.seed)
    return run


def check_shared_run_dir(accelerator: Accelerator, run_dir: Path) -> None:
    """Several processes (nodes): the run folder must be one folder that every node sees, since checkpoints and
    best models are written by the global main process and resumed by all. The main process writes a marker file,
    the local main process of every node looks for it."""
    if accelerator.num_processes == 1:
        return
    from accelerate.utils import broadcast_object_list

    token = [f".shared-{time.time_ns()}-{os.getpid()}" if accelerator.is_main_process else None]
    broadcast_object_list(token)
    marker = run_dir / token[0]
    if accelerator.is_main_process:
        marker.write_text("written by the main process to check that every node sees this folder\n")
    accelerator.wait_for_everyone()
    seen = marker.is_file() if accelerator.is_local_main_process else True
    views = gather_object([(accelerator.process_index, seen)])
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        marker.unlink(missing_ok=True)
    blind = [rank for rank, sees in views if not sees]
    if blind:
        raise TrainingStopped(
            f"{run_dir} is not shared by every node: process(es) {blind} (local main of their node) do not see a file "
            f"the main process wrote there. Checkpoints and best models are written by the main process and resumed "
            f"by every node, so --output_dir must be on a filesystem shared by all nodes (e.g. NFS)."
        )


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


def enable_cpu_fp16(accelerator: Accelerator) -> None:
    """``--mixed_precision fp16`` on the CPU: accelerate would run it as fp32 without a word; torch's CPU autocast
    and ``GradScaler`` support fp16, so turn them on (before ``prepare``, which hands the scaler to the optimizer;
    ``save_state``/``load_state`` then keep the scaler's state in every checkpoint, as on a GPU)."""
    if accelerator.mixed_precision == "fp16" and accelerator.device.type == "cpu" and accelerator.scaler is None:
        accelerator.native_amp = True
        accelerator.scaler = torch.amp.GradScaler("cpu")


def build_model_and_optimizer(run: Run) -> None:
    """DTRB's initialisation, then ``--saved_model`` (strict, or what fits with ``--FT``), the optimizer, and the
    state of the checkpoint to resume from, if any."""
    config, train_config = run.model_config, run.train_config
    model = TextRecognitionModel(config)
    model.init_weights()
    reinitialised: list[str] = []
    if train_config.saved_model:
        state_dict, saved = load_saved_model(train_config.saved_model)
        if train_config.ft and saved is not None and only_charset_differs(saved.config, config):
            model = saved  # every symbol in both charsets keeps its learned rows
            change = model.resize_charset(config.character)
            model.config = model._hub_mixin_config = config
            if run.main and (change.added or change.removed):
                run.accelerator.print(f"--FT: charset resized, {change}")
        elif train_config.ft:
            reinitialised = load_fitting_weights(model, state_dict)
        else:
            model.load_state_dict(check_state_dict(model, state_dict, config, repr(train_config.saved_model)))
    model.train()
    run.frozen = freeze_stages(model, train_config.freeze)
    if train_config.label_smoothing and config.prediction != "Attn":
        raise ValueError("--label_smoothing applies to the attention loss: it needs --Prediction Attn.")
    if reinitialised and run.main:
        run.accelerator.print(f"--FT: re-initialised {len(reinitialised)} tensors that did not fit: "
                              + ", ".join(reinitialised))  # fmt: skip
    resume_dir = resume_checkpoint(train_config, run.checkpoints_dir, run.main)
    run.resume_dir = resume_dir
    run.model, run.optimizer = run.accelerator.prepare(model, build_optimizer(model, train_config))
    run.scheduler = build_scheduler(run.optimizer, train_config)
    run.accelerator.register_for_checkpointing(run.scheduler)
    if train_config.ema_decay is not None:
        run.ema = EMA(run.unwrapped, train_config.ema_decay)
        run.accelerator.register_for_checkpointing(run.ema)
    if train_config.compile:  # after the EMA copy, which stays eager (it is only validated)
        compile_encoder(run.unwrapped)
    if resume_dir is not None:
        try:
            run.accelerator.load_state(str(resume_dir))
        except Exception as error:  # a file truncated or corrupted after its manifest was written
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise TrainingStopped(f"Cannot resume from {resume_dir}: {reason}. Resume from an earlier checkpoint "
                                  f"(--resume_from_checkpoint {resume_dir.parent}/{CHECKPOINT_PREFIX}N).") from None
        run.state.load_state_dict(json.loads((resume_dir / "train_state.json").read_text()))
        run.state.skipped_in_a_row = 0
        if run.main:
            logger.info("Resuming from %s at iteration %d.", resume_dir, run.state.iteration)
            truncate_log(run.run_dir / "log_train.txt", run.state.iteration)
    run.skips.counts.update(run.state.skipped)


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


def resume_checkpoint(train_config: TrainConfig, checkpoints_dir: Path, main: bool) -> Path | None:
    """The checkpoint ``--resume_from_checkpoint`` names (a folder, or ``latest``), or None to start fresh."""
    if not train_config.resume_from_checkpoint:
        return None
    if train_config.resume_from_checkpoint == "latest":
        found = latest_checkpoint(checkpoints_dir)
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


def build_data(run: Run) -> None:
    """Training and validation data, built on the main process first (so LMDB conversion caches are written once);
    the training sampler starts at the resumed batch."""
    data_config, train_config, accelerator = run.data_config, run.train_config, run.accelerator

    def build() -> None:
        augment = TextAugment(data_config.augment_strength, seed=train_config.seed) if data_config.augment else None
        if data_config.streaming:
            run.train_data = build_stream_train_data(
                data_config.train_data, run.model_config, select_data=data_config.select_data,
                batch_ratio=data_config.batch_ratio, batch_size=train_config.batch_size,
                data_filtering_off=data_config.data_filtering_off, seed=train_config.seed,
                rank=accelerator.process_index, world_size=accelerator.num_processes,
                shuffle_block=data_config.shuffle_block, augment=augment,
            )  # fmt: skip
            if run.resume_dir is not None:
                load_stream_state(run)
        else:
            run.train_data = build_train_data(
                data_config.train_data, run.model_config, select_data=data_config.select_data,
                batch_ratio=data_config.batch_ratio, total_data_usage_ratio=data_config.total_data_usage_ratio,
                batch_size=train_config.batch_size, data_filtering_off=data_config.data_filtering_off,
                seed=train_config.seed, rank=accelerator.process_index, world_size=accelerator.num_processes,
                start_iteration=run.state.iteration * train_config.gradient_accumulation_steps, augment=augment,
            )  # fmt: skip
        run.valid_data = build_eval_data(data_config.valid_data, run.model_config,
                                         data_filtering_off=data_config.data_filtering_off)  # fmt: skip

    main_process_first(accelerator, build)
    loader = DataLoader(run.train_data.dataset, batch_sampler=run.train_data.sampler,
                        collate_fn=run.train_data.collator, num_workers=data_config.workers,
                        pin_memory=accelerator.device.type == "cuda",
                        persistent_workers=data_config.workers > 0)  # fmt: skip
    run.batches = iter(loader)  # the batch sampler is endless: no epochs, no re-shuffling restarts
    stream = _stream_sampler(run)
    if stream is not None:
        run.batches = _marking_consumed(run.batches, stream)
    if run.main and run.train_config.push_to_hub:
        run.pusher = _Pusher(train_config.hub_model_id, train_config.hub_private_repo)


STREAM_STATE = "stream_state.json"  # in a checkpoint of a --streaming run: each process's place in the stream


def _marking_consumed(batches: Iterator[dict[str, Any]], sampler: StreamBatchSampler) -> Iterator[dict[str, Any]]:
    """The loader's batches, each marked as consumed by the stream sampler when it is handed to training (the
    DataLoader reads ahead: what a checkpoint saves is where the last batch trained on left the stream)."""
    for batch in batches:
        sampler.consumed(batch["draw"])
        yield batch


def _stream_sampler(run: Run) -> StreamBatchSampler | None:
    sampler = run.train_data.sampler if run.train_data is not None else None
    return sampler if isinstance(sampler, StreamBatchSampler) else None


def _from_every_process(run: Run, value: Any) -> list[Any]:
    """``value`` of every process, in process order (a collective: every process calls it)."""
    return gather_object([value]) if run.accelerator.num_processes > 1 else [value]


def stream_states(run: Run) -> dict[str, Any] | None:
    """Every process's stream state (on the main process; ``None`` elsewhere and without ``--streaming``)."""
    sampler = _stream_sampler(run)
    if sampler is None:
        return None
    states = _from_every_process(run, sampler.state_dict())
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


def label_audit(run: Run) -> str:
    """The label part of ``scripts/audit_dataset.py`` for the training sources: per source, what the filter keeps
    and drops and why, lengths, and the symbols outside the charset with examples."""
    from .audit import audit

    data_config = run.data_config
    if data_config.streaming or not Path(data_config.train_data).exists():
        return (f"label audit: {data_config.train_data} is streamed (filtering counts are in all_results.json); run "
                f"scripts/audit_dataset.py on it for the whole picture.")
    parts = ["label audit (scripts/audit_dataset.py; add --images there for sizes, corrupt images, duplicates):"]
    for token in parse_select_data(data_config.select_data):
        report = audit(data_config.train_data, run.model_config, select_data=token,
                       data_filtering_off=data_config.data_filtering_off, show_progress=False)  # fmt: skip
        parts.append(f"select_data {token}:\n{report.label_table()}")
    return "\n".join(parts)


def write_run_files(run: Run) -> None:
    """``run_config.json``, DTRB's ``opt.txt`` and ``log_dataset.txt``, the opening summary and the trackers."""
    accelerator, model_config = run.accelerator, run.model_config
    configs = run_configs(run)
    if run.resume_dir is not None:
        with main_reports(accelerator):
            check_resumed_config(run, configs)  # every process: all refuse alike
    if not run.main:
        accelerator.init_trackers(run.exp_name)
        return
    text = json.dumps(configs, indent=2, sort_keys=True) + "\n"
    config_file = run.run_dir / "run_config.json"
    if run.resume_dir is None or not config_file.exists():
        config_file.write_text(text)
    elif config_file.read_text() != text:  # the old one is kept: the new one goes beside it
        config_file.with_name(f"run_config.resume-{run.state.iteration}.json").write_text(text)
    options = {**configs["model"], **configs["data"], **configs["train"], "exp_name": run.exp_name,
               "num_class": model_config.num_class, "num_processes": accelerator.num_processes,
               "mixed_precision": accelerator.mixed_precision, "total_batch_size": run.total_batch_size}  # fmt: skip
    with open(run.run_dir / "opt.txt", "a", encoding="utf-8") as opt_file:
        opt_file.write("------------ Options -------------\n")
        opt_file.writelines(f"{key}: {value}\n" for key, value in options.items())
        opt_file.write("---------------------------------------\n")
    with open(run.run_dir / "log_dataset.txt", "a", encoding="utf-8") as log_dataset:
        log_dataset.write(run.train_data.log + "\nvalidation:\n" + run.valid_data.log + DASHED + "\n")
        log_dataset.write(label_audit(run) + "\n" + DASHED + "\n")
    tokens = parse_select_data(run.data_config.select_data)
    split = " + ".join(f"{n} {token}" for n, token in zip(run.train_data.batch_sizes, tokens))
    accelerator.print(
        f"{model_config.stage_string}: {run.unwrapped.num_parameters:,} parameters\n"
        f"Training samples: {training_samples(run)} | validation samples: {len(run.valid_data.dataset):,}\n"
        f"Batch per process: {sum(run.train_data.batch_sizes)} ({split}) | processes: {accelerator.num_processes} | "
        f"accumulation: {run.train_config.gradient_accumulation_steps} | total batch: {run.total_batch_size} | "
        f"mixed precision: {accelerator.mixed_precision} | device: {accelerator.device}"
    )
    accelerator.init_trackers(run.exp_name, config={k: v for k, v in options.items()
                                                    if isinstance(v, (int, float, str, bool))})  # fmt: skip


def agreed_across_processes(accelerator: Accelerator, flags: list[bool]) -> list[bool]:
    """Each flag true when it is true on any process (one all-reduce), so that every process decides alike."""
    if accelerator.num_processes == 1:
        return flags
    tensor = torch.tensor([float(flag) for flag in flags], device=accelerator.device)
    return [bool(value > 0) for value in accelerator.reduce(tensor, reduction="sum").tolist()]


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
                logits = model(images, targets if config.prediction == "Attn" else None)
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
    raise TrainingStopped(
        f"Training diverged: the last {limit} optimizer steps (up to iteration {state.iteration}) had a non-finite "
        f"loss or gradient and were skipped ({state.nonfinite_steps} in all). Lower --lr ({run.train_config.lr}) or "
        f"--grad_clip, or check the data; the best model so far is in {run.run_dir / 'best_accuracy'}."
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
    if logged:  # reading the loss syncs the device: only when it is shown
        bar.set_postfix(loss=f"{meter.train_loss:.4f}", img_s=f"{rate:.0f}", refresh=False)
    bar.update(1)
    if logged:
        run.accelerator.log({"train/loss": meter.train_loss, "train/images_per_second": rate,
                             "train/lr": run.optimizer.param_groups[0]["lr"]}, step=iteration)  # fmt: skip
        meter.window_start, meter.window_images = time.perf_counter(), 0


def is_validation_step(iteration: int, train_config: TrainConfig) -> bool:
    """DTRB validates at the first step, every ``valInterval`` steps, and at the last."""
    return iteration == 1 or iteration % train_config.val_interval == 0 or iteration == train_config.num_iter


def validate_and_save_bests(run: Run, bar: Any, elapsed: float) -> None:
    """DTRB's validation: log it, save ``best_accuracy/`` and ``best_norm_ED/`` when they improve, push the best."""
    state, train_config = run.state, run.train_config
    valid = evaluate_model(
        run.evaluated, run.valid_data, run.accelerator, train_config.batch_size, num_workers=run.data_config.workers,
        protocol=validation_protocol(run), skips=run.skips,
        baidu_ctc=train_config.baidu_ctc and run.model_config.prediction == "CTC",
    )  # fmt: skip
    run.last_valid = valid
    improved_accuracy, improved_ned = valid.accuracy > state.best_accuracy, valid.norm_ED > state.best_norm_ED
    if (improved_accuracy or improved_ned) and not weights_are_finite(run.evaluated):
        logger.warning("Iteration %d: the weights are not finite; no best model is saved.", state.iteration)
        improved_accuracy = improved_ned = False  # nor counted as a best: a finite model may match it later
    state.best_accuracy = valid.accuracy if improved_accuracy else state.best_accuracy
    state.best_norm_ED = valid.norm_ED if improved_ned else state.best_norm_ED
    state.validations_without_gain = 0 if improved_accuracy else state.validations_without_gain + 1
    patience = train_config.early_stopping_patience
    if patience is not None and state.validations_without_gain >= patience:
        state.stopped_early = True
        run.accelerator.print(f"early stopping at iteration {state.iteration}: no better accuracy in {patience} "
                              f"validation(s); the best is {state.best_accuracy:.3f}")  # fmt: skip
    if run.main:
        log = format_validation_log(state.iteration, train_config.num_iter, run.meter.train_loss, valid, elapsed,
                                    state)  # fmt: skip
        bar.write(log)
        with open(run.run_dir / "log_train.txt", "a", encoding="utf-8") as log_train:
            log_train.write(log + "\n")
        entry = {"step": state.iteration, "train_loss": run.meter.train_loss, "valid_loss": valid.loss,
                 "accuracy": valid.accuracy, "norm_ED": valid.norm_ED}  # fmt: skip
        with open(run.run_dir / VALIDATION_HISTORY, "a", encoding="utf-8") as history:
            history.write(json.dumps(entry) + "\n")
        card = card_kwargs(run, valid)
        if run.pusher is not None:
            run.pusher.poll()
        if improved_accuracy:
            save_model_folder(run.evaluated, run.run_dir / "best_accuracy", card)
            if run.pusher is not None:
                run.pusher.push(run.run_dir / "best_accuracy",
                                f"best accuracy {valid.accuracy:.3f} at iteration {state.iteration}")  # fmt: skip
        if improved_ned:
            save_model_folder(run.evaluated, run.run_dir / "best_norm_ED", card)
    run.accelerator.log({"valid/loss": valid.loss, "valid/accuracy": valid.accuracy, "valid/norm_ED": valid.norm_ED,
                         "valid/mean_confidence": valid.mean_confidence}, step=state.iteration)  # fmt: skip
    run.meter.loss_sum, run.meter.loss_count = 0.0, 0


def weights_are_finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(tensor).all()) for tensor in model.state_dict().values()
               if tensor.is_floating_point())  # fmt: skip


def finite_or_none(value: Any) -> Any:
    """JSON has no NaN or Infinity: a non-finite number is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, list):
        return [finite_or_none(item) for item in value]
    return value


def validation_protocol(run: Run) -> Protocol:
    """DTRB's validation: its test.py rules for the training run's --sensitive and --data_filtering_off."""
    return Protocol("dtrb", run.model_config.sensitive, run.data_config.data_filtering_off)


def card_kwargs(run: Run, valid: Validation) -> dict[str, Any]:
    """The model card of a best model: its validation result (split ``validation``) and how it was trained."""
    data_config, train_config = run.data_config, run.train_config
    result = {"dataset": "validation", "dataset_type": data_config.valid_data, "split": "validation",
              "num_samples": valid.num_samples, "accuracy": valid.accuracy, "norm_ED": valid.norm_ED,
              "mean_confidence": valid.mean_confidence,
              "protocol": validation_protocol(run).description}  # fmt: skip
    training = {
        "train_data": data_config.train_data, "valid_data": data_config.valid_data,
        "select_data": data_config.select_data, "batch_ratio": data_config.batch_ratio,
        "total_batch_size": run.total_batch_size,
        "optimizer": {"adam": "Adam", "adamw": "AdamW"}.get(train_config.optimizer, "Adadelta"),
        "scheduler": train_config.scheduler, "augment": data_config.augment, "ema_decay": train_config.ema_decay,
        "lr": train_config.lr, "grad_clip": train_config.grad_clip, "iteration": run.state.iteration,
    }  # fmt: skip
    return {"model_name": run.exp_name, "eval_results": [result], "training": training}


def save_checkpoint(run: Run) -> None:
    """A resumable checkpoint (model, optimizer, RNG, sampler position, bests, the run's configuration), written
    atomically."""
    run.state.skipped = dict(run.skips.counts)
    streams = stream_states(run)
    _save_checkpoint(run.accelerator, run.checkpoints_dir, run.state, run.train_config.checkpoints_total_limit,
                     run_config=run_configs(run), extra={STREAM_STATE: streams} if streams else None)  # fmt: skip


def finish(run: Run, runtime: float) -> dict[str, Any]:
    """Wait for the pushes, write ``all_results.json`` (push errors included) and close the trackers."""
    run.accelerator.wait_for_everyone()
    last, state = run.last_valid, run.state
    results = {
        "iterations": state.iteration,
        "stopped_early": state.stopped_early,
        "best_accuracy": state.best_accuracy,
        "best_norm_ED": state.best_norm_ED,
        "final_accuracy": last.accuracy if last else None,
        "final_norm_ED": last.norm_ED if last else None,
        "final_valid_loss": last.loss if last else None,
        "final_mean_confidence": last.mean_confidence if last else None,
        "validation_samples": last.num_samples if last else None,
        "train_runtime": runtime,
        "train_images_per_second": run.meter.rate(run.accelerator.num_processes),  # validation, checkpoints excluded
        "num_parameters": run.unwrapped.num_parameters,
        "corrupt_images_skipped": dict(run.skips.counts),
        "nonfinite_steps_skipped": state.nonfinite_steps,
        "empty_batches_skipped": state.empty_batches,
    }
    streamed = stream_filtering(run)
    if streamed is not None:
        results["stream_filtering"] = streamed
    if run.main:
        results["calibration"] = calibrate_bests(run)
        curves = plot_validation_curves(run)
        if curves is not None:
            results["validation_curves"] = curves
        if run.pusher is not None:
            results["push_errors"] = run.pusher.wait()
            results["pushes"] = {"pushed": len(run.pusher.pushed), "failed": len(results["push_errors"]),
                                 "skipped_stale": run.pusher.skipped_stale}  # fmt: skip
        results = finite_or_none(results)
        (run.run_dir / "all_results.json").write_text(json.dumps(results, indent=2, allow_nan=False) + "\n")
        run.accelerator.print(f"end the training: best accuracy {state.best_accuracy:.3f}, best norm_ED "
                              f"{state.best_norm_ED:.4f}; results in {run.run_dir}")  # fmt: skip
    run.accelerator.end_training()
    if run.accelerator.num_processes > 1 and torch.distributed.is_initialized():
        # Gloo's worker threads must end before the interpreter does: a process group left for exit to destroy
        # aborts the process now and then ("terminate called without an active exception", pytorch#190489).
        run.accelerator.wait_for_everyone()
        torch.distributed.destroy_process_group()
    return results


def stream_filtering(run: Run) -> dict[str, dict[str, int]] | None:
    """With ``--streaming``: per source, the samples read by every process, by filter reason (``kept``, ...)."""
    sampler = _stream_sampler(run)
    if sampler is None:
        return None
    total: dict[str, Counter] = {}
    for counts in _from_every_process(run, sampler.filtering_counts()):
        for name, reasons in counts.items():
            total.setdefault(name, Counter()).update(reasons)
    return {name: dict(sorted(reasons.items())) for name, reasons in total.items()}


def training_samples(run: Run) -> str:
    """The training sample count as shown at start (a stream's is not known)."""
    dataset = run.train_data.dataset
    return f"{len(dataset):,}" if hasattr(dataset, "__len__") else "streamed"


def calibrate_bests(run: Run) -> dict[str, Any]:
    """Fit the confidence temperature of each best model on the validation data, store it in its ``config.json``
    and its card (ECE before and after, AURC, coverage at 95 % accuracy), and push the calibrated best."""
    from huggingface_hub import ModelCard

    from .hub import card_with_results

    found: dict[str, Any] = {}
    protocol = validation_protocol(run)
    for name in ("best_accuracy", "best_norm_ED"):
        folder = run.run_dir / name
        if not (folder / "config.json").is_file():
            continue
        model = TextRecognitionModel.from_pretrained(folder).to(run.accelerator.device)
        result = calibrate(model, run.valid_data, protocol, batch_size=run.train_config.batch_size,
                           device=run.accelerator.device)  # fmt: skip
        write_temperature(folder, result.temperature)
        scores = score_records(result.records, protocol)
        card_result = {"dataset": "validation", "dataset_type": run.data_config.valid_data, "split": "validation",
                       "num_samples": scores.num_samples, "accuracy": scores.accuracy, "norm_ED": scores.norm_ED,
                       "mean_confidence": scores.mean_confidence, "protocol": protocol.description,
                       "ece": result.ece_after, "temperature": result.temperature, "aurc": result.selective["aurc"],
                       "coverage_at_95": result.selective["coverage_at_accuracy"]["0.95"]}  # fmt: skip
        readme = folder / "README.md"
        if readme.is_file():
            card = card_with_results(ModelCard.load(readme), [card_result], run.exp_name)
            tmp = folder / ".README.md.tmp"
            card.save(tmp)
            tmp.replace(readme)
        found[name] = {"temperature": result.temperature, "ece_before": result.ece_before,
                       "ece_after": result.ece_after, **result.selective}  # fmt: skip
        run.accelerator.print(f"{name}: calibrated on the validation data: {result.summary()}")
        if name == "best_accuracy" and run.pusher is not None:
            run.pusher.push(folder, f"calibrated confidence: temperature {result.temperature:.4f}")
    return found


def plot_validation_curves(run: Run) -> str | None:
    """``validation_curves.png`` from the validation history, when TensorBoard does not draw them (and matplotlib
    is installed: ``text_recognition[plots]``). The entries of steps replayed after a resume count once."""
    if _report_to(run.train_config.report_to) == "tensorboard":
        return None
    path = run.run_dir / VALIDATION_HISTORY
    if not path.is_file():
        return None
    try:
        from .plots import validation_curves
    except ImportError:
        return None
    by_step = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            entry = json.loads(line)
            by_step[entry["step"]] = entry
    try:
        written = validation_curves([by_step[k] for k in sorted(by_step)], run.run_dir / "validation_curves.png",
                                    title=f"{run.exp_name}: validation")  # fmt: skip
    except ImportError:
        logger.info("validation curves not drawn: matplotlib is not installed (pip install text_recognition[plots])")
        return None
    return str(written)


# ---- checkpoints ---------------------------------------------------------------------------------------------------


def _save_checkpoint(
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
    except (OSError, RuntimeError) as error:  # torch reports a full disk as RuntimeError("... unexpected pos ...")
        shutil.rmtree(tmp, ignore_errors=True)
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        full = getattr(error, "errno", None) == errno.ENOSPC or "unexpected pos" in reason
        hint = "the disk is full: free space" if full else "check that the folder is writable and has space"
        raise OSError(getattr(error, "errno", None) or errno.EIO,
                      f"Cannot write the checkpoint {target} ({reason}); {hint}, then resume with "
                      f"--resume_from_checkpoint latest. The temporary folder was removed.") from None  # fmt: skip
    if accelerator.is_main_process:
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
        prune_checkpoints(checkpoints_dir, limit)
    accelerator.wait_for_everyone()
