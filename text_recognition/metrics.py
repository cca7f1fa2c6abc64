"""Word accuracy and normalised edit distance exactly as DTRB's ``test.py`` computes them, as plain functions (used by
the training loop) and as ``evaluate.Metric`` modules that work offline (``WordAccuracy()``,
``NormalizedEditDistance()``: instantiate them directly; no Hub fetch).

DTRB's rules:
- accuracy: exact string match, in percent of the samples loaded;
- norm_ED (ICDAR 2019 "1 - N.E.D."): per sample ``1 - ED(pred, gt) / max(len(gt), len(pred))``, and 0 when either
  string is empty (even when both are, which still counts as correct for accuracy); averaged over samples;
- only with both ``sensitive`` and ``data_filtering_off``, prediction and ground truth are lowercased and stripped to
  ``[0-9a-z]`` before comparing (case-insensitive alphanumeric evaluation of a case-sensitive model).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from rapidfuzz.distance import Levenshtein

_NON_ALNUM = re.compile(r"[^0-9a-z]")


def alphanumeric_lowercase(text: str) -> str:
    """DTRB's case-insensitive alphanumeric normalisation: lowercase, then drop everything outside [0-9a-z]."""
    return _NON_ALNUM.sub("", text.lower())


def normalize_for_eval(text: str, sensitive: bool, data_filtering_off: bool) -> str:
    return alphanumeric_lowercase(text) if sensitive and data_filtering_off else text


def sample_norm_ed(prediction: str, ground_truth: str) -> float:
    """One sample's ``1 - ED / max(len)``; 0 when either string is empty, as DTRB."""
    if not prediction or not ground_truth:
        return 0.0
    return 1.0 - Levenshtein.distance(prediction, ground_truth) / max(len(ground_truth), len(prediction))


@dataclass
class RecognitionScores:
    num_samples: int
    num_correct: int
    norm_ED_sum: float
    confidence_sum: float

    @property
    def accuracy(self) -> float:
        """Word accuracy in percent."""
        return 100.0 * self.num_correct / self.num_samples if self.num_samples else 0.0

    @property
    def norm_ED(self) -> float:
        return self.norm_ED_sum / self.num_samples if self.num_samples else 0.0

    @property
    def mean_confidence(self) -> float:
        return self.confidence_sum / self.num_samples if self.num_samples else 0.0


def score(
    predictions: Sequence[str],
    references: Sequence[str],
    confidences: Sequence[float] | None = None,
    *,
    sensitive: bool = False,
    data_filtering_off: bool = False,
) -> RecognitionScores:
    """Accuracy, norm_ED and mean confidence of predictions against references, with DTRB's rules."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references.")
    correct, ned = 0, 0.0
    for prediction, reference in zip(predictions, references):
        prediction = normalize_for_eval(prediction, sensitive, data_filtering_off)
        reference = normalize_for_eval(reference, sensitive, data_filtering_off)
        correct += prediction == reference
        ned += sample_norm_ed(prediction, reference)
    confidence = float(sum(confidences)) if confidences is not None else 0.0
    return RecognitionScores(len(references), correct, ned, confidence)


def __getattr__(name: str):
    # The evaluate.Metric classes are loaded on first use: importing `evaluate` eagerly would break every script in
    # scripts/, where scripts/evaluate.py shadows the package.
    if name in ("WordAccuracy", "NormalizedEditDistance"):
        from . import _evaluate_metrics

        return getattr(_evaluate_metrics, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
