#!/usr/bin/env python
"""Inference throughput: ``TextRecognitionModel.recognize`` against a DTRB-demo.py-style loop, same weights.

Baseline ("DTRB demo.py style", written here from reference/dtrb.md 1.3, 2.6, 4 and 6): per image PIL convert +
resize + normalise, ``torch.no_grad``, the attention decoder always runs all ``batch_max_length + 1`` steps, and the
texts and confidences are decoded per sample in Python (index lookups, ``find('[s]')``, ``cumprod``).

    python benchmarks/inference.py                       # TRBA and CRNN, batch 1 and 64
    python benchmarks/inference.py --models None-VGG-BiLSTM-CTC --batch_sizes 64 --num_images 512

Prints images/s of both and the ratio (ours / baseline). Timings include image preprocessing from in-memory PIL
images of varied sizes, as a user calling ``recognize`` on decoded crops would see.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from text_recognition import ModelConfig, TextRecognitionModel


def make_images(count: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    sizes = rng.integers([40, 20], [300, 80], size=(count, 2))
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


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


def images_per_second(fn, images: list[Image.Image], repeats: int) -> float:
    fn(images[: max(1, len(images) // 8)])  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn(images)
        best = min(best, time.perf_counter() - start)
    return len(images) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["TPS-ResNet-BiLSTM-Attn", "None-VGG-BiLSTM-CTC"])
    parser.add_argument("--batch_sizes", nargs="+", type=int, default=[1, 64])
    parser.add_argument("--num_images", type=int, default=256, help="images per timed run at batch > 1")
    parser.add_argument("--num_images_batch1", type=int, default=64, help="images per timed run at batch 1")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the best is reported")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print("| model | batch | recognize (img/s) | DTRB demo style (img/s) | ratio |")
    print("|---|---|---|---|---|")
    for stage_string in args.models:
        torch.manual_seed(0)
        model = TextRecognitionModel(ModelConfig.from_stage_string(stage_string)).eval()
        model.init_weights()
        for batch_size in args.batch_sizes:
            images = make_images(args.num_images_batch1 if batch_size == 1 else args.num_images)
            ours = images_per_second(lambda x: model.recognize(x, batch_size=batch_size), images, args.repeats)
            baseline = images_per_second(lambda x: dtrb_style_recognize(model, x, batch_size), images, args.repeats)
            print(f"| {stage_string} | {batch_size} | {ours:.1f} | {baseline:.1f} | {ours / baseline:.2f}x |")


if __name__ == "__main__":
    main()
