"""Predictions over a dataset and their scores: ``predict_records`` runs a model over a dataset's samples (for
benchmark evaluation and for training's validation), one ``Record`` per sample; ``score_records`` and ``is_correct``
score the records under a comparison protocol."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch.utils.data import DataLoader

from .calibration import path_logits
from .data.collate import SkipTracker
from .data.loaders import TextData
from .decoding import Decoder
from .metrics import Protocol, score_values
from .model import TextRecognitionModel

if TYPE_CHECKING:
    from .onnx_model import OnnxModel


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
    """What ``score_values`` (and the ``RecognitionMetrics`` module) computes for a set of records, plus their mean
    confidence."""

    accuracy: float
    norm_ED: float
    cer: float
    num_samples: int
    num_correct: int
    accuracy_by_length: dict[str, dict[str, float]]
    mean_confidence: float


def score_records(records: list[Record], protocol: Protocol | None = None) -> Scores:
    """Score prediction records under ``protocol`` (default ``dtrb``) with ``score_values`` (what the
    ``RecognitionMetrics`` module computes)."""
    protocol = protocol or Protocol()
    values = score_values([r.prediction for r in records], [r.reference(protocol) for r in records], protocol)
    confidence = sum(r.confidence for r in records) / len(records) if records else 0.0
    return Scores(**values, mean_confidence=confidence)


def is_correct(record: Record, protocol: Protocol) -> bool:
    return protocol.normalize(record.prediction) == protocol.normalize(record.reference(protocol))


@torch.no_grad()
def predict_records(
    model: TextRecognitionModel | OnnxModel,
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
            logits, searched = model.predict_batch(images, decoder)
        _synchronize(device)
        seconds += time.perf_counter() - start
        losses.append(float(model.loss(logits, targets.to(device), lengths, **(loss_kwargs or {}))))
        decoded = searched if searched is not None else decoder.decode_logits(logits)
        if logit_rows is not None:
            logit_rows += path_logits(logits, config.prediction == "CTC", config.prediction in ("PARSeq", "ViTSTR"))
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
