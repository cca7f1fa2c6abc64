"""Benchmark evaluation, DTRB's ``test.py`` done right: the same scores, the paper's 7-set total next to the code's
10-set total, correct timing (warm-up excluded, device synchronised, at the batch size and at batch 1), per-dataset
failure cases, JSON results and model-card results; and ``calibrate``, which fits the confidence temperature.

The model's predictions are made and scored in ``records``; the report (its table, JSON, DTRB's log files and the
model card's results) is ``reports``."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .calibration import expected_calibration_error, selective_metrics
from .data.collate import SkipTracker, TextCollator
from .data.loaders import TextData, filtered_sources
from .data.mixing import MixedSources
from .decoding import DecodingOptions
from .fastpath import autocast as precision_autocast
from .fastpath import compile_encoder, resolve_precision
from .metrics import Protocol
from .model import TextRecognitionModel
from .onnx_model import OnnxModel, check_onnx_speed_options

# The prediction records (records.py) and the report (reports.py) keep this module as an import path.
from .records import Record, Scores, _eval_loader, _synchronize, is_correct, predict_records, score_records  # noqa: F401
from .reports import (  # noqa: F401
    BENCHMARK_DATASETS,
    PAPER_DATASETS,
    DatasetResult,
    EvaluationReport,
    describe_decoding,
    dtrb_exp_name,
    weighted_accuracy,
    write_json,
    write_outputs,
)

# ---- benchmark evaluation ------------------------------------------------------------------------------------------


def calibration_summary(records: list[Record], protocol: Protocol, temperature: float) -> tuple[dict, dict]:
    """The ``calibration`` and ``selective`` entries of a dataset's results."""
    confidences = [r.confidence for r in records]
    correct = [is_correct(r, protocol) for r in records]
    calibration = {"ece": expected_calibration_error(confidences, correct), "temperature": temperature}
    return calibration, selective_metrics(confidences, correct)


def _select(available: list[str], names: list[str] | None, eval_data: str | os.PathLike) -> list[str]:
    if names is None:
        return available
    missing = [name for name in names if name not in available]
    if missing:
        raise FileNotFoundError(
            f"{os.fspath(eval_data)!r} has no dataset named {missing}: expected folders named as DTRB's evaluation "
            f"sets ({', '.join(BENCHMARK_DATASETS)}). Found: {available}."
        )
    return list(dict.fromkeys(names))


def evaluate(
    model: TextRecognitionModel | OnnxModel,
    eval_data: str | os.PathLike,
    *,
    names: list[str] | None = None,
    batch_size: int = 192,
    num_workers: int = 0,
    protocol: Protocol | str = "dtrb",
    sensitive: bool = False,
    data_filtering_off: bool = False,
    timing_samples: int = 100,
    model_name: str | None = None,
    decoding: DecodingOptions | None = None,
    precision: str | None = None,
    compile: bool = False,
    keep_unscored: bool = False,
) -> EvaluationReport:
    """Evaluate ``model`` on each dataset under ``eval_data`` (or those in ``names``).

    Which samples load and how ``dtrb`` cleans ground truths follow DTRB's ``test.py`` for the evaluation flags
    ``sensitive`` and ``data_filtering_off`` (labels lowercased unless ``sensitive``; DTRB's length and charset
    filter, with the model's charset, unless ``data_filtering_off``), whatever the model's config says; the
    comparison follows ``protocol`` (see ``metrics``).

    ``ms_per_image`` is the model's forward time per image at ``batch_size`` after one warm-up batch, the device
    synchronised (with the search, for a ``decoding`` other than greedy); ``ms_per_image_batch1`` the same one image
    at a time over ``timing_samples`` images (0: skip). Each dataset also gets its calibration (ECE at the model's
    ``temperature``) and selective-prediction scores (AURC, coverage at 95 % and 99 % accuracy).
    ``precision`` (``fp32``, ``bf16``, ``fp16``, ``auto``: ``fastpath.resolve_precision``; ``None``: fp32, or an
    ``OnnxModel``'s own) runs the forward pass under that autocast (losses, CTC, the TPS grid and decoding stay fp32);
    ``model`` may be an exported file (``OnnxModel``), which runs at its own precision; ``compile`` compiles the encoder first (``fastpath.compile_encoder``), its compilation
    falling in the untimed warm-up batches (``warmup_seconds``).

    A dataset of which no sample could be scored (all undecodable or filtered out) is an error, unless
    ``keep_unscored``: then the report holds the others and names it in ``unscored`` (an error still when no dataset
    could be scored).

    Raises:
        ValueError: an unknown protocol, impossible decoding constraints, or a dataset of which no sample could be
            scored (all undecodable or filtered).
        FileNotFoundError: ``eval_data`` missing, or a name in ``names`` that is not there.
    """
    decoding = decoding or DecodingOptions()
    decoder = model.decoder(decoding)
    if not isinstance(protocol, Protocol):
        protocol = Protocol(protocol, sensitive, data_filtering_off)
    backend = getattr(model, "description", "PyTorch")
    if isinstance(model, OnnxModel):  # the file's own precision; nothing to compile
        check_onnx_speed_options(model, precision, compile)
        precision, autocast = model.precision, None
    else:
        precision = resolve_precision(precision, model.device, model.config)
        if compile:
            compile_encoder(model)
        autocast = (lambda: precision_autocast(model.device, precision)) if precision != "fp32" else None
    device = model.device
    timings: dict[str, float] = {}
    # DTRB's dataset rules for the evaluation flags: the model's charset and length, the flag's case mode.
    data_rules = dataclasses.replace(model.config, sensitive=protocol.sensitive)
    sources_by_name = {name: (filtered, kept) for name, filtered, _, kept in
                       filtered_sources(eval_data, "/", data_rules, protocol.data_filtering_off)}  # fmt: skip
    results, timing_data = [], None
    for name in _select(list(sources_by_name), names, eval_data):
        filtered, kept = sources_by_name[name]
        sources = MixedSources([(name, filtered, len(filtered), kept)])
        data = TextData(sources, TextCollator(data_rules, protocol.data_filtering_off), log="")
        skips = SkipTracker()
        records, _, seconds = predict_records(model, data, list(range(len(filtered))), batch_size, device=device,
                                              num_workers=num_workers, warmup=True, skips=skips, autocast=autocast,
                                              decoder=decoder, timings=timings)  # fmt: skip
        scores = score_records(records, protocol)
        correct = [is_correct(r, protocol) for r in records]
        failures = [r for r, ok in zip(records, correct) if not ok]
        answered = [ok for r, ok in zip(records, correct) if not r.abstained]
        ms_per_image = 1000 * seconds / max(scores.num_samples, 1)
        calibration, selective = calibration_summary(records, protocol, model.config.temperature)
        results.append(DatasetResult(name, scores.num_samples, scores.accuracy, scores.norm_ED,
                                     scores.mean_confidence, ms_per_image, failures, scores.cer,
                                     scores.accuracy_by_length, calibration, selective,
                                     sum(r.abstained for r in records),
                                     100.0 * sum(answered) / len(answered) if answered else 0.0,
                                     records, sum(skips.counts.values())))  # fmt: skip
        if timing_data is None and len(filtered):
            timing_data = data
    unscored = [f"{r.dataset} ({r.num_undecodable} undecodable image(s))" for r in results if not r.num_samples]
    if unscored and (not keep_unscored or len(unscored) == len(results)):
        raise ValueError(unscored_message(unscored, eval_data))
    results = [r for r in results if r.num_samples]
    batch1 = None
    if timing_samples and timing_data is not None:
        count = min(timing_samples, len(timing_data.dataset))
        _, _, seconds = predict_records(model, timing_data, list(range(count)), 1, device=device, warmup=True,
                                        decoder=decoder, autocast=autocast, timings=timings)  # fmt: skip
        batch1 = 1000 * seconds / count
    return EvaluationReport(model_name or model.config.stage_string, results, model.num_parameters, batch_size,
                            batch1, protocol, decoding, precision, compile, timings.get("warmup", 0.0),
                            unscored, backend)  # fmt: skip


def unscored_message(unscored: list[str], eval_data: str | os.PathLike) -> str:
    """The one-line error for datasets of which no sample could be scored."""
    return (f"No sample could be scored in {', '.join(unscored)} under {os.fspath(eval_data)!r}: check the dataset "
            f"(its images, and its labels against the model's charset and length).")


# ---- calibration ---------------------------------------------------------------------------------------------------


@dataclass
class Calibration:
    """What ``calibrate`` measured: the fitted temperature, ECE and selective scores before (at the model's
    temperature) and after."""

    temperature: float
    previous_temperature: float
    ece_before: float
    ece_after: float
    num_samples: int
    selective: dict[str, Any]
    records: list[Record] = field(default_factory=list, repr=False)

    def summary(self) -> str:
        coverage = self.selective["coverage_at_accuracy"]
        return (f"temperature {self.previous_temperature:g} -> {self.temperature:.4f} on {self.num_samples} samples: "
                f"ECE {self.ece_before:.4f} -> {self.ece_after:.4f}; AURC {self.selective['aurc']:.4f}; coverage at "
                f"95 % accuracy {coverage['0.95']:.3f}, at 99 % {coverage['0.99']:.3f}")  # fmt: skip


def calibrate(
    model: TextRecognitionModel | OnnxModel,
    data: TextData,
    protocol: Protocol,
    *,
    batch_size: int = 192,
    num_workers: int = 0,
    device: torch.device | None = None,
    autocast: Callable[[], Any] | None = None,
) -> Calibration:
    """Fit the confidence temperature of ``model`` on ``data`` (greedy predictions, correctness under
    ``protocol``). The model is not changed: set ``model.config.temperature`` (or ``write_temperature``) to use it.

    Raises:
        ValueError: ``data`` holds no sample to fit on.
    """
    from .calibration import confidences_at, fit_temperature

    device = device or model.device
    rows: list[torch.Tensor] = []
    records, _, _ = predict_records(model, data, list(range(len(data.dataset))), batch_size, device=device,
                                    num_workers=num_workers, autocast=autocast, logit_rows=rows)  # fmt: skip
    if not records:
        raise ValueError("No sample to calibrate on: the calibration data is empty (or every image is corrupt).")
    correct = [is_correct(r, protocol) for r in records]
    previous = model.config.temperature
    temperature = fit_temperature(rows, correct)
    before = expected_calibration_error(confidences_at(rows, previous), correct)
    after_confidences = confidences_at(rows, temperature)
    after = expected_calibration_error(after_confidences, correct)
    calibrated = [r._replace(confidence=float(c)) for r, c in zip(records, after_confidences)]
    return Calibration(temperature, previous, before, after, len(records),
                       selective_metrics(after_confidences, correct), calibrated)  # fmt: skip


def write_temperature(folder: str | os.PathLike, temperature: float) -> None:
    """Set ``temperature`` in a model folder's ``config.json`` (atomically: a temporary file, then a rename)."""
    path = Path(folder) / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(config, dict):
        raise ValueError(f"{str(path)!r} is not a model config (a JSON object).")
    config["temperature"] = float(temperature)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
