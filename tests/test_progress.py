"""Progress off a terminal: plain lines every so often, never carriage-return redraws."""

from __future__ import annotations

import io
import sys

from text_recognition.progress import LineProgress, progress


def test_off_a_terminal_progress_prints_plain_lines_every_n_steps(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a TTY
    bar = progress(total=10, desc="training", unit="it", every=4)
    assert isinstance(bar, LineProgress)
    for _ in range(10):
        bar.set_postfix(loss="0.5")
        bar.update(1)
    bar.write("validation block")
    bar.close()
    lines = sys.stderr.getvalue().splitlines()
    assert [line.split(" it ")[0] for line in lines] == ["training: 4/10", "training: 8/10", "training: 10/10"]
    assert all("loss=0.5" in line and "it/s" in line for line in lines)
    assert "\r" not in sys.stderr.getvalue()
    assert capsys.readouterr().out == "validation block\n"


def test_iterables_resume_offsets_and_disable(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert list(progress(range(5), desc="rendering", unit=" images")) == [0, 1, 2, 3, 4]
    assert sys.stderr.getvalue().splitlines()[-1].startswith("rendering: 5/5 images")
    resumed = LineProgress(total=10, desc="training", initial=6, every=100)
    resumed.update(4)
    assert sys.stderr.getvalue().splitlines()[-1].startswith("training: 10/10")
    before = sys.stderr.getvalue()
    silent = progress(total=3, disable=True)
    silent.update(3)
    silent.close()
    assert sys.stderr.getvalue() == before
