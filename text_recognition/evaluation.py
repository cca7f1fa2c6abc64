"""Benchmark evaluation, DTRB's ``test.py`` done right: the same scores, the paper's 7-set total next to the code's
10-set total, correct timing (warm-up excluded, device synchronised, at the batch size and at batch 1), per-dataset
failure cases, JSON results and model-card results."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch.utils.data import DataLoader

from .calibration import expected_calibration_error, path_logits, selective_metrics
from .data.collate import SkipTracker, TextCollator
from .data.loaders import TextData, filtered_sources
from .data.mixing import MixedSources
from .decoding import Decoder, DecodingOptions
from .fastpath import autocast as precision_autocast
from .fastpath import check_precision, compile_encoder
from .metrics import Protocol, RecognitionMetrics
from .model import TextRecognitionModel

#: DTRB's ``--benchmark_all_eval`` folders, in its Table 1 order.
BENCHMARK_DATASETS = ("IIIT5k_3000", "SVT", "IC03_860", "IC03_867", "IC13_857", "IC13_1015", "IC15_1811",
                      "IC15_2077", "SVTP", "CUTE80")  # fmt: skip
#: The 7 sets of the paper's "Total" (DTRB's code averages all 10, counting IC03/IC13/IC15 twice).
PAPER_DATASETS = ("IIIT5k_3000", "SVT", "IC03_867", "IC13_1015", "IC15_2077", "SVTP", "CUTE80")


# ---- prediction over a dataset (used by evaluation and by training's validation) ---------------------------------


class Record(NamedTuple):
    ground_truth: str  # the label as DTRB's dataset returns it (cleaned for the charset and case mode)
    prediction: str
    confidence: float
    source: str
    index: int  # row of the sample in its stored source
    stored_label: str = ""  # the label as stored in the dataset
    abstained: bool = False  # below min_confidence, or no reading within the decoding constraints

    def reference(self, protocol: Protocol) -> str:
        """The ground truth the protocol compares: DTRB's cleaned label for ``dtrb``, the stored one otherwise."""
        return self.ground_truth if protocol.uses_dtrb_labels else self.stored_label


@dataclass
class Scores:
    """What ``RecognitionMetrics`` computes for a set of records, plus their mean confidence."""

    accuracy: float
    norm_ED: float
    cer: float
    num_samples: int
    num_correct: int
    accuracy_by_length: dict[str, dict[str, float]]
    mean_confidence: float


def score_records(records: list[Record], protocol: Protocol | None = None) -> Scores:
    """Score prediction records under ``protocol`` (default ``dtrb``) with the ``RecognitionMetrics`` module."""
    protocol = protocol or Protocol()
    values = RecognitionMetrics().compute(
        predictions=[r.prediction for r in records], references=[r.reference(protocol) for r in records],
        protocol=protocol.name, sensitive=protocol.sensitive, data_filtering_off=protocol.data_filtering_off,
    )  # fmt: skip
    confidence = sum(r.confidence for r in records) / len(records) if records else 0.0
    return Scores(**values, mean_confidence=confidence)


def is_correct(record: Record, protocol: Protocol) -> bool:
    return protocol.normalize(record.prediction) == protocol.normalize(record.reference(protocol))


@torch.no_grad()
def predict_records(
    model: TextRecognitionModel,
    data: TextData,
    indices: list[int],
    batch_size: int,
    *,
    device: torch.device,
    num_workers: int = 0,
    autocast: Callable[[], Any] | None = None,
    skips: SkipTracker | None = None,
    loss_kwargs: dict[str, Any] | None = None,
    warmup: bool = False,
    decoder: Decoder | None = None,
    logit_rows: list[torch.Tensor] | None = None,
    persistent: bool = False,
    timings: dict[str, float] | None = None,
) -> tuple[list[Record], list[float], float]:
    """Predictions for ``indices`` of ``data``: one ``Record`` per decodable sample, the per-batch losses (of the
    greedy outputs), and the seconds spent in the model (device synchronised; with ``warmup``, the first batch runs
    once untimed, and its seconds, compilation included, go to ``timings["warmup"]``). ``decoder`` (default: greedy
    at the model's temperature) decodes; when it is not greedy, its search is timed with the model. ``logit_rows``,
    when given, receives each record's greedy confidence rows (``calibration.path_logits``), for temperature
    fitting. With ``persistent`` (training's validation) the DataLoader and its worker processes are kept on
    ``data`` and reused by the next call with the same indices."""
    tokenizer, config = model.tokenizer, model.config
    decoder = decoder or model.decoder()
    search = not decoder.options.is_greedy
    loader = _eval_loader(data, indices, batch_size, num_workers, persistent)
    was_training = model.training
    model.eval()
    records: list[Record] = []
    losses: list[float] = []
    seconds = 0.0
    for batch in loader:
        if skips is not None:
            skips.update(batch["skipped"])
        if not batch["labels"]:
            continue
        images = batch["pixel_values"].to(device)
        targets, lengths = tokenizer.encode(batch["labels"], config.batch_max_length)
        if warmup:
            warmup_start = time.perf_counter()
            with autocast() if autocast is not None else contextlib.nullcontext():
                model(images)
            _synchronize(device)
            if timings is not None:
                timings["warmup"] = timings.get("warmup", 0.0) + time.perf_counter() - warmup_start
            warmup = False
        _synchronize(device)
        start = time.perf_counter()
        with autocast() if autocast is not None else contextlib.nullcontext():
            features = model.encode(images)
            logits = model.Prediction(features)  # greedy for attention: what is evaluated is what inference gives
            if search:
                decoded = decoder.decode(model.Prediction, features)
        _synchronize(device)
        seconds += time.perf_counter() - start
        losses.append(float(model.loss(logits, targets.to(device), lengths, **(loss_kwargs or {}))))
        if not search:
            decoded = decoder.decode_logits(logits)
        if logit_rows is not None:
            logit_rows += path_logits(logits, config.prediction == "CTC")
        for label, stored, recognition, (source, index) in zip(
            batch["labels"], batch["stored_labels"], decoded, batch["ids"]
        ):
            records.append(Record(label, recognition.text, recognition.confidence, source, index, stored,
                                  recognition.abstained))  # fmt: skip
    model.train(was_training)
    return records, losses, seconds


def _eval_loader(
    data: TextData, indices: list[int], batch_size: int, num_workers: int, persistent: bool
) -> DataLoader:
    """The DataLoader over ``indices`` in batches of ``batch_size``; with ``persistent`` and workers, built once per
    (indices, batch size, workers) and kept on ``data`` with its workers alive (no start-up at every validation)."""
    batches = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
    if not (persistent and num_workers > 0):
        return DataLoader(data.dataset, batch_sampler=batches, collate_fn=data.collator, num_workers=num_workers)
    cache = data.__dict__.setdefault("_persistent_loaders", {})
    key = (hash(tuple(indices)), len(indices), batch_size, num_workers)
    if key not in cache:
        cache[key] = DataLoader(data.dataset, batch_sampler=batches, collate_fn=data.collator,
                                num_workers=num_workers, persistent_workers=True)  # fmt: skip
    return cache[key]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- benchmark evaluation ------------------------------------------------------------------------------------------


@dataclass
class DatasetResult:
    dataset: str
    num_samples: int
    accuracy: float  # percent
    norm_ED: float
    mean_confidence: float
    ms_per_image: float
    failures: list[Record] = field(default_factory=list, repr=False)
    cer: float = 0.0
    accuracy_by_length: dict[str, dict[str, float]] = field(default_factory=dict, repr=False)
    calibration: dict[str, float] = field(default_factory=dict)  # {"ece", "temperature"}
    selective: dict[str, Any] = field(default_factory=dict)  # {"aurc", "coverage_at_accuracy": {"0.95", "0.99"}}
    abstained: int = 0  # results below min_confidence or outside the constraints
    answered_accuracy: float = 0.0  # percent, over the results that did not abstain
    records: list[Record] = field(default_factory=list, repr=False)  # every prediction, for plots
    num_undecodable: int = 0  # images that could not be decoded: not scored, reported


@dataclass
class EvaluationReport:
    model: str
    results: list[DatasetResult]
    num_params: int
    batch_size: int
    ms_per_image_batch1: float | None
    protocol: Protocol = field(default_factory=Protocol)
    decoding: DecodingOptions = field(default_factory=DecodingOptions)
    precision: str = "fp32"
    compiled: bool = False
    warmup_seconds: float = 0.0  # the untimed first batch of each dataset (torch.compile's compilation included)

    @property
    def total_accuracy(self) -> float:
        """DTRB's code total: accuracies weighted by samples over every evaluated dataset."""
        return weighted_accuracy(self.results)

    @property
    def total_accuracy_paper(self) -> float | None:
        """The paper's Total over its 7 sets, when all of them were evaluated."""
        by_name = {r.dataset: r for r in self.results}
        if not all(name in by_name for name in PAPER_DATASETS):
            return None
        return weighted_accuracy([by_name[name] for name in PAPER_DATASETS])

    @property
    def averaged_infer_time(self) -> float:
        """DTRB's ``averaged_infer_time``: the forward time over every evaluated image, in ms per image."""
        samples = sum(r.num_samples for r in self.results)
        return sum(r.ms_per_image * r.num_samples for r in self.results) / samples if samples else 0.0

    def table(self) -> str:
        timing = f"ms/image (batch {self.batch_size})"
        lines = [
            f"Protocol: {self.protocol.description}",
            "",
            "| dataset | samples | accuracy (%) | norm_ED | CER | mean confidence | ECE | coverage @ 95% | "
            f"{timing} |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        lines += [f"| {r.dataset} | {r.num_samples} | {r.accuracy:.3f} | {r.norm_ED:.4f} | {r.cer:.4f} | "
                  f"{r.mean_confidence:.4f} | {r.calibration.get('ece', 0.0):.4f} | "
                  f"{r.selective.get('coverage_at_accuracy', {}).get('0.95', 0.0):.3f} | {r.ms_per_image:.3f} |"
                  for r in self.results]  # fmt: skip
        if any(r.num_undecodable for r in self.results):  # a column only when some image could not be decoded
            lines[2] = lines[2].replace("| samples |", "| samples | undecodable (not scored) |")
            lines[3] += "---|"
            for number, r in enumerate(self.results, start=4):
                lines[number] = lines[number].replace(f"| {r.num_samples} |", f"| {r.num_samples} | "
                                                      f"{r.num_undecodable} |", 1)  # fmt: skip
        samples = sum(r.num_samples for r in self.results)
        if len(self.results) > 1:
            total = f"{self.total_accuracy:.3f}"
            lines.append(f"| total, all {len(self.results)} sets (DTRB's code) | {samples} | {total} | | | | | | |")
        if self.total_accuracy_paper is not None:
            paper = sum(r.num_samples for r in self.results if r.dataset in PAPER_DATASETS)
            lines.append(f"| total, the paper's 7 sets | {paper} | {self.total_accuracy_paper:.3f} | | | | | | |")
        lines.append("")
        if not self.decoding.is_greedy or self.decoding.min_confidence is not None:
            lines.append(f"Decoding: {describe_decoding(self.decoding)}.")
            if self.decoding.min_confidence is not None or self.decoding.constrained:
                lines += [f"{r.dataset}: abstained on {r.abstained} of {r.num_samples}; accuracy on the answered "
                          f"{r.answered_accuracy:.3f} %" for r in self.results]  # fmt: skip
            lines.append("")
        temperatures = sorted({r.calibration.get("temperature", 1.0) for r in self.results})
        lines.append(f"Confidence temperature: {', '.join(f'{t:g}' for t in temperatures)} (ECE over "
                     "15 bins; coverage @ 95%: the share answered, most confident first, at 95 % "
                     "accuracy).")  # fmt: skip
        if self.ms_per_image_batch1 is not None:
            lines.append(f"Latency at batch 1: {self.ms_per_image_batch1:.3f} ms/image. ")
        lines.append(f"Parameters: {self.num_params:,} ({self.num_params / 1e6:.3f} M).")
        if self.precision != "fp32" or self.compiled:
            lines.append(f"Precision: {self.precision}" + (f"; encoder compiled (warm-up batches, compilation "
                         f"included: {self.warmup_seconds:.1f} s, not in the timings above)." if self.compiled
                         else "."))  # fmt: skip
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """DESIGN.md section 5's format, plus the batch size and the batch-1 latency."""
        return {
            "model": self.model,
            "protocol": self.protocol.description,
            "datasets": {
                r.dataset: {
                    "protocol": self.protocol.description,
                    "num_samples": r.num_samples,
                    "num_undecodable": r.num_undecodable,
                    "accuracy": r.accuracy,
                    "norm_ED": r.norm_ED,
                    "cer": r.cer,
                    "mean_confidence": r.mean_confidence,
                    "ms_per_image": r.ms_per_image,
                    "accuracy_by_length": r.accuracy_by_length,
                    "calibration": r.calibration,
                    "selective": r.selective,
                    **({"abstained": r.abstained, "answered_accuracy": r.answered_accuracy}
                       if self.decoding.min_confidence is not None or self.decoding.constrained else {}),
                }
                for r in self.results
            },  # fmt: skip
            "total_accuracy": self.total_accuracy,
            "total_accuracy_paper": self.total_accuracy_paper,
            "num_params": self.num_params,
            "batch_size": self.batch_size,
            "ms_per_image_batch1": self.ms_per_image_batch1,
            "decoding": self.decoding.to_json(words=False),
            "precision": self.precision,
            "compiled": self.compiled,
            "warmup_seconds": self.warmup_seconds,
        }

    def card_results(self) -> list[dict[str, Any]]:
        """The ``eval_results`` the model card (and its ``model-index``) take."""
        return [{"dataset": r.dataset, "num_samples": r.num_samples, "accuracy": r.accuracy, "norm_ED": r.norm_ED,
                 "mean_confidence": r.mean_confidence, "protocol": self.protocol.description,
                 "ece": r.calibration.get("ece"), "temperature": r.calibration.get("temperature"),
                 "aurc": r.selective.get("aurc"),
                 "coverage_at_95": r.selective.get("coverage_at_accuracy", {}).get("0.95")}
                for r in self.results]  # fmt: skip


def describe_decoding(options: DecodingOptions) -> str:
    parts = [f"beam width {options.beam_width}" if options.beam_width > 1 else "greedy"]
    for name in ("allowlist", "blocklist", "pattern"):
        if getattr(options, name) is not None:
            parts.append(f"{name} {getattr(options, name)!r}")
    if options.lexicon is not None:
        parts.append(f"lexicon of {len(options.lexicon)} words")
    if options.min_confidence is not None:
        parts.append(f"abstaining below confidence {options.min_confidence:g}")
    return ", ".join(parts)


def calibration_summary(records: list[Record], protocol: Protocol, temperature: float) -> tuple[dict, dict]:
    """The ``calibration`` and ``selective`` entries of a dataset's results."""
    confidences = [r.confidence for r in records]
    correct = [is_correct(r, protocol) for r in records]
    calibration = {"ece": expected_calibration_error(confidences, correct), "temperature": temperature}
    return calibration, selective_metrics(confidences, correct)


def weighted_accuracy(results: list[DatasetResult]) -> float:
    samples = sum(r.num_samples for r in results)
    return sum(r.accuracy * r.num_samples for r in results) / samples if samples else 0.0


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
    model: TextRecognitionModel,
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
    precision: str = "fp32",
    compile: bool = False,
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
    ``precision`` (``fp32``, ``bf16``, ``fp16``) runs the forward pass under that autocast (losses, CTC, the TPS grid
    and decoding stay fp32); ``compile`` compiles the encoder first (``fastpath.compile_encoder``), its compilation
    falling in the untimed warm-up batches (``warmup_seconds``).

    Raises:
        ValueError: an unknown protocol, impossible decoding constraints, or a dataset of which no sample could be
            scored (all undecodable or filtered).
        FileNotFoundError: ``eval_data`` missing, or a name in ``names`` that is not there.
    """
    decoding = decoding or DecodingOptions()
    decoder = model.decoder(decoding)
    if not isinstance(protocol, Protocol):
        protocol = Protocol(protocol, sensitive, data_filtering_off)
    precision = check_precision(precision)
    device = next(model.parameters()).device
    if compile:
        compile_encoder(model)
    autocast = (lambda: precision_autocast(device, precision)) if precision != "fp32" else None
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
    if unscored:
        raise ValueError(f"No sample could be scored in {', '.join(unscored)} under {os.fspath(eval_data)!r}: "
                         f"check the dataset (its images, and its labels against the model's charset and length).")
    batch1 = None
    if timing_samples and timing_data is not None:
        count = min(timing_samples, len(timing_data.dataset))
        _, _, seconds = predict_records(model, timing_data, list(range(count)), 1, device=device, warmup=True,
                                        decoder=decoder, autocast=autocast, timings=timings)  # fmt: skip
        batch1 = 1000 * seconds / count
    return EvaluationReport(model_name or model.config.stage_string, results, model.num_parameters, batch_size,
                            batch1, protocol, decoding, precision, compile, timings.get("warmup", 0.0))  # fmt: skip


def dtrb_exp_name(saved_model: str) -> str:
    """DTRB's result folder name: the ``saved_model`` path without its first component, joined with ``_``."""
    parts = [part for part in Path(saved_model).parts if part not in ("/", ".")]
    return "_".join(parts[1:] if len(parts) > 1 else parts)


def write_outputs(report: EvaluationReport, result_dir: str | os.PathLike, benchmark_all_eval: bool) -> Path:
    """DTRB's log files (``log_all_evaluation.txt`` or ``log_evaluation.txt``, appended) and one failure-case file
    per dataset (``failure_cases/<dataset>.tsv``: index, ground truth, prediction, confidence)."""
    result_dir = Path(result_dir)
    (result_dir / "failure_cases").mkdir(parents=True, exist_ok=True)
    for result in report.results:
        lines = ["index\tground_truth\tprediction\tconfidence"]
        lines += [f"{r.index}\t{r.ground_truth}\t{r.prediction}\t{r.confidence:.4f}" for r in result.failures]
        (result_dir / "failure_cases" / f"{result.dataset.replace('/', '--')}.tsv").write_text(
            "\n".join(lines) + "\n", encoding="utf-8"
        )
    accuracies = "\t".join(f"{r.dataset}: {r.accuracy:0.3f}" for r in report.results)
    summary = f"accuracy: {accuracies}\ttotal_accuracy: {report.total_accuracy:0.3f}"
    if report.total_accuracy_paper is not None:
        summary += f"\ttotal_accuracy_paper: {report.total_accuracy_paper:0.3f}"
    summary += f"\taveraged_infer_time: {report.averaged_infer_time:0.3f}"
    summary += f"\t# parameters: {report.num_params / 1e6:0.3f}"
    name = "log_all_evaluation.txt" if benchmark_all_eval else "log_evaluation.txt"
    with open(result_dir / name, "a", encoding="utf-8") as log:
        for result in report.results:
            log.write(f"{result.dataset}\tAcc {result.accuracy:0.3f}\t normalized_ED {result.norm_ED:0.3f}\n")
        log.write(summary + "\n" + "-" * 80 + "\n")
    return result_dir


def write_json(report: EvaluationReport, path: str | os.PathLike) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report.to_json(), indent=2) + "\n")


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
    model: TextRecognitionModel,
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

    device = device or next(model.parameters()).device
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
