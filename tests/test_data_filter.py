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


def test_custom_charset_a_dash_c_label_b_is_dropped_not_trained_as_empty():
    # DTRB pasted the charset into [^...]: "a-c" was a range, so "b" passed its filter and trained as "". A custom
    # charset is escaped: "-" is a symbol, "b" is outside it.
    rules = LabelRules("a-c", 25)
    assert rules.reason("b") == OUT and rules.dtrb_reason("b") == K
    assert rules.reason("a-c") == K and rules.clean("a-c") == "a-c"
    assert rules.reason("d") == OUT
    assert charset_quirks("a-c") == ("-", "b")  # what DTRB's regex would have done
    rejected, accepted = charset_quirks(ModelConfig(sensitive=True).character)
    assert rejected == "\\" and accepted == ""


def test_custom_charset_with_dash_bracket_caret_backslash_means_what_it_says():
    charset = "ab-]^\\"
    rules = LabelRules(charset, 25, sensitive=True)
    for label in ["a", "b", "-", "]", "^", "\\", "a-b]^\\"]:
        assert rules.reason(label) == K, label
        assert rules.clean(label) == label, label  # never changed
    for label in ["c", "A", "[", "a c", "_"]:
        assert rules.reason(label) == OUT, label
    # Not sensitive: checked on the lowercased label, trained lowercased (DTRB's documented lowercasing only).
    lower = LabelRules(charset, 25)
    assert lower.reason("A^") == K and lower.clean("A^") == "a^"


@pytest.mark.parametrize("sensitive", [False, True])
def test_dtrb_charsets_keep_dtrb_exact_filtering(sensitive):
    # The unescaped regex is kept for DTRB's two charsets: with the 94 symbols a backslash is still dropped.
    config = ModelConfig(sensitive=sensitive)
    rules = LabelRules(config.character, 25, sensitive)
    assert rules.dtrb_charset
    for label in LABELS:
        assert rules.reason(label) == rules.dtrb_reason(label)
    assert rules.reason("back\\slash") == OUT


def test_kept_label_is_never_changed_beyond_lowercasing():
    # The Kelvin sign lowercases to "k": DTRB's filter (on the lowercased label) passes it, but the sensitive label
    # would be trained with the symbol removed. Such a sample is dropped and counted instead.
    rules = LabelRules(ModelConfig(sensitive=True).character, 25, sensitive=True)
    assert rules.reason("\u212aelvin") == "label_would_change"
    assert rules.reason("Kelvin") == K
    for charset, sensitive in [(ModelConfig().character, False), (ModelConfig(sensitive=True).character, True),
                               ("a-c", False), ("ab-]^\\", True)]:  # fmt: skip
        rules = LabelRules(charset, 25, sensitive)
        for label in LABELS + ["a-c", "\u212a", "A^", "]^"]:
            if rules.reason(label) == K:
                assert rules.clean(label) == (label if sensitive else label.lower()), (charset, label)


def test_charset_that_is_not_a_regex_class_is_read_literally():
    rules = LabelRules("ab\\", 25)  # "[^ab\]" does not compile: DTRB crashed
    assert rules.reason("a\\b") == K and rules.reason("c") == OUT
