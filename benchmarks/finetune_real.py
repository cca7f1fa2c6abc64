#!/usr/bin/env python
"""Fine-tuning a real model on real words: EasyOCR's english_g2 (a trained DTRB None-VGG-BiLSTM-CTC) fine-tuned with
``recipes/finetune.yaml`` on 90 % of each real training split in ``../shared/data/real_train``, scored before and
after on the other 10 %, which training never sees, under the ``dtrb`` (``--sensitive --data_filtering_off``) and
``alnum36`` protocols.

    python benchmarks/finetune_real.py                      # the recipe as it is
    python benchmarks/finetune_real.py --num_iter 100       # a quicker look

Each split is cut with a fixed permutation (seed 0): 10 % held out for the scores, and 5 % of the rest as the
validation set that picks ``best_accuracy/`` (so model selection never sees the held-out words either). Prints a
markdown table, the wall time of the fine-tuning, and writes ``--output_json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from text_recognition import ModelConfig, TextRecognitionModel  # noqa: E402
from text_recognition.data.lmdb import LmdbReader, write_lmdb  # noqa: E402
from text_recognition.evaluation import evaluate  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
G2_CHARSET = "0123456789!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~ €ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
SPLITS = {"IIIT5k": "IIIT5k_train_2000", "IC15": "IC15_train_4468", "SVT": "SVT_train_257"}
RATIOS = "0.3-0.6-0.1"  # IIIT5k-IC15-SVT, roughly the sizes of the splits


def split_sources(root: Path, seed: int = 0) -> dict[str, int]:
    """``root/{train,valid,heldout}/<split>`` LMDBs: 10 % held out, 5 % of the rest for validation."""
    sizes = {}
    for name, folder in SPLITS.items():
        with LmdbReader(SHARED / "real_train" / folder) as reader:
            samples = list(reader)
        order = np.random.default_rng(seed).permutation(len(samples))
        held = len(samples) // 10
        valid = max(1, (len(samples) - held) // 20)
        parts = {"heldout": order[:held], "valid": order[held : held + valid], "train": order[held + valid :]}
        for part, indices in parts.items():
            write_lmdb([samples[i] for i in sorted(indices)], root / part / name)
            sizes[f"{part}/{name}"] = len(indices)
    return sizes


def scores(model: TextRecognitionModel, heldout: Path) -> dict[str, dict[str, float]]:
    out = {}
    for protocol in ("dtrb", "alnum36"):
        report = evaluate(model, heldout, protocol=protocol, sensitive=True, data_filtering_off=True,
                          timing_samples=0, batch_size=96)  # fmt: skip
        out[protocol] = {r.dataset: r.accuracy for r in report.results}
        out[protocol]["total"] = report.total_accuracy
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_iter", type=int, help="override the recipe's iterations")
    parser.add_argument("--work_dir", help="keep the data and runs here (default: a temporary folder)")
    parser.add_argument("--output_json", default="finetune_real.json")
    args = parser.parse_args()
    if not (SHARED / "weights" / "english_g2.pth").is_file():
        sys.exit(f"needs {SHARED} (weights/english_g2.pth and real_train/)")

    with tempfile.TemporaryDirectory(prefix="finetune_real_") as tmp:
        work = Path(args.work_dir or tmp)
        sizes = split_sources(work / "data")
        config = ModelConfig("None", "VGG", "BiLSTM", "CTC", output_channel=256, hidden_size=256, img_h=64, img_w=256,
                             pad=True, character=G2_CHARSET)  # fmt: skip
        g2 = TextRecognitionModel.from_dtrb_checkpoint(SHARED / "weights" / "english_g2.pth", config)
        g2.save_pretrained(work / "g2")
        before = scores(g2, work / "data" / "heldout")

        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                   str(REPO / "accelerate_configs" / "cpu.yaml"), str(REPO / "scripts" / "train.py"),
                   "--config", str(REPO / "recipes" / "finetune.yaml"), "--saved_model", str(work / "g2"), "--FT",
                   "--sensitive", "--character", G2_CHARSET, "--train_data", str(work / "data" / "train"),
                   "--valid_data", str(work / "data" / "valid"), "--select_data", "-".join(SPLITS),
                   "--batch_ratio", RATIOS, "--output_dir", str(work / "runs"), "--exp_name", "g2-ft"]  # fmt: skip
        if args.num_iter:
            command += ["--num_iter", str(args.num_iter)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        start = time.perf_counter()
        subprocess.run(command, check=True, env=env)
        wall = time.perf_counter() - start
        tuned = TextRecognitionModel.from_pretrained(work / "runs" / "g2-ft" / "best_accuracy")
        after = scores(tuned, work / "data" / "heldout")
        results = json.loads((work / "runs" / "g2-ft" / "all_results.json").read_text())

    print(f"\nfine-tuning wall time: {wall:.0f} s ({results['iterations']} iterations, "
          f"{results['train_images_per_second']:.1f} img/s); samples: {sizes}")  # fmt: skip
    print("\n| held-out 10 % | protocol | english_g2 (%) | fine-tuned (%) | change (points) |\n|---|---|---|---|---|")
    for protocol in ("dtrb", "alnum36"):
        label = "dtrb --sensitive --data_filtering_off" if protocol == "dtrb" else protocol
        for name in [*SPLITS, "total"]:
            b, a = before[protocol][name], after[protocol][name]
            print(f"| {name} | {label} | {b:.2f} | {a:.2f} | {a - b:+.2f} |")
    Path(args.output_json).write_text(json.dumps({"before": before, "after": after, "wall_s": wall,
                                                  "sizes": sizes, "train": results}, indent=2) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
