"""DTRB's label rules as pure string functions: which samples its LmdbDataset keeps, and how it cleans labels.

DTRB builds the regex class ``[^<character>]`` by pasting the charset between brackets without escaping. We build
the same pattern, so the same samples are kept and the same characters stripped, quirks included: with DTRB's
94-symbol set, ``\\]`` reads as an escaped ``]``, so a backslash counts as outside the charset; a ``-`` between two
symbols of a custom charset makes a range. Where such a quirk would let a symbol through that the charset does not
hold (DTRB then crashed in the label encoder), the symbol is removed as well.
"""

from __future__ import annotations

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
        return re.compile("[^" + "".join(re.escape(c) for c in character) + "]")


def charset_quirks(character: str) -> tuple[str, str]:
    """Symbols that DTRB's regex treats differently from the charset: (charset symbols it rejects, printable ASCII
    symbols outside the charset that it accepts)."""
    pattern = dtrb_out_of_charset_pattern(character)
    rejected = "".join(c for c in character if pattern.match(c))
    accepted = "".join(c for c in string.printable if c not in character and not pattern.match(c))
    return rejected, accepted


@dataclass
class LabelRules:
    """DTRB's filtering and cleaning of one label, for a charset, case mode and maximum length.

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
        self.pattern = dtrb_out_of_charset_pattern(self.character)
        self._symbols = frozenset(self.character)
        rejected, accepted = charset_quirks(self.character)
        if rejected or accepted:
            logger.info(
                "DTRB's regex reading of the charset: symbols dropped although listed: %r; symbols passing the "
                "filter although not listed: %r (removed from labels). Same samples are kept as in DTRB.",
                rejected,
                accepted,
            )

    def reason(self, label: str) -> str:
        """Why DTRB's LmdbDataset keeps or drops a raw label: ``kept``, ``too_long`` or ``out_of_charset``.

        The length is that of the raw label; the charset check is on the lowercased label, even when sensitive
        (both as DTRB does).
        """
        if self.data_filtering_off:
            if len(self.clean(label)) > self.batch_max_length:
                return TOO_LONG_AFTER_CLEANING
            return KEPT
        if len(label) > self.batch_max_length:
            return TOO_LONG
        if self.pattern.search(label.lower()):
            return OUT_OF_CHARSET
        return KEPT

    def clean(self, label: str) -> str:
        """The label the model is trained on: lowercased unless sensitive, out-of-charset symbols removed."""
        if not self.sensitive:
            label = label.lower()
        label = self.pattern.sub("", label)
        if any(c not in self._symbols for c in label):  # only when a regex quirk let a foreign symbol through
            label = "".join(c for c in label if c in self._symbols)
        return label
