"""The end of a run: the pushes waited for, each best model's confidence calibrated on the validation data, the
validation curves drawn, ``all_results.json`` written, and the processes closed."""

from __future__ import annotations

import json
from typing import Any

import torch
from accelerate.logging import get_logger

from ..evaluation import calibrate, score_records, write_temperature
from ..model import TextRecognitionModel
from .run_dir import VALIDATION_HISTORY, finite_or_none
from .state import Run
from .streams import stream_filtering
from .validation import validation_protocol

logger = get_logger(__name__)  # main process only, unless a call says main_process_only=False


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
        if (run.run_dir / "best_accuracy").is_dir():
            best = f"best accuracy {state.best_accuracy:.3f}, best norm_ED {state.best_norm_ED:.4f}"
        else:  # every validation diverged (or none ran)
            best = "no best model was saved (no validation had a finite loss and confidence)"
        run.accelerator.print(f"end the training: {best}; results in {run.run_dir}")
    run.accelerator.end_training()
    if run.accelerator.num_processes > 1 and torch.distributed.is_initialized():
        # Gloo's worker threads must end before the interpreter does: a process group left for exit to destroy
        # aborts the process now and then ("terminate called without an active exception", pytorch#190489).
        run.accelerator.wait_for_everyone()
        torch.distributed.destroy_process_group()
    return results


def calibrate_bests(run: Run) -> dict[str, Any]:
    """Fit the confidence temperature of each best model on the validation data, store it in its ``config.json``
    and its card (ECE before and after, AURC, coverage at 95 % accuracy), and push the calibrated best."""
    from huggingface_hub import ModelCard

    from ..hub import card_with_results

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
    if run.report_to == "tensorboard":
        return None
    path = run.run_dir / VALIDATION_HISTORY
    if not path.is_file():
        return None
    try:
        from ..plots import validation_curves
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
