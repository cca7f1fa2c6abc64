#!/usr/bin/env python
"""Render synthetic word images into a DTRB LMDB, a saved datasets.Dataset, image files + a gt.txt, or Parquet files
laid out as a Hub dataset repo.

    python scripts/synthesize.py --output data/synth_train --num_samples 20000
    python scripts/synthesize.py --engine realistic --output data/real_like --num_samples 100000 --character 94_full
    python scripts/synthesize.py --engine realistic --languages de --format parquet --num_samples 50000 \\
        --character "0123456789abcdefghijklmnopqrstuvwxyzäöüß" --output data/synth_de
    python scripts/synthesize.py --engine realistic --options synth.json --output data/custom --num_samples 1000

Two engines: ``simple`` (the default; random strings or a word list, one font, flat backgrounds, fast) and
``realistic`` (words by real frequency from wordfreq, 56 pip-installed font families with checked glyphs, photographs
and textures, geometry, clutter and camera effects: the images that transfer to real photographs; it needs
``pip install 'text_recognition[synth]'``). ``--options`` takes a JSON file (or string) of RealisticWords options, the
same dict a training source is described by; flags given on the command line win over it.

Sample i depends only on (--seed, i): use a different --seed for a held-out set.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from text_recognition.cli import run
from text_recognition.config import CHARSET_36
from text_recognition.data.synth import CASES, IMAGE_FORMATS, RealisticWords, SyntheticWords

SIMPLE_ONLY = ("min_length", "font_size", "rotation", "blur", "noise", "case")
REALISTIC_ONLY = ("languages", "lexicon_size", "textures", "effects", "options")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, type=Path, help="new output folder (must not exist or be empty)")
    parser.add_argument("--format", choices=["lmdb", "datasets", "folder", "parquet"], default="lmdb",
                        help="an LMDB, a datasets folder, image files + gt.txt, or a Parquet dataset repo "
                             "(default lmdb)")  # fmt: skip
    parser.add_argument("--num_samples", required=True, type=int, help="number of images")
    parser.add_argument("--engine", choices=["simple", "realistic"], default="simple",
                        help="simple (default: fast, plain) or realistic (scene text; synth extra)")  # fmt: skip
    parser.add_argument("--character", help="charset, 36_lowercase or 94_full (default 0-9a-z)")
    parser.add_argument("--max_length", type=int, help="longest word (default: simple 10, realistic 25)")
    parser.add_argument("--word_list", type=Path, help="UTF-8 file of words, one per line (realistic: word<TAB>count)")
    parser.add_argument("--fonts", nargs="+",
                        help=".ttf/.otf files or folders (simple default: Pillow's built-in font; realistic default: "
                             "the packaged families, which 'packaged' names among others)")  # fmt: skip
    parser.add_argument("--height", type=int, help="image height in pixels (default 32)")
    parser.add_argument("--rgb", action="store_true", default=None, help="coloured images instead of grayscale")
    parser.add_argument("--image_format", choices=IMAGE_FORMATS, type=str.upper, help="PNG (default) or JPEG")
    parser.add_argument("--seed", type=int, help="with the sample index, the only source of randomness (default 0)")
    simple = parser.add_argument_group("simple engine only")
    simple.add_argument("--min_length", type=int, help="shortest random word (default 3)")
    simple.add_argument("--font_size", nargs=2, type=int, metavar=("MIN", "MAX"), help="font sizes (default 22 30)")
    simple.add_argument("--rotation", type=float, help="max absolute rotation in degrees (default 2)")
    simple.add_argument("--blur", type=float, help="max Gaussian blur radius (default 0.6)")
    simple.add_argument("--noise", type=float, help="max std of pixel noise, 0-255 (default 6)")
    simple.add_argument("--case", choices=CASES, help="change the case of every word (default as_is)")
    realistic = parser.add_argument_group("realistic engine only")
    realistic.add_argument("--languages", nargs="+", help="wordfreq languages of the lexicon (default en)")
    realistic.add_argument("--lexicon_size", type=int, help="most frequent words per language (default 50000)")
    realistic.add_argument("--textures", nargs="*",
                           help="background images: files, folders, 'packaged' (the default); "
                                "none: procedural only")  # fmt: skip
    realistic.add_argument("--effects", help='JSON probabilities of effects, e.g. \'{"curve": 0.3, "jpeg": 0.8}\'')
    realistic.add_argument("--options", help="JSON file or string of RealisticWords options (flags win over it)")
    args = parser.parse_args(argv)

    if args.num_samples < 1:
        raise ValueError(f"--num_samples must be positive, got {args.num_samples}.")
    if args.output.exists() and (not args.output.is_dir() or any(args.output.iterdir())):
        raise ValueError(f"{str(args.output)!r} already exists and is not empty; choose another --output.")
    synth = build_realistic(args) if args.engine == "realistic" else build_simple(args)
    if args.format == "lmdb":
        count = synth.write_lmdb(args.output, args.num_samples)
    elif args.format == "folder":
        count = synth.write_folder(args.output, args.num_samples)
    elif args.format == "parquet":
        synth.write_parquet(args.output, args.num_samples)
        count = args.num_samples
    else:
        synth.save_dataset(args.output, args.num_samples)
        count = args.num_samples
    print(f"wrote {count} synthetic word images to {args.output} ({args.format}, {synth.image_format})")
    return 0


def build_simple(args: argparse.Namespace) -> SyntheticWords:
    _refuse(args, REALISTIC_ONLY, "realistic")
    words = None
    if args.word_list is not None:
        lines = args.word_list.read_text(encoding="utf-8-sig").splitlines()
        words = [line.strip() for line in lines if line.strip()]
        if not words:
            raise ValueError(f"The word list {str(args.word_list)!r} has no words.")
    settings = {
        "charset": args.character, "min_length": args.min_length, "max_length": args.max_length, "words": words,
        "fonts": args.fonts, "font_size": None if args.font_size is None else tuple(args.font_size),
        "height": args.height, "rotation": args.rotation, "blur": args.blur, "noise": args.noise, "rgb": args.rgb,
        "case": args.case, "image_format": args.image_format, "seed": args.seed,
    }  # fmt: skip
    given = {name: value for name, value in settings.items() if value is not None}
    return SyntheticWords(**{"charset": CHARSET_36, **given})


def build_realistic(args: argparse.Namespace) -> RealisticWords:
    _refuse(args, SIMPLE_ONLY, "simple")
    options = {}
    if args.options is not None:
        path = Path(args.options)
        text = path.read_text(encoding="utf-8") if path.is_file() else args.options
        try:
            options = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"--options is neither a JSON file nor a JSON object ({error}); check it.") from None
        if not isinstance(options, dict):
            raise ValueError('--options must hold a JSON object of RealisticWords options, e.g. {"rgb": true}.')
    effects = None
    if args.effects is not None:
        try:
            effects = json.loads(args.effects)
        except json.JSONDecodeError as error:
            raise ValueError(f"--effects is not JSON ({error}); write e.g. '{{\"curve\": 0.3}}'.") from None
    flags = {
        "charset": args.character, "max_length": args.max_length, "languages": args.languages,
        "words": None if args.word_list is None else str(args.word_list), "lexicon_size": args.lexicon_size,
        "fonts": args.fonts, "textures": args.textures, "effects": effects, "height": args.height, "rgb": args.rgb,
        "image_format": args.image_format, "seed": args.seed,
    }  # fmt: skip
    options.update({name: value for name, value in flags.items() if value is not None})
    return RealisticWords(**options)


def _refuse(args: argparse.Namespace, names: tuple[str, ...], engine: str) -> None:
    given = [f"--{name}" for name in names if getattr(args, name) is not None]
    if given:
        raise ValueError(f"{', '.join(given)} only apply to --engine {engine}; drop them or add --engine {engine}.")


if __name__ == "__main__":
    sys.exit(run(main))
