# Follows clovaai/deep-text-recognition-benchmark (Copyright (c) 2019-present NAVER Corp., Apache-2.0); see NOTICE.
"""Charset <-> ids for each head: DTRB's label converters (CTC, attention) and strhub's (PARSeq, ViTSTR), with
confidences as each computes them.

CTC ids: ``[CTCblank]`` = 0, symbol ``j`` of the charset = ``j + 1``.
Attention ids: ``[GO]`` = 0 (also padding), ``[s]`` = 1 (end of sequence), symbol ``j`` = ``j + 2``.
PARSeq / ViTSTR ids (strhub's): ``[E]`` = 0, symbol ``j`` = ``j + 1``, ``[B]`` = N + 1, ``[P]`` = N + 2.

Two of DTRB's decoding bugs are fixed here (see the README):
- an attention prediction that never emits ``[s]`` keeps all its characters (DTRB's ``find`` returned -1 and
  dropped the last one);
- an empty attention prediction gets confidence 0.0, as DTRB's ``test.py`` reports it, instead of crashing as
  DTRB's ``demo.py`` did.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .config import ModelConfig

BLANK_ID = 0  # CTC: the blank
GO_ID = 0  # attention: [GO] starts decoding and pads targets
EOS_ID = 1  # attention: [s] ends a sequence
STRHUB_EOS_ID = 0  # PARSeq / ViTSTR: [E] ends a sequence ([B] = N + 1 and [P] = N + 2 follow the N symbols)


class _Tokenizer:
    """Shared charset bookkeeping and label checks."""

    #: ids that are not symbols (prepended to the charset)
    special_tokens: tuple[str, ...] = ()
    #: the id that ends a reading (attention's ``[s]``, strhub's ``[E]``); CTC has none
    end_id: int | None = None

    def __init__(self, character: str) -> None:
        self.character = character
        self.tokens = list(self.special_tokens) + list(character)
        offset = len(self.special_tokens)
        self.char_to_id = {char: i + offset for i, char in enumerate(character)}

    @property
    def num_class(self) -> int:
        return len(self.tokens)

    def _ids(self, text: str, batch_max_length: int) -> list[int]:
        if len(text) > batch_max_length:
            raise ValueError(
                f"Label {text!r} has {len(text)} characters, more than batch_max_length={batch_max_length}. "
                f"Filter such labels out (the default unless data_filtering_off) or raise batch_max_length."
            )
        try:
            return [self.char_to_id[char] for char in text]
        except KeyError as error:
            raise ValueError(
                f"Label {text!r} contains {error.args[0]!r}, which is not in the charset {self.character!r}. "
                f"Add it to --character, or let the data filtering drop or strip such labels."
            ) from None


class CTCTokenizer(_Tokenizer):
    """DTRB's ``CTCLabelConverter``."""

    special_tokens = ("[CTCblank]",)

    def encode(self, texts: list[str], batch_max_length: int = 25) -> tuple[torch.Tensor, torch.Tensor]:
        """Texts -> (ids [B, batch_max_length] zero-padded, lengths [B]). 'hello' -> [18, 15, 22, 22, 25, 0, ...]."""
        ids = torch.zeros(len(texts), batch_max_length, dtype=torch.long)
        lengths = torch.zeros(len(texts), dtype=torch.int32)
        for row, text in enumerate(texts):
            encoded = self._ids(text, batch_max_length)
            ids[row, : len(encoded)] = torch.tensor(encoded, dtype=torch.long)
            lengths[row] = len(encoded)
        return ids, lengths

    def encode_flat(self, texts: list[str], batch_max_length: int = 25) -> tuple[torch.Tensor, torch.Tensor]:
        """Texts -> (all ids concatenated [sum(lengths)], lengths [B]): DTRB's Baidu warp-ctc converter."""
        encoded = [self._ids(text, batch_max_length) for text in texts]
        flat = torch.tensor([i for ids in encoded for i in ids], dtype=torch.int32)
        return flat, torch.tensor([len(ids) for ids in encoded], dtype=torch.int32)

    def decode(self, ids: torch.Tensor) -> list[str]:
        """Greedy CTC collapse of ids [B, T]: drop repeats, then blanks. [0,8,8,0,5,12,12,0,12,15,15,0] -> '74bbe'."""
        ids = ids.detach().cpu()
        previous = torch.cat([torch.full_like(ids[:, :1], -1), ids[:, :-1]], dim=1)
        keep = (ids != BLANK_ID) & (ids != previous)
        return ["".join(self.tokens[i] for i in row[mask].tolist()) for row, mask in zip(ids, keep)]

    def decode_with_confidence(self, logits: torch.Tensor) -> list[tuple[str, float]]:
        """Greedy decoding of logits [B, T, C]; confidence = product of the per-frame max probability over all T
        frames (blanks and repeats included), as DTRB computes it."""
        max_prob, ids = logits.detach().float().softmax(2).max(2)
        confidences = max_prob.prod(dim=1).tolist()
        return list(zip(self.decode(ids), confidences))


class AttnTokenizer(_Tokenizer):
    """DTRB's ``AttnLabelConverter``."""

    special_tokens = ("[GO]", "[s]")
    end_id = EOS_ID

    def encode(self, texts: list[str], batch_max_length: int = 25) -> tuple[torch.Tensor, torch.Tensor]:
        """Texts -> (ids [B, batch_max_length + 2], lengths [B] = len + 1).

        Row layout: ``[GO]`` c1 ... cn ``[s]`` ``[GO]``...; 'hello' -> [0, 19, 16, 23, 23, 26, 1, 0, ...], length 6.
        The decoder input is ``ids[:, :-1]`` and the loss target ``ids[:, 1:]``.
        """
        ids = torch.full((len(texts), batch_max_length + 2), GO_ID, dtype=torch.long)
        lengths = torch.zeros(len(texts), dtype=torch.int32)
        for row, text in enumerate(texts):
            encoded = self._ids(text, batch_max_length) + [EOS_ID]
            ids[row, 1 : 1 + len(encoded)] = torch.tensor(encoded, dtype=torch.long)
            lengths[row] = len(encoded)
        return ids, lengths

    def _cut(self, row: list[int]) -> int:
        """Number of steps before the first ``[s]``; all of them when there is none (DTRB dropped the last)."""
        return row.index(EOS_ID) if EOS_ID in row else len(row)

    def decode(self, ids: torch.Tensor) -> list[str]:
        """ids [B, steps] -> texts cut before the first ``[s]``. A stray ``[GO]`` before it produces nothing."""
        texts = []
        for row in ids.detach().cpu().tolist():
            texts.append("".join(self.tokens[i] for i in row[: self._cut(row)] if i != GO_ID))
        return texts

    def decode_with_confidence(self, logits: torch.Tensor) -> list[tuple[str, float]]:
        """Greedy decoding of logits [B, steps, C]; confidence = product of the max probabilities of the steps
        before the first ``[s]`` (its own probability excluded), 0.0 for an empty prediction, as DTRB's test.py."""
        max_prob, ids = logits.detach().float().softmax(2).max(2)
        texts = self.decode(ids)
        results = []
        for text, row, probs in zip(texts, ids.tolist(), max_prob):
            cut = self._cut(row)
            results.append((text, float(probs[:cut].prod()) if cut else 0.0))
        return results


class StrhubTokenizer(_Tokenizer):
    """strhub's ``Tokenizer`` (PARSeq, ViTSTR): ``[E]`` = 0, symbol ``j`` = ``j + 1``, then ``[B]`` = N + 1 and
    ``[P]`` = N + 2, which the heads never predict (``tokens`` and ``num_class`` are the N + 1 predicted ids)."""

    special_tokens = ("[E]",)
    end_id = STRHUB_EOS_ID

    def __init__(self, character: str) -> None:
        super().__init__(character)
        self.bos_id = len(character) + 1
        self.pad_id = len(character) + 2

    def encode(self, texts: list[str], batch_max_length: int = 25) -> tuple[torch.Tensor, torch.Tensor]:
        """Texts -> (ids [B, batch_max_length + 2], lengths [B] = len + 1).

        Row layout: ``[B]`` c1 ... cn ``[E]`` ``[P]``...; with the 36 symbols 'ab' -> [37, 11, 12, 0, 38, ...].
        """
        ids = torch.full((len(texts), batch_max_length + 2), self.pad_id, dtype=torch.long)
        lengths = torch.zeros(len(texts), dtype=torch.int32)
        for row, text in enumerate(texts):
            encoded = [self.bos_id] + self._ids(text, batch_max_length) + [STRHUB_EOS_ID]
            ids[row, : len(encoded)] = torch.tensor(encoded, dtype=torch.long)
            lengths[row] = len(encoded) - 1
        return ids, lengths

    def decode(self, ids: torch.Tensor) -> list[str]:
        """ids [B, steps] -> texts cut before the first ``[E]`` (all steps when there is none)."""
        texts = []
        for row in ids.detach().cpu().tolist():
            cut = row.index(STRHUB_EOS_ID) if STRHUB_EOS_ID in row else len(row)
            texts.append("".join(self.tokens[i] for i in row[:cut]))
        return texts

    def decode_with_confidence(self, logits: torch.Tensor) -> list[tuple[str, float]]:
        """Greedy decoding of logits [B, steps, C]; confidence = product of the max probabilities up to and
        including the first ``[E]`` (all steps when there is none), as strhub computes it: an empty reading has
        the probability of its ``[E]``."""
        max_prob, ids = logits.detach().float().softmax(2).max(2)
        results = []
        for text, row, probs in zip(self.decode(ids), ids.tolist(), max_prob):
            end = row.index(STRHUB_EOS_ID) + 1 if STRHUB_EOS_ID in row else len(row)
            results.append((text, float(probs[:end].prod())))
        return results


Tokenizer = CTCTokenizer | AttnTokenizer | StrhubTokenizer


def build_tokenizer(config: ModelConfig) -> Tokenizer:
    """The tokenizer matching ``config.prediction`` and ``config.character``."""
    if config.prediction == "CTC":
        return CTCTokenizer(config.character)
    if config.prediction in ("PARSeq", "ViTSTR"):
        return StrhubTokenizer(config.character)
    return AttnTokenizer(config.character)
