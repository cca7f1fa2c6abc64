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

from .data.collate import SkipTracker, TextCollator
from .data.loaders import TextData, filtered_sources
from .data.mixing import MixedSources
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
    persistent: bool = False,
    timings: dict[str, float] | None = None,
) -> tuple[list[Record], list[float], float]:
    """Greedy predictions for ``indices`` of ``data``: one ``Record`` per decodable sample, the per-batch losses, and
    the seconds spent in the model (device synchronised; with ``warmup``, the first batch runs once untimed, and its
    seconds, compilation included, go to ``timings["warmup"]``). With ``persistent`` (training's validation) the
    DataLoader and its worker processes are kept on ``data`` and reused by the next call with the same indices."""
    tokenizer, config = model.tokenizer, model.config
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
            logits = model(images)  # greedy for attention: what is evaluated is what inference gives
        _synchronize(device)
        seconds += time.perf_counter() - start
        losses.append(float(model.loss(logits, targets.to(device), lengths, **(loss_kwargs or {}))))
        decoded = tokenizer.decode_with_confidence(logits)
        for label, stored, (text, confidence), (source, index) in zip(
            batch["labels"], batch["stored_labels"], decoded, batch["ids"]
        ):
            records.append(Record(label, text, confidence, source, index, stored))
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


@dataclass
class EvaluationReport:
    model: str
    results: list[DatasetResult]
    num_params: int
    batch_size: int
    ms_per_image_batch1: float | None
    protocol: Protocol = field(default_factory=Protocol)
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
            f"| dataset | samples | accuracy (%) | norm_ED | CER | mean confidence | {timing} |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [f"| {r.dataset} | {r.num_samples} | {r.accuracy:.3f} | {r.norm_ED:.4f} | {r.cer:.4f} | "
                  f"{r.mean_confidence:.4f} | {r.ms_per_image:.3f} |" for r in self.results]  # fmt: skip
        samples = sum(r.num_samples for r in self.results)
        if len(self.results) > 1:
            total = f"{self.total_accuracy:.3f}"
            lines.append(f"| total, all {len(self.results)} sets (DTRB's code) | {samples} | {total} | | | | |")
        if self.total_accuracy_paper is not None:
            paper = sum(r.num_samples for r in self.results if r.dataset in PAPER_DATASETS)
            lines.append(f"| total, the paper's 7 sets | {paper} | {self.total_accuracy_paper:.3f} | | | | |")
        lines.append("")
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
                    "accuracy": r.accuracy,
                    "norm_ED": r.norm_ED,
                    "cer": r.cer,
                    "mean_confidence": r.mean_confidence,
                    "ms_per_image": r.ms_per_image,
                    "accuracy_by_length": r.accuracy_by_length,
                }
                for r in self.results
            },  # fmt: skip
            "total_accuracy": self.total_accuracy,
            "total_accuracy_paper": self.total_accuracy_paper,
            "num_params": self.num_params,
            "batch_size": self.batch_size,
            "ms_per_image_batch1": self.ms_per_image_batch1,
            "precision": self.precision,
            "compiled": self.compiled,
            "warmup_seconds": self.warmup_seconds,
        }

    def card_results(self) -> list[dict[str, Any]]:
        """The ``eval_results`` the model card (and its ``model-index``) take."""
        return [{"dataset": r.dataset, "num_samples": r.num_samples, "accuracy": r.accuracy, "norm_ED": r.norm_ED,
                 "mean_confidence": r.mean_confidence, "protocol": self.protocol.description}
                for r in self.results]  # fmt: skip


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
    precision: str = "fp32",
    compile: bool = False,
) -> EvaluationReport:
    """Evaluate ``model`` on each dataset under ``eval_data`` (or those in ``names``).

    Which samples load and how ``dtrb`` cleans ground truths follow DTRB's ``test.py`` for the evaluation flags
    ``sensitive`` and ``data_filtering_off`` (labels lowercased unless ``sensitive``; DTRB's length and charset
    filter, with the model's charset, unless ``data_filtering_off``), whatever the model's config says; the
    comparison follows ``protocol`` (see ``metrics``).

    ``ms_per_image`` is the model's forward time per image at ``batch_size`` after one warm-up batch, the device
    synchronised; ``ms_per_image_batch1`` the same one image at a time over ``timing_samples`` images (0: skip).
    ``precision`` (``fp32``, ``bf16``, ``fp16``) runs the forward pass under that autocast (losses, CTC, the TPS grid
    and decoding stay fp32); ``compile`` compiles the encoder first (``fastpath.compile_encoder``), its compilation
    falling in the untimed warm-up batches (``warmup_seconds``).

    Raises:
        ValueError: an unknown protocol.
        FileNotFoundError: ``eval_data`` missing, or a name in ``names`` that is not there.
    """
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
        records, _, seconds = predict_records(model, data, list(range(len(filtered))), batch_size, device=device,
                                              num_workers=num_workers, warmup=True, autocast=autocast,
                                              timings=timings)  # fmt: skip
        scores = score_records(records, protocol)
        failures = [r for r in records if not is_correct(r, protocol)]
        ms_per_image = 1000 * seconds / max(scores.num_samples, 1)
        results.append(DatasetResult(name, scores.num_samples, scores.accuracy, scores.norm_ED,
                                     scores.mean_confidence, ms_per_image, failures, scores.cer,
                                     scores.accuracy_by_length))  # fmt: skip
        if timing_data is None and len(filtered):
            timing_data = data
    batch1 = None
    if timing_samples and timing_data is not None:
        count = min(timing_samples, len(timing_data.dataset))
        _, _, seconds = predict_records(model, timing_data, list(range(count)), 1, device=device, warmup=True,
                                        autocast=autocast, timings=timings)  # fmt: skip
        batch1 = 1000 * seconds / count
    return EvaluationReport(model_name or model.config.stage_string, results, model.num_parameters, batch_size,
                            batch1, protocol, precision, compile, timings.get("warmup", 0.0))  # fmt: skip


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
