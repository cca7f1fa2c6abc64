from __future__ import annotations

import pytest

from text_recognition.metrics import (
    CharacterErrorRate,
    NormalizedEditDistance,
    Protocol,
    RecognitionMetrics,
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


# ---- protocols -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("protocol", "prediction", "reference", "correct"),
    [
        ("alnum36", "Hello-World!", "helloworld", True),
        ("alnum62", "Hello-World!", "helloworld", False),
        ("alnum62", "Hello-World!", "HelloWorld", True),
        ("printable94", "Hello World!", "HelloWorld!", True),  # the space is not one of the 94
        ("printable94", "Straße", "Strae", True),
        ("raw", "e\u0301", "\u00e9", True),  # NFC: decomposed and composed é are one word
        ("raw", "Hello", "hello", False),
        ("dtrb", "Hello", "hello", False),
    ],
)
def test_protocols_normalise_both_sides(protocol, prediction, reference, correct):
    result = score([prediction], [reference], protocol=protocol)
    assert result.num_correct == correct


def test_dtrb_protocol_is_dtrbs_rule_for_the_flags_given():
    dtrb = Protocol("dtrb", sensitive=True, data_filtering_off=True)
    assert dtrb.description == "dtrb --sensitive --data_filtering_off" and dtrb.normalize("A-1!") == "a1"
    assert Protocol("dtrb").normalize("A-1!") == "A-1!" and Protocol("alnum36").description == "alnum36"
    assert score(["Hello!"], ["hello"], protocol=dtrb).num_correct == 1
    assert score(["Hello!"], ["hello"], sensitive=True, data_filtering_off=True).num_correct == 1


def test_unknown_protocol_lists_the_choices():
    with pytest.raises(ValueError, match=r"Unknown evaluation protocol 'alnum'. Choose one of: dtrb, alnum36"):
        Protocol("alnum")


def test_cer_and_accuracy_by_length():
    result = score(["kitten", "ab", "abc"], ["sitting", "ab", "abd"])
    assert result.cer == pytest.approx((3 + 0 + 1) / (7 + 2 + 3))
    assert result.accuracy_by_length() == {"2": {"num_samples": 1, "accuracy": 100.0},
                                           "3": {"num_samples": 1, "accuracy": 0.0},
                                           "7": {"num_samples": 1, "accuracy": 0.0}}  # fmt: skip
    metrics = RecognitionMetrics().compute(predictions=["Kitten"], references=["kitten"], protocol="alnum36")
    assert (metrics["accuracy"], metrics["cer"], metrics["num_samples"]) == (100.0, 0.0, 1)
    assert CharacterErrorRate().compute(predictions=["ab"], references=["abcd"]) == {"cer": 0.5}
