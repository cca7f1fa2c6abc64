"""How the weights move: DTRB's optimizers (plus AdamW), the learning-rate schedules, the EMA of the weights, frozen
stages, and fp16 on the CPU."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from accelerate import Accelerator

from ..config import TrainConfig, parse_stage_names
from ..model import TextRecognitionModel


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


def enable_cpu_fp16(accelerator: Accelerator) -> None:
    """``--mixed_precision fp16`` on the CPU: accelerate would run it as fp32 without a word; torch's CPU autocast
    and ``GradScaler`` support fp16, so turn them on (before ``prepare``, which hands the scaler to the optimizer;
    ``save_state``/``load_state`` then keep the scaler's state in every checkpoint, as on a GPU)."""
    if accelerator.mixed_precision == "fp16" and accelerator.device.type == "cpu" and accelerator.scaler is None:
        accelerator.native_amp = True
        accelerator.scaler = torch.amp.GradScaler("cpu")


def warn_slow_precision(accelerator: Accelerator) -> None:
    """``--mixed_precision bf16`` / ``fp16`` on a CPU without native kernels for it: warn once, on the main process,
    with the measured cost and the fix (training goes on as asked)."""
    from ..fastpath import warn_slow_precision as warn

    if accelerator.mixed_precision in ("bf16", "fp16") and accelerator.is_main_process:
        warn(accelerator.mixed_precision, accelerator.device)
