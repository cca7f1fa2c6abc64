from __future__ import annotations

import pytest

from text_recognition.metrics import (
    NormalizedEditDistance,
    WordAccuracy,
    alphanumeric_lowercase,
    sample_norm_ed,
    score,
)


def test_hand_computed_scores():
    predictions = ["hello", "wrld", "", "abc", ""]
    references = ["hello", "world", "x", "abd", ""]
    result = score(predictions, references, [0.9, 0.5, 0.0, 0.7, 0.1])
    assert result.num_samples == 5 and result.num_correct == 2  # "hello", and "" == "" (DTRB counts it correct)
    assert result.accuracy == pytest.approx(40.0)
    # norm_ED: 1, 1 - 1/5, 0 (empty pred), 1 - 1/3, 0 (both empty still score 0, as DTRB)
    assert result.norm_ED == pytest.approx((1 + 0.8 + 0 + 2 / 3 + 0) / 5)
    assert result.mean_confidence == pytest.approx(2.2 / 5)


def test_edit_distance_is_plain_levenshtein():
    assert sample_norm_ed("kitten", "sitting") == pytest.approx(1 - 3 / 7)
    assert sample_norm_ed("ab", "ba") == pytest.approx(0.0)  # no transpositions: 2 substitutions / 2


def test_case_insensitive_alphanumeric_only_with_sensitive_and_filtering_off():
    predictions, references = ["Hello!", "A-1"], ["hello", "a1"]
    assert score(predictions, references).num_correct == 0
    assert score(predictions, references, sensitive=True).num_correct == 0
    assert score(predictions, references, data_filtering_off=True).num_correct == 0
    assert score(predictions, references, sensitive=True, data_filtering_off=True).num_correct == 2
    assert alphanumeric_lowercase("Straße 42!") == "strae42"


def test_evaluate_metric_modules_work_offline():
    predictions, references = ["hello", "wrld", ""], ["hello", "world", ""]
    assert WordAccuracy().compute(predictions=predictions, references=references) == {
        "accuracy": pytest.approx(200 / 3)
    }
    ned = NormalizedEditDistance().compute(predictions=predictions, references=references)
    assert ned == {"norm_ED": pytest.approx((1 + 0.8) / 3)}
    assert WordAccuracy().compute(predictions=["A!"], references=["a"], sensitive=True, data_filtering_off=True) == {
        "accuracy": 100.0
    }


def test_length_mismatch():
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        score(["a", "b"], ["a"])
