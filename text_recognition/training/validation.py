"""Validation as DTRB's: every validation sample scored once across processes, the block of ``log_train.txt``, the
validation history, and the best models (with their model cards) saved and pushed when they improve."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import gather_object

from ..data.collate import SkipTracker
from ..data.loaders import TextData
from ..evaluation import predict_records, score_records
from ..metrics import Protocol
from .run_dir import VALIDATION_HISTORY, finite_or_none, save_model_folder
from .state import DASHED, TrainState

if TYPE_CHECKING:
    from .state import Run

logger = get_logger(__name__)  # main process only, unless a call says main_process_only=False


@dataclass
class Validation:
    loss: float | None  # None: no batch scored (never shown as 0)
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
        loss=sum(gathered_losses) / len(gathered_losses) if gathered_losses else None,
        accuracy=result.accuracy,
        norm_ED=result.norm_ED,
        mean_confidence=result.mean_confidence,
        num_samples=result.num_samples,
        examples=[(r.ground_truth, r.prediction, r.confidence) for r in records[-5:]],
    )


def format_validation_log(
    iteration: int, num_iter: int, train_loss: float | None, valid: Validation, elapsed: float, state: TrainState
) -> str:
    """The block DTRB appends to ``log_train.txt`` after each validation; a mean over nothing (no step applied, no
    sample scored) reads ``n/a``."""
    lines = [
        f"[{iteration}/{num_iter}] Train loss: {_mean(train_loss)}, Valid loss: {_mean(valid.loss)}, "
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


def _mean(value: float | None) -> str:
    return "n/a" if value is None else f"{value:0.5f}"


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
    if improved_accuracy or improved_ned:
        unsound = diverged(valid, run.evaluated)
        if unsound:
            logger.warning("Iteration %d: %s; no best model is saved.", state.iteration, unsound)
            improved_accuracy = improved_ned = False  # nor counted as a best: a sound model may match it later
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
            history.write(json.dumps(finite_or_none(entry)) + "\n")  # JSON has no NaN: null
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
    values = {"valid/loss": valid.loss, "valid/accuracy": valid.accuracy, "valid/norm_ED": valid.norm_ED,
              "valid/mean_confidence": valid.mean_confidence}  # fmt: skip
    run.accelerator.log({key: value for key, value in values.items() if value is not None}, step=state.iteration)
    run.meter.loss_sum, run.meter.loss_count = 0.0, 0


def diverged(valid: Validation, model: torch.nn.Module) -> str | None:
    """Why a validated model must not become a best (it diverged), or None: non-finite weights, or finite weights
    (~1e30 after a huge learning rate) whose validation loss or confidence is not finite."""
    if not weights_are_finite(model):
        return "the weights are not finite"
    if any(value is not None and not math.isfinite(value) for value in (valid.loss, valid.mean_confidence)):
        return f"the validation loss ({valid.loss}) or mean confidence ({valid.mean_confidence}) is not finite"
    return None


def weights_are_finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(tensor).all()) for tensor in model.state_dict().values()
               if tensor.is_floating_point())  # fmt: skip


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
