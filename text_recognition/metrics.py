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

import datasets
import evaluate
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



# ---- the same rules as evaluate.Metric modules -------------------------------------------------------------------

_FEATURES = datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")})
_INPUTS = """
Args:
    predictions: recognised texts (attention predictions already cut at the end token).
    references: ground-truth texts.
    sensitive, data_filtering_off: DTRB's flags; with both set the comparison is case-insensitive alphanumeric.
"""


class _DTRBMetric(evaluate.Metric):
    """One value of ``score`` as an ``evaluate.Metric``; subclasses name the value and describe it."""

    key: str
    description: str
    citation = "Baek et al., What Is Wrong With Scene Text Recognition Model Comparisons?, ICCV 2019."

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=self.description, citation=self.citation, inputs_description=_INPUTS, features=_FEATURES
        )

    def _compute(self, predictions, references, sensitive: bool = False, data_filtering_off: bool = False):
        result = score(predictions, references, sensitive=sensitive, data_filtering_off=data_filtering_off)
        return {self.key: getattr(result, self.key)}


class WordAccuracy(_DTRBMetric):
    """Word accuracy in percent, DTRB's ``test.py`` rule; ``WordAccuracy().compute(predictions=, references=)``."""

    key = "accuracy"
    description = "Scene-text word accuracy (percent of exact matches), as DTRB's test.py computes it."


class NormalizedEditDistance(_DTRBMetric):
    """ICDAR 2019 1 - N.E.D. in [0, 1] (higher is better), DTRB's ``test.py`` rule, empty strings scoring 0."""

    key = "norm_ED"
    description = "Mean of 1 - ED / max(len(gt), len(pred)) per sample (0 for empty strings), as DTRB."
