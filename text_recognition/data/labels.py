"""DTRB's label rules as pure string functions: which samples its LmdbDataset keeps, and how it cleans labels.

DTRB builds the regex class ``[^<character>]`` by pasting the charset between brackets without escaping. For DTRB's
own two charsets (the 36 lowercase alphanumerics and the 94 printable symbols) we build the same pattern, so the
same samples are kept, quirks included: with the 94-symbol set, ``\\]`` reads as an escaped ``]``, so a label with a
backslash is dropped as outside the charset. For any other charset the unescaped class would mean something else
(``a-c`` a range that lets ``b`` through, ``^`` a negation, ``\\`` an escape), so the charset is escaped and means
what it says; the charset check is then on the label as trained (lowercased unless ``sensitive``).

With filtering on, a kept sample is trained on its stored label, lowercased unless ``sensitive``, and nothing else:
a label that cleaning would change otherwise (only possible through a non-ASCII symbol whose lowercase form is in
DTRB's charset, such as the Kelvin sign) is dropped as ``label_would_change``. With ``data_filtering_off`` every
sample is kept and out-of-charset symbols are removed from the label (DTRB's documented behaviour for that flag);
``LabelScan`` counts such changes so that they are reported, never silent.
"""

from __future__ import annotations

import functools
import logging
import re
import string
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

KEPT = "kept"
TOO_LONG = "too_long"
OUT_OF_CHARSET = "out_of_charset"
# With data_filtering_off DTRB keeps every sample, and crashed on a label still longer than batch_max_length
# after cleaning; we drop such a sample and count it under this reason instead.
TOO_LONG_AFTER_CLEANING = "too_long_after_cleaning"
# Filtering on: the label passes DTRB's filter but cleaning would still change it beyond lowercasing.
LABEL_WOULD_CHANGE = "label_would_change"
#: DTRB's two charsets, filtered with DTRB's own (unescaped) pattern so that the same samples are kept.
DTRB_CHARSETS = frozenset({string.digits + string.ascii_lowercase, string.printable[:-6]})


def is_dtrb_charset(character: str) -> bool:
    return character in DTRB_CHARSETS


def escaped_out_of_charset_pattern(character: str) -> re.Pattern[str]:
    """``[^...]`` matching exactly the symbols not in ``character`` (each symbol escaped)."""
    return re.compile("[^" + "".join(re.escape(c) for c in character) + "]")


@functools.lru_cache(maxsize=16)
def dtrb_out_of_charset_pattern(character: str) -> re.Pattern[str]:
    """``re.compile(f"[^{character}]")``, DTRB's pattern; a charset that is not a valid regex class (DTRB crashed)
    falls back to its literal meaning."""
    try:
        return re.compile(f"[^{character}]")
    except re.error:
        logger.warning(
            "The charset %r is not a valid regex character class (DTRB's filter would crash); its symbols are "
            "matched literally.",
            character,
        )
        return escaped_out_of_charset_pattern(character)


def charset_quirks(character: str) -> tuple[str, str]:
    """Symbols that DTRB's regex treats differently from the charset: (charset symbols it rejects, printable ASCII
    symbols outside the charset that it accepts)."""
    pattern = dtrb_out_of_charset_pattern(character)
    rejected = "".join(c for c in character if pattern.match(c))
    accepted = "".join(c for c in string.printable if c not in character and not pattern.match(c))
    return rejected, accepted


@dataclass
class LabelRules:
    """DTRB's filtering and cleaning of one label, for a charset, case mode and maximum length (DTRB's exact regex
    for DTRB's two charsets, the escaped charset for any other; see the module docstring).

    Args:
        character: the model's charset.
        batch_max_length: the longest label the model can learn.
        sensitive: keep the label's case (otherwise it is lowercased).
        data_filtering_off: keep every sample (DTRB's ``--data_filtering_off``), only cleaning labels.
    """

    character: str
    batch_max_length: int
    sensitive: bool = False
    data_filtering_off: bool = False
    pattern: re.Pattern[str] = field(init=False, repr=False)
    _symbols: frozenset[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.dtrb_charset = is_dtrb_charset(self.character)
        if self.dtrb_charset:
            self.pattern = dtrb_out_of_charset_pattern(self.character)
        else:
            self.pattern = escaped_out_of_charset_pattern(self.character)
        self._symbols = frozenset(self.character)

    def dtrb_reason(self, label: str) -> str:
        """What DTRB's own unescaped regex decides for ``label`` (the same as ``reason`` for DTRB's charsets)."""
        if self.dtrb_charset:
            return self.reason(label)
        if self.data_filtering_off:
            return KEPT
        if len(label) > self.batch_max_length:
            return TOO_LONG
        return OUT_OF_CHARSET if dtrb_out_of_charset_pattern(self.character).search(label.lower()) else KEPT

    def trained_label(self, label: str) -> str:
        """The stored label as it may be trained on: lowercased unless ``sensitive``."""
        return label if self.sensitive else label.lower()

    def reason(self, label: str) -> str:
        """Why DTRB's LmdbDataset keeps or drops a raw label: ``kept``, ``too_long`` or ``out_of_charset``.

        The length is that of the raw label. With DTRB's charsets the charset check is on the lowercased label,
        even when sensitive (as DTRB does); with any other charset it is on the label as trained.
        """
        if self.data_filtering_off:
            if len(self.clean(label)) > self.batch_max_length:
                return TOO_LONG_AFTER_CLEANING
            return KEPT
        if len(label) > self.batch_max_length:
            return TOO_LONG
        if self.pattern.search(label.lower() if self.dtrb_charset or not self.sensitive else label):
            return OUT_OF_CHARSET
        if not label.isascii() and self.clean(label) != self.trained_label(label):
            return LABEL_WOULD_CHANGE
        return KEPT

    def clean(self, label: str) -> str:
        """The label the model is trained on: lowercased unless sensitive, out-of-charset symbols removed."""
        if not self.sensitive:
            label = label.lower()
        label = self.pattern.sub("", label)
        if any(c not in self._symbols for c in label):  # only when a regex quirk let a foreign symbol through
            label = "".join(c for c in label if c in self._symbols)
        return label
