#!/usr/bin/env python
"""Where the time of one training step and one evaluation batch goes: ``torch.profiler`` on the CPU.

    python benchmarks/profile_step.py                                 # CRNN (DTRB's sizes), fp32 and bf16
    python benchmarks/profile_step.py --models TPS-ResNet-BiLSTM-Attn --train_batch 32 --eval_batch 192

For each model and precision it profiles, after two untimed warm-ups, ``--steps`` training steps as
``training.optimizer_step`` runs them (channels_last model, the batch moved to the device, the forward under
autocast, the loss, ``backward``, ``clip_grad_norm_(5)``, Adadelta, ``zero_grad``) and ``--steps`` evaluation
batches as ``evaluation.predict_records`` runs them (forward, loss, greedy decoding with confidences). The data are
fixed random tensors: the DataLoader workers, which run in their own processes, are not in these figures.

Prints, per phase, the share of the self CPU time of each kind of operator: convolutions, recurrent (LSTM) ops,
matrix products, batch norm, element-wise and activation ops, the losses (CTC, cross-entropy), the optimizer, and
what is not the network (copies, ``.item()`` syncs, Python-side decoding), then the ten operators with the most
self CPU time.
"""

from __future__ import annotations

import argparse
import os
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from text_recognition import ModelConfig, TextRecognitionModel
from text_recognition.fastpath import autocast

KINDS = [  # (kind, substrings of aten operator names), the first that matches wins
    ("convolution", ("conv", "mkldnn_convolution")),
    ("recurrent (LSTM)", ("lstm", "rnn", "_thnn_fused")),
    ("matrix products", ("addmm", "mm", "bmm", "linear", "matmul")),
    ("batch norm", ("batch_norm",)),
    ("pooling", ("pool",)),
    ("losses (CTC / cross-entropy)", ("ctc", "nll", "cross_entropy", "log_softmax")),
    ("optimizer (Adadelta) and clipping", ("_foreach", "addcmul", "addcdiv", "norm", "clip")),
    ("copies, layout and host syncs", ("copy_", "_to_copy", "aten::to", "contiguous", "clone", "item",
                                       "_local_scalar_dense", "empty", "cat", "stack", "permute")),
    ("element-wise and activations", ("relu", "clamp", "add", "mul", "div", "sub", "sigmoid", "tanh", "softmax", "max",
                                      "sum", "mean", "exp", "fill", "zero", "where", "threshold")),
]


def kind_of(name: str) -> str:
    lowered = name.lower()
    for kind, keys in KINDS:
        if any(key in lowered for key in keys):
            return kind
    return "other"


def make_model(stages: str, precision: str) -> TextRecognitionModel:
    transformation, feature, sequence, prediction = stages.split("-")
    config = ModelConfig(transformation, feature, sequence, prediction)
    return TextRecognitionModel(config)


def train_step(model, optimizer, images, targets, lengths, precision):
    device = images.device
    with autocast(device, precision):
        logits = model(images.to(device, non_blocking=True),
                       targets if model.config.prediction == "Attn" else None)  # fmt: skip
    loss = model.loss(logits, targets, lengths)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


@torch.no_grad()
def eval_batch(model, images, targets, lengths, precision):
    with autocast(images.device, precision):
        features = model.encode(images)
        logits = model.Prediction(features)
    loss = float(model.loss(logits, targets, lengths))
    return loss, model.tokenizer.decode_with_confidence(logits)


def profile_phase(run, steps: int) -> tuple[dict[str, float], list[tuple[str, float]], float]:
    for _ in range(2):
        run()
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            run()
    wall = (time.perf_counter() - start) / steps
    by_kind: dict[str, float] = defaultdict(float)
    ops = []
    for event in prof.key_averages():
        if event.key.startswith("ProfilerStep") or event.self_cpu_time_total <= 0:
            continue
        by_kind[kind_of(event.key)] += event.self_cpu_time_total
        ops.append((event.key, event.self_cpu_time_total))
    return by_kind, sorted(ops, key=lambda op: -op[1])[:10], wall


def report(title: str, by_kind: dict[str, float], ops: list[tuple[str, float]], wall: float, steps: int) -> None:
    total = sum(by_kind.values())
    print(f"\n### {title}: {wall * 1000:.0f} ms per {'step' if 'train' in title else 'batch'} (profiled, "
          f"{steps} runs)\n")  # fmt: skip
    print("| kind | share of self CPU time |\n|---|---|")
    for kind, value in sorted(by_kind.items(), key=lambda item: -item[1]):
        print(f"| {kind} | {100 * value / total:.1f} % |")
    print("\ntop operators: " + ", ".join(f"{name} {100 * value / total:.1f} %" for name, value in ops))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["None-VGG-BiLSTM-CTC"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--train_batch", type=int, default=32)
    parser.add_argument("--eval_batch", type=int, default=192)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average "
          f"{os.getloadavg()[0]:.2f} at start")  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    for stages in args.models:
        for precision in args.precisions:
            torch.manual_seed(0)
            model = make_model(stages, precision)
            config = model.config
            words = ["word"] * args.train_batch
            targets, lengths = model.tokenizer.encode(words, config.batch_max_length)
            images = torch.rand(args.train_batch, config.input_channel, config.img_h, config.img_w,
                                generator=generator) * 2 - 1  # fmt: skip
            model.train()
            optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0, rho=0.95, eps=1e-8)
            by_kind, ops, wall = profile_phase(lambda: train_step(model, optimizer, images, targets, lengths,
                                                                  precision), args.steps)  # fmt: skip
            report(f"{stages} {precision}, training step, batch {args.train_batch}", by_kind, ops, wall, args.steps)
            model.eval()
            eval_targets, eval_lengths = model.tokenizer.encode(["word"] * args.eval_batch, config.batch_max_length)
            eval_images = torch.rand(args.eval_batch, config.input_channel, config.img_h, config.img_w,
                                     generator=generator) * 2 - 1  # fmt: skip
            by_kind, ops, wall = profile_phase(lambda: eval_batch(model, eval_images, eval_targets, eval_lengths,
                                                                  precision), args.steps)  # fmt: skip
            report(f"{stages} {precision}, evaluation batch {args.eval_batch}", by_kind, ops, wall, args.steps)
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
