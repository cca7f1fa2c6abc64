#!/usr/bin/env python
"""Write a PNG grid of augmented training samples: one row per sample, the original first, then augmented draws.

    python scripts/preview_augment.py --data data_lmdb_release/training --output augment.png
    python scripts/preview_augment.py --data my_data --augment_strength 0.8 --num_samples 8 --num_draws 6

--data is an LMDB tree, datasets folders or a Hub dataset id (every source under it). The draws are those training
would make with the same --augment_strength and --manualSeed at iterations 0, 1, 2, ...
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from text_recognition.augment import TextAugment
from text_recognition.cli import run
from text_recognition.config import ModelConfig
from text_recognition.data.collate import decode_image
from text_recognition.data.loaders import filtered_sources

PAD = 4


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="LMDB tree, datasets folders or Hub dataset id")
    parser.add_argument("--output", required=True, help="the PNG file to write")
    parser.add_argument("--augment_strength", type=float, default=0.5, help="as train.py's (default 0.5)")
    parser.add_argument("--manualSeed", "--seed", dest="seed", type=int, default=1111, help="as train.py's")
    parser.add_argument("--num_samples", type=int, default=6, help="rows (default 6)")
    parser.add_argument("--num_draws", type=int, default=5, help="augmented draws per row (default 5)")
    parser.add_argument("--height", type=int, default=48, help="row height in pixels (default 48)")
    parser.add_argument("--rgb", action="store_true", help="show colour (default grayscale, as training)")
    args = parser.parse_args(argv)
    if args.num_samples < 1 or args.num_draws < 1 or args.height < 8:
        raise ValueError("--num_samples and --num_draws must be at least 1, --height at least 8.")
    if not args.output.lower().endswith(".png"):
        raise ValueError(f"--output must be a .png file, got {args.output!r}.")
    augment = TextAugment(args.augment_strength, seed=args.seed)

    rows, mode = [], "RGB" if args.rgb else "L"
    config = ModelConfig("None", "VGG", "None", "CTC", character="94_full", batch_max_length=10_000)
    for name, dataset, _, kept in filtered_sources(args.data, "/", config, data_filtering_off=True):
        for row in range(min(len(dataset), args.num_samples - len(rows))):
            sample = dataset[row]
            image = decode_image(sample["image"], mode)
            index = row if kept is None else int(kept[row])
            draws = [augment(image, draw, zlib_key(name), index) for draw in range(args.num_draws)]
            rows.append((f"{name}[{index}] {sample['label']!r}", [image, *draws]))
        if len(rows) >= args.num_samples:
            break
    if not rows:
        raise ValueError(f"No samples under {args.data!r}.")
    grid = render(rows, args.height, mode)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    grid.save(args.output)
    print(f"{len(rows)} samples x {args.num_draws} draws (strength {args.augment_strength}) written to {args.output}")
    return 0


def zlib_key(source: str) -> int:
    import zlib

    return zlib.crc32(source.encode())  # the key TextCollator uses for a source


def render(rows: list[tuple[str, list[Image.Image]]], height: int, mode: str) -> Image.Image:
    scaled = [(label, [im.resize((max(1, round(im.width * height / im.height)), height)) for im in images])
              for label, images in rows]  # fmt: skip
    width = max(sum(im.width + PAD for im in images) for _, images in scaled) + PAD
    grid = Image.new(mode, (width, len(scaled) * (height + 14 + PAD) + PAD), "white")
    draw = ImageDraw.Draw(grid)
    y = PAD
    for label, images in scaled:
        draw.text((PAD, y), label + "   (original, then augmented)", fill="black")
        x = PAD
        for image in images:
            grid.paste(image, (x, y + 14))
            x += image.width + PAD
        y += height + 14 + PAD
    return grid


if __name__ == "__main__":
    sys.exit(run(main))
