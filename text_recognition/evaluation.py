"""Evaluation of a model on one or more datasets, scored exactly as DTRB's ``test.py`` scores them."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import datasets

from .data.collate import TextCollator
from .data.datasets import filter_labels_with_counts, load_text_dataset
from .data.loaders import TextData
from .data.mixing import MixedSources
from .metrics import score
from .model import TextRecognitionModel
from .training import predict_records


@dataclass
class DatasetResult:
    dataset: str
    num_samples: int
    accuracy: float
    norm_ED: float
    mean_confidence: float
    ms_per_image: float


def evaluate_datasets(
    model: TextRecognitionModel,
    eval_data: str | os.PathLike,
    *,
    batch_size: int = 192,
    num_workers: int = 0,
    data_filtering_off: bool = False,
    select_data: str = "/",
) -> list[DatasetResult]:
    """Evaluate ``model`` on every source under ``eval_data`` separately (each LMDB or datasets folder, named by its
    path below ``eval_data``), with DTRB's filtering and scoring for the model's charset and case mode.

    ``ms_per_image`` is the model's forward time per image at ``batch_size``, device synchronised (data loading and
    decoding excluded).
    """
    device = next(model.parameters()).device
    config = model.config
    results = []
    for name, dataset in load_text_dataset(eval_data, select_data).items():
        dataset = dataset.cast_column("image", datasets.Image(decode=False))
        filtered, _, kept = filter_labels_with_counts(dataset, config, data_filtering_off)
        data = TextData(MixedSources([(name, filtered, len(filtered), kept)]), TextCollator(config, data_filtering_off),
                        log="")  # fmt: skip
        records, _, seconds = predict_records(
            model, data, list(range(len(filtered))), batch_size, device=device, num_workers=num_workers
        )
        result = score([p for _, p, _ in records], [g for g, _, _ in records], [c for _, _, c in records],
                       sensitive=config.sensitive, data_filtering_off=data_filtering_off)  # fmt: skip
        results.append(DatasetResult(name, result.num_samples, result.accuracy, result.norm_ED,
                                     result.mean_confidence, 1000 * seconds / max(result.num_samples, 1)))  # fmt: skip
    return results


def results_table(results: list[DatasetResult]) -> str:
    """A markdown table: dataset, samples, accuracy, norm_ED, mean confidence, ms/image, and the weighted total."""
    lines = ["| dataset | samples | accuracy (%) | norm_ED | mean confidence | ms/image |", "|---|---|---|---|---|---|"]
    lines += [f"| {r.dataset} | {r.num_samples} | {r.accuracy:.3f} | {r.norm_ED:.4f} | {r.mean_confidence:.4f} | "
              f"{r.ms_per_image:.3f} |" for r in results]  # fmt: skip
    if len(results) > 1:
        lines.append(f"| total (weighted by samples) | {sum(r.num_samples for r in results)} | "
                     f"{total_accuracy(results):.3f} | | | |")  # fmt: skip
    return "\n".join(lines)


def total_accuracy(results: list[DatasetResult]) -> float:
    """DTRB's total: accuracies weighted by the number of samples loaded."""
    samples = sum(r.num_samples for r in results)
    return sum(r.accuracy * r.num_samples for r in results) / samples if samples else 0.0


def write_results_json(path: str | os.PathLike, model_name: str, model: TextRecognitionModel,
                       results: list[DatasetResult]) -> dict[str, Any]:  # fmt: skip
    """``{"model", "datasets": {name: {...}}, "total_accuracy", "num_params"}`` (DESIGN.md section 5)."""
    payload = {
        "model": model_name,
        "datasets": {r.dataset: {k: v for k, v in asdict(r).items() if k != "dataset"} for r in results},
        "total_accuracy": total_accuracy(results),
        "num_params": model.num_parameters,
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(payload, indent=2) + "\n")
    return payload

