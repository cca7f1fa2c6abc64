"""What the rooms of a training run share: the run (its configuration, accelerator, model, data and meters), the
counters a checkpoint resumes, and the error that stops a run."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from accelerate import Accelerator

from ..config import DataConfig, ModelConfig, TrainConfig
from ..data.collate import SkipTracker
from ..model import TextRecognitionModel

if TYPE_CHECKING:
    from ..data.loaders import TextData
    from .hub_push import HubPusher
    from .optim import EMA
    from .validation import Validation

DASHED = "-" * 80  # the rule of DTRB's text logs


class TrainingStopped(ValueError):
    """Training cannot go on: ``max_skipped_steps`` optimizer steps in a row were skipped (a non-finite loss or
    gradient, or no decodable image), or a run folder or resumed configuration was refused."""


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
    def train_loss(self) -> float | None:
        """The mean loss of the steps applied since the last validation; None when none was (all skipped), never a
        mean over nothing shown as 0."""
        return float(self.loss_sum) / self.loss_count if self.loss_count else None

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
    pusher: HubPusher | None = None
    meter: Throughput = field(default_factory=lambda: Throughput())
    last_valid: Validation | None = None
    resume_dir: Path | None = None
    report_to: str | None = None  # the tracker in use (``--report_to``, resolved), or None

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
        return {"baidu": True} if self.train_config.baidu_ctc and self.model_config.prediction == "CTC" else {}

    @property
    def total_batch_size(self) -> int:
        per_process = sum(self.train_data.batch_sizes)
        return per_process * self.accelerator.num_processes * self.train_config.gradient_accumulation_steps
