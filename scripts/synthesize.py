#!/usr/bin/env python
"""Render synthetic word images into a DTRB LMDB, a saved datasets.Dataset, or image files + a gt.txt.

    python scripts/synthesize.py --output data/synth_train --num_samples 20000
    python scripts/synthesize.py --output data/synth_val --num_samples 1000 --seed 1 --format datasets \\
        --character 94_full --case mixed --fonts /usr/share/fonts/truetype/dejavu --rgb

Sample i depends only on (--seed, i): use a different --seed for a held-out set.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from text_recognition.cli import run
from text_recognition.config import CHARSET_36
from text_recognition.data.synth import CASES, IMAGE_FORMATS, SyntheticWords


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, type=Path, help="new LMDB or dataset folder (must not exist)")
    parser.add_argument("--format", choices=["lmdb", "datasets", "folder"], default="lmdb",
                        help="an LMDB, a datasets folder, or image files + gt.txt (default lmdb)")  # fmt: skip
    parser.add_argument("--num_samples", required=True, type=int, help="number of images")
    parser.add_argument("--character", default=CHARSET_36, help="charset, 36_lowercase or 94_full (default 0-9a-z)")
    parser.add_argument("--min_length", type=int, default=3, help="shortest random word (default 3)")
    parser.add_argument("--max_length", type=int, default=10, help="longest random word (default 10)")
    parser.add_argument("--word_list", type=Path, help="UTF-8 file of words, one per line, instead of random strings")
    parser.add_argument("--fonts", nargs="+", help=".ttf/.otf files or folders (default: Pillow's built-in font)")
    parser.add_argument("--font_size", nargs=2, type=int, default=(22, 30), metavar=("MIN", "MAX"))
    parser.add_argument("--height", type=int, default=32, help="image height in pixels (default 32)")
    parser.add_argument("--rotation", type=float, default=2.0, help="max absolute rotation in degrees (default 2)")
    parser.add_argument("--blur", type=float, default=0.6, help="max Gaussian blur radius (default 0.6)")
    parser.add_argument("--noise", type=float, default=6.0, help="max std of pixel noise, 0-255 (default 6)")
    parser.add_argument("--rgb", action="store_true", help="coloured images instead of grayscale")
    parser.add_argument("--case", choices=CASES, default="as_is", help="change the case of every word")
    parser.add_argument("--image_format", choices=IMAGE_FORMATS, type=str.upper, default="PNG")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if args.num_samples < 1:
        raise ValueError(f"--num_samples must be positive, got {args.num_samples}.")
    if args.output.exists() and (not args.output.is_dir() or any(args.output.iterdir())):
        raise ValueError(f"{str(args.output)!r} already exists and is not empty; choose another --output.")
    words = None
    if args.word_list is not None:
        lines = args.word_list.read_text(encoding="utf-8-sig").splitlines()
        words = [line.strip() for line in lines if line.strip()]
        if not words:
            raise ValueError(f"The word list {str(args.word_list)!r} has no words.")
    synth = SyntheticWords(
        charset=args.character, min_length=args.min_length, max_length=args.max_length, words=words,
        fonts=args.fonts, font_size=tuple(args.font_size), height=args.height, rotation=args.rotation, blur=args.blur,
        noise=args.noise, rgb=args.rgb, case=args.case, image_format=args.image_format, seed=args.seed,
    )  # fmt: skip
    if args.format == "lmdb":
        count = synth.write_lmdb(args.output, args.num_samples)
    elif args.format == "folder":
        count = synth.write_folder(args.output, args.num_samples)
    else:
        synth.save_dataset(args.output, args.num_samples)
        count = args.num_samples
    print(f"wrote {count} synthetic word images to {args.output} ({args.format}, {args.image_format})")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
