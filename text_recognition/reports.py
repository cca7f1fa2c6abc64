"""Benchmark evaluation results: per-dataset results, the report's table, its JSON and its model-card results, and
DTRB's log and failure-case files; the paper's 7-set total next to the code's 10-set total."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .decoding import DecodingOptions
from .metrics import Protocol
from .records import Record

#: DTRB's ``--benchmark_all_eval`` folders, in its Table 1 order.
BENCHMARK_DATASETS = ("IIIT5k_3000", "SVT", "IC03_860", "IC03_867", "IC13_857", "IC13_1015", "IC15_1811",
                      "IC15_2077", "SVTP", "CUTE80")  # fmt: skip
#: The 7 sets of the paper's "Total" (DTRB's code averages all 10, counting IC03/IC13/IC15 twice).
PAPER_DATASETS = ("IIIT5k_3000", "SVT", "IC03_867", "IC13_1015", "IC15_2077", "SVTP", "CUTE80")


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
    unscored: list[str] = field(default_factory=list)  # datasets of which no sample could be scored, with the reason
    backend: str = "PyTorch"  # what ran the model: "PyTorch", or an exported file's "onnxruntime ..."

    @property
    def run_by(self) -> str:
        """``"PyTorch fp32"``, ``"onnxruntime int8"``: the backend and precision that produced the results."""
        backend = self.backend.split(" ")[0]
        return f"{backend} {self.precision}"

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
            f"Run by: {self.backend}{'' if self.backend != 'PyTorch' else ' ' + self.precision}",
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
            lines[3] = lines[3].replace("| samples |", "| samples | undecodable (not scored) |")
            lines[4] += "---|"
            for number, r in enumerate(self.results, start=5):
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
        if self.unscored:
            lines += [f"Not scored (no sample could be): {', '.join(self.unscored)}.", ""]
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
        if (self.precision != "fp32" and self.backend == "PyTorch") or self.compiled:
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
            "backend": self.backend,
            "run_by": self.run_by,
            "compiled": self.compiled,
            "warmup_seconds": self.warmup_seconds,
            "unscored": self.unscored,
        }

    def card_results(self) -> list[dict[str, Any]]:
        """The ``eval_results`` the model card (and its ``model-index``) take."""
        return [{"dataset": r.dataset, "num_samples": r.num_samples, "accuracy": r.accuracy, "norm_ED": r.norm_ED,
                 "mean_confidence": r.mean_confidence, "protocol": self.protocol.description,
                 "ece": r.calibration.get("ece"), "temperature": r.calibration.get("temperature"),
                 "aurc": r.selective.get("aurc"),
                 "coverage_at_95": r.selective.get("coverage_at_accuracy", {}).get("0.95"),
                 "run_by": self.run_by}
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


def weighted_accuracy(results: list[DatasetResult]) -> float:
    samples = sum(r.num_samples for r in results)
    return sum(r.accuracy * r.num_samples for r in results) / samples if samples else 0.0


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
