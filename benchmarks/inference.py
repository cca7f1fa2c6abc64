#!/usr/bin/env python
"""Inference throughput: ``TextRecognitionModel.recognize`` against a DTRB-demo.py-style loop, same weights.

Baseline ("DTRB demo.py style", written here from reference/dtrb.md 1.3, 2.6, 4 and 6): per image PIL convert +
resize + normalise, ``torch.no_grad``, the attention decoder always runs all ``batch_max_length + 1`` steps, and the
texts and confidences are decoded per sample in Python (index lookups, ``find('[s]')``, ``cumprod``).

    python benchmarks/inference.py                       # TRBA and CRNN, batch 1 and 64
    python benchmarks/inference.py --models None-VGG-BiLSTM-CTC --batch_sizes 64 --num_images 512

Each configuration: one untimed warm-up of each side, then ``--repeats`` (default 3) timed runs per side,
interleaved (ours, baseline, ours, baseline, ...). Prints the median and range (min-max) of each side's images/s
and the ratio of the medians. Timings include image preprocessing from in-memory PIL images of varied sizes, as a
user calling ``recognize`` on decoded crops would see.

At the end, the evaluation comparison: ``text_recognition.evaluation.evaluate`` (what scripts/test.py runs) against
a DTRB test.py-style loop on the same LMDB, timed the same way after the LMDB's label pass has been cached.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import shutil
import string
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from text_recognition import ModelConfig, TextRecognitionModel
from text_recognition.data import SyntheticWords
from text_recognition.evaluation import evaluate
from text_recognition.fastpath import set_channels_last


def _load(name: str, filename: str):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent / filename)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


data_benchmark = _load("data_benchmark", "data.py")
timing = _load("benchmark_timing", "_timing.py")


def make_images(count: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    sizes = rng.integers([40, 20], [300, 80], size=(count, 2))
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


def dtrb_model(model: TextRecognitionModel) -> TextRecognitionModel:
    """The same weights as DTRB runs them: a copy with the convolutions in the contiguous layout (ours are built
    channels_last; the baseline must not get that speed-up)."""
    return set_channels_last(copy.deepcopy(model), False)


def dtrb_style_recognize(model: TextRecognitionModel, images: list[Image.Image], batch_size: int) -> list:
    """DTRB demo.py's loop: AlignCollate per image, full-length decoding, per-sample Python post-processing."""
    config = model.config
    tokens = model.tokenizer.tokens
    results = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            tensors = []
            for image in images[start : start + batch_size]:
                image = image.convert("L" if config.input_channel == 1 else "RGB")
                image = image.resize((config.img_w, config.img_h), Image.BICUBIC)
                array = torch.from_numpy(np.array(image, dtype=np.uint8)).float().div(255)
                array = array.unsqueeze(0) if array.ndim == 2 else array.permute(2, 0, 1)
                tensors.append(array.sub_(0.5).div_(0.5))
            batch = torch.stack(tensors)
            if config.prediction == "CTC":
                preds = model(batch)
                _, preds_index = preds.max(2)
                preds_str = []
                for row in preds_index:  # CTCLabelConverter.decode, element by element
                    chars = []
                    for i, index in enumerate(row.tolist()):
                        if index != 0 and not (i > 0 and row[i - 1].item() == index):
                            chars.append(tokens[index])
                    preds_str.append("".join(chars))
            else:
                preds = model.Prediction(model.encode(batch), None)  # always batch_max_length + 1 steps
                _, preds_index = preds.max(2)
                preds_str = ["".join(tokens[i] for i in row.tolist()) for row in preds_index]
            preds_max_prob, _ = F.softmax(preds, dim=2).max(dim=2)
            for pred, pred_max_prob in zip(preds_str, preds_max_prob):
                if config.prediction == "Attn":
                    pred_eos = pred.find("[s]")
                    pred = pred[:pred_eos]
                    pred_max_prob = pred_max_prob[:pred_eos]
                confidence = pred_max_prob.cumprod(dim=0)[-1].item() if len(pred_max_prob) else 0.0
                results.append((pred, confidence))
    return results


def nltk_style_edit_distance(s1: str, s2: str) -> int:
    """The full-matrix Levenshtein DP that nltk.edit_distance (used by DTRB's test.py) computes, in pure Python."""
    table = [[0] * (len(s2) + 1) for _ in range(len(s1) + 1)]
    for i in range(len(s1) + 1):
        table[i][0] = i
    for j in range(len(s2) + 1):
        table[0][j] = j
    for i in range(1, len(s1) + 1):
        for j in range(1, len(s2) + 1):
            table[i][j] = min(table[i - 1][j] + 1, table[i][j - 1] + 1, table[i - 1][j - 1] + (s1[i - 1] != s2[j - 1]))
    return table[len(s1)][len(s2)]


def dtrb_style_evaluate(model: TextRecognitionModel, lmdb_root: str, batch_size: int) -> float:
    """DTRB test.py's validation(): LmdbDataset + AlignCollate loader, forward, loss, per-sample Python decoding,
    confidence and nltk-style edit distance. Returns accuracy (the work is what is timed)."""
    config = model.config
    dataset = data_benchmark.DtrbLmdbDataset(lmdb_root, config.character, config.batch_max_length, False, False)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        collate_fn=data_benchmark.DtrbAlignCollate(config.img_h, config.img_w),
    )
    tokens, ctc = model.tokenizer.tokens, torch.nn.CTCLoss(zero_infinity=True)
    n_correct, norm_ed, length = 0, 0.0, 0
    with torch.no_grad():
        for image, labels in loader:
            text, text_lengths = model.tokenizer.encode(list(labels), config.batch_max_length)
            preds = model(image)
            preds_size = torch.IntTensor([preds.size(1)] * image.size(0))
            ctc(preds.log_softmax(2).permute(1, 0, 2), text, preds_size, text_lengths)
            _, preds_index = preds.max(2)
            preds_str = []
            for row in preds_index:
                chars = [tokens[i] for k, i in enumerate(row.tolist()) if i != 0 and not (k > 0 and row[k - 1] == i)]
                preds_str.append("".join(chars))
            preds_max_prob, _ = F.softmax(preds, dim=2).max(dim=2)
            for gt, pred, pred_max_prob in zip(labels, preds_str, preds_max_prob):
                n_correct += pred == gt
                if len(gt) and len(pred):
                    norm_ed += 1 - nltk_style_edit_distance(pred, gt) / max(len(gt), len(pred))
                pred_max_prob.cumprod(dim=0)[-1]
            length += image.size(0)
    return 100 * n_correct / length


def timed_rate(fn, images: list[Image.Image]) -> float:
    """Images per second of one run of ``fn`` over ``images``."""
    start = time.perf_counter()
    fn(images)
    return len(images) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["TPS-ResNet-BiLSTM-Attn", "None-VGG-BiLSTM-CTC"])
    parser.add_argument("--batch_sizes", nargs="+", type=int, default=[1, 64])
    parser.add_argument("--num_images", type=int, default=256, help="images per timed run at batch > 1")
    parser.add_argument("--num_images_batch1", type=int, default=64, help="images per timed run at batch 1")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side, interleaved with the other side")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"],
                        help="recognize(precision=...) and evaluate(precision=...) sides; the baseline is fp32")
    parser.add_argument(
        "--eval_samples", type=int, default=2000, help="samples for the evaluation comparison (0: skip)"
    )
    parser.add_argument("--sections", nargs="+", default=["recognize", "evaluate"], choices=["recognize", "evaluate"])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if "recognize" not in args.sections:
        args.models = []
    if "evaluate" not in args.sections:
        args.eval_samples = 0

    start = timing.header(f"{args.repeats} timed runs per side, interleaved (ours, baseline, ...) after a warm-up")
    print(f"recognize vs DTRB demo.py style, images/s, median (min-max) of {args.repeats} runs per side:")
    print("| model | batch | images per run | " + " | ".join(f"recognize {p} median (range)" for p in args.precisions)
          + " | DTRB demo style fp32 median (range) | "
          + " | ".join(f"{p} ratio of medians" for p in args.precisions) + " |")  # fmt: skip
    print("|---|---|---|" + "---|" * (2 * len(args.precisions) + 1), flush=True)
    raw_lines = []
    for stage_string in args.models:
        torch.manual_seed(0)
        model = TextRecognitionModel(ModelConfig.from_stage_string(stage_string)).eval()
        model.init_weights()
        baseline_model = dtrb_model(model)
        for batch_size in args.batch_sizes:
            images = make_images(args.num_images_batch1 if batch_size == 1 else args.num_images)
            warmup_images = images[: max(1, len(images) // 8)]

            def ours(x, precision, batch_size=batch_size, model=model):
                return model.recognize(x, batch_size=batch_size, precision=precision)

            def baseline(x, batch_size=batch_size, model=baseline_model):
                return dtrb_style_recognize(model, x, batch_size)

            sides = {p: partial(timed_rate, partial(ours, precision=p), images) for p in args.precisions}
            sides["dtrb"] = partial(timed_rate, baseline, images)
            warmups = {p: partial(ours, warmup_images, p) for p in args.precisions}
            warmups["dtrb"] = partial(baseline, warmup_images)
            rates = timing.interleaved(sides, args.repeats, warmups=warmups,
                                       label=f"{stage_string} batch {batch_size}")
            raw_lines.append(timing.raw(f"{stage_string} batch {batch_size}", rates))
            print(f"| {stage_string} | {batch_size} | {len(images)} | "
                  + " | ".join(timing.summary(rates[p]) for p in args.precisions)
                  + f" | {timing.summary(rates['dtrb'])} | "
                  + " | ".join(timing.ratio(rates[p], rates["dtrb"]) for p in args.precisions) + " |",
                  flush=True)  # fmt: skip
    if args.eval_samples:
        raw_lines.append(evaluation_comparison(args.eval_samples, args.repeats, args.precisions))
    print("\nper-run rates (images/s), in run order:")
    print("\n".join(raw_lines))
    timing.footer(start)


def evaluation_comparison(num_samples: int, repeats: int, precisions: list[str] = ("fp32",)) -> str:
    """scripts/test.py's ``evaluate()`` against DTRB test.py's loop, CRNN, batch 192, same LMDB, in-process.

    The first ``evaluate()`` call makes the LMDB's cached label pass; it and one baseline run are the
    untimed warm-up. Then ``repeats`` runs of each, interleaved."""
    torch.manual_seed(0)
    model = TextRecognitionModel(ModelConfig("None", "VGG", "BiLSTM", "CTC")).eval()
    model.init_weights()
    baseline_model = dtrb_model(model)
    accuracies = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "eval" / "words"
        SyntheticWords(charset=string.digits + string.ascii_lowercase, image_format="JPEG", min_length=3,
                       max_length=12, seed=4).write_lmdb(root, num_samples, progress=False)  # fmt: skip
        start = time.perf_counter()
        evaluate(model, root.parent, batch_size=192, timing_samples=0)  # the cached label pass, and a warm-up
        print(f"\nfirst evaluate() (the LMDB's cached label pass + warm-up): {time.perf_counter() - start:.1f} s",
              flush=True)  # fmt: skip
        # The baseline opens its own copy: our in-place reader keeps the LMDB's environment open in this process,
        # and py-lmdb refuses to open one environment twice in a process. Same bytes, both in the page cache.
        baseline_root = Path(tmp) / "baseline" / "words"
        shutil.copytree(root, baseline_root)

        def ours(precision: str) -> float:
            start = time.perf_counter()
            report = evaluate(model, root.parent, batch_size=192, timing_samples=0, precision=precision)
            rate = num_samples / (time.perf_counter() - start)
            accuracies[f"ours {precision}"] = report.total_accuracy
            return rate

        def baseline() -> float:
            start = time.perf_counter()
            accuracies["dtrb"] = dtrb_style_evaluate(baseline_model, str(baseline_root), 192)
            return num_samples / (time.perf_counter() - start)

        sides = {f"test.py {p}": partial(ours, p) for p in precisions}
        sides["dtrb"] = baseline
        rates = timing.interleaved(sides, repeats, warmups={f"test.py {p}": partial(ours, p) for p in precisions},
                                   label="evaluation")  # fmt: skip
    print(f"\nevaluation, None-VGG-BiLSTM-CTC (untrained), batch 192, {num_samples} JPEG words, 0 workers, "
          f"images/s, median (min-max) of {repeats} runs per side:")  # fmt: skip
    print("| side | median (range) | ratio of medians to DTRB test.py style (fp32) |")
    print("|---|---|---|")
    for name in sides:
        print(f"| {name} | {timing.summary(rates[name])} | {timing.ratio(rates[name], rates['dtrb'])} |")
    print("accuracy (same model, same words): " + ", ".join(f"{k} {v:.2f} %" for k, v in accuracies.items()),
          flush=True)  # fmt: skip
    return timing.raw("evaluation", rates)


if __name__ == "__main__":
    main()
