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
import json
import math
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object, set_seed
from torch.utils.data import DataLoader

from .checkpoints import check_state_dict, read_dtrb_state_dict
from .augment import TextAugment
from .config import DataConfig, ModelConfig, TrainConfig, parse_select_data, parse_stage_names
from .data.collate import SkipTracker
from .data.loaders import TextData, build_eval_data, build_train_data
from .evaluation import predict_records, score_records
from .fastpath import compile_encoder
from .metrics import Protocol
from .model import TextRecognitionModel, load_model
from .progress import progress

logger = logging.getLogger(__name__)

DASHED = "-" * 80
CHECKPOINT_PREFIX = "checkpoint-"


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

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def latest_checkpoint(checkpoints_dir: Path) -> Path | None:
    """The complete checkpoint with the highest step (temporary folders of an interrupted save are ignored)."""
    found = []
    for path in checkpoints_dir.glob(f"{CHECKPOINT_PREFIX}*"):
        step = path.name[len(CHECKPOINT_PREFIX) :]
        if path.is_dir() and step.isdigit():
            found.append((int(step), path))
    return max(found)[1] if found else None


def prune_checkpoints(checkpoints_dir: Path, limit: int | None) -> None:
    if not limit:
        return
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
    """Pushes best-accuracy model folders to the Hub in the background; failures are logged, never raised."""

    def __init__(self, repo_id: str, private: bool) -> None:
        from huggingface_hub import HfApi

        self.api = HfApi()
        self.futures: list[Any] = []
        self.snapshots: list[Path] = []
        self.errors: list[str] = []
        try:
            self.repo_id = self.api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        except Exception as error:  # token, permission, network: training goes on without pushing
            self.errors.append(f"cannot create or reach {repo_id!r}: " + (str(error).splitlines()[0] if str(error)
                               else type(error).__name__))  # fmt: skip
            logger.error("Cannot create or reach the Hub repo %r (%s): training continues without --push_to_hub.",
                         repo_id, str(error).splitlines()[0] if str(error) else type(error).__name__)  # fmt: skip
            self.repo_id = None

    def push(self, folder: Path, message: str) -> None:
        if self.repo_id is None:
            return
        snapshot = Path(tempfile.mkdtemp(prefix="push_"))
        shutil.copytree(folder, snapshot, dirs_exist_ok=True)  # the folder may be replaced while uploading
        self.snapshots.append(snapshot)
        self.futures.append(
            self.api.upload_folder(
                repo_id=self.repo_id, folder_path=snapshot, commit_message=message, run_as_future=True
            )  # fmt: skip
        )

    def wait(self) -> list[str]:
        """Wait for every push; return the errors (creating the repo included), each also logged."""
        errors = list(self.errors)
        for future in self.futures:
            try:
                future.result()
            except Exception as error:  # report every failed push, keep the run's results
                errors.append(str(error).splitlines()[0] if str(error) else type(error).__name__)
        for snapshot in self.snapshots:
            shutil.rmtree(snapshot, ignore_errors=True)
        for error in errors[len(self.errors) :]:
            logger.error("A push to the Hub failed: %s", error)
        return errors


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

    def add(self, loss: float, images: int) -> None:
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
        optimizer_step(run)
        run.state.iteration += 1
        log_step(run, bar)
        if is_validation_step(run.state.iteration, train_config):
            with run.meter.paused():
                validate_and_save_bests(run, bar, elapsed=time.perf_counter() - start_time)
        if train_config.checkpointing_steps and run.state.iteration % train_config.checkpointing_steps == 0:
            with run.meter.paused():
                run.state.elapsed = time.perf_counter() - start_time
                save_checkpoint(run)
    bar.close()
    return finish(run, runtime=time.perf_counter() - start_time)


# ---- the steps of a run, in order ---------------------------------------------------------------------------------


def start_run(model_config: ModelConfig, data_config: DataConfig, train_config: TrainConfig) -> Run:
    """The accelerator (devices, precision, processes), the run folder and the seeds."""
    exp_name = train_config.exp_name or f"{model_config.stage_string}-Seed{train_config.seed}"
    run_dir = Path(train_config.output_dir) / exp_name
    accelerator = Accelerator(
        gradient_accumulation_steps=train_config.gradient_accumulation_steps,
        log_with=_report_to(train_config.report_to),
        project_dir=str(run_dir / "logs"),
    )
    enable_cpu_fp16(accelerator)
    run = Run(model_config, data_config, train_config, accelerator, exp_name, run_dir)
    if run.main:
        run.checkpoints_dir.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    set_seed(train_config.seed)
    return run


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
    run.model, run.optimizer = run.accelerator.prepare(model, build_optimizer(model, train_config))
    run.scheduler = build_scheduler(run.optimizer, train_config)
    run.accelerator.register_for_checkpointing(run.scheduler)
    if train_config.ema_decay is not None:
        run.ema = EMA(run.unwrapped, train_config.ema_decay)
        run.accelerator.register_for_checkpointing(run.ema)
    if train_config.compile:  # after the EMA copy, which stays eager (it is only validated)
        compile_encoder(run.unwrapped)
    if resume_dir is not None:
        run.accelerator.load_state(str(resume_dir))
        run.state.load_state_dict(json.loads((resume_dir / "train_state.json").read_text()))
    run.skips.counts.update(run.state.skipped)


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
    return resume_dir


def build_data(run: Run) -> None:
    """Training and validation data, built on the main process first (so LMDB conversion caches are written once);
    the training sampler starts at the resumed batch."""
    data_config, train_config, accelerator = run.data_config, run.train_config, run.accelerator
    with accelerator.main_process_first():
        run.train_data = build_train_data(
            data_config.train_data, run.model_config, select_data=data_config.select_data,
            batch_ratio=data_config.batch_ratio, total_data_usage_ratio=data_config.total_data_usage_ratio,
            batch_size=train_config.batch_size, data_filtering_off=data_config.data_filtering_off,
            seed=train_config.seed, rank=accelerator.process_index, world_size=accelerator.num_processes,
            start_iteration=run.state.iteration * train_config.gradient_accumulation_steps,
            augment=TextAugment(data_config.augment_strength, seed=train_config.seed) if data_config.augment else None,
        )  # fmt: skip
        run.valid_data = build_eval_data(data_config.valid_data, run.model_config,
                                         data_filtering_off=data_config.data_filtering_off)  # fmt: skip
    loader = DataLoader(run.train_data.dataset, batch_sampler=run.train_data.sampler,
                        collate_fn=run.train_data.collator, num_workers=data_config.workers,
                        pin_memory=accelerator.device.type == "cuda",
                        persistent_workers=data_config.workers > 0)  # fmt: skip
    run.batches = iter(loader)  # the batch sampler is endless: no epochs, no re-shuffling restarts
    if run.main and run.train_config.push_to_hub:
        run.pusher = _Pusher(train_config.hub_model_id, train_config.hub_private_repo)


def write_run_files(run: Run) -> None:
    """``run_config.json``, DTRB's ``opt.txt`` and ``log_dataset.txt``, the opening summary and the trackers."""
    accelerator, model_config = run.accelerator, run.model_config
    if not run.main:
        accelerator.init_trackers(run.exp_name)
        return
    configs = {"model": asdict(model_config), "data": asdict(run.data_config), "train": asdict(run.train_config)}
    (run.run_dir / "run_config.json").write_text(json.dumps(configs, indent=2, sort_keys=True) + "\n")
    options = {**configs["model"], **configs["data"], **configs["train"], "exp_name": run.exp_name,
               "num_class": model_config.num_class, "num_processes": accelerator.num_processes,
               "mixed_precision": accelerator.mixed_precision, "total_batch_size": run.total_batch_size}  # fmt: skip
    with open(run.run_dir / "opt.txt", "a", encoding="utf-8") as opt_file:
        opt_file.write("------------ Options -------------\n")
        opt_file.writelines(f"{key}: {value}\n" for key, value in options.items())
        opt_file.write("---------------------------------------\n")
    with open(run.run_dir / "log_dataset.txt", "a", encoding="utf-8") as log_dataset:
        log_dataset.write(run.train_data.log + "\nvalidation:\n" + run.valid_data.log + DASHED + "\n")
    tokens = parse_select_data(run.data_config.select_data)
    split = " + ".join(f"{n} {token}" for n, token in zip(run.train_data.batch_sizes, tokens))
    accelerator.print(
        f"{model_config.stage_string}: {run.unwrapped.num_parameters:,} parameters\n"
        f"Training samples: {len(run.train_data.dataset):,} | validation samples: {len(run.valid_data.dataset):,}\n"
        f"Batch per process: {sum(run.train_data.batch_sizes)} ({split}) | processes: {accelerator.num_processes} | "
        f"accumulation: {run.train_config.gradient_accumulation_steps} | total batch: {run.total_batch_size} | "
        f"mixed precision: {accelerator.mixed_precision} | device: {accelerator.device}"
    )
    accelerator.init_trackers(run.exp_name, config={k: v for k, v in options.items()
                                                    if isinstance(v, (int, float, str, bool))})  # fmt: skip


def optimizer_step(run: Run) -> None:
    """One optimizer step: ``gradient_accumulation_steps`` batches forward and backward, clipping, the update."""
    accelerator, model, config = run.accelerator, run.model, run.model_config
    tokenizer = run.unwrapped.tokenizer
    for module in run.frozen:  # validation put the model back in train mode
        module.eval()
    for _ in range(run.train_config.gradient_accumulation_steps):
        batch = next(run.batches)
        run.skips.update(batch["skipped"])
        if not batch["labels"]:
            continue
        images = batch["pixel_values"].to(accelerator.device, non_blocking=True)
        targets, lengths = tokenizer.encode(batch["labels"], config.batch_max_length)
        targets = targets.to(accelerator.device)
        with accelerator.accumulate(model):
            with accelerator.autocast():
                logits = model(images, targets if config.prediction == "Attn" else None)
            loss = run.unwrapped.loss(logits, targets, lengths, **run.loss_kwargs)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(model.parameters(), run.train_config.grad_clip)
            run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)
        run.meter.add(loss.detach().float(), len(batch["labels"]))
    run.scheduler.step()
    if run.ema is not None:
        run.ema.update(run.unwrapped)


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
    state.best_accuracy = max(state.best_accuracy, valid.accuracy)
    state.best_norm_ED = max(state.best_norm_ED, valid.norm_ED)
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
        card = card_kwargs(run, valid)
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
    """A resumable checkpoint (model, optimizer, RNG, sampler position, bests), written atomically."""
    run.state.skipped = dict(run.skips.counts)
    _save_checkpoint(run.accelerator, run.checkpoints_dir, run.state, run.train_config.checkpoints_total_limit)


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
    }
    if run.main:
        if run.pusher is not None:
            results["push_errors"] = run.pusher.wait()
        (run.run_dir / "all_results.json").write_text(json.dumps(results, indent=2) + "\n")
        run.accelerator.print(f"end the training: best accuracy {state.best_accuracy:.3f}, best norm_ED "
                              f"{state.best_norm_ED:.4f}; results in {run.run_dir}")  # fmt: skip
    run.accelerator.end_training()
    return results


# ---- checkpoints ---------------------------------------------------------------------------------------------------


def _save_checkpoint(accelerator: Accelerator, checkpoints_dir: Path, state: TrainState, limit: int | None) -> None:
    """``save_state`` into a temporary folder, then rename: resume never sees a half-written checkpoint."""
    target = checkpoints_dir / f"{CHECKPOINT_PREFIX}{state.iteration}"
    tmp = checkpoints_dir / f".tmp-{CHECKPOINT_PREFIX}{state.iteration}"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / "train_state.json").write_text(json.dumps(state.state_dict(), indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
        prune_checkpoints(checkpoints_dir, limit)
    accelerator.wait_for_everyone()
