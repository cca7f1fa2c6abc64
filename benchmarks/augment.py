#!/usr/bin/env python
"""Augmentation throughput on real word crops: each ``text_recognition.augment`` operation alone and the full
``TextAugment`` policy, images per second in one process, against the rate training consumes images.

    python benchmarks/augment.py
    python benchmarks/augment.py --num_images 1000 --repeats 5

Images: the first ``--num_images`` crops of ``../shared/data/real_train/IIIT5k_train_2000`` decoded to grayscale PIL
images beforehand (decoding is not timed). When ``albumentations`` is importable (it is no dependency of the project:
``pip install albumentations==2.0.8``, the last MIT release), a comparable Albumentations pipeline on the same images
as uint8 arrays is timed too. Median and range of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from text_recognition.augment import OPERATIONS, TextAugment  # noqa: E402
from text_recognition.data.lmdb import LmdbReader  # noqa: E402

SOURCE = REPO.parent / "shared" / "data" / "real_train" / "IIIT5k_train_2000"


def rate(fn, images, repeats: int) -> tuple[float, float, float]:
    fn(images[: max(1, len(images) // 10)])  # warm-up
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(images)
        rates.append(len(images) / (time.perf_counter() - start))
    return statistics.median(rates), min(rates), max(rates)


def albumentations_pipeline():
    try:
        import albumentations as A
    except ImportError:
        return None
    return A.Compose([
        A.OneOf([A.Rotate(limit=3, border_mode=1), A.Affine(shear=(-10, 10)), A.Perspective(scale=(0.02, 0.06))], p=0.5),
        A.SomeOf([A.RandomBrightnessContrast(), A.RandomGamma(), A.GaussianBlur(blur_limit=(3, 3)),
                  A.GaussNoise(), A.ImageCompression(quality_range=(40, 95)), A.InvertImg()], n=2),
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_images", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--strength", type=float, default=0.5)
    args = parser.parse_args()
    if not SOURCE.is_dir():
        sys.exit(f"needs {SOURCE}")
    with LmdbReader(SOURCE) as reader:
        images = [Image.open(io.BytesIO(reader.get(i)[0])).convert("L") for i in range(1, args.num_images + 1)]
    print(f"{len(images)} IIIT5k crops, median size {int(np.median([im.width for im in images]))}x"
          f"{int(np.median([im.height for im in images]))}, {args.repeats} runs, load {os.getloadavg()[0]:.2f}")  # fmt: skip
    print("\n| operation | images/s median (range) |\n|---|---|")
    rng = np.random.default_rng(0)
    for name, op in OPERATIONS.items():
        median, low, high = rate(lambda batch, op=op: [op(im, args.strength, rng) for im in batch], images, args.repeats)
        print(f"| {name} | {median:,.0f} ({low:,.0f}-{high:,.0f}) |")
    augment = TextAugment(args.strength, seed=0)
    median, low, high = rate(lambda batch: [augment(im, 0, i) for i, im in enumerate(batch)], images, args.repeats)
    print(f"| **TextAugment(strength={args.strength}, num_ops=2)** | **{median:,.0f} ({low:,.0f}-{high:,.0f})** |")
    pipeline = albumentations_pipeline()
    if pipeline is None:
        print("\nalbumentations is not installed: its comparison is skipped")
    else:
        arrays = [np.asarray(im) for im in images]
        median, low, high = rate(lambda batch: [pipeline(image=a)["image"] for a in batch], arrays, args.repeats)
        print(f"| Albumentations, comparable policy (uint8 arrays) | {median:,.0f} ({low:,.0f}-{high:,.0f}) |")
    print(f"\nload at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
