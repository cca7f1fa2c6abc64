"""What the realistic engine writes: words drawn by real frequency (``wordfreq``, many languages, or a word list),
mixed with numbers, prices, codes and random strings, in lower, Capitalised and UPPER case.

The rendered text and the label can differ only in case: a letter outside the charset whose lower-case form is in
it (``"A"`` for the 36-symbol charset) is drawn as it is and labelled in lower case, as DTRB's case-insensitive
models read it.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

TEXT_KINDS = ("word", "number", "price", "code", "random")
CASE_KINDS = ("as_is", "capitalized", "upper", "lower")
_CURRENCIES = "$€£¥₹"
_DIGITS = "0123456789"
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
# Code shapes: L a capital letter, D a digit; "-" and "." as they are.
_CODE_SHAPES = ("LD", "LDD", "LLD", "LDDD", "LLDD", "DDL", "DL", "LL-DDD", "LLL-DDDD", "DDD-DDD", "LDLD", "LLDDLL",
                "DLLLDD", "LDD-D", "LL.DD", "DDDDL", "LLLDDD", "DD-LL")  # fmt: skip


def wordfreq_lexicon(language: str, size: int) -> tuple[list[str], np.ndarray]:
    """The ``size`` most frequent words of ``language`` without digits, and their frequencies (``wordfreq``)."""
    try:
        import wordfreq  # noqa: F401 - only to tell a missing extra from a bad language
    except ImportError:
        raise ValueError(
            "languages: wordfreq is not installed; pip install 'text_recognition[synth]', or pass words=[...]."
        ) from None
    return _wordfreq_lexicon(language, size)


@functools.lru_cache(maxsize=16)
def _wordfreq_lexicon(language: str, size: int) -> tuple[list[str], np.ndarray]:
    import wordfreq

    available = wordfreq.available_languages(wordlist="best")
    if language not in available:
        raise ValueError(
            f"languages: wordfreq has no language {language!r}; choose from {', '.join(sorted(available))}."
        )
    words: list[str] = []
    frequencies: list[float] = []
    for centibels, bucket in enumerate(wordfreq.get_frequency_list(language, wordlist="best")):
        for word in bucket:  # bucket i holds the words of frequency 10 ** (-i / 100)
            if not any(symbol.isdigit() or symbol.isspace() for symbol in word):
                words.append(word)
                frequencies.append(10.0 ** (-centibels / 100))
        if len(words) >= size:
            break
    return words[:size], np.asarray(frequencies[:size])


def read_word_list(words: str | os.PathLike | Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Words from a list, or a UTF-8 file with one word per line (optionally ``word<TAB>count``), with weights."""
    if isinstance(words, (str, os.PathLike)):
        path = Path(words)
        if not path.is_file():
            raise ValueError(f"words: {str(path)!r} is not a file; give a UTF-8 word list, one word per line.")
        entries, weights = [], []
        for line in path.read_text(encoding="utf-8-sig").splitlines():
            word, _, count = line.strip().partition("\t")
            if word:
                entries.append(word.strip())
                weights.append(float(count) if count.strip() else 1.0)
        return entries, np.asarray(weights, dtype=np.float64)
    entries = [word.strip() for word in words if isinstance(word, str) and word.strip()]
    return entries, np.ones(len(entries))


class TextSampler:
    """Draws ``(text, label)`` pairs for one charset.

    Args:
        charset: the label symbols.
        words, weights: the lexicon and its frequencies (any scale).
        max_length: longest label.
        text_mix: probability of each ``TEXT_KINDS`` entry.
        case_mix: probability of each ``CASE_KINDS`` entry, applied to words.
        frequency_power: words are drawn with probability proportional to ``weight ** frequency_power``.
    """

    def __init__(self, charset: str, words: list[str], weights: np.ndarray, max_length: int,
                 text_mix: dict[str, float], case_mix: dict[str, float], frequency_power: float) -> None:  # fmt: skip
        self.charset = charset
        self.max_length = max_length
        allowed = set(charset)
        # Symbols that may be drawn: the charset, and letters that are labelled by their lower-case form.
        self.drawable = "".join(sorted(allowed | {s.upper() for s in charset if len(s.upper()) == 1}))
        self._label_map = {
            s: s if s in allowed else s.lower() for s in self.drawable if s in allowed or s.lower() in allowed
        }
        keep = [i for i, word in enumerate(words) if len(word) <= max_length and self.label(word) is not None]
        self.words = [words[i] for i in keep]
        cumulative = np.cumsum(np.asarray(weights, dtype=np.float64)[keep] ** frequency_power)
        self._cumulative = cumulative / cumulative[-1] if len(cumulative) else cumulative
        self._kinds, self._kind_p = _distribution(text_mix)
        self._cases, self._case_p = _distribution(case_mix)
        self._visible = "".join(s for s in charset if not s.isspace())

    def label(self, text: str) -> str | None:
        """The label of ``text`` drawn as it is, or None when a symbol has no label in the charset."""
        try:
            return "".join(self._label_map[s] for s in text)
        except KeyError:
            return None

    def sample(self, rng: np.random.Generator) -> tuple[str, str]:
        """A ``(text to draw, label)`` pair."""
        for _ in range(8):
            kind = self._kinds[_pick(rng, self._kind_p)]
            text = getattr(self, f"_{kind}")(rng)
            label = None if text is None or not 0 < len(text) <= self.max_length else self.label(text)
            if label is not None and label.strip() == label:
                return text, label
        text = self._random(rng)
        return text, text

    def random_from(self, rng: np.random.Generator, symbols: str) -> tuple[str, str]:
        """A random string of ``symbols`` (all in the charset): the fallback when no font draws a sampled text."""
        length = int(rng.integers(1, min(8, self.max_length) + 1))
        text = "".join(symbols[i] for i in rng.integers(len(symbols), size=length))
        return text, text

    # -------------------------------------------------------------------------------------------------- kinds

    def _word(self, rng: np.random.Generator) -> str | None:
        if not self.words:
            return None
        word = self.words[
            int(np.searchsorted(self._cumulative, rng.random(), side="right").clip(0, len(self.words) - 1))
        ]
        case = self._cases[_pick(rng, self._case_p)]
        if case == "upper":
            cased = word.upper()
        elif case == "lower":
            cased = word.lower()
        elif case == "capitalized":
            cased = word[:1].upper() + word[1:]
        else:
            cased = word
        return cased if len(cased) == len(word) and self.label(cased) is not None else word

    def _number(self, rng: np.random.Generator) -> str:
        style = int(rng.integers(9))
        integer = str(int(10 ** rng.uniform(0, 5.5)))
        if style == 0:
            return f"{int(10 ** rng.uniform(3, 7)):,}".replace(",", ".,"[int(rng.integers(2))])
        if style == 1:
            return f"{rng.uniform(0, 1000):.{int(rng.integers(1, 3))}f}"
        if style == 2:
            return f"{int(rng.integers(0, 101))}%"
        if style == 3:
            return f"{int(rng.integers(0, 24)):02d}:{int(rng.integers(0, 60)):02d}"
        if style == 4:
            day, month, year = int(rng.integers(1, 29)), int(rng.integers(1, 13)), int(rng.integers(1950, 2031))
            return (
                f"{day:02d}/{month:02d}/{year}",
                f"{year}-{month:02d}-{day:02d}",
                f"{day}.{month}.{year % 100:02d}",
            )[int(rng.integers(3))]
        if style == 5:
            return f"{int(rng.integers(100, 1000))}-{int(rng.integers(0, 10000)):04d}"
        if style == 6:
            return f"{int(rng.integers(1950, 2031))}"
        return integer

    def _price(self, rng: np.random.Generator) -> str:
        symbols = [c for c in _CURRENCIES if self.label(c) is not None] or [""]
        currency = symbols[int(rng.integers(len(symbols)))]
        amount = rng.uniform(0, 3) if rng.random() < 0.5 else 10 ** rng.uniform(0, 4)
        cents = rng.random() < 0.6
        text = f"{amount:,.2f}" if cents else f"{int(amount):,}"
        if rng.random() < 0.3:  # "12,50" rather than "12.50"
            text = text.replace(",", " ").replace(".", ",").replace(" ", ".")
        return currency + text if rng.random() < 0.7 else text + currency

    def _code(self, rng: np.random.Generator) -> str:
        shape = _CODE_SHAPES[int(rng.integers(len(_CODE_SHAPES)))]
        letters = _LETTERS if rng.random() < 0.85 else _LETTERS.lower()
        pool = {"L": letters, "D": _DIGITS}
        return "".join(pool[c][int(rng.integers(len(pool[c])))] if c in pool else c for c in shape)

    def _random(self, rng: np.random.Generator) -> str:
        length = int(rng.integers(1, min(12, self.max_length) + 1))
        symbols = [self._visible[i] for i in rng.integers(len(self._visible), size=length)]
        return "".join(symbols)


def _distribution(mix: dict[str, float]) -> tuple[list[str], np.ndarray]:
    names = [name for name, p in mix.items() if p > 0]
    weights = np.asarray([mix[name] for name in names], dtype=np.float64)
    return names, np.cumsum(weights / weights.sum())


def _pick(rng: np.random.Generator, cumulative: np.ndarray) -> int:
    return min(int(np.searchsorted(cumulative, rng.random(), side="right")), len(cumulative) - 1)
