"""``evaluate.Metric`` wrappers of ``text_recognition.metrics.score`` (reached as ``metrics.WordAccuracy`` etc.)."""

from __future__ import annotations

import datasets
import evaluate

from .metrics import score

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
