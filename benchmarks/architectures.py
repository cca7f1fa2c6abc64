#!/usr/bin/env python
"""The architectures side by side: parameters, FLOPs and inference images/s of PARSeq-S, PARSeq-Ti and ViTSTR-S
(strhub's sizes, 94 symbols, RGB 32x128) against DTRB's TRBA (TPS-ResNet-BiLSTM-Attn) and CRNN (None-VGG-BiLSTM-CTC)
(DTRB's sizes, 36 symbols, grayscale 32x100).

    python benchmarks/architectures.py                                # every model, batch 1 and 64, fp32 and bf16
    python benchmarks/architectures.py --models PARSeq-Ti CRNN --batch_sizes 64 --precisions fp32

Parameters are counted; FLOPs are measured with ``torch.utils.flop_counter.FlopCounterMode`` on one forward pass of
one image (matrix multiplications and convolutions; 2 per multiply-add; fvcore, as strhub's bench.py reports,
counts one per multiply-add, so its "FLOPs" are half of these: the column ``MACs``). For autoregressive decoders
the count is of the decoding as run: PARSeq's steps stop once every row has ended, so its FLOPs are measured on
decoding that runs all ``batch_max_length + 1`` steps (the most) and on one that ends at the first (the least),
refinement included; the MACs column is of all steps. DTRB's attention decoder always runs every step.

Speed is ``model(pixel_values)`` on a preprocessed batch under ``torch.inference_mode`` (the decoding modes of
the configs: PARSeq autoregressive with 1 refinement, strhub's default; greedy attention for TRBA), each
configuration in ``--repeats`` timed runs, all models interleaved run by run after one untimed warm-up each
(``_timing.interleaved``), reported as median (min-max) images/s. The weights are random (timm's / strhub's / DTRB's
initialisation): speed does not depend on them, except PARSeq's number of decoding steps, which
``--decode_steps full`` (default) fixes at the most by biasing its end token away (an untrained model might stop
at once and look fast).
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from text_recognition import ModelConfig, TextRecognitionModel
from text_recognition.fastpath import autocast

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark modules
import _timing as timing  # noqa: E402

STRHUB = {"input_channel": 3, "img_h": 32, "img_w": 128, "character": "94_full"}
MODELS = {
    "PARSeq-S": ModelConfig("None", "ViT", "None", "PARSeq", vit_size="small", **STRHUB),
    "PARSeq-Ti": ModelConfig("None", "ViT", "None", "PARSeq", vit_size="tiny", **STRHUB),
    "ViTSTR-S": ModelConfig("None", "ViT", "None", "ViTSTR", vit_size="small", **STRHUB),
    "TRBA": ModelConfig("TPS", "ResNet", "BiLSTM", "Attn"),
    "CRNN": ModelConfig("None", "VGG", "BiLSTM", "CTC"),
}


def build(name: str) -> TextRecognitionModel:
    torch.manual_seed(0)
    model = TextRecognitionModel(MODELS[name]).eval()
    model.init_weights()
    return model


def images_for(model: TextRecognitionModel, batch_size: int, seed: int = 0) -> torch.Tensor:
    config = model.config
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch_size, config.input_channel, config.img_h, config.img_w, generator=generator) * 2 - 1


def set_decoding_steps(model: TextRecognitionModel, steps: str) -> None:
    """Make PARSeq's greedy decoding run ``"all"`` its steps (the end token's bias far below the others) or the
    ``"fewest"`` (far above: every row ends at the first step). Random weights would stop anywhere in between.
    DTRB's attention decoder always runs every step in ``forward``."""
    if model.config.prediction == "PARSeq":
        with torch.no_grad():
            model.Prediction.head.bias[model.Prediction.eos_id] = -1e4 if steps == "all" else 1e4


def count_flops(model: TextRecognitionModel) -> int:
    """FLOPs (2 per multiply-add) of one forward pass of one image."""
    counter = FlopCounterMode(display=False)
    with counter:  # with autograd on: the counter's module hooks need it (nothing is kept: no backward)
        model(images_for(model, 1))
    return counter.get_total_flops()


def timed_rate(model: TextRecognitionModel, pixel_values: torch.Tensor, precision: str, runs: int) -> float:
    """Images per second of ``runs`` forward passes of ``pixel_values``."""
    start = time.perf_counter()
    with torch.inference_mode(), autocast(pixel_values.device, precision):
        for _ in range(runs):
            model(pixel_values)
    return runs * pixel_values.size(0) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batch_sizes", nargs="+", type=int, default=[1, 64])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--images", type=int, default=256, help="images per timed run (at least one batch)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per configuration, interleaved")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--decode_steps", choices=["full", "as_initialised"], default="full",
                        help="full: PARSeq runs every decoding step (the most, as for a long word); as_initialised: "
                             "wherever the random weights stop")  # fmt: skip
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    start = timing.header(f"{args.repeats} timed runs per configuration, interleaved after a warm-up of each; "
                          f"decoding steps: {args.decode_steps}")  # fmt: skip

    models = {name: build(name) for name in args.models}
    print("| model | stages | parameters | FLOPs per image (PARSeq: fewest / all steps) | MACs per image (fvcore's "
          "'FLOPs') |")
    print("|---|---|---|---|---|")
    for name, model in models.items():
        set_decoding_steps(model, "fewest")
        fewest = count_flops(model)
        set_decoding_steps(model, "all")  # and so it stays for the timings with --decode_steps full
        most = count_flops(model)
        flops = f"{fewest / 1e9:.3f} G / {most / 1e9:.3f} G" if fewest != most else f"{most / 1e9:.3f} G"
        print(f"| {name} | {model.config.stage_string} | {model.num_parameters:,} | {flops} | "
              f"{most / 2e9:.3f} G |", flush=True)  # fmt: skip
    if args.decode_steps == "as_initialised":
        models = {name: build(name) for name in args.models}

    raw_lines = []
    print(f"\nimages/s of model(pixel_values), median (min-max) of {args.repeats} runs:")
    print("| model | batch | " + " | ".join(args.precisions) + " |")
    print("|---|---|" + "---|" * len(args.precisions), flush=True)
    for batch_size in args.batch_sizes:
        runs = max(1, args.images // batch_size)
        sides = {}
        for name, model in models.items():
            pixel_values = images_for(model, batch_size)
            for precision in args.precisions:
                sides[f"{name} {precision}"] = partial(timed_rate, model, pixel_values, precision, runs)
        rates = timing.interleaved(sides, args.repeats, label=f"batch {batch_size}")
        raw_lines.append(timing.raw(f"batch {batch_size}", rates))
        for name in models:
            print(f"| {name} | {batch_size} | "
                  + " | ".join(timing.summary(rates[f"{name} {p}"]) for p in args.precisions) + " |",
                  flush=True)  # fmt: skip
    print("\nper-run rates (images/s), in run order:")
    print("\n".join(raw_lines))
    timing.footer(start)


if __name__ == "__main__":
    main()
