"""Decoding beyond greedy: CTC prefix beam search, attention beam search, and constraints on what may be read.

Constraints, usable alone or together, are compiled into one automaton over the model's charset (``constraints``):

- ``allowlist`` / ``blocklist``: symbols that may (may not) appear;
- ``lexicon``: a word list, as a trie: the output is one of the words;
- ``pattern``: a regular expression the whole output must match, as a DFA built by ``interegular`` (the
  regex-to-automaton library behind ``outlines`` and ``lm-format-enforcer``; it supports the usual syntax, not
  back-references or look-arounds, which an automaton cannot express).

Beam search keeps at most ``beam_width`` hypotheses per image and only lets a hypothesis grow by a symbol the
automaton allows from its state; a hypothesis may end only in an accepting state. When no hypothesis in the beam can
end (a lexicon whose words the model does not see, say), the result abstains with an empty text and confidence 0.

Confidences keep the meaning of the greedy ones, so that a threshold or a calibration carries over:

- CTC: the probability of the best alignment of the decoded text (for greedy decoding, the product of the
  per-frame maxima, as DTRB computes it);
- attention: the product of the probabilities of the emitted symbols before ``[s]`` (0.0 for an empty text).

Probabilities are the model's own (softmax of the logits divided by the model's ``temperature``), never
renormalised over the allowed symbols: a constrained reading that the model finds unlikely keeps a low confidence.
``beam_width=1`` without constraints is the greedy decoding of ``tokenizer.decode_with_confidence``, bit for bit.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

# Constraint and read_lexicon are imported from here too, as before constraints.py held them.
from .constraints import Constraint, build_constraint, read_lexicon  # noqa: F401
from .tokenizer import BLANK_ID, GO_ID, StrhubTokenizer

if TYPE_CHECKING:
    from .stages.prediction import Attention
    from .tokenizer import Tokenizer

NEG_INF = float("-inf")


class _TextConfidence(NamedTuple):
    text: str
    confidence: float


class Recognition(_TextConfidence):
    """One recognised word: ``text``, ``confidence``, and ``abstained``: whether the reading abstained (its
    confidence is below ``min_confidence``, or no reading satisfies the constraints).

    It unpacks as the pair ``text, confidence`` (as before ``abstained`` existed); ``abstained`` is an attribute.
    """

    abstained: bool

    def __new__(cls, text: str, confidence: float, abstained: bool = False) -> Recognition:
        self = super().__new__(cls, text, confidence)
        self.abstained = bool(abstained)
        return self

    def __getnewargs__(self) -> tuple[str, float, bool]:  # pickling keeps abstained
        return (self.text, self.confidence, self.abstained)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Recognition):
            return tuple(self) == tuple(other) and self.abstained == other.abstained
        return tuple.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash((self.text, self.confidence, self.abstained))

    def __repr__(self) -> str:
        return f"Recognition(text={self.text!r}, confidence={self.confidence!r}, abstained={self.abstained!r})"


@dataclass(frozen=True)
class DecodingOptions:
    """How to turn a model's outputs into text.

    Args:
        beam_width: hypotheses kept per image; 1 is greedy decoding (with constraints: greedy over what they allow).
        allowlist: the only symbols the output may contain.
        blocklist: symbols the output may not contain.
        lexicon: the words the output must be one of (trie-constrained beam search).
        pattern: a regular expression the whole output must match.
        min_confidence: below this confidence the result abstains (its text is kept, ``abstained`` is set).
    """

    beam_width: int = 1
    allowlist: str | None = None
    blocklist: str | None = None
    lexicon: tuple[str, ...] | None = None
    pattern: str | None = None
    min_confidence: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.beam_width, bool) or not isinstance(self.beam_width, int) or self.beam_width < 1:
            raise ValueError(f"beam_width must be an integer of at least 1, got {self.beam_width!r}.")
        if self.lexicon is not None:
            if isinstance(self.lexicon, str):
                raise ValueError("lexicon must be a list of words, not one string (use read_lexicon for a file).")
            object.__setattr__(self, "lexicon", tuple(dict.fromkeys(self.lexicon)))
        if self.min_confidence is not None and not 0.0 <= self.min_confidence <= 1.0:
            raise ValueError(f"min_confidence must be within [0, 1], got {self.min_confidence}.")

    @property
    def constrained(self) -> bool:
        return any(v is not None for v in (self.allowlist, self.blocklist, self.lexicon, self.pattern))

    @property
    def is_greedy(self) -> bool:
        """Plain greedy decoding: the fast path, identical to what ``decode_with_confidence`` returns."""
        return self.beam_width == 1 and not self.constrained

    def to_json(self, words: bool = True) -> dict[str, Any]:
        """A JSON-ready description; the lexicon as its words, or with ``words=False`` as ``lexicon_size``."""
        values = dataclasses.asdict(self)
        lexicon = values.pop("lexicon")
        if words:
            values["lexicon"] = list(lexicon) if lexicon is not None else None
        else:
            values["lexicon_size"] = len(lexicon) if lexicon is not None else None
        return values


# ---- decoders -------------------------------------------------------------------------------------------------------


class Decoder:
    """Decodes a model's outputs under ``DecodingOptions``; built once per option set and reused across batches.

    Args:
        tokenizer: the model's tokenizer (CTC, attention, or strhub's for PARSeq and ViTSTR).
        options: the decoding options.
        max_length: the longest text allowed (the model's ``batch_max_length``).
        temperature: logits are divided by it before the softmax (the model's calibrated ``temperature``).
        prediction: the model's head (``config.prediction``); ``"ViTSTR"`` lets ``decode_logits`` search its
            logits, whose slots are independent.
    """

    def __init__(self, tokenizer: Tokenizer, options: DecodingOptions, max_length: int,
                 temperature: float = 1.0, prediction: str | None = None) -> None:  # fmt: skip
        self.tokenizer = tokenizer
        self.options = options
        self.temperature = temperature
        self.constraint = build_constraint(tokenizer.character, options, max_length)
        self.offset = len(tokenizer.special_tokens)  # class id = charset position + offset
        self.is_ctc = tokenizer.special_tokens == ("[CTCblank]",)
        self.is_strhub = isinstance(tokenizer, StrhubTokenizer)
        self.slot_wise = prediction == "ViTSTR"
        self.eos_id = tokenizer.end_id

    def decode_logits(self, logits: torch.Tensor) -> list[Recognition]:
        """Logits [B, T, C]: CTC's or ViTSTR's, searched as options say, or the greedy run of a decoder that feeds
        its output back (attention, PARSeq: greedy options only, their search needs ``decode``)."""
        if self.options.is_greedy:
            scaled = logits if self.temperature == 1.0 else logits / self.temperature
            return self._abstain([Recognition(*r) for r in self.tokenizer.decode_with_confidence(scaled)])
        if self.slot_wise:  # ViTSTR: no step depends on another
            return self._abstain(self._slot_beam(logits))
        if not self.is_ctc:
            raise ValueError("Beam search and constraints of attention and PARSeq decode from encoder features: use "
                             "decode().")  # fmt: skip
        log_probs = (logits.detach().float() / self.temperature).log_softmax(2).cpu().numpy()
        return self._abstain([self._ctc_beam(row) for row in log_probs])

    def decode(self, head: torch.nn.Module, features: torch.Tensor) -> list[Recognition]:
        """Decode from encoder features [B, T, F] with the prediction head ``head``."""
        if self.is_ctc:
            return self.decode_logits(head(features))
        if self.options.is_greedy:
            return self.decode_logits(head(features, None, stop_at_eos=True))
        if hasattr(head, "step_logits"):  # PARSeq
            return self._abstain(self._parseq_beam(head, features))
        if not getattr(head, "teacher_forced", True):  # ViTSTR
            return self._abstain(self._slot_beam(head(features)))
        return self._abstain(self._attention_beam(head, features))

    def _abstain(self, results: list[Recognition]) -> list[Recognition]:
        threshold = self.options.min_confidence
        if threshold is None:
            return results
        return [Recognition(r.text, r.confidence, r.abstained or r.confidence < threshold) for r in results]

    # -- CTC --

    def _ctc_beam(self, log_probs: np.ndarray) -> Recognition:
        """CTC prefix beam search over log-probabilities [T, C] (blank = 0), constrained by the automaton."""
        width, constraint = self.options.beam_width, self.constraint
        start = constraint.start if constraint is not None else None
        # prefix -> [log p(ending in a blank), log p(ending in its last symbol), automaton state]
        beams: dict[tuple[int, ...], list] = {(): [0.0, NEG_INF, start]}
        for frame in log_probs:
            blank = frame[BLANK_ID]
            grown: dict[tuple[int, ...], list] = {}
            symbol_order = np.argsort(-frame[1:])  # charset positions, most likely first

            def entry(prefix: tuple[int, ...], state) -> list:
                found = grown.get(prefix)
                if found is None:
                    found = grown[prefix] = [NEG_INF, NEG_INF, state]
                return found

            for prefix, (p_blank, p_symbol, state) in beams.items():
                total = np.logaddexp(p_blank, p_symbol)
                here = entry(prefix, state)
                here[0] = np.logaddexp(here[0], total + blank)
                if prefix:
                    last = prefix[-1]
                    here[1] = np.logaddexp(here[1], p_symbol + frame[last + 1])  # the last symbol repeated
                moves = constraint.moves(state) if constraint is not None else None
                taken = 0
                for position in symbol_order:
                    if taken == width:
                        break
                    position = int(position)
                    if moves is not None and position not in moves:
                        continue
                    taken += 1
                    extended = entry(prefix + (position,), moves[position] if moves is not None else None)
                    source = p_blank if prefix and prefix[-1] == position else total  # a repeat needs a blank between
                    extended[1] = np.logaddexp(extended[1], source + frame[position + 1])
            beams = dict(sorted(grown.items(), key=lambda item: -np.logaddexp(item[1][0], item[1][1]))[:width])
        ending = [(prefix, value) for prefix, value in beams.items()
                  if constraint is None or constraint.accepts(value[2])]  # fmt: skip
        if not ending:
            return Recognition("", 0.0, True)
        prefix, _ = max(ending, key=lambda item: np.logaddexp(item[1][0], item[1][1]))
        text = "".join(self.tokenizer.character[p] for p in prefix)
        return Recognition(text, math.exp(ctc_best_path_log_prob(log_probs, [p + 1 for p in prefix])))

    # -- attention, PARSeq, ViTSTR: a beam over steps, each step's distribution given the beam's text so far --

    @torch.no_grad()
    def _attention_beam(self, head: Attention, features: torch.Tensor) -> list[Recognition]:
        """Beam search through DTRB's attention decoder, every image's beams in one batch [B * K]; the hidden
        state follows each beam."""
        width, batch = self.options.beam_width, features.size(0)
        batch_H = features.repeat_interleave(width, dim=0)
        batch_H_proj = head.attention_cell.i2h(batch_H)
        zeros = batch_H.new_zeros(batch * width, head.hidden_size)
        state = {"hidden": (zeros, zeros.clone())}
        first_input = torch.full((batch * width,), GO_ID, dtype=torch.long, device=features.device)

        def step_logits(rows: torch.Tensor | None, tokens: torch.Tensor | None) -> torch.Tensor:
            hidden = state["hidden"]
            if rows is not None:
                hidden = (hidden[0][rows], hidden[1][rows])
            onehots = F.one_hot(first_input if tokens is None else tokens, head.num_classes).to(batch_H.dtype)
            hidden, _ = head.attention_cell(hidden, batch_H, onehots, batch_H_proj)
            state["hidden"] = hidden
            return head.generator(hidden[0])

        return self._beam_search(batch, head.num_classes, head.batch_max_length + 1, step_logits, features.device)

    @torch.no_grad()
    def _parseq_beam(self, head: torch.nn.Module, memory: torch.Tensor) -> list[Recognition]:
        """Beam search through PARSeq's autoregressive decoder (whatever ``decode_ar`` says, and without
        refinement, which could undo a constraint): each step reads the beam's text so far."""
        width, batch = self.options.beam_width, memory.size(0)
        memory = memory.repeat_interleave(width, dim=0)
        state = {"prefix": memory.new_zeros((batch * width, 0), dtype=torch.long)}

        def step_logits(rows: torch.Tensor | None, tokens: torch.Tensor | None) -> torch.Tensor:
            prefix = state["prefix"]
            if rows is not None:
                prefix = torch.cat([prefix[rows], tokens[:, None]], dim=1)
            state["prefix"] = prefix
            return head.step_logits(memory, prefix)

        return self._beam_search(batch, head.num_classes, head.batch_max_length + 1, step_logits, memory.device)

    @torch.no_grad()
    def _slot_beam(self, logits: torch.Tensor) -> list[Recognition]:
        """Beam search over ViTSTR's logits [B, T, C]: its slots are read at once, so each step's distribution is
        the slot's own, whatever came before."""
        batch, steps, num_classes = logits.shape
        width = self.options.beam_width

        def step_logits(rows: torch.Tensor | None, tokens: torch.Tensor | None) -> torch.Tensor:
            step = state["step"]
            state["step"] += 1
            return logits[:, step].repeat_interleave(width, dim=0)

        state = {"step": 0}
        return self._beam_search(batch, num_classes, steps, step_logits, logits.device)

    def _beam_search(self, batch: int, num_classes: int, num_steps: int, step_logits,
                     device: torch.device) -> list[Recognition]:  # fmt: skip
        """The beam search the step-wise heads share, under the constraint automaton.

        ``step_logits(rows, tokens)`` gives the next step's logits [B * K, C] for every beam, after moving the
        decoder's state to follow the beams kept: ``rows`` [B * K] is the beam each new beam continues and
        ``tokens`` [B * K] the class it appended (both ``None`` at the first step). A finished beam is carried as
        it is. The confidence is the product of the probabilities of the emitted symbols, and for strhub's heads
        of their ``[E]`` too, as their greedy confidence is (DTRB's attention: 0.0 for an empty text).
        """
        width, constraint = self.options.beam_width, self.constraint
        eos, counts_end = self.eos_id, self.is_strhub
        scores = np.full((batch, width), NEG_INF)
        scores[:, 0] = 0.0  # all beams start identical: keep one
        confidences = np.zeros((batch, width))  # log-probability of the emitted symbols
        finished = np.zeros((batch, width), dtype=bool)
        states = [[constraint.start if constraint is not None else None] * width for _ in range(batch)]
        texts: list[list[list[int]]] = [[[] for _ in range(width)] for _ in range(batch)]
        mask_cache: dict[Any, np.ndarray] = {}

        def allowed(state) -> np.ndarray:
            mask = mask_cache.get(state)
            if mask is None:
                mask = np.zeros(num_classes, dtype=bool)
                if constraint is None:
                    mask[self.offset :] = True
                    mask[eos] = True
                else:
                    mask[[p + self.offset for p in constraint.moves(state)]] = True
                    mask[eos] = constraint.accepts(state)
                mask_cache[state] = mask
            return mask

        rows = tokens = None
        for _ in range(num_steps):
            logits = step_logits(rows, tokens).float() / self.temperature
            log_probs = logits.log_softmax(1).cpu().numpy().reshape(batch, width, num_classes)
            candidates = np.full((batch, width, num_classes), NEG_INF)
            for b in range(batch):
                for k in range(width):
                    if scores[b, k] == NEG_INF:
                        continue
                    if finished[b, k]:
                        candidates[b, k, eos] = scores[b, k]  # a finished beam stays as it is
                        continue
                    mask = allowed(states[b][k])
                    candidates[b, k, mask] = scores[b, k] + log_probs[b, k, mask]
            flat = candidates.reshape(batch, -1)
            order = np.argsort(-flat, axis=1, kind="stable")[:, :width]
            new_scores = np.take_along_axis(flat, order, axis=1)
            source_beam, token = order // num_classes, order % num_classes
            new_states, new_texts = [], []
            new_conf = np.zeros_like(confidences)
            new_finished = np.zeros_like(finished)
            for b in range(batch):
                row_states, row_texts = [], []
                for k in range(width):
                    src, tok = int(source_beam[b, k]), int(token[b, k])
                    state, text = states[b][src], texts[b][src]
                    new_conf[b, k] = confidences[b, src]
                    if finished[b, src]:
                        new_finished[b, k] = True
                    elif tok == eos:
                        new_finished[b, k] = True
                        if counts_end:
                            new_conf[b, k] += log_probs[b, src, tok]
                    elif new_scores[b, k] != NEG_INF:
                        position = tok - self.offset
                        state = constraint.moves(state)[position] if constraint is not None else None
                        text = text + [position]
                        new_conf[b, k] += log_probs[b, src, tok]
                    row_states.append(state)
                    row_texts.append(text)
                new_states.append(row_states)
                new_texts.append(row_texts)
            scores, states, texts, confidences, finished = new_scores, new_states, new_texts, new_conf, new_finished
            rows = torch.as_tensor((np.arange(batch)[:, None] * width + source_beam).reshape(-1), device=device)
            tokens = torch.as_tensor(token.reshape(-1), device=device)
            if bool(np.all(finished | (scores == NEG_INF))):
                break
        # out of steps without an end: the text stands as it is (as in greedy decoding) where the constraints accept it
        for b in range(batch):
            for k in range(width):
                if not finished[b, k] and (constraint is None or constraint.accepts(states[b][k])):
                    finished[b, k] = True
        results = []
        for b in range(batch):
            ending = np.where(finished[b], scores[b], NEG_INF)
            best = int(np.argmax(ending))
            if ending[best] == NEG_INF:
                results.append(Recognition("", 0.0, True))
                continue
            text = "".join(self.tokenizer.character[p] for p in texts[b][best])
            confidence = float(np.exp(confidences[b, best])) if text or counts_end else 0.0
            results.append(Recognition(text, confidence))
        return results


def ctc_best_path_log_prob(log_probs: np.ndarray, ids: list[int]) -> float:
    """Log-probability of the most likely CTC alignment of ``ids`` (class ids, no blanks) under log-probabilities
    [T, C] (blank = 0): the Viterbi pass over the blank-interleaved label."""
    extended = [BLANK_ID]
    for i in ids:
        extended += [i, BLANK_ID]
    extended = np.array(extended)
    states = len(extended)
    best = np.full(states, NEG_INF)
    best[0] = log_probs[0, BLANK_ID]
    if states > 1:
        best[1] = log_probs[0, extended[1]]
    # a move over two states (skipping a blank) is allowed between different symbols
    skip = np.zeros(states, dtype=bool)
    skip[2:] = (extended[2:] != BLANK_ID) & (extended[2:] != extended[:-2])
    for frame in log_probs[1:]:
        stay = best
        step = np.concatenate([[NEG_INF], best[:-1]])
        jump = np.where(skip, np.concatenate([[NEG_INF, NEG_INF], best[:-2]]), NEG_INF)
        best = np.maximum(np.maximum(stay, step), jump) + frame[extended]
    return float(np.max(best[-2:])) if states > 1 else float(best[-1])
