"""DTRB's LmdbDataset filtering and label cleaning, against a table of hand-checked labels."""

from __future__ import annotations

import datasets
import pytest

from text_recognition import ModelConfig
from text_recognition.data import filter_labels, filter_labels_with_counts
from text_recognition.data.labels import LabelRules, charset_quirks

LABELS = ["hello", "Hello", "HELLO!", "a b", "café", "x" * 26, "", "back\\slash", "y" * 25, "[dummy]"]
K, LONG, OUT, LONG_AFTER = "kept", "too_long", "out_of_charset", "too_long_after_cleaning"

# (sensitive, data_filtering_off, batch_max_length) -> per label: (reason, cleaned label if kept)
EXPECTED = {
    # 36 symbols, lowercase: the charset is checked on the lowercased label; punctuation, spaces, é, \ drop it.
    (False, False, 25): [(K, "hello"), (K, "hello"), (OUT, None), (OUT, None), (OUT, None), (LONG, None), (K, ""),
                         (OUT, None), (K, "y" * 25), (OUT, None)],
    # 94 symbols: case kept, punctuation and brackets in; space, é and (DTRB's regex quirk) the backslash out.
    (True, False, 25): [(K, "hello"), (K, "Hello"), (K, "HELLO!"), (OUT, None), (OUT, None), (LONG, None), (K, ""),
                        (OUT, None), (K, "y" * 25), (K, "[dummy]")],
    # Filtering off: everything kept and cleaned, except what is still too long after cleaning (DTRB crashed).
    (False, True, 25): [(K, "hello"), (K, "hello"), (K, "hello"), (K, "ab"), (K, "caf"), (LONG_AFTER, None), (K, ""),
                        (K, "backslash"), (K, "y" * 25), (K, "dummy")],
    (True, True, 25): [(K, "hello"), (K, "Hello"), (K, "HELLO!"), (K, "ab"), (K, "caf"), (LONG_AFTER, None), (K, ""),
                       (K, "backslash"), (K, "y" * 25), (K, "[dummy]")],
    # The length is that of the raw label and is checked first.
    (False, False, 5): [(K, "hello"), (K, "hello"), (LONG, None), (OUT, None), (OUT, None), (LONG, None), (K, ""),
                        (LONG, None), (LONG, None), (LONG, None)],
}  # fmt: skip


@pytest.mark.parametrize(("sensitive", "filtering_off", "max_length"), list(EXPECTED))
def test_label_rules_table(sensitive, filtering_off, max_length):
    config = ModelConfig(sensitive=sensitive, batch_max_length=max_length)
    rules = LabelRules(config.character, max_length, sensitive, filtering_off)
    for label, (reason, cleaned) in zip(LABELS, EXPECTED[(sensitive, filtering_off, max_length)]):
        assert rules.reason(label) == reason, label
        if reason == K:
            assert rules.clean(label) == cleaned, label


@pytest.mark.parametrize(("sensitive", "filtering_off", "max_length"), list(EXPECTED))
def test_filter_labels_keeps_the_same_samples_and_counts_reasons(sensitive, filtering_off, max_length):
    dataset = datasets.Dataset.from_dict({"label": LABELS, "n": list(range(len(LABELS)))})
    config = ModelConfig(sensitive=sensitive, batch_max_length=max_length)
    expected = EXPECTED[(sensitive, filtering_off, max_length)]
    result = filter_labels_with_counts(dataset, config, data_filtering_off=filtering_off)
    kept_rows = [i for i, (reason, _) in enumerate(expected) if reason == K]
    assert result.dataset["n"] == kept_rows
    assert result.dataset["label"] == [LABELS[i] for i in kept_rows]  # stored labels stay raw
    for reason in (K, LONG, OUT, LONG_AFTER):
        assert result.counts[reason] == sum(r == reason for r, _ in expected), reason
    assert filter_labels(dataset, config, filtering_off)["n"] == kept_rows


def test_filter_does_not_touch_images():
    # An image column whose bytes are not images: filtering must not decode them.
    dataset = datasets.Dataset.from_dict(
        {"image": [{"bytes": b"not an image", "path": None}] * 2, "label": ["ok", "no!"]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("string")}),
    )
    assert len(filter_labels(dataset, ModelConfig())) == 1


def test_custom_charset_regex_quirks_are_reproduced_but_never_leak():
    # DTRB pastes the charset into [^...]: "a-c" is a range, so "b" passes its filter. The tokenizer would then
    # crash on it (DTRB did); the cleaned label drops it instead.
    rules = LabelRules("a-c", 25)
    assert rules.reason("b") == K and rules.clean("b") == ""
    assert rules.reason("a-c") == OUT  # and "-" itself is not in the class: it made the range
    assert rules.reason("d") == OUT
    assert charset_quirks("a-c") == ("-", "b")
    rejected, accepted = charset_quirks(ModelConfig(sensitive=True).character)
    assert rejected == "\\" and accepted == ""


def test_charset_that_is_not_a_regex_class_is_read_literally():
    rules = LabelRules("ab\\", 25)  # "[^ab\]" does not compile: DTRB crashed
    assert rules.reason("a\\b") == K and rules.reason("c") == OUT
