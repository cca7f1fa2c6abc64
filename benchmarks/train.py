#!/usr/bin/env python
"""Training throughput: ``scripts/train.py`` under ``accelerate launch`` against a DTRB-style loop.

Baseline, written here from reference/dtrb.md 2.2, 2.5, 2.6 and 5.2: DTRB's LmdbDataset + one shuffled DataLoader
per source + per-image AlignCollate (``benchmarks/data.py``), the same model class (DTRB's maths), DTRB's
initialisation, Adadelta, ``clip_grad_norm_(5)``, CTC (log_softmax, permute, CTCLoss(zero_infinity)) or
cross-entropy with teacher forcing, ``DataParallel`` as DTRB wraps it, no Accelerate, fp32 (DTRB has no mixed
precision).

Ours: ``accelerate launch --config_file accelerate_configs/cpu.yaml [--mixed_precision bf16] scripts/train.py``
(this tree's scripts/train.py, with this tree on the child's PYTHONPATH), throughput read from ``all_results.json``
(``train_images_per_second``: every optimizer step from the first, so the first step's and the data workers'
start-up are in it; validation and checkpoints excluded). The baseline's rate leaves out its first 2 steps.

    python benchmarks/train.py                                   # TRBA and CRNN, batch 32, fp32 and bf16
    python benchmarks/train.py --models None-VGG-BiLSTM-CTC --iterations 80

Same data for both: MJSynth-like JPEG words in two LMDBs mixed 0.5/0.5, ``--workers`` data workers each. For each
model: one untimed warm-up run of each side (``--warmup_iterations`` steps), then ``--repeats`` (default 3) timed
runs per side, interleaved (ours fp32, ours bf16, DTRB style fp32, ours fp32, ...); the median and range (min-max)
of images/s, and the ratios of the medians (both against the DTRB-style fp32 loop: DTRB has no mixed precision).
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from text_recognition import ModelConfig, TextRecognitionModel
from text_recognition.data import SyntheticWords
from text_recognition.fastpath import set_channels_last

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str, filename: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / filename)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


data_benchmark = _load("data_benchmark", "data.py")
timing = _load("benchmark_timing", "_timing.py")


def dtrb_style_train(root: Path, stages: str, batch_size: int, iterations: int, workers: int) -> float:
    """Images/s of DTRB's train.py inner loop over ``iterations`` steps (after 2 warm-up steps)."""
    torch.manual_seed(1111)
    config = ModelConfig.from_stage_string(stages)
    model = TextRecognitionModel(config)
    model.init_weights()
    set_channels_last(model, False)  # DTRB's layout: ours are built channels_last, the baseline must not be
    model = torch.nn.DataParallel(model).train()
    tokenizer = model.module.tokenizer
    optimizer = torch.optim.Adadelta([p for p in model.parameters() if p.requires_grad], lr=1.0, rho=0.95, eps=1e-8)
    ctc = torch.nn.CTCLoss(zero_infinity=True)
    cross_entropy = torch.nn.CrossEntropyLoss(ignore_index=0)
    loaders = []
    for name in ("MJ", "ST"):
        dataset = data_benchmark.DtrbLmdbDataset(str(root / name), config.character, 25, False, False)
        loader = DataLoader(dataset, batch_size=batch_size // 2, shuffle=True, num_workers=workers,
                            collate_fn=data_benchmark.DtrbAlignCollate(32, 100), drop_last=True)  # fmt: skip
        loaders.append([loader, iter(loader)])

    def get_batch():
        images, labels = [], []
        for pair in loaders:
            try:
                image, label = next(pair[1])
            except StopIteration:
                pair[1] = iter(pair[0])
                image, label = next(pair[1])
            images.append(image)
            labels += label
        return torch.cat(images, 0), labels

    seen, start = 0, None
    for step in range(iterations + 2):
        if step == 2:
            seen, start = 0, time.perf_counter()
        image, labels = get_batch()
        text, length = tokenizer.encode(labels, 25)
        if config.prediction == "CTC":
            preds = model(image)
            preds_size = torch.IntTensor([preds.size(1)] * image.size(0))
            cost = ctc(preds.log_softmax(2).permute(1, 0, 2), text, preds_size, length)
        else:
            preds = model(image, text[:, :-1])
            cost = cross_entropy(preds.view(-1, preds.shape[-1]), text[:, 1:].contiguous().view(-1))
        model.zero_grad()
        cost.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5)
        optimizer.step()
        seen += image.size(0)
    return seen / (time.perf_counter() - start)


def ours(root: Path, run: Path, stages: str, batch_size: int, iterations: int, workers: int, precision: str) -> float:
    transformation, feature, sequence, prediction = stages.split("-")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ROOT / "accelerate_configs" / "cpu.yaml"), "--mixed_precision", precision,
               str(ROOT / "scripts" / "train.py"), "--train_data", str(root), "--valid_data", str(root / "valid"),
               "--select_data", "MJ-ST", "--batch_ratio", "0.5-0.5", "--batch_size", str(batch_size),
               "--num_iter", str(iterations), "--valInterval", str(10**9), "--workers", str(workers),
               "--output_dir", str(run), "--exp_name", "run", "--report_to", "none",
               "--Transformation", transformation, "--FeatureExtraction", feature, "--SequenceModeling", sequence,
               "--Prediction", prediction]  # fmt: skip
    return timing.train_images_per_second(command, run / "run")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["TPS-ResNet-BiLSTM-Attn", "None-VGG-BiLSTM-CTC"])
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--iterations", type=int, default=20, help="timed optimizer steps per run")
    parser.add_argument("--warmup_iterations", type=int, default=2, help="steps of each side's untimed warm-up run")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--precisions", nargs="+", default=["no", "bf16"])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side, interleaved with the other sides")
    args = parser.parse_args()
    child = subprocess.run([sys.executable, "-c", "import text_recognition; print(text_recognition.__file__)"],
                           capture_output=True, text=True, env=timing.child_env(), cwd="/")  # fmt: skip
    start_time = timing.header(
        f"{args.repeats} timed runs per side, interleaved after a warm-up; batch {args.batch_size}, "
        f"{args.iterations} steps per run, {args.workers} data worker(s) per loader\n"
        f"accelerate child imports text_recognition from: {child.stdout.strip() or child.stderr.strip()[-300:]}"
    )
    names = {"no": "fp32", "bf16": "bf16"}
    raw_lines = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        data_benchmark.make_data(root, 3000)
        SyntheticWords(seed=9).write_lmdb(root / "valid" / "v", 8, progress=False)
        # A valid-only leaf under root would be picked by select_data "/", not by MJ-ST.
        runs = iter(range(10**9))
        columns = " | ".join(f"ours {names.get(p, p)} median (range)" for p in args.precisions)
        ratios = " | ".join(f"{names.get(p, p)} ratio of medians" for p in args.precisions)
        print(f"images/s, median (min-max) of {args.repeats} runs per side:")
        print(f"| model | steps | {columns} | DTRB style fp32 median (range) | {ratios} |")
        print("|---|---|" + "---|" * (2 * len(args.precisions) + 1), flush=True)
        for stages in args.models:

            def run_ours(precision: str, iterations: int, stages: str = stages) -> float:
                run = Path(tmp) / f"{stages}-{precision}-{next(runs)}"
                return ours(root, run, stages, args.batch_size, iterations, args.workers, precision)

            sides = {names.get(p, p): partial(run_ours, p, args.iterations) for p in args.precisions}
            sides["dtrb"] = partial(dtrb_style_train, root, stages, args.batch_size, args.iterations, args.workers)
            warmups = {names.get(p, p): partial(run_ours, p, args.warmup_iterations) for p in args.precisions}
            warmups["dtrb"] = partial(dtrb_style_train, root, stages, args.batch_size, args.warmup_iterations,
                                      args.workers)  # fmt: skip
            rates = timing.interleaved(sides, args.repeats, warmups=warmups, label=stages)
            raw_lines.append(timing.raw(f"{stages}, {args.iterations} steps", rates))
            ours_cells = " | ".join(timing.summary(rates[names.get(p, p)]) for p in args.precisions)
            ratio_cells = " | ".join(timing.ratio(rates[names.get(p, p)], rates["dtrb"]) for p in args.precisions)
            print(f"| {stages} | {args.iterations} | {ours_cells} | {timing.summary(rates['dtrb'])} | {ratio_cells} |",
                  flush=True)  # fmt: skip
    print("\nper-run rates (images/s), in run order:")
    print("\n".join(raw_lines))
    timing.footer(start_time)


if __name__ == "__main__":
    main()
