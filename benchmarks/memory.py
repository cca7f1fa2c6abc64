#!/usr/bin/env python
"""Peak memory of training: ``accelerate launch scripts/train.py`` against the DTRB-style loop of ``benchmarks/train.py``,
same data, model, batch and workers.

    python benchmarks/memory.py                                    # CRNN, batch 32, 1 worker, 20 steps
    python benchmarks/memory.py --models TPS-ResNet-BiLSTM-Attn --precision bf16

Each side runs in its own fresh process tree; the resident set size (RSS) of the whole tree (main process, the
accelerate launcher on our side, and every DataLoader worker) is sampled every 50 ms and its peak reported, as the
sum over the tree and for the main process alone. With a GPU, the peak of ``nvidia-smi``'s used memory over the run
is reported too. psutil comes with accelerate.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str, filename: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / filename)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


timing = _load("benchmark_timing", "_timing.py")
train_benchmark = _load("train_benchmark", "train.py")


def gpu_used_mib() -> float | None:
    if not shutil.which("nvidia-smi"):
        return None
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True)  # fmt: skip
    try:
        return sum(float(line) for line in out.stdout.split())
    except ValueError:
        return None


def peak_of(command: list[str]) -> tuple[float, float, float | None]:
    """(peak RSS of the process tree, peak RSS of its largest process, peak GPU MiB) of ``command``, in MiB."""
    process = subprocess.Popen(command, env=train_benchmark.child_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)  # fmt: skip
    root = psutil.Process(process.pid)
    tree_peak = main_peak = 0.0
    gpu_peak: float | None = None
    last_gpu = 0.0
    while process.poll() is None:
        try:
            sizes = [p.memory_info().rss for p in [root, *root.children(recursive=True)]]
        except psutil.Error:
            sizes = []
        if sizes:
            tree_peak, main_peak = max(tree_peak, sum(sizes) / 2**20), max(main_peak, max(sizes) / 2**20)
        if time.perf_counter() - last_gpu > 0.5:
            used, last_gpu = gpu_used_mib(), time.perf_counter()
            if used is not None:
                gpu_peak = max(gpu_peak or 0.0, used)
        time.sleep(0.05)
    output = process.stdout.read()
    if process.returncode:
        raise RuntimeError(output[-3000:])
    return tree_peak, main_peak, gpu_peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["None-VGG-BiLSTM-CTC"])
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--precision", default="no", help="ours: accelerate's --mixed_precision (no, bf16, fp16)")
    parser.add_argument("--config_file", default="cpu.yaml", help="ours: accelerate config under accelerate_configs/")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    start = timing.header(f"batch {args.batch_size}, {args.iterations} steps, {args.workers} worker(s) per loader")
    print("| model | side | peak RSS, process tree (MiB) | peak RSS, largest process (MiB) | peak GPU used (MiB) |")
    print("|---|---|---|---|---|", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        train_benchmark.data_benchmark.make_data(root, 3000)
        train_benchmark.SyntheticWords(seed=9).write_lmdb(root / "valid" / "v", 8, progress=False)
        for stages in args.models:
            t, f, s, p = stages.split("-")
            train_args = [
                str(ROOT / "scripts" / "train.py"), "--train_data", str(root), "--valid_data", str(root / "valid"),
                "--select_data", "MJ-ST", "--batch_ratio", "0.5-0.5", "--batch_size", str(args.batch_size),
                "--num_iter", str(args.iterations), "--valInterval", str(10**9), "--workers", str(args.workers),
                "--output_dir", str(Path(tmp) / "runs"), "--exp_name", stages, "--overwrite_output_dir",
                "--report_to", "none", "--Transformation", t, "--FeatureExtraction", f, "--SequenceModeling", s,
                "--Prediction", p]  # fmt: skip
            ours = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                    str(ROOT / "accelerate_configs" / args.config_file), "--mixed_precision", args.precision,
                    *train_args]  # fmt: skip
            # the same run without the launcher's parent process (one process: what accelerate launch runs)
            direct = [sys.executable, *train_args]
            dtrb = [sys.executable, "-c",
                    "import importlib.util, sys; from pathlib import Path; "
                    f"spec = importlib.util.spec_from_file_location('b', {str(ROOT / 'benchmarks' / 'train.py')!r}); "
                    "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
                    f"m.dtrb_style_train(Path({str(root)!r}), {stages!r}, {args.batch_size}, {args.iterations}, "
                    f"{args.workers})"]  # fmt: skip
            for _ in range(args.repeats):
                sides = [("ours (accelerate launch)", ours), ("DTRB style", dtrb)]
                if args.precision == "no":  # scripts/train.py alone trains in fp32 (precision is the launcher's)
                    sides.insert(1, ("ours (python scripts/train.py)", direct))
                for side, command in sides:
                    tree, largest, gpu = peak_of(command)
                    gpu_cell = f"{gpu:,.0f}" if gpu is not None else "no GPU"
                    print(f"| {stages} | {side} | {tree:,.0f} | {largest:,.0f} | {gpu_cell} |", flush=True)
    timing.footer(start)


if __name__ == "__main__":
    main()
