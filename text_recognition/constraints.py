"""Constraints on what may be read, compiled into one automaton over the model's charset (``decoding`` searches
under it):

- ``allowlist`` / ``blocklist``: symbols that may (may not) appear;
- ``lexicon``: a word list, as a trie: the output is one of the words;
- ``pattern``: a regular expression the whole output must match, as a DFA built by ``interegular`` (the
  regex-to-automaton library behind ``outlines`` and ``lm-format-enforcer``; it supports the usual syntax, not
  back-references or look-arounds, which an automaton cannot express).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .decoding import DecodingOptions

# The lexicon warnings keep the logger they had when this code lived in ``decoding``.
logger = logging.getLogger("text_recognition.decoding")


def read_lexicon(path: str | os.PathLike) -> tuple[str, ...]:
    """Words of a lexicon file: one per line, UTF-8 (a BOM is ignored), blank lines skipped, surrounding
    whitespace stripped."""
    with open(path, encoding="utf-8-sig") as file:
        words = tuple(dict.fromkeys(line.strip() for line in file if line.strip()))
    if not words:
        raise ValueError(f"The lexicon {os.fspath(path)!r} has no words: put one word per line.")
    return words


# ---- constraints as an automaton over the charset -----------------------------------------------------------------


class Constraint:
    """The product of the symbol filter, the lexicon trie and the pattern DFA, over the charset's symbols.

    States are hashable tuples; ``moves(state)`` maps each allowed next symbol (its charset position) to the next
    state, and ``accepts(state)`` says whether the text may end there.

    Raises:
        ValueError: an allowlist or blocklist symbol outside the charset, an empty lexicon (or one with no word the
            charset, the symbol filter, ``max_length`` and the pattern allow), an invalid or unsupported pattern, or a
            pattern no string of the allowed symbols of at most ``max_length`` characters can match.
    """

    def __init__(self, character: str, options: DecodingOptions, max_length: int) -> None:
        self.character = character
        self.max_length = max_length
        allowed = set(character)
        for name in ("allowlist", "blocklist"):
            symbols = getattr(options, name)
            if symbols is None:
                continue
            outside = sorted(set(symbols) - set(character))
            if outside:
                raise ValueError(
                    f"The {name} has symbols outside the model's charset: {''.join(outside)!r}. The model can only "
                    f"read {character!r}; remove them from the {name}."
                )
            allowed = allowed & set(symbols) if name == "allowlist" else allowed - set(symbols)
        if not allowed:
            raise ValueError("The allowlist and blocklist leave no symbol to read: nothing can be recognised.")
        self.symbol_allowed = np.array([c in allowed for c in character], dtype=bool)
        self._trie = _Trie.build(options.lexicon, allowed, max_length) if options.lexicon is not None else None
        self._dfa = _Dfa(options.pattern, character) if options.pattern is not None else None
        self._cache: dict[tuple, dict[int, tuple]] = {}
        self._position = {c: i for i, c in enumerate(character)}
        self.start = (0 if self._trie else None, self._dfa.initial if self._dfa else None)
        if self._dfa is not None:
            if self._trie is not None:
                if not any(self._dfa.matches(word) for word in self._trie.words):
                    raise ValueError(f"No word of the lexicon matches the pattern {options.pattern!r}.")
            elif not self._can_accept(self.start):
                raise ValueError(
                    f"The pattern {options.pattern!r} matches no string of the model's charset "
                    f"({''.join(c for c in character if c in allowed)!r}) of at most {max_length} characters."
                )

    def moves(self, state: tuple) -> dict[int, tuple]:
        """Allowed next symbols (charset positions) -> next states."""
        cached = self._cache.get(state)
        if cached is not None:
            return cached
        node, dfa_state = state
        moves: dict[int, tuple] = {}
        if self._trie is not None:
            candidates = self._trie.children[node].items()
        else:
            candidates = ((c, None) for c in self.character)
        for char, child in candidates:
            position = self._position[char]
            if not self.symbol_allowed[position]:
                continue
            next_dfa = None
            if self._dfa is not None:
                next_dfa = self._dfa.step(dfa_state, char)
                if next_dfa is None or not self._dfa.live[next_dfa]:
                    continue
            moves[position] = (child, next_dfa)
        self._cache[state] = moves
        return moves

    def accepts(self, state: tuple) -> bool:
        node, dfa_state = state
        if self._trie is not None and not self._trie.is_word[node]:
            return False
        return self._dfa is None or dfa_state in self._dfa.finals

    def allows(self, text: str) -> bool:
        """Whether ``text`` satisfies every constraint."""
        state = self.start
        for char in text:
            position = self.character.find(char)
            if position < 0 or position not in self.moves(state):
                return False
            state = self.moves(state)[position]
        return self.accepts(state)

    def _can_accept(self, start: tuple) -> bool:
        frontier, seen = [start], {start}
        for _ in range(self.max_length + 1):
            if any(self.accepts(s) for s in frontier):
                return True
            frontier = [n for s in frontier for n in self.moves(s).values() if n not in seen]
            seen.update(frontier)
            if not frontier:
                return False
        return False


class _Trie:
    """A lexicon as a trie: node 0 is the root; ``children[node]`` maps a symbol to a child node."""

    def __init__(self) -> None:
        self.children: list[dict[str, int]] = [{}]
        self.is_word: list[bool] = [False]
        self.words: list[str] = []
        self.skipped: list[str] = []

    @classmethod
    def build(cls, words: Iterable[str], allowed: set[str], max_length: int) -> _Trie:
        trie = cls()
        words = list(words)
        if not words:
            raise ValueError("The lexicon is empty: give at least one word.")
        skipped = []
        for word in words:
            if not word or len(word) > max_length or any(c not in allowed for c in word):
                skipped.append(word)
                continue
            node = 0
            for char in word:
                child = trie.children[node].get(char)
                if child is None:
                    child = len(trie.children)
                    trie.children[node][char] = child
                    trie.children.append({})
                    trie.is_word.append(False)
                node = child
            trie.is_word[node] = True
            trie.words.append(word)
        if not trie.words:
            raise ValueError(
                f"No word of the lexicon ({len(words)} words, e.g. {words[:3]}) can be read: every word is empty, "
                f"longer than {max_length} characters or has symbols outside the allowed charset."
            )
        trie.skipped = skipped
        if skipped:  # never silent: these words can never be read
            logger.warning(
                "%d of the %d lexicon words can never be read and are left out (empty, longer than %d characters, or "
                "with symbols outside the allowed charset), e.g. %s.", len(skipped), len(words), max_length,
                ", ".join(repr(word) for word in skipped[:5]),
            )  # fmt: skip
        return trie


class _Dfa:
    """A pattern as a DFA over characters (``interegular``), pruned to the states that can still reach a final one."""

    def __init__(self, pattern: str, character: str) -> None:
        import interegular

        try:
            re.compile(pattern)
        except re.error as error:  # Python's message says what and where ("unterminated character set at position 0")
            raise ValueError(f"Cannot use the pattern {pattern!r}: {error}.") from None
        try:
            fsm = interegular.parse_pattern(pattern).to_fsm()
        except Exception as error:  # interegular's own types, often without a message, for what a DFA cannot hold
            reason = str(error) or type(error).__name__
            raise ValueError(
                f"Cannot use the pattern {pattern!r} (unsupported: {reason}): write a regular expression without "
                f"back-references or anchors (^ and $: the whole output must match anyway)."
            ) from None
        self.initial = fsm.initial
        self.finals = set(fsm.finals)
        self._map = fsm.map
        self._alphabet = fsm.alphabet
        self._classes = {c: self._alphabet[c] for c in character}
        # live states: those from which a final state is reachable (through any symbol class)
        reverse: dict[int, set[int]] = {}
        for state, transitions in self._map.items():
            for target in transitions.values():
                reverse.setdefault(target, set()).add(state)
        live, frontier = set(self.finals), list(self.finals)
        while frontier:
            for source in reverse.get(frontier.pop(), ()):
                if source not in live:
                    live.add(source)
                    frontier.append(source)
        self.live = {state: state in live for state in self._map}

    def step(self, state: int, char: str) -> int | None:
        symbol = self._classes.get(char)
        if symbol is None:
            symbol = self._alphabet[char]
        return self._map.get(state, {}).get(symbol)

    def matches(self, text: str) -> bool:
        state = self.initial
        for char in text:
            state = self.step(state, char)
            if state is None:
                return False
        return state in self.finals


def build_constraint(character: str, options: DecodingOptions, max_length: int) -> Constraint | None:
    if not options.constrained:
        return None
    return Constraint(character, options, max_length)
