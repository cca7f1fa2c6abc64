"""Recognition scores under named evaluation protocols, as plain functions and as ``evaluate.Metric`` modules that
work offline (``WordAccuracy()``, ``NormalizedEditDistance()``, ``CharacterErrorRate()``: instantiate them directly;
no Hub fetch; built when first used, so that a script that only scores does not import ``evaluate``). Evaluation and
training's validation both score with ``score_values``, which those modules wrap.

A model's charset and ``sensitive`` describe what it predicts; a protocol says how predictions and ground truths are
compared, so that two published numbers can be compared:

- ``dtrb`` (default): exactly DTRB's ``test.py`` for the evaluation flags given. The ground truth is DTRB's cleaned
  label (lowercased unless ``--sensitive``, symbols outside the charset removed); with both ``--sensitive`` and
  ``--data_filtering_off``, prediction and ground truth are lowercased and reduced to ``[0-9a-z]``.
- ``alnum36``: both sides lowercased and reduced to ``[0-9a-z]``: the usual benchmark protocol.
- ``alnum62``: both sides reduced to ``[0-9A-Za-z]``, case-sensitive.
- ``printable94``: both sides reduced to DTRB's 94 printable ASCII symbols, case-sensitive.
- ``raw``: Unicode NFC, otherwise exact.

Every protocol but ``dtrb`` compares the labels as stored (the dataset's own spelling), never a label cleaned for the
model's charset.

The scores (DTRB's rules, applied after the protocol's normalisation):
- accuracy: exact string match, in percent of the samples loaded;
- norm_ED (ICDAR 2019 "1 - N.E.D."): per sample ``1 - ED(pred, gt) / max(len(gt), len(pred))``, and 0 when either
  string is empty (even when both are, which still counts as correct for accuracy); averaged over samples;
- CER: the summed edit distances over the summed ground-truth lengths (a prediction for an empty ground truth
  counts its length as errors).
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rapidfuzz.distance import Levenshtein

_NON_ALNUM = re.compile(r"[^0-9a-z]")
_NON_ALNUM62 = re.compile(r"[^0-9A-Za-z]")
_PRINTABLE94 = frozenset(string.printable[:-6])

#: The protocol names ``--protocol`` accepts.
PROTOCOLS = ("dtrb", "alnum36", "alnum62", "printable94", "raw")


def alphanumeric_lowercase(text: str) -> str:
    """DTRB's case-insensitive alphanumeric normalisation: lowercase, then drop everything outside [0-9a-z]."""
    return _NON_ALNUM.sub("", text.lower())


def normalize_for_eval(text: str, sensitive: bool, data_filtering_off: bool) -> str:
    """DTRB's ``test.py`` comparison form of an (already cleaned) label or prediction."""
    return alphanumeric_lowercase(text) if sensitive and data_filtering_off else text


@dataclass(frozen=True)
class Protocol:
    """How predictions and ground truths are compared.

    Args:
        name: one of ``PROTOCOLS``.
        sensitive, data_filtering_off: DTRB's evaluation flags; they parametrise ``dtrb`` (and, for every
            protocol, which samples load and how ``dtrb`` cleans ground truths).

    Raises:
        ValueError: for an unknown name, listing the protocols.
    """

    name: str = "dtrb"
    sensitive: bool = False
    data_filtering_off: bool = False

    def __post_init__(self) -> None:
        if self.name not in PROTOCOLS:
            raise ValueError(
                f"Unknown evaluation protocol {self.name!r}. Choose one of: {', '.join(PROTOCOLS)} (dtrb: DTRB's "
                f"test.py for --sensitive/--data_filtering_off; alnum36: lowercase [0-9a-z]; alnum62: [0-9A-Za-z]; "
                f"printable94: DTRB's 94 symbols; raw: exact after Unicode NFC)."
            )

    @property
    def uses_dtrb_labels(self) -> bool:
        """``dtrb`` compares DTRB's cleaned labels; the others compare the labels as stored."""
        return self.name == "dtrb"

    @property
    def description(self) -> str:
        """``"dtrb --sensitive --data_filtering_off"``, ``"alnum36"``: what a table or card says."""
        if self.name != "dtrb":
            return self.name
        flags = [flag for flag, on in (("--sensitive", self.sensitive), ("--data_filtering_off",
                                                                          self.data_filtering_off)) if on]  # fmt: skip
        return " ".join(["dtrb", *flags])

    def normalize(self, text: str) -> str:
        if self.name == "dtrb":
            return normalize_for_eval(text, self.sensitive, self.data_filtering_off)
        if self.name == "alnum36":
            return alphanumeric_lowercase(text)
        if self.name == "alnum62":
            return _NON_ALNUM62.sub("", text)
        if self.name == "printable94":
            return "".join(c for c in text if c in _PRINTABLE94)
        return unicodedata.normalize("NFC", text)


def sample_norm_ed(prediction: str, ground_truth: str) -> float:
    """One sample's ``1 - ED / max(len)``; 0 when either string is empty, as DTRB."""
    if not prediction or not ground_truth:
        return 0.0
    return 1.0 - Levenshtein.distance(prediction, ground_truth) / max(len(ground_truth), len(prediction))


def character_confusions(predictions: Sequence[str], references: Sequence[str]) -> Counter[tuple[str, str]]:
    """Counts of ``(reference symbol, predicted symbol)`` over the Levenshtein alignment of each pair: a
    substitution ``("l", "1")``, a deletion ``("e", "")`` (the model missed it), an insertion ``("", "e")``."""
    counts: Counter[tuple[str, str]] = Counter()
    for prediction, reference in zip(predictions, references):
        for tag, src, dest in Levenshtein.editops(reference, prediction):
            if tag == "replace":
                counts[reference[src], prediction[dest]] += 1
            elif tag == "delete":
                counts[reference[src], ""] += 1
            else:
                counts["", prediction[dest]] += 1
    return counts


@dataclass
class RecognitionScores:
    num_samples: int
    num_correct: int
    norm_ED_sum: float
    confidence_sum: float
    edit_distance_sum: int = 0
    reference_chars: int = 0
    by_length: dict[int, list[int]] = field(default_factory=dict)  # ground-truth length -> [samples, correct]

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

    @property
    def cer(self) -> float:
        """Character error rate: edit operations per ground-truth character (can exceed 1)."""
        if self.reference_chars:
            return self.edit_distance_sum / self.reference_chars
        return 0.0 if not self.edit_distance_sum else float("inf")

    def accuracy_by_length(self) -> dict[str, dict[str, float]]:
        """``{"5": {"num_samples": 120, "accuracy": 91.7}, ...}`` by ground-truth length (after normalisation)."""
        return {str(length): {"num_samples": n, "accuracy": 100.0 * correct / n}
                for length, (n, correct) in sorted(self.by_length.items())}  # fmt: skip


def score(
    predictions: Sequence[str],
    references: Sequence[str],
    confidences: Sequence[float] | None = None,
    *,
    protocol: Protocol | str | None = None,
    sensitive: bool = False,
    data_filtering_off: bool = False,
) -> RecognitionScores:
    """Accuracy, norm_ED, CER, accuracy by length and mean confidence of predictions against references.

    Args:
        protocol: a ``Protocol`` or its name; default ``dtrb`` with ``sensitive`` and ``data_filtering_off``.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references.")
    if not isinstance(protocol, Protocol):
        protocol = Protocol(protocol or "dtrb", sensitive, data_filtering_off)
    result = RecognitionScores(len(references), 0, 0.0, 0.0)
    for prediction, reference in zip(predictions, references):
        prediction, reference = protocol.normalize(prediction), protocol.normalize(reference)
        correct = prediction == reference
        result.num_correct += correct
        result.norm_ED_sum += sample_norm_ed(prediction, reference)
        result.edit_distance_sum += Levenshtein.distance(prediction, reference)
        result.reference_chars += len(reference)
        counts = result.by_length.setdefault(len(reference), [0, 0])
        counts[0] += 1
        counts[1] += correct
    result.confidence_sum = float(sum(confidences)) if confidences is not None else 0.0
    return result


def score_values(predictions: Sequence[str], references: Sequence[str], protocol: Protocol) -> dict[str, Any]:
    """Every score of ``score`` as the dict the ``evaluate`` modules return: accuracy, norm_ED, cer, num_samples,
    num_correct, accuracy_by_length. Evaluation and validation score with it; the modules wrap it."""
    result = score(predictions, references, protocol=protocol)
    return {"accuracy": result.accuracy, "norm_ED": result.norm_ED, "cer": result.cer,
            "num_samples": result.num_samples, "num_correct": result.num_correct,
            "accuracy_by_length": result.accuracy_by_length()}  # fmt: skip


# ---- the same rules as evaluate.Metric modules -------------------------------------------------------------------
# Built when first asked for (``metrics.WordAccuracy``...): importing ``evaluate`` (and through it scipy and pandas)
# takes about a second, which every scripts/test.py and demo.py run paid before its first image.

_INPUTS = """
Args:
    predictions: recognised texts (attention predictions already cut at the end token).
    references: ground-truth texts.
    protocol: dtrb (default), alnum36, alnum62, printable94 or raw.
    sensitive, data_filtering_off: DTRB's flags; under dtrb, with both set the comparison is case-insensitive
        alphanumeric.
"""
_METRICS = {
    "WordAccuracy": (("accuracy",), "Scene-text word accuracy (percent of exact matches after the protocol's "
                     "normalisation).", "Word accuracy in percent; ``WordAccuracy().compute(predictions=, "
                     "references=, protocol=\"alnum36\")``."),
    "NormalizedEditDistance": (("norm_ED",), "Mean of 1 - ED / max(len(gt), len(pred)) per sample (0 for empty "
                               "strings), as DTRB.", "ICDAR 2019 1 - N.E.D. in [0, 1] (higher is better), DTRB's "
                               "rule, empty strings scoring 0."),
    "CharacterErrorRate": (("cer",), "Summed Levenshtein distances over summed ground-truth lengths.",
                           "Edit operations per ground-truth character (lower is better)."),
    "RecognitionMetrics": (("accuracy", "norm_ED", "cer", "num_samples", "num_correct", "accuracy_by_length"),
                           "Word accuracy, 1 - N.E.D., CER and accuracy by label length of scene-text recognition.",
                           "Every score at once: accuracy, norm_ED, CER, counts, accuracy by ground-truth length."),
}  # fmt: skip
_BUILT: dict[str, type] = {}


def _metric_classes() -> dict[str, type]:
    """The ``evaluate.Metric`` modules, built once: each wraps ``score_values`` and names the values it returns."""
    if _BUILT:
        return _BUILT
    import datasets
    import evaluate

    features = datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")})

    class _RecognitionMetric(evaluate.Metric):
        """``score`` as an ``evaluate.Metric``; subclasses name the values they return."""

        keys: tuple[str, ...]
        description: str
        citation = "Baek et al., What Is Wrong With Scene Text Recognition Model Comparisons?, ICCV 2019."

        def __init__(self, **kwargs) -> None:
            kwargs.setdefault("keep_in_memory", True)  # no cache file: several processes may score at once
            super().__init__(**kwargs)

        def _info(self) -> evaluate.MetricInfo:
            return evaluate.MetricInfo(description=self.description, citation=self.citation,
                                       inputs_description=_INPUTS, features=features)  # fmt: skip

        def _compute(self, predictions, references, protocol: str = "dtrb", sensitive: bool = False,
                     data_filtering_off: bool = False):  # fmt: skip
            values = score_values(predictions, references, Protocol(protocol, sensitive, data_filtering_off))
            return {key: values[key] for key in self.keys}

    for name, (keys, description, doc) in _METRICS.items():
        _BUILT[name] = type(name, (_RecognitionMetric,), {"keys": keys, "description": description, "__doc__": doc,
                                                          "__module__": __name__})  # fmt: skip
    return _BUILT


def __getattr__(name: str) -> type:
    if name in _METRICS:
        return _metric_classes()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
