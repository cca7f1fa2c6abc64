"""Beam search and constrained decoding (``text_recognition.decoding``), for CTC and attention."""

from __future__ import annotations

import itertools
import math
import re

import numpy as np
import pytest
import torch

from text_recognition import ModelConfig, TextRecognitionModel
from text_recognition.decoding import (
    Decoder,
    DecodingOptions,
    Recognition,
    ctc_best_path_log_prob,
    read_lexicon,
)
from text_recognition.tokenizer import AttnTokenizer, CTCTokenizer

LEXICON = ("hello", "world", "help", "12ab", "a", "yellow")


def small_model(prediction: str, seed: int = 0) -> TextRecognitionModel:
    torch.manual_seed(seed)
    model = TextRecognitionModel(ModelConfig("None", "VGG", "BiLSTM", prediction, output_channel=32,
                                             hidden_size=32, batch_max_length=10))  # fmt: skip
    model.init_weights()
    return model.eval()


@pytest.fixture(scope="module", params=["CTC", "Attn"])
def model_and_images(request):
    model = small_model(request.param)
    images = torch.rand(8, 1, 32, 100, generator=torch.Generator().manual_seed(1)) * 2 - 1
    return model, images


def test_beam_width_1_is_greedy_bit_for_bit(model_and_images):
    model, images = model_and_images
    with torch.inference_mode():
        logits = model.Prediction(model.encode(images), None, stop_at_eos=True) if model.config.prediction == "Attn" \
            else model(images)
    greedy = model.tokenizer.decode_with_confidence(logits)
    decoded = model.recognize_batch(images, model.decoder(DecodingOptions(beam_width=1)))
    assert [(r.text, r.confidence) for r in decoded] == greedy
    assert not any(r.abstained for r in decoded)


def test_lexicon_decoding_only_returns_lexicon_words(model_and_images):
    model, images = model_and_images
    for width in (1, 3):
        decoded = model.recognize_batch(images, model.decoder(DecodingOptions(beam_width=width, lexicon=LEXICON)))
        assert all(r.text in LEXICON or (r.abstained and r.text == "") for r in decoded)
        assert any(r.text in LEXICON for r in decoded)


def test_pattern_and_allowlist_are_always_honoured(model_and_images):
    model, images = model_and_images
    options = [DecodingOptions(beam_width=3, pattern=r"[0-9]{2,4}"), DecodingOptions(allowlist="abc"),
               DecodingOptions(beam_width=2, allowlist="xyz0", pattern=r"x+y?0*"),
               DecodingOptions(beam_width=2, blocklist="abcdefghijklmnopqrstuvwxy")]  # fmt: skip
    for option in options:
        for r in model.recognize_batch(images, model.decoder(option)):
            if r.abstained and r.text == "":
                continue
            if option.pattern:
                assert re.fullmatch(option.pattern, r.text), (option, r)
            if option.allowlist:
                assert set(r.text) <= set(option.allowlist), (option, r)
            if option.blocklist:
                assert not set(r.text) & set(option.blocklist), (option, r)


def test_min_confidence_abstains_and_keeps_the_text(model_and_images):
    model, images = model_and_images
    plain = model.recognize_batch(images)
    threshold = sorted(r.confidence for r in plain)[len(plain) // 2]
    gated = model.recognize_batch(images, model.decoder(DecodingOptions(min_confidence=threshold)))
    assert [r.text for r in gated] == [r.text for r in plain]
    assert [r.abstained for r in gated] == [r.confidence < threshold for r in plain]


def test_recognition_still_unpacks_as_text_and_confidence():
    text, confidence = Recognition("abc", 0.5, True)
    assert (text, confidence) == ("abc", 0.5)
    assert Recognition("abc", 0.5, True) != Recognition("abc", 0.5)
    assert "abstained=True" in repr(Recognition("abc", 0.5, True))


# ---- CTC: beam search finds what greedy misses ------------------------------------------------------------------


def _ctc_logits(frames: list[list[float]]) -> torch.Tensor:
    return torch.tensor(frames).log()[None]  # [1, T, C]: log-probabilities are valid logits


def _prefix_probability(probs: np.ndarray, text_ids: tuple[int, ...]) -> float:
    """Sum over all alignments (brute force) of the probability that they collapse to ``text_ids``."""
    total = 0.0
    for path in itertools.product(range(probs.shape[1]), repeat=probs.shape[0]):
        collapsed = [c for i, c in enumerate(path) if c != 0 and (i == 0 or c != path[i - 1])]
        if tuple(collapsed) == text_ids:
            total += float(np.prod([probs[t, c] for t, c in enumerate(path)]))
    return total


def test_ctc_prefix_beam_search_finds_a_more_probable_text_than_greedy():
    # blank is the single most likely symbol of every frame, but "a" spread over two frames is more likely overall
    tokenizer = CTCTokenizer("ab")
    frames = [[0.5, 0.4, 0.1], [0.5, 0.4, 0.1]]
    logits = _ctc_logits(frames)
    [greedy] = Decoder(tokenizer, DecodingOptions(), 10).decode_logits(logits)
    [beam] = Decoder(tokenizer, DecodingOptions(beam_width=4), 10).decode_logits(logits)
    probs = np.array(frames)
    assert greedy.text == "" and beam.text == "a"
    assert _prefix_probability(probs, (1,)) > _prefix_probability(probs, ())  # 0.56 > 0.25
    # the confidence keeps its greedy meaning: the probability of the best alignment of the text
    assert beam.confidence == pytest.approx(0.5 * 0.4)


def test_ctc_beam_search_matches_exhaustive_search_on_random_frames():
    rng = np.random.default_rng(0)
    tokenizer = CTCTokenizer("ab")
    for _ in range(20):
        probs = rng.dirichlet(np.ones(3) * 0.7, size=4)
        [beam] = Decoder(tokenizer, DecodingOptions(beam_width=16), 10).decode_logits(_ctc_logits(probs.tolist()))
        texts = {tuple(c for i, c in enumerate(p) if c and (i == 0 or c != p[i - 1]))
                 for p in itertools.product(range(3), repeat=4)}  # fmt: skip
        best = max(texts, key=lambda t: _prefix_probability(probs, t))
        assert beam.text == "".join("ab"[c - 1] for c in best)


def test_ctc_best_path_probability_is_the_viterbi_alignment():
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(3), size=5)
    best = 0.0
    for path in itertools.product(range(3), repeat=5):
        collapsed = [c for i, c in enumerate(path) if c != 0 and (i == 0 or c != path[i - 1])]
        if collapsed == [1, 1]:
            best = max(best, float(np.prod([probs[t, c] for t, c in enumerate(path)])))
    assert math.exp(ctc_best_path_log_prob(np.log(probs), [1, 1])) == pytest.approx(best)


def test_ctc_lexicon_with_beam_picks_the_likely_word():
    tokenizer = CTCTokenizer("abc")
    # frames spell "ab" most likely, then "cb"
    frames = [[0.1, 0.5, 0.1, 0.3], [0.1, 0.1, 0.7, 0.1], [0.8, 0.05, 0.1, 0.05]]
    [word] = Decoder(tokenizer, DecodingOptions(beam_width=3, lexicon=("cb", "cc")), 10).decode_logits(
        _ctc_logits(frames))
    assert word.text == "cb" and 0 < word.confidence < 1


def test_lexicon_words_that_can_never_be_read_are_warned_and_left_out(caplog):
    tokenizer = CTCTokenizer("abc")
    with caplog.at_level("WARNING", logger="text_recognition.decoding"):
        decoder = Decoder(tokenizer, DecodingOptions(lexicon=("ab", "abd", "", "abcabcabcabc")), 10)
    trie = decoder.constraint._trie
    assert trie.words == ["ab"] and trie.skipped == ["abd", "", "abcabcabcabc"]
    assert "3 of the 4 lexicon words can never be read" in caplog.text and "'abd'" in caplog.text


# ---- attention: beam search finds what greedy misses -------------------------------------------------------------


class _ScriptedAttention(torch.nn.Module):
    """An attention head whose step outputs depend only on the previous token, as a table: a model made to make
    near-ties, where greedy's first pick leads nowhere good."""

    def __init__(self, table: dict[int, list[float]], num_classes: int, steps: int = 4) -> None:
        super().__init__()
        self.num_classes, self.hidden_size, self.batch_max_length = num_classes, num_classes, steps
        self.table = table
        head = self

        class Cell(torch.nn.Module):
            def i2h(self, batch_H):
                return batch_H

            def forward(self, hidden, batch_H, onehots, proj):
                previous = onehots.argmax(1)
                rows = torch.stack([torch.tensor(head.table[int(p)]).log() for p in previous])
                return (rows, rows), None

        self.attention_cell = Cell()
        self.generator = torch.nn.Identity()


def test_attention_beam_search_finds_a_more_probable_sequence_than_greedy():
    tokenizer = AttnTokenizer("xy")  # ids: [GO]=0, [s]=1, x=2, y=3
    table = {
        0: [1e-6, 0.1, 0.46, 0.44],  # after [GO]: x slightly ahead of y
        2: [1e-6, 0.34, 0.33, 0.33],  # after x: nothing is likely
        3: [1e-6, 0.98, 0.01, 0.01],  # after y: [s] almost surely
        1: [1e-6, 0.97, 0.01, 0.02],  # after [s] (finished beams keep stepping)
    }
    head = _ScriptedAttention(table, 4)
    features = torch.zeros(1, 3, 4)
    greedy = Decoder(tokenizer, DecodingOptions(beam_width=1, blocklist=""), 4).decode(head, features)[0]
    beam = Decoder(tokenizer, DecodingOptions(beam_width=3), 4).decode(head, features)[0]

    def sequence_probability(text: str) -> float:
        previous, p = 0, 1.0
        for c in text:
            token = tokenizer.char_to_id[c]
            p *= table[previous][token]
            previous = token
        return p * table[previous][1]

    assert greedy.text.startswith("x") and beam.text == "y"
    assert sequence_probability(beam.text) > sequence_probability(greedy.text)
    assert beam.confidence == pytest.approx(0.44, rel=1e-5)  # [s] excluded, as DTRB's confidence


def test_attention_lexicon_restricts_the_scripted_head():
    tokenizer = AttnTokenizer("xy")
    table = {0: [1e-6, 0.1, 0.46, 0.44], 2: [1e-6, 0.34, 0.33, 0.33], 3: [1e-6, 0.98, 0.01, 0.01],
             1: [1e-6, 0.97, 0.01, 0.02]}
    head = _ScriptedAttention(table, 4)
    [r] = Decoder(tokenizer, DecodingOptions(beam_width=2, lexicon=("xx", "yx")), 4).decode(head, torch.zeros(1, 3, 4))
    assert r.text in ("xx", "yx")


# ---- impossible constraints are clear errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (DecodingOptions(allowlist="abc€"), "outside the model's charset"),
        (DecodingOptions(blocklist="0123456789abcdefghijklmnopqrstuvwxyz"), "leave no symbol"),
        (DecodingOptions(lexicon=()), "lexicon is empty"),
        (DecodingOptions(lexicon=("ÄÖÜ", "€")), "No word of the lexicon"),
        (DecodingOptions(pattern="[A-Z]+"), "matches no string"),
        (DecodingOptions(pattern="(a"), "Cannot use the pattern"),
        (DecodingOptions(pattern=r"(a)\1"), "Cannot use the pattern"),
        (DecodingOptions(lexicon=("abc",), pattern=r"\d+"), "No word of the lexicon matches"),
        (DecodingOptions(allowlist="ab", pattern=r"c+"), "matches no string"),
    ],
)
def test_impossible_constraints_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        Decoder(CTCTokenizer("0123456789abcdefghijklmnopqrstuvwxyz"), options, 25)


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="beam_width"):
        DecodingOptions(beam_width=0)
    with pytest.raises(ValueError, match="min_confidence"):
        DecodingOptions(min_confidence=1.5)
    with pytest.raises(ValueError, match="not one string"):
        DecodingOptions(lexicon="hello")


def test_recognize_takes_the_options(tmp_path):
    from PIL import Image

    model = small_model("CTC")
    image = Image.new("L", (100, 32), 128)
    [r] = model.recognize(image, beam_width=3, allowlist="0123456789", min_confidence=0.999)
    assert set(r.text) <= set("0123456789") and r.abstained
    with pytest.raises(ValueError, match="outside the model's charset"):
        model.recognize(image, allowlist="A")


def test_read_lexicon(tmp_path):
    path = tmp_path / "words.txt"
    path.write_text("\ufeffhello\n\n  world \nhello\n", encoding="utf-8")
    assert read_lexicon(path) == ("hello", "world")
    path.write_text("\n \n", encoding="utf-8")
    with pytest.raises(ValueError, match="no words"):
        read_lexicon(path)
