#!/usr/bin/env python
"""Does training wait for the synthetic engine? The training step rate of ``scripts/train.py`` with the engine
rendering every batch on the fly (``--select_data synth``) against the same run reading the same engine's samples
pre-rendered into an LMDB (``scripts/synthesize.py --engine realistic --format lmdb``), on this machine.

    python benchmarks/synth_training.py                       # the recipe's model and the demo's, 3 runs per side
    python benchmarks/synth_training.py --models recipe --iterations 30 --repeats 1   # a quick look

Models: ``recipe`` is ``recipes/pretrain_synth.yaml`` (None-VGG-BiLSTM-CTC 256/256, batch 64); ``demo`` is
``make demo``'s (64/64, batch 32), about six times cheaper a step, where rendering has the least slack. Both sides
use ``--workers`` DataLoader workers (default 1, the recipe's), fp32, the same options of the engine, the same
held-out LMDB for validation, which only runs at the start and the end and is not timed. The rate is
``train_images_per_second`` of ``all_results.json`` (every optimizer step from the first, so the workers' start-up
and, on the synthetic side, the engine's build and the filling of its glyph cache are in it). Each model: one
untimed warm-up run of each side, then ``--repeats`` timed runs per side, interleaved; median and range.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _timing import (  # noqa: E402
    child_env,
    footer,
    header,
    interleaved,
    ratio,
    raw,
    summary,
    train_images_per_second,
)

# flags, batch size, steps per timed run (about 30 s of training each on 2 cores)
MODELS = {
    "recipe": (["--output_channel", "256", "--hidden_size", "256"], 64, 60),
    "demo": (["--output_channel", "64", "--hidden_size", "64", "--PAD"], 32, 600),
}
STAGES = ["--Transformation", "None", "--FeatureExtraction", "VGG", "--SequenceModeling", "BiLSTM", "--Prediction",
          "CTC"]  # fmt: skip


def synthesize(output: Path, num_samples: int, seed: int) -> None:
    subprocess.run([sys.executable, str(ROOT / "scripts" / "synthesize.py"), "--engine", "realistic", "--output",
                    str(output), "--num_samples", str(num_samples), "--seed", str(seed)], check=True,
                   env=child_env(), stdout=subprocess.DEVNULL)  # fmt: skip


def train(work: Path, model: str, source: str, iterations: int, workers: int) -> float:
    flags, batch_size, _ = MODELS[model]
    data = ["--select_data", "synth"] if source == "synth" else ["--train_data", str(work / "lmdb"), "--select_data",
                                                                 "rendered"]  # fmt: skip
    run = work / "runs" / f"{model}-{source}"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ROOT / "accelerate_configs" / "cpu.yaml"), str(ROOT / "scripts" / "train.py"), *data,
               "--batch_ratio", "1", "--valid_data", str(work / "valid"), "--batch_size", str(batch_size),
               "--num_iter", str(iterations), "--valInterval", str(10**9), "--workers", str(workers), "--adam",
               "--lr", "1e-3", "--output_dir", str(run), "--exp_name", "run", "--overwrite_output_dir",
               "--report_to", "none", *STAGES, *flags]  # fmt: skip
    return train_images_per_second(command, run / "run")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["recipe", "demo"])
    parser.add_argument("--iterations", type=int, help="steps per timed run (default: recipe 60, demo 600)")
    parser.add_argument("--warmup_iterations", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    steps = {model: args.iterations or MODELS[model][2] for model in args.models}
    start = header(f"models and steps per run: {steps}; {args.workers} worker(s)")
    with tempfile.TemporaryDirectory(prefix="synth_training_") as tmp:
        work = Path(tmp)
        # Enough pre-rendered samples that no run reads one twice: the LMDB side never gains from a warm page cache
        # over an image it decoded before.
        most = max(MODELS[m][1] * max(steps[m], args.warmup_iterations) for m in args.models)
        synthesize(work / "lmdb" / "rendered", most, seed=0)
        synthesize(work / "valid" / "held_out", 64, seed=1)
        rows = []
        for model in args.models:
            sides = {side: (lambda m=model, s=side: train(work, m, s, steps[m], args.workers))
                     for side in ("synth", "lmdb")}  # fmt: skip
            warmups = {side: (lambda m=model, s=side: train(work, m, s, args.warmup_iterations, args.workers))
                       for side in ("synth", "lmdb")}  # fmt: skip
            rates = interleaved(sides, args.repeats, warmups, label=model)
            print(raw(model, rates))
            rows.append((model, rates))
    print("\n| model | on the fly (images/s) | pre-rendered LMDB (images/s) | on the fly / LMDB |\n|---|---|---|---|")
    for model, rates in rows:
        flags, batch_size, _ = MODELS[model]
        name = f"{model}: None-VGG-BiLSTM-CTC {flags[1]}/{flags[3]}, batch {batch_size}, {steps[model]} steps"
        print(f"| {name} | {summary(rates['synth'])} | {summary(rates['lmdb'])} | "
              f"{ratio(rates['synth'], rates['lmdb'])} |")  # fmt: skip
    footer(start)


if __name__ == "__main__":
    main()
