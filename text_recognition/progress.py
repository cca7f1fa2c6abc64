"""Progress for long work: a tqdm bar on a terminal, plain lines every so often anywhere else.

tqdm redraws its bar with carriage returns; written to a log file, a CI log or a notebook cell running a script,
every redraw stays, and a three-minute ``make demo`` left a 125 KB log. When stderr is not a terminal, ``progress``
prints one ordinary line every ``every`` steps (and at the end) instead.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

from tqdm.auto import tqdm


def progress(
    iterable: Iterable[Any] | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    initial: int = 0,
    disable: bool = False,
    every: int | None = None,
) -> Any:
    """A tqdm bar when stderr is a terminal, else a ``LineProgress`` with the same methods (``update``,
    ``set_postfix``, ``write``, ``close``, iteration, ``with``).

    Args:
        every: plain-line mode only: print a line every ``every`` steps (default: about 10 lines in all, or every
            1000 steps when the total is unknown).
    """
    if not disable and sys.stderr.isatty():
        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, dynamic_ncols=True)
    return LineProgress(iterable, total=total, desc=desc, unit=unit, initial=initial, disable=disable, every=every)


class LineProgress:
    """tqdm's interface, printing ``desc: n/total unit (rate/s, postfix)`` lines to stderr."""

    def __init__(
        self,
        iterable: Iterable[Any] | None = None,
        *,
        total: int | None = None,
        desc: str = "",
        unit: str = "it",
        initial: int = 0,
        disable: bool = False,
        every: int | None = None,
    ) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable, self.total, self.desc, self.unit, self.disable = iterable, total, desc, unit.strip(), disable
        self.every = max(1, every or (-(-total // 10) if total else 1000))
        self.n = self._printed = self._start_n = initial
        self._start = time.perf_counter()
        self._postfix = ""

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("LineProgress was made without an iterable.")
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.n - self._printed >= self.every or (self.total is not None and self.n >= self.total > self._printed):
            self._print()

    def set_postfix(self, refresh: bool = False, **values: Any) -> None:
        self._postfix = ", ".join(f"{key}={value}" for key, value in values.items())

    def write(self, text: str) -> None:
        if not self.disable:
            print(text, flush=True)

    def close(self) -> None:
        if self.n > self._printed:
            self._print()

    def _print(self) -> None:
        self._printed = self.n
        if self.disable:
            return
        elapsed = time.perf_counter() - self._start
        rate = (self.n - self._start_n) / elapsed if elapsed > 0 else 0.0
        count = f"{self.n}/{self.total}" if self.total is not None else f"{self.n}"
        details = ", ".join(filter(None, [f"{rate:.1f} {self.unit}/s", f"{elapsed:.0f} s", self._postfix]))
        print(f"{self.desc}: {count} {self.unit} ({details})", file=sys.stderr, flush=True)
