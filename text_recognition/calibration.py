"""Confidence you can act on: temperature fitting, expected calibration error, and selective prediction.

A word's confidence is what the greedy decoding computes (CTC: the product of the per-frame maxima; attention: the
product of the per-step maxima before ``[s]``), from ``softmax(logits / temperature)``. The temperature does not
change any prediction (the argmax of every step stays), only how sure the model says it is. ``fit_temperature``
chooses the temperature that minimises the log loss of "the word is right" on held-out data; the ECE is measured
over 15 equal-width confidence bins.

Selective prediction: sort the words by confidence, answer the most confident ones and abstain on the rest.
``risk_coverage`` gives the error rate at every coverage, ``aurc`` the area under that curve (lower is better),
and ``coverage_at_accuracy(a)`` the largest share of words the model can answer while keeping accuracy ``a``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .tokenizer import EOS_ID, STRHUB_EOS_ID

ECE_BINS = 15
#: The temperature search range (log-spaced golden-section search).
TEMPERATURE_RANGE = (0.05, 20.0)


@dataclass
class ReliabilityBins:
    """Per-bin counts, mean confidence and accuracy over ``ECE_BINS`` equal-width bins of [0, 1]."""

    edges: np.ndarray
    counts: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray


def reliability_bins(confidences, correct, num_bins: int = ECE_BINS) -> ReliabilityBins:
    confidences = np.asarray(confidences, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    # bins are (lo, hi], the first one [0, hi]: a confidence of exactly 1.0 falls into the last bin
    index = np.clip(np.searchsorted(edges, confidences, side="left") - 1, 0, num_bins - 1)
    counts = np.bincount(index, minlength=num_bins).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(index, confidences, minlength=num_bins) / counts
        accuracy = np.bincount(index, correct, minlength=num_bins) / counts
    return ReliabilityBins(edges, counts, mean_confidence, accuracy)


def expected_calibration_error(confidences, correct, num_bins: int = ECE_BINS) -> float:
    """ECE: sum over equal-width bins of (bin share) x |bin accuracy - bin mean confidence|; 0.0 for no samples."""
    bins = reliability_bins(confidences, correct, num_bins)
    total = bins.counts.sum()
    if not total:
        return 0.0
    filled = bins.counts > 0
    gaps = np.abs(bins.accuracy[filled] - bins.confidence[filled])
    return float((bins.counts[filled] / total * gaps).sum())


def risk_coverage(confidences, correct) -> tuple[np.ndarray, np.ndarray]:
    """(coverage, accuracy) after answering the k most confident words, for k = 1..N. Ties in confidence are
    answered or abstained on together: only the last k of each run of equal confidences is a possible cut, and the
    curve takes the values there (a threshold cannot split equal confidences)."""
    confidences = np.asarray(confidences, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    if not len(confidences):
        return np.zeros(0), np.zeros(0)
    order = np.argsort(-confidences, kind="stable")
    sorted_confidence = confidences[order]
    hits = np.cumsum(correct[order])
    k = np.arange(1, len(order) + 1)
    cut = np.ones(len(order), dtype=bool)
    cut[:-1] = sorted_confidence[1:] != sorted_confidence[:-1]  # the last of each tie run
    # each position takes the accuracy of the cut that closes its tie run
    closing = np.flatnonzero(cut)
    run = np.searchsorted(closing, np.arange(len(order)))
    accuracy = (hits[closing] / k[closing])[run]
    return k / len(order), accuracy


def aurc(confidences, correct) -> float:
    """Area under the risk-coverage curve: the mean error rate over coverages 1/N..1 (0 for a perfect ranking of a
    perfect model; lower is better)."""
    _, accuracy = risk_coverage(confidences, correct)
    return float(np.mean(1.0 - accuracy)) if len(accuracy) else 0.0


def coverage_at_accuracy(confidences, correct, target: float) -> float:
    """The largest share of words answered (most confident first, ties together) whose accuracy is at least
    ``target`` (a fraction); 0.0 when even the most confident words miss it."""
    coverage, accuracy = risk_coverage(confidences, correct)
    reached = accuracy >= target - 1e-12
    return float(coverage[reached].max()) if reached.any() else 0.0


def selective_metrics(confidences, correct, targets: tuple[float, ...] = (0.95, 0.99)) -> dict:
    """The evaluation JSON's ``selective`` entry."""
    return {
        "aurc": aurc(confidences, correct),
        "coverage_at_accuracy": {f"{t:g}": coverage_at_accuracy(confidences, correct, t) for t in targets},
    }


# ---- temperature ---------------------------------------------------------------------------------------------------


def path_logits(logits: torch.Tensor, is_ctc: bool, strhub: bool = False) -> list[torch.Tensor]:
    """The rows of greedy logits [B, T, C] that the confidence multiplies: all frames for CTC, the steps before the
    first ``[s]`` for attention (none for an empty prediction), the steps up to and including the first ``[E]`` for
    PARSeq and ViTSTR (``strhub``). Kept on the CPU in fp32, for ``fit_temperature``."""
    logits = logits.detach().float().cpu()
    if is_ctc:
        return list(logits)
    rows = []
    for row in logits:
        ids = row.argmax(1).tolist()
        if strhub:
            cut = ids.index(STRHUB_EOS_ID) + 1 if STRHUB_EOS_ID in ids else len(ids)
        else:
            cut = ids.index(EOS_ID) if EOS_ID in ids else len(ids)
        rows.append(row[:cut])
    return rows


def confidences_at(rows: list[torch.Tensor], temperature: float) -> np.ndarray:
    """Greedy confidences of the rows of ``path_logits`` at ``temperature`` (0.0 for an empty attention row)."""
    values = np.empty(len(rows))
    lengths = [len(r) for r in rows]
    if rows and max(lengths):
        stacked = torch.cat([r for r in rows if len(r)]) / temperature  # [sum of lengths, C]
        log_max = (stacked.max(1).values - stacked.logsumexp(1)).double()
        sums = torch.zeros(len(rows), dtype=torch.float64)
        owner = torch.repeat_interleave(torch.arange(len(rows)), torch.tensor(lengths))
        sums.index_add_(0, owner, log_max)
        values[:] = sums.exp().numpy()
    else:
        values[:] = 0.0
    for i, length in enumerate(lengths):
        if not length:
            values[i] = 0.0
    return values


def log_loss(confidences: np.ndarray, correct: np.ndarray) -> float:
    p = np.clip(confidences, 1e-12, 1 - 1e-12)
    return float(-np.mean(correct * np.log(p) + (1 - correct) * np.log1p(-p)))


def fit_temperature(rows: list[torch.Tensor], correct, iterations: int = 60) -> float:
    """The temperature minimising the log loss of correctness of the greedy confidences over ``rows``, by
    golden-section search over log-temperature in ``TEMPERATURE_RANGE`` (the loss is unimodal in practice; a grid
    pass first guards against a poor start). Returns 1.0 when there is nothing to fit (no samples, all words empty,
    or all words right or all wrong: then the loss only pushes the temperature to an end of the range)."""
    correct = np.asarray(correct, dtype=np.float64)
    if not rows or not any(len(r) for r in rows):
        return 1.0
    if correct.min() == correct.max():  # all right or all wrong: no temperature separates them, keep 1.0
        return 1.0

    def loss(log_t: float) -> float:
        return log_loss(confidences_at(rows, math.exp(log_t)), correct)

    lo, hi = (math.log(t) for t in TEMPERATURE_RANGE)
    grid = np.linspace(lo, hi, 25)
    losses = [loss(g) for g in grid]
    best = int(np.argmin(losses))
    a, b = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = loss(c), loss(d)
    for _ in range(iterations):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = loss(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = loss(d)
        if b - a < 1e-4:
            break
    return float(math.exp((a + b) / 2))
