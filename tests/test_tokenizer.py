from __future__ import annotations

import math

import pytest
import torch

from text_recognition import CHARSET_36, AttnTokenizer, CTCTokenizer, ModelConfig, build_tokenizer


def test_ctc_encode_matches_dtrb():
    ids, lengths = CTCTokenizer(CHARSET_36).encode(["hello", "a1"], batch_max_length=25)
    assert ids.shape == (2, 25) and ids.dtype == torch.long
    assert ids[0, :6].tolist() == [18, 15, 22, 22, 25, 0]
    assert ids[0, 5:].eq(0).all()
    assert ids[1, :3].tolist() == [11, 2, 0]
    assert lengths.tolist() == [5, 2]


def test_ctc_decode_collapses_repeats_then_blanks():
    tokenizer = CTCTokenizer(CHARSET_36)
    ids = torch.tensor([[0, 8, 8, 0, 5, 12, 12, 0, 12, 15, 15, 0]])
    assert tokenizer.decode(ids) == ["74bbe"]
    assert tokenizer.decode(torch.zeros(1, 5, dtype=torch.long)) == [""]


def test_ctc_encode_flat_is_dtrb_baidu_converter():
    flat, lengths = CTCTokenizer(CHARSET_36).encode_flat(["ab", "c"])
    assert flat.tolist() == [11, 12, 13] and lengths.tolist() == [2, 1]


def test_attn_encode_matches_dtrb():
    ids, lengths = AttnTokenizer(CHARSET_36).encode(["hello", ""], batch_max_length=25)
    assert ids.shape == (2, 27)
    assert ids[0, :8].tolist() == [0, 19, 16, 23, 23, 26, 1, 0]
    assert ids[1, :3].tolist() == [0, 1, 0]
    assert lengths.tolist() == [6, 1]


def test_attn_decode_cuts_at_end_token():
    tokenizer = AttnTokenizer(CHARSET_36)
    ids = torch.tensor([[19, 16, 23, 1, 23, 5], [1, 19, 19, 19, 19, 19]])
    assert tokenizer.decode(ids) == ["hel", ""]


def test_attn_decode_without_end_token_keeps_every_character():
    # DTRB's find('[s]') returned -1 here and dropped the last character ("hell").
    ids = torch.tensor([[19, 16, 23, 23, 26]])
    assert AttnTokenizer(CHARSET_36).decode(ids) == ["hello"]


def _logits_for(ids: list[list[int]], num_class: int, peak: float) -> torch.Tensor:
    logits = torch.zeros(len(ids), len(ids[0]), num_class)
    for b, row in enumerate(ids):
        for t, i in enumerate(row):
            logits[b, t, i] = peak
    return logits


def test_ctc_confidence_is_product_over_all_frames():
    tokenizer = CTCTokenizer("ab")  # 3 classes
    logits = _logits_for([[1, 1, 0, 2]], num_class=3, peak=2.0)
    p = math.exp(2) / (math.exp(2) + 2)
    [(text, confidence)] = tokenizer.decode_with_confidence(logits)
    assert text == "ab"
    assert confidence == pytest.approx(p**4, rel=1e-6)


def test_attn_confidence_excludes_end_token_and_following_steps():
    tokenizer = AttnTokenizer("ab")  # 4 classes: [GO], [s], a, b
    logits = _logits_for([[2, 3, 1, 2, 2]], num_class=4, peak=3.0)
    logits[0, 3:, 2] = 10.0  # after [s]: must not count
    p = math.exp(3) / (math.exp(3) + 3)
    [(text, confidence)] = tokenizer.decode_with_confidence(logits)
    assert text == "ab"
    assert confidence == pytest.approx(p**2, rel=1e-6)


def test_attn_confidence_without_end_token_uses_every_step():
    tokenizer = AttnTokenizer("ab")
    logits = _logits_for([[2, 3, 2]], num_class=4, peak=3.0)
    p = math.exp(3) / (math.exp(3) + 3)
    assert tokenizer.decode_with_confidence(logits) == [("aba", pytest.approx(p**3, rel=1e-6))]


def test_empty_attn_prediction_has_zero_confidence_and_does_not_crash():
    tokenizer = AttnTokenizer("ab")
    logits = _logits_for([[1, 2, 2]], num_class=4, peak=5.0)
    assert tokenizer.decode_with_confidence(logits) == [("", 0.0)]


def test_label_too_long_is_a_clear_error():
    with pytest.raises(ValueError, match=r"has 4 characters, more than batch_max_length=3"):
        CTCTokenizer(CHARSET_36).encode(["abcd"], batch_max_length=3)
    with pytest.raises(ValueError, match=r"more than batch_max_length=3"):
        AttnTokenizer(CHARSET_36).encode(["abcd"], batch_max_length=3)


def test_label_outside_charset_is_a_clear_error():
    with pytest.raises(ValueError, match=r"contains 'A', which is not in the charset"):
        CTCTokenizer(CHARSET_36).encode(["Abc"])


def test_build_tokenizer_matches_head_and_class_count():
    for prediction, cls in (("CTC", CTCTokenizer), ("Attn", AttnTokenizer)):
        config = ModelConfig(prediction=prediction, sensitive=True)
        tokenizer = build_tokenizer(config)
        assert isinstance(tokenizer, cls) and tokenizer.num_class == config.num_class
