"""Shared by the benchmarks: the machine header, interleaved repeated runs, median (range) formatting, and the
training rate of an ``accelerate launch scripts/train.py`` child run on this checkout.

Every compared configuration is timed in ``repeats`` runs per side, the sides interleaved run by run (ours,
baseline, ours, baseline, ...) after one untimed warm-up of each side, so that a change in the machine's load during
a benchmark hits both sides alike. Each side is reported as the median and the range (min-max) of its per-run
rates; the ratio is the ratio of the medians.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags(wanted: tuple[str, ...] = ("avx512f", "avx512_bf16", "amx_bf16")) -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return " ".join(flag for flag in wanted if flag in flags) or "none of " + " ".join(wanted)
    except OSError:
        pass
    return "unknown"


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} (1 min), {five:.2f} (5 min), {fifteen:.2f} (15 min)"


def header(extra: str = "") -> float:
    """Print date, torch version, threads, CPU, and the load average; return the start time for ``footer``."""
    import torch

    import text_recognition

    now = datetime.datetime.now().astimezone()
    print(f"date: {now.isoformat(timespec='seconds')}")
    print(f"command: {' '.join([os.path.basename(sys.executable)] + sys.argv)}")
    print(f"python {platform.python_version()}, torch {torch.__version__}, {torch.get_num_threads()} intra-op threads")
    print(f"cpu: {cpu_model()}, {os.cpu_count()} logical cores, flags: {cpu_flags()}")
    print(f"text_recognition imported from: {os.path.dirname(text_recognition.__file__)}")
    print(f"load average at start: {load_average()}")
    if extra:
        print(extra)
    print(flush=True)
    return time.perf_counter()


def footer(start: float) -> None:
    print(f"\nload average at end: {load_average()}")
    print(f"wall time: {time.perf_counter() - start:.0f} s", flush=True)


def interleaved(
    sides: dict[str, Callable[[], float]],
    repeats: int,
    warmups: dict[str, Callable[[], object]] | None = None,
    label: str = "",
) -> dict[str, list[float]]:
    """Run each side's warm-up (default: one untimed run of the side itself), then ``repeats`` rounds of every side in
    turn; each side's callable returns the rate of one run. Every run is logged to stderr as it ends."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    for name, run in sides.items():
        (warmups or {}).get(name, run)()
    rates: dict[str, list[float]] = {name: [] for name in sides}
    for round_index in range(repeats):
        for name, run in sides.items():
            rates[name].append(run())
            print(f"  [{label}] run {round_index + 1}/{repeats} {name}: {rates[name][-1]:,.2f}/s "
                  f"(load {os.getloadavg()[0]:.2f})", file=sys.stderr, flush=True)  # fmt: skip
    return rates


def median(rates: list[float]) -> float:
    return statistics.median(rates)


def summary(rates: list[float], digits: int = 1) -> str:
    """``median (min-max)``, thousands separated."""
    return f"{median(rates):,.{digits}f} ({min(rates):,.{digits}f}-{max(rates):,.{digits}f})"


def ratio(ours: list[float], baseline: list[float]) -> str:
    return f"{median(ours) / median(baseline):.2f}x"


def raw(label: str, rates: dict[str, list[float]], digits: int = 1) -> str:
    """One line with every per-run rate, in run order, for the log."""
    return f"{label}: " + "; ".join(f"{name} " + ", ".join(f"{r:,.{digits}f}" for r in values)
                                    for name, values in rates.items())  # fmt: skip


def child_env() -> dict[str, str]:
    """The environment of a child process: this checkout first on PYTHONPATH, so the child imports this tree's
    text_recognition (not another checkout installed in the virtualenv)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def train_images_per_second(command: list[str], run_dir: str | os.PathLike) -> float:
    """Run ``command`` (an ``accelerate launch ... scripts/train.py`` writing ``run_dir``) and return the
    ``train_images_per_second`` of its ``all_results.json``; a failed run raises with the end of its output."""
    result = subprocess.run(command, capture_output=True, text=True, env=child_env())
    if result.returncode:
        raise RuntimeError(result.stdout[-2000:] + result.stderr[-2000:])
    return json.loads((Path(run_dir) / "all_results.json").read_text())["train_images_per_second"]
