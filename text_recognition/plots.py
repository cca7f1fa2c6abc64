"""Pictures where people would rather look than read: reliability diagrams, accuracy vs coverage, accuracy by label
length, the most frequent character confusions, validation curves, and the dataset audit's histograms.

matplotlib is an optional extra: ``pip install "text_recognition[plots]"``. Every function writes one PNG with the
non-interactive Agg backend and returns its path.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .calibration import ECE_BINS, expected_calibration_error, reliability_bins, risk_coverage
from .metrics import character_confusions

if TYPE_CHECKING:
    from .evaluation import EvaluationReport

INSTALL_HINT = 'Plots need matplotlib: pip install "text_recognition[plots]" (or pip install matplotlib).'


def require_matplotlib():
    """``matplotlib.pyplot`` on the Agg backend, or an ImportError that says how to install it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    return plt


def _save(figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    require_matplotlib().close(figure)
    return path


def _file_name(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z._-]+", "_", name).strip("_") or "dataset"


def reliability_diagram(confidences, correct, path, title: str = "") -> Path:
    """Accuracy per confidence bin against the diagonal, with the share of samples per bin below."""
    plt = require_matplotlib()
    bins = reliability_bins(confidences, correct)
    ece = expected_calibration_error(confidences, correct)
    centers = (bins.edges[:-1] + bins.edges[1:]) / 2
    width = 1.0 / ECE_BINS
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(5, 5.6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    filled = bins.counts > 0
    top.bar(centers[filled], bins.accuracy[filled], width=width * 0.95, color="#4c72b0", label="accuracy")
    top.bar(centers[filled], bins.confidence[filled] - bins.accuracy[filled], bottom=bins.accuracy[filled],
            width=width * 0.95, color="#dd8452", alpha=0.5, label="gap to confidence")  # fmt: skip
    top.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    top.set_ylabel("accuracy")
    top.set_ylim(0, 1)
    top.set_title(f"{title}  (ECE {ece:.3f})".strip())
    top.legend(loc="upper left", fontsize=8)
    total = max(int(bins.counts.sum()), 1)
    bottom.bar(centers, bins.counts / total, width=width * 0.95, color="#8c8c8c")
    bottom.set_xlabel("confidence")
    bottom.set_ylabel("share")
    bottom.set_xlim(0, 1)
    return _save(figure, path)


def coverage_curve(confidences, correct, path, title: str = "", targets: Sequence[float] = (0.95, 0.99)) -> Path:
    """Accuracy of the answered words against the share answered (most confident first)."""
    plt = require_matplotlib()
    coverage, accuracy = risk_coverage(confidences, correct)
    figure, axis = plt.subplots(figsize=(5, 4))
    axis.plot(coverage, accuracy, color="#4c72b0")
    for target in targets:
        axis.axhline(target, color="#c44e52", linestyle=":", linewidth=1)
        axis.text(0.01, target, f"{target:.0%}", color="#c44e52", fontsize=8, va="bottom")
    axis.set_xlabel("coverage (share of words answered)")
    axis.set_ylabel("accuracy of the answered words")
    axis.set_xlim(0, 1)
    low = float(accuracy.min()) if len(accuracy) else 0.0
    axis.set_ylim(max(0.0, min(low, min(targets)) - 0.05), 1.005)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    return _save(figure, path)


def accuracy_by_length(results: dict[str, dict[str, dict[str, float]]], path, title: str = "") -> Path:
    """Word accuracy by ground-truth length, one line per dataset (``{dataset: accuracy_by_length}``)."""
    plt = require_matplotlib()
    figure, axis = plt.subplots(figsize=(6, 4))
    for name, by_length in results.items():
        lengths = sorted(int(k) for k in by_length)
        axis.plot(lengths, [by_length[str(n)]["accuracy"] for n in lengths], marker="o", markersize=3, label=name)
    axis.set_xlabel("label length")
    axis.set_ylabel("word accuracy (%)")
    axis.set_ylim(0, 101)
    axis.set_title(title or "Accuracy by label length")
    axis.grid(alpha=0.3)
    if len(results) > 1:
        axis.legend(fontsize=7, ncol=2)
    return _save(figure, path)


def confusions(predictions: Sequence[str], references: Sequence[str], path, top: int = 20, title: str = "") -> Path:
    """The ``top`` most frequent (reference -> prediction) symbol confusions of the edit-distance alignments."""
    plt = require_matplotlib()
    counts = character_confusions(predictions, references).most_common(top)
    figure, axis = plt.subplots(figsize=(6, max(2.0, 0.28 * len(counts) + 1)))

    def show(symbol: str) -> str:
        return "∅" if symbol == "" else repr(symbol)[1:-1] if symbol.isspace() else symbol

    labels = [f"{show(ref)} → {show(pred)}" for (ref, pred), _ in counts]
    axis.barh(range(len(counts)), [n for _, n in counts], color="#4c72b0")
    axis.set_yticks(range(len(counts)), labels, fontsize=9)
    axis.invert_yaxis()
    axis.set_xlabel("count (∅: missed or extra symbol)")
    axis.set_title(title or "Most frequent confusions (ground truth → prediction)")
    if not counts:
        axis.text(0.5, 0.5, "no confusions", ha="center", va="center", transform=axis.transAxes)
    return _save(figure, path)


def write_evaluation_plots(report: EvaluationReport, folder: str | os.PathLike) -> list[Path]:
    """Every evaluation plot for ``report``: per dataset a reliability diagram and an accuracy-vs-coverage curve;
    accuracy by label length over the datasets; the most frequent confusions over all of them."""
    from .evaluation import is_correct

    folder = Path(folder)
    written, predictions, references = [], [], []
    for result in report.results:
        confidences = [r.confidence for r in result.records]
        correct = [is_correct(r, report.protocol) for r in result.records]
        name = _file_name(result.dataset)
        written.append(reliability_diagram(confidences, correct, folder / f"reliability_{name}.png", result.dataset))
        written.append(coverage_curve(confidences, correct, folder / f"coverage_{name}.png", result.dataset))
        predictions += [report.protocol.normalize(r.prediction) for r in result.records]
        references += [report.protocol.normalize(r.reference(report.protocol)) for r in result.records]
    by_length = {r.dataset: r.accuracy_by_length for r in report.results if r.accuracy_by_length}
    written.append(accuracy_by_length(by_length, folder / "accuracy_by_length.png"))
    written.append(confusions(predictions, references, folder / "confusions.png"))
    return written


def validation_curves(history: list[dict[str, Any]], path, title: str = "") -> Path:
    """Training's curves from its validation entries (``{"step", "train_loss", "valid_loss", "accuracy",
    "norm_ED"}``): losses on the left, accuracy and 1 - NED on the right."""
    plt = require_matplotlib()
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    steps = [h["step"] for h in history]
    for key, label in (("train_loss", "train loss"), ("valid_loss", "validation loss")):
        values = [h.get(key) for h in history]
        if any(v is not None for v in values):
            left.plot(steps, [np.nan if v is None else v for v in values], marker="o", markersize=3, label=label)
    left.set_xlabel("iteration")
    left.set_ylabel("loss")
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    right.plot(steps, [h.get("accuracy") for h in history], marker="o", markersize=3, label="accuracy (%)")
    right.plot(steps, [100 * h["norm_ED"] if h.get("norm_ED") is not None else np.nan for h in history], marker="o",
               markersize=3, label="1 - NED (x100)")  # fmt: skip
    right.set_xlabel("iteration")
    right.set_ylim(0, 101)
    right.legend(fontsize=8)
    right.grid(alpha=0.3)
    figure.suptitle(title or "Validation")
    return _save(figure, path)


def histogram(values: dict[Any, int] | Sequence[float], path, title: str, xlabel: str, top: int | None = None,
              bins: int = 40) -> Path:  # fmt: skip
    """A bar chart of counts (a dict, optionally its ``top`` largest) or a histogram of values."""
    plt = require_matplotlib()
    figure, axis = plt.subplots(figsize=(7, 3.6))
    if isinstance(values, dict):
        items = sorted(values.items(), key=lambda kv: -kv[1])[:top] if top else sorted(values.items())
        axis.bar([str(k) for k, _ in items], [v for _, v in items], color="#4c72b0")
        if len(items) > 30:
            axis.tick_params(axis="x", labelsize=6)
    else:
        axis.hist(np.asarray(values, dtype=float), bins=bins, color="#4c72b0")
    axis.set_title(title)
    axis.set_xlabel(xlabel)
    axis.set_ylabel("count")
    return _save(figure, path)
