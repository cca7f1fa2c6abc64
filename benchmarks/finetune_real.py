#!/usr/bin/env python
"""Fine-tuning on real words, from two starting points side by side: EasyOCR's english_g2 (a trained DTRB
None-VGG-BiLSTM-CTC) and any model folder (e.g. the model ``recipes/pretrain_synth.yaml`` trained from nothing),
each fine-tuned with ``recipes/finetune.yaml`` on 90 % of each real training split in ``../shared/data/real_train``
mixed with the synthetic engine, scored before and after on the other 10 %, which training never sees, under the
``dtrb`` (``--sensitive --data_filtering_off``) and ``alnum36`` protocols.

    python benchmarks/finetune_real.py                                        # english_g2, the recipe as it is
    python benchmarks/finetune_real.py --starts english_g2 runs/pretrain_synth/best_accuracy
    python benchmarks/finetune_real.py --num_iter 100 --synth_share 0         # a quicker look, real words only

Each split is cut with a fixed permutation (seed 0): 10 % held out for the scores, and 5 % of the rest as the
validation set that picks ``best_accuracy/`` (so model selection never sees the held-out words either). The batches
mix IIIT5k 0.3, IC15 0.6, SVT 0.1 (roughly the sizes of the splits), scaled to leave ``--synth_share`` of every batch
to the synthetic engine (``--select_data IIIT5k-IC15-SVT-synth``), rendered in the model's charset. english_g2 and
any case-sensitive model fine-tune with ``--sensitive`` in english_g2's charset (``resize_charset`` keeps the rows of
the symbols both have); a case-insensitive model (36 symbols) in its own, on lower-cased labels.
Prints a markdown table, the wall time of each fine-tuning, and writes ``--output_json``.
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


def charset_flags(model_dir: Path) -> list[str]:
    """A case-sensitive model fine-tunes case-sensitive in english_g2's charset (``resize_charset`` when its own
    differs); a case-insensitive one in its own charset, on lower-cased labels, as it was trained: new upper-case
    symbols would start untrained and cost it what it reads (measured: a 36-symbol model fell from 53.8 % to 33.8 %
    in 800 steps when given english_g2's charset)."""
    character = json.loads((model_dir / "config.json").read_text())["character"]
    if any(s.isupper() for s in character):
        return ["--sensitive", "--character", G2_CHARSET]
    return []


def fine_tune(start: str, model_dir: Path, work: Path, args: argparse.Namespace) -> tuple[Path, float, dict]:
    """Fine-tune the model in ``model_dir`` with the recipe; return its best_accuracy folder, wall time, results."""
    real = 1.0 - args.synth_share
    select, ratios = list(SPLITS), [f"{float(r) * real:.4g}" for r in RATIOS.split("-")]
    if args.synth_share:
        select, ratios = [*select, "synth"], [*ratios, f"{args.synth_share:.4g}"]
    run = work / "runs" / start
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(REPO / "accelerate_configs" / "cpu.yaml"), str(REPO / "scripts" / "train.py"),
               "--config", str(args.config), "--saved_model", str(model_dir), "--FT", *charset_flags(model_dir),
               "--train_data", str(work / "data" / "train"),
               "--valid_data", str(work / "data" / "valid"), "--select_data", "-".join(select),
               "--batch_ratio", "-".join(ratios), "--output_dir", str(run), "--exp_name", "ft"]  # fmt: skip
    if args.num_iter:
        command += ["--num_iter", str(args.num_iter)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    begin = time.perf_counter()
    subprocess.run(command, check=True, env=env)
    wall = time.perf_counter() - begin
    return run / "ft" / "best_accuracy", wall, json.loads((run / "ft" / "all_results.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--starts", nargs="+", default=["english_g2"],
                        help="english_g2 and/or model folders to fine-tune (default: english_g2)")
    parser.add_argument("--config", default=str(REPO / "recipes" / "finetune.yaml"), help="the recipe")
    parser.add_argument("--synth_share", type=float, default=0.25,
                        help="share of every batch from the synthetic engine (default 0.25; 0: real words only)")
    parser.add_argument("--num_iter", type=int, help="override the recipe's iterations")
    parser.add_argument("--work_dir", help="keep the data and runs here (default: a temporary folder)")
    parser.add_argument("--output_json", default="finetune_real.json")
    args = parser.parse_args()
    if not (SHARED / "weights" / "english_g2.pth").is_file():
        sys.exit(f"needs {SHARED} (weights/english_g2.pth and real_train/)")
    if not 0 <= args.synth_share < 1:
        sys.exit(f"--synth_share must be in [0, 1), got {args.synth_share}")
    for start in args.starts:
        if start != "english_g2" and not (Path(start) / "config.json").is_file():
            sys.exit(f"--starts: {start} is neither english_g2 nor a model folder (with config.json)")

    report = {}
    with tempfile.TemporaryDirectory(prefix="finetune_real_") as tmp:
        work = Path(args.work_dir or tmp)
        sizes = split_sources(work / "data")
        for start in args.starts:
            if start == "english_g2":
                config = ModelConfig("None", "VGG", "BiLSTM", "CTC", output_channel=256, hidden_size=256, img_h=64,
                                     img_w=256, pad=True, character=G2_CHARSET)  # fmt: skip
                model = TextRecognitionModel.from_dtrb_checkpoint(SHARED / "weights" / "english_g2.pth", config)
                model_dir = work / "english_g2"
                model.save_pretrained(model_dir)
            else:
                model_dir = Path(start)
                model = TextRecognitionModel.from_pretrained(model_dir)
            name = "english_g2" if start == "english_g2" else model_dir.parent.name or model_dir.name
            before = scores(model, work / "data" / "heldout")
            best, wall, results = fine_tune(name, model_dir, work, args)
            after = scores(TextRecognitionModel.from_pretrained(best), work / "data" / "heldout")
            report[name] = {"start": start, "before": before, "after": after, "wall_s": wall, "train": results}

    print(f"\nsamples: {sizes}; synthetic share of each batch: {args.synth_share}")
    for name, entry in report.items():
        results = entry["train"]
        print(f"{name}: fine-tuning wall time {entry['wall_s']:.0f} s ({results['iterations']} iterations, "
              f"{results['train_images_per_second']:.1f} img/s)")  # fmt: skip
    for protocol in ("dtrb", "alnum36"):
        label = "dtrb --sensitive --data_filtering_off" if protocol == "dtrb" else protocol
        print(f"\nprotocol {label}, held-out 10 %: before -> after fine-tuning (%)\n")
        print("| held-out 10 % | " + " | ".join(report) + " |\n|---|" + "---|" * len(report))
        for split in [*SPLITS, "total"]:
            cells = [f"{e['before'][protocol][split]:.2f} -> **{e['after'][protocol][split]:.2f}**"
                     for e in report.values()]  # fmt: skip
            print(f"| {split} | " + " | ".join(cells) + " |")
    Path(args.output_json).write_text(json.dumps({"sizes": sizes, "synth_share": args.synth_share,
                                                  "starts": report}, indent=2) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
