#!/usr/bin/env python
"""From nothing to real words: train ``recipes/pretrain_synth.yaml`` (no data files, the synthetic engine only) and
read the real words of ``../shared/data/real_train`` with the model it made.

    python benchmarks/pretrain_synth.py --output_dir runs                  # train (timed), then evaluate
    python benchmarks/pretrain_synth.py --output_dir runs --skip_training  # evaluate a finished run
    python benchmarks/pretrain_synth.py --output_dir runs --recipe recipes/pretrain_parseq.yaml   # PARSeq-Ti

The run folder is ``<output_dir>/<exp_name>`` (default: the recipe's file name, ``pretrain_synth``).

The real splits are used as held-out test words only (never trained on), scored as english_g2's reference figures
in ``../shared/data/README.md`` are: DTRB's test.py with ``--sensitive --data_filtering_off`` (every sample,
case-insensitive alphanumeric comparison). Prints the wall time of training, the CPU, and per-split accuracy of
``best_accuracy/`` (the EMA weights with the best accuracy on held-out synthetic words: no real word chose it).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "real_train"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                flags = Path("/proc/cpuinfo").read_text()
                isa = [name for name in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f" {name}" in flags]
                return f"{line.split(':', 1)[1].strip()} ({', '.join(isa)})"
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def evaluate(model: Path, out: Path) -> dict:
    command = [sys.executable, str(REPO / "scripts" / "test.py"), "--eval_data", str(REAL), "--saved_model",
               str(model), "--data_filtering_off", "--workers", "1", "--batch_size", "256",
               "--result_dir", str(out.parent / "result"), "--output_json", str(out)]  # fmt: skip
    subprocess.run(command, check=True, cwd=REPO)
    return json.loads(out.read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", type=Path, required=True, help="where the run folder goes")
    parser.add_argument("--recipe", type=Path, default=REPO / "recipes" / "pretrain_synth.yaml",
                        help="the training recipe (a train.py --config file)")
    parser.add_argument("--exp_name", default=None, help="the run's name (default: the recipe's file name)")
    parser.add_argument("--skip_training", action="store_true", help="evaluate an existing run")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more train.py flags (last)")
    args = parser.parse_args()
    if not REAL.is_dir():
        raise SystemExit(f"{REAL} is absent: this benchmark reads the real splits of ../shared/data.")
    args.exp_name = args.exp_name or args.recipe.stem
    run_dir = args.output_dir / args.exp_name
    wall = cpu = None
    if not args.skip_training:
        command = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file",
                   str(REPO / "accelerate_configs" / "cpu.yaml"), str(REPO / "scripts" / "train.py"), "--config",
                   str(args.recipe.resolve()), "--output_dir", str(args.output_dir),
                   "--exp_name", args.exp_name, *args.extra]  # fmt: skip
        start, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(command, check=True, cwd=REPO)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)  # every finished descendant: trainer and workers
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    results = {"cpu": cpu_name(), "training_wall_seconds": wall, "training_cpu_seconds": cpu,
               "all_results": json.loads((run_dir / "all_results.json").read_text())}  # fmt: skip
    for name in ("best_accuracy",):  # the model a user takes
        scored = evaluate(run_dir / name, run_dir / f"real_train_{name}.json")
        results[name] = {dataset: {"num_samples": r["num_samples"], "accuracy": r["accuracy"],
                                   "norm_ED": r["norm_ED"]} for dataset, r in scored["datasets"].items()}  # fmt: skip
        results[name]["total_accuracy"] = scored["total_accuracy"]
    (run_dir / "pretrain_synth_benchmark.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"CPU: {results['cpu']}")
    if wall is not None:
        print(f"training wall time: {wall / 60:.1f} min, CPU time (all processes): {cpu / 60:.1f} min")
    for dataset, r in results["best_accuracy"].items():
        if dataset != "total_accuracy":
            print(f"{dataset:20s} {r['num_samples']:6d} samples  accuracy {r['accuracy']:6.2f} %  norm_ED {r['norm_ED']:.4f}")
    print(f"total (weighted by samples): {results['best_accuracy']['total_accuracy']:.2f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
