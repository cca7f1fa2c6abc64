#!/usr/bin/env python
"""The fast path measured in one process, on the CPU or a GPU, against DTRB-style code on the same device and weights.

    python benchmarks/fastpath.py                                  # CPU, every section
    python benchmarks/fastpath.py --device cuda --sections train recognize eval
    python benchmarks/fastpath.py --quick                          # small sizes, 1 repeat: checks that it runs

Sections (each prints rows of one table: ours median (range), DTRB style median (range), ratio of the medians):
- ``layout``: channels_last against the contiguous layout, per feature extractor with and without TPS, fp32 and
  bf16, for a forward pass (inference) and a training step (forward + backward). What ``fastpath`` defaults follow.
- ``train``: one training step of TRBA and CRNN as ``scripts/train.py`` takes it (channels_last, autocast for
  fp32 / bf16 / fp16 with a GradScaler, losses in fp32, clip_grad_norm_ after unscaling, Adadelta; eager or the
  encoder compiled) against DTRB's train.py step (contiguous, fp32, CTCLoss / CrossEntropyLoss, clip, Adadelta).
  Images/s over the timed steps; compilation (the first steps of a compiled side) is reported apart, in seconds.
- ``eval``: one evaluation batch as ``evaluate`` runs it (forward under autocast, loss, batched decoding) against
  DTRB test.py's (fp32 forward, loss, per-sample Python decoding), CRNN at 64x256 (english_g2's size).
- ``recognize``: ``recognize(precision=..., compile=...)`` against the DTRB demo.py-style loop
  (``benchmarks/inference.py``) on PIL images of varied sizes, batch 1 and 256.
On a GPU every row also gives the peak GPU memory of ours and of the baseline (``torch.cuda.max_memory_allocated``).
Interleaving, medians and ranges as the other benchmarks (``_timing.py``).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from text_recognition import ModelConfig, TextRecognitionModel
from text_recognition.fastpath import autocast, compile_encoder, set_channels_last


def _load(name: str, filename: str):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent / filename)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


timing = _load("benchmark_timing", "_timing.py")
inference = _load("inference_benchmark", "inference.py")

ROWS: list[str] = []


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def row(section: str, model: str, setting: str, batch: int, ours: list[float], base: list[float] | None,
        compile_s: float | None = None, memory: tuple[float | None, float | None] = (None, None)) -> None:  # fmt: skip
    base_cell = timing.summary(base) if base else ""
    ratio = timing.ratio(ours, base) if base else ""
    compiled = f"{compile_s:.1f}" if compile_s is not None else ""
    mem = " / ".join(f"{m:,.0f}" for m in memory if m is not None)
    line = (f"| {section} | {model} | {setting} | {batch} | {timing.summary(ours)} | {base_cell} | {ratio} | "
            f"{compiled} | {mem} |")  # fmt: skip
    ROWS.append(line)
    print(line, flush=True)


def make_model(stages: str, device: torch.device, **kwargs) -> TextRecognitionModel:
    torch.manual_seed(0)
    model = TextRecognitionModel(ModelConfig.from_stage_string(stages, **kwargs))
    model.init_weights()
    return model.to(device)


# ---- training steps -----------------------------------------------------------------------------------------------


class Step:
    """``steps`` training steps per call; returns images/s. ``first`` holds the seconds of the first call."""

    def __init__(self, model: TextRecognitionModel, images: torch.Tensor, labels: list[str], steps: int) -> None:
        self.model, self.images, self.labels, self.steps = model, images, labels, steps
        self.targets, self.lengths = model.tokenizer.encode(labels, model.config.batch_max_length)
        self.targets = self.targets.to(images.device)
        self.optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0, rho=0.95, eps=1e-8)
        self.device = images.device

    def __call__(self) -> float:
        sync(self.device)
        start = time.perf_counter()
        for _ in range(self.steps):
            self.step()
        sync(self.device)
        return self.steps * self.images.size(0) / (time.perf_counter() - start)


class OursStep(Step):
    """scripts/train.py's step: autocast, the model's own fp32 losses, GradScaler for fp16, unscale, clip, step."""

    def __init__(self, *args, precision: str = "fp32", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.precision = precision
        self.scaler = torch.amp.GradScaler(self.device.type) if precision == "fp16" else None

    def step(self) -> None:
        model, attn = self.model, self.model.config.prediction == "Attn"
        with autocast(self.device, self.precision):
            logits = model(self.images, self.targets if attn else None)
        loss = model.loss(logits, self.targets, self.lengths)
        (self.scaler.scale(loss) if self.scaler else loss).backward()
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


class DtrbStep(Step):
    """DTRB train.py's step (reference/dtrb.md 5.2): fp32, CTCLoss on log_softmax / CrossEntropyLoss, clip 5."""

    ctc = torch.nn.CTCLoss(zero_infinity=True)
    cross_entropy = torch.nn.CrossEntropyLoss(ignore_index=0)

    def step(self) -> None:
        model, text, length = self.model, self.targets, self.lengths
        if model.config.prediction == "CTC":
            preds = model(self.images)
            preds_size = torch.IntTensor([preds.size(1)] * self.images.size(0))
            cost = self.ctc(preds.log_softmax(2).permute(1, 0, 2), text, preds_size, length)
        else:
            preds = model(self.images, text[:, :-1])
            cost = self.cross_entropy(preds.view(-1, preds.shape[-1]), text[:, 1:].contiguous().view(-1))
        model.zero_grad()
        cost.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5)
        self.optimizer.step()


def words(batch: int) -> list[str]:
    vocabulary = ["hello", "world", "text", "recognition", "benchmark", "dtrb", "42", "street"]
    return [vocabulary[i % len(vocabulary)] for i in range(batch)]


def section_train(args, device: torch.device) -> None:
    batch = args.train_batch
    images = (torch.rand(batch, 1, 32, 100, generator=torch.Generator().manual_seed(0)) * 2 - 1).to(device)
    for stages in args.models:
        settings = [(p, c) for c in ([False, True] if args.compile else [False]) for p in args.precisions]
        sides, warmups, compile_s, memory = {}, {}, {}, {}
        base_model = set_channels_last(make_model(stages, device), False).train()
        sides["dtrb"] = DtrbStep(base_model, images, words(batch), args.steps)
        warmups["dtrb"] = DtrbStep(base_model, images, words(batch), 1)
        for precision, compiled in settings:
            name = f"{precision}{' compiled' if compiled else ''}"
            model = make_model(stages, device).train()
            if compiled:
                compile_encoder(model)
                start = time.perf_counter()
                OursStep(model, images, words(batch), 2, precision=precision)()  # compiles forward and backward
                compile_s[name] = time.perf_counter() - start
            sides[name] = OursStep(model, images, words(batch), args.steps, precision=precision)
            warmups[name] = OursStep(model, images, words(batch), 1, precision=precision)
        rates = timing.interleaved(sides, args.repeats, warmups=warmups, label=f"train {stages}")
        if device.type == "cuda":
            for name, side in sides.items():
                peak_reset(device)
                side.steps, steps = 1, side.steps
                side()
                side.steps = steps
                memory[name] = peak_mib(device)
        for name in sides:
            if name != "dtrb":
                row("train step", stages, name, batch, rates[name], rates["dtrb"], compile_s.get(name),
                    (memory.get(name), memory.get("dtrb")))  # fmt: skip


# ---- evaluation batches -------------------------------------------------------------------------------------------


def dtrb_eval_batch(model: TextRecognitionModel, images: torch.Tensor, labels: list[str]) -> int:
    """DTRB test.py's validation() on one batch: forward, CTC loss, per-sample Python decoding and confidence."""
    tokens, ctc = model.tokenizer.tokens, torch.nn.CTCLoss(zero_infinity=True)
    text, lengths = model.tokenizer.encode(labels, model.config.batch_max_length)
    with torch.no_grad():
        preds = model(images)
        preds_size = torch.IntTensor([preds.size(1)] * images.size(0))
        ctc(preds.log_softmax(2).permute(1, 0, 2).cpu(), text, preds_size, lengths)
        _, preds_index = preds.max(2)
        correct = 0
        for gt, row_ids in zip(labels, preds_index.cpu()):
            ids = row_ids.tolist()
            chars = [tokens[i] for k, i in enumerate(ids) if i != 0 and not (k > 0 and row_ids[k - 1] == i)]
            correct += "".join(chars) == gt
        preds_max_prob, _ = F.softmax(preds, dim=2).max(dim=2)
        for pred_max_prob in preds_max_prob:
            pred_max_prob.cumprod(dim=0)[-1]
    return correct


def ours_eval_batch(model: TextRecognitionModel, images: torch.Tensor, labels: list[str], precision: str) -> int:
    """``predict_records``' work on one batch: forward under autocast, the head's loss, batched decoding."""
    targets, lengths = model.tokenizer.encode(labels, model.config.batch_max_length)
    with torch.no_grad(), autocast(images.device, precision):
        logits = model(images)
    model.loss(logits, targets.to(images.device), lengths)
    return sum(text == gt for (text, _), gt in zip(model.tokenizer.decode_with_confidence(logits), labels))


def section_eval(args, device: torch.device) -> None:
    config = {"output_channel": 256, "hidden_size": 256, "img_h": 64, "img_w": 256, "pad": True}
    model = make_model("None-VGG-BiLSTM-CTC", device, **config).eval()
    base = set_channels_last(copy.deepcopy(model), False)
    batch = args.eval_batch
    images = (torch.rand(batch, 1, 64, 256, generator=torch.Generator().manual_seed(0)) * 2 - 1).to(device)
    labels = words(batch)

    def timed(fn, repeats=args.eval_batches) -> float:
        sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        sync(device)
        return repeats * batch / (time.perf_counter() - start)

    sides = {p: partial(timed, partial(ours_eval_batch, model, images, labels, p)) for p in args.precisions}
    sides["dtrb"] = partial(timed, partial(dtrb_eval_batch, base, images, labels))
    rates = timing.interleaved(sides, args.repeats, label="eval batch")
    for precision in args.precisions:
        row("eval batch", "None-VGG-BiLSTM-CTC 64x256", precision, batch, rates[precision], rates["dtrb"])
    if args.compile:
        compiled = copy.deepcopy(model)
        compile_encoder(compiled)
        start = time.perf_counter()
        ours_eval_batch(compiled, images, labels, args.precisions[-1])
        seconds = time.perf_counter() - start
        sides = {"compiled": partial(timed, partial(ours_eval_batch, compiled, images, labels, args.precisions[-1])),
                 "dtrb": sides["dtrb"]}  # fmt: skip
        rates = timing.interleaved(sides, args.repeats, label="eval batch compiled")
        row("eval batch", "None-VGG-BiLSTM-CTC 64x256", f"{args.precisions[-1]} compiled", batch, rates["compiled"],
            rates["dtrb"], seconds)  # fmt: skip


# ---- recognize ----------------------------------------------------------------------------------------------------


def section_recognize(args, device: torch.device) -> None:
    for stages in args.models:
        model = make_model(stages, device).eval()
        base = set_channels_last(copy.deepcopy(model), False)
        for batch in args.recognize_batches:
            count = max(batch, args.recognize_images) if batch > 1 else args.recognize_images_batch1
            images = inference.make_images(count)

            def ours(precision, compiled=False, model=model, batch=batch, images=images) -> float:
                return inference.timed_rate(lambda x: model.recognize(x, batch_size=batch, precision=precision,
                                                                      compile=compiled), images)  # fmt: skip

            def baseline(base=base, batch=batch, images=images) -> float:
                return inference.timed_rate(lambda x: dtrb_style_recognize_on(base, x, batch, device), images)

            sides = {p: partial(ours, p) for p in args.precisions}
            sides["dtrb"] = baseline
            rates = timing.interleaved(sides, args.repeats, label=f"recognize {stages} batch {batch}")
            for precision in args.precisions:
                row("recognize", stages, precision, batch, rates[precision], rates["dtrb"])


def dtrb_style_recognize_on(model: TextRecognitionModel, images, batch_size: int, device: torch.device) -> list:
    """``inference.dtrb_style_recognize`` with each batch moved to the model's device (DTRB's ``.to(device)``)."""
    if device.type == "cpu":
        return inference.dtrb_style_recognize(model, images, batch_size)
    original = model.forward, model.encode
    model.forward = lambda x, *a, **k: original[0](x.to(device), *a, **k)  # type: ignore[method-assign]
    model.encode = lambda x: original[1](x.to(device))  # type: ignore[method-assign]
    try:
        return inference.dtrb_style_recognize(model, images, batch_size)
    finally:
        del model.forward, model.encode


# ---- channels_last per family -------------------------------------------------------------------------------------


def section_layout(args, device: torch.device) -> None:
    batch = args.layout_batch
    images = (torch.rand(batch, 1, 32, 100, generator=torch.Generator().manual_seed(0)) * 2 - 1).to(device)
    for stages in args.layout_models:
        model = make_model(stages, device)
        contiguous = set_channels_last(copy.deepcopy(model), False)

        def forward(m, precision, steps=args.layout_steps) -> float:
            m.eval()
            sync(device)
            start = time.perf_counter()
            with torch.inference_mode(), autocast(device, precision):
                for _ in range(steps):
                    m(images)
            sync(device)
            return steps * batch / (time.perf_counter() - start)

        for precision in args.precisions[:2]:
            rates = timing.interleaved({"cl": partial(forward, model, precision),
                                        "contiguous": partial(forward, contiguous, precision)}, args.repeats,
                                       label=f"layout forward {stages} {precision}")  # fmt: skip
            row("channels_last forward", stages, precision, batch, rates["cl"], rates["contiguous"])
            train = {"cl": OursStep(model.train(), images, words(batch), args.layout_steps, precision=precision),
                     "contiguous": OursStep(contiguous.train(), images, words(batch), args.layout_steps,
                                            precision=precision)}  # fmt: skip
            rates = timing.interleaved(train, args.repeats, label=f"layout train {stages} {precision}")
            row("channels_last train step", stages, precision, batch, rates["cl"], rates["contiguous"])


SECTIONS = {"layout": section_layout, "train": section_train, "eval": section_eval, "recognize": section_recognize}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    parser.add_argument("--models", nargs="+", default=["TPS-ResNet-BiLSTM-Attn", "None-VGG-BiLSTM-CTC"])
    parser.add_argument("--layout_models", nargs="+", default=[
        "None-VGG-BiLSTM-CTC", "TPS-VGG-BiLSTM-CTC", "None-RCNN-BiLSTM-CTC", "TPS-RCNN-BiLSTM-CTC",
        "None-ResNet-BiLSTM-CTC", "TPS-ResNet-BiLSTM-Attn"])  # fmt: skip
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "fp16"])
    parser.add_argument("--compile", action="store_true", help="also the encoder compiled (train, eval)")
    parser.add_argument("--train_batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per run")
    parser.add_argument("--eval_batch", type=int, default=192)
    parser.add_argument("--eval_batches", type=int, default=2, help="timed evaluation batches per run")
    parser.add_argument("--recognize_batches", nargs="+", type=int, default=[1, 256])
    parser.add_argument("--recognize_images", type=int, default=256)
    parser.add_argument("--recognize_images_batch1", type=int, default=32)
    parser.add_argument("--layout_batch", type=int, default=32)
    parser.add_argument("--layout_steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="tiny sizes and 1 repeat: a check that it runs")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.steps, args.train_batch, args.eval_batch, args.eval_batches = 1, 1, 4, 8, 1
        args.recognize_batches, args.recognize_images, args.recognize_images_batch1 = [1, 8], 8, 2
        args.layout_batch, args.layout_steps, args.layout_models = 4, 1, ["TPS-VGG-BiLSTM-CTC"]
        args.models = ["None-VGG-BiLSTM-CTC"]
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    start = timing.header(f"device: {name}; {args.repeats} runs per side, interleaved after a warm-up")
    print("| section | model | setting | batch | ours median (range), images/s | DTRB style median (range) | "
          "ratio of medians | compile s | peak GPU MiB ours / DTRB |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|", flush=True)
    for section in args.sections:
        SECTIONS[section](args, device)
    print("\none table (every section):")
    print("| section | model | setting | batch | ours median (range), images/s | DTRB style median (range) | "
          "ratio of medians | compile s | peak GPU MiB ours / DTRB |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(ROWS))
    print("(layout rows: ours = channels_last, 'DTRB style' = the contiguous layout, same code otherwise)")
    timing.footer(start)


if __name__ == "__main__":
    main()
