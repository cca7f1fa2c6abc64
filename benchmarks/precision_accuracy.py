#!/usr/bin/env python
"""Word accuracy of english_g2 (a real, trained DTRB checkpoint) in fp32, bf16 and fp16 on the real splits of
``../shared/data`` (its README), scored as DTRB's test.py with ``--sensitive --data_filtering_off``.

    python benchmarks/precision_accuracy.py                        # fp32 bf16 fp16, channels_last (the default)
    python benchmarks/precision_accuracy.py --precisions fp32 bf16 --contiguous

Prints one row per precision and set (accuracy, norm_ED, the change from fp32 in points, and how many predictions
differ from fp32's), and the samples-weighted total. The aim: bf16 within 0.3 points of fp32.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import torch

from text_recognition import ModelConfig, TextRecognitionModel
from text_recognition.evaluation import evaluate
from text_recognition.fastpath import set_channels_last


def _load(name: str, filename: str):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent / filename)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


timing = _load("benchmark_timing", "_timing.py")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
G2_CHARSET = "0123456789!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~ €ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
G2_CONFIG = ModelConfig("None", "VGG", "BiLSTM", "CTC", output_channel=256, hidden_size=256, img_h=64, img_w=256,
                        pad=True, character=G2_CHARSET)  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(SHARED_DATA), help="the shared data folder (weights/, real_train/)")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "fp16"])
    parser.add_argument("--batch_size", type=int, default=192)
    parser.add_argument("--contiguous", action="store_true", help="convolutions in the contiguous layout")
    args = parser.parse_args()
    weights, real = Path(args.data) / "weights" / "english_g2.pth", Path(args.data) / "real_train"
    if not (weights.is_file() and real.is_dir()):
        print(f"real data not found: {args.data} needs weights/english_g2.pth and real_train/", file=sys.stderr)
        return 2
    start = timing.header(f"english_g2, batch {args.batch_size}, protocol dtrb --sensitive --data_filtering_off")
    model = TextRecognitionModel.from_dtrb_checkpoint(weights, G2_CONFIG)
    set_channels_last(model, not args.contiguous)
    reports = {}
    for precision in args.precisions:
        reports[precision] = evaluate(model, real, batch_size=args.batch_size, protocol="dtrb", sensitive=True,
                                      data_filtering_off=True, timing_samples=0, precision=precision)  # fmt: skip
    reference = reports.get("fp32") or next(iter(reports.values()))
    print("| precision | set | samples | word accuracy (%) | change from fp32 (points) | norm_ED | predictions "
          "differing from fp32 | ms/image |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for precision, report in reports.items():
        for result, base in zip(report.results, reference.results):
            ours = {(r.index, r.prediction) for r in result.failures}
            theirs = {(r.index, r.prediction) for r in base.failures}
            differing = len(ours ^ theirs)  # failures differing (a correct one is the same text on both sides)
            print(f"| {precision} | {result.dataset} | {result.num_samples} | {result.accuracy:.3f} | "
                  f"{result.accuracy - base.accuracy:+.3f} | {result.norm_ED:.4f} | <= {differing} | "
                  f"{result.ms_per_image:.2f} |")  # fmt: skip
        print(f"| {precision} | total | {sum(r.num_samples for r in report.results)} | {report.total_accuracy:.3f} | "
              f"{report.total_accuracy - reference.total_accuracy:+.3f} | | | {report.averaged_infer_time:.2f} |")
    timing.footer(start)
    worst = max(abs(r.total_accuracy - reference.total_accuracy) for r in reports.values())
    print(f"largest change of the total from fp32: {worst:.3f} points (aim: within 0.3)")
    return 0


if __name__ == "__main__":
    torch.manual_seed(0)
    sys.exit(main())
