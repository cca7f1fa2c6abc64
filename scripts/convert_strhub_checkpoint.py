#!/usr/bin/env python
"""Convert a strhub (baudm/parseq) checkpoint into a model folder (config.json + model.safetensors + model card).

    python scripts/convert_strhub_checkpoint.py --saved_model parseq-bb5792a6.pt --output_dir parseq
    python scripts/convert_strhub_checkpoint.py --saved_model last.ckpt --output_dir parseq_nar \\
        --decode_ar false --refine_iters 2

PARSeq (parseq, parseq-tiny) and ViTSTR, released .pt files or Lightning .ckpt files (with or without the "model."
prefix). The architecture, sizes and charset are read from the keys and shapes, each checked; the flags below
override what the file does not record. The model reads images as strhub's test transform makes them (RGB, 32x128
bicubic, [-1, 1]) and gives strhub's logits.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from text_recognition import TextRecognitionModel
from text_recognition.checkpoints import STRHUB_ARCHITECTURES
from text_recognition.cli import run, str2bool


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--saved_model", required=True, help="the strhub .pt or Lightning .ckpt")
    parser.add_argument("--output_dir", required=True, help="folder to write the converted model to")
    parser.add_argument("--overwrite", action="store_true", help="replace the files of an existing output folder")
    parser.add_argument("--architecture", choices=STRHUB_ARCHITECTURES,
                        help="what the checkpoint must be (default: read from its shapes)")  # fmt: skip
    group = parser.add_argument_group("decoding (PARSeq; recorded in config.json, changeable when loading)")
    group.add_argument("--decode_ar", type=str2bool, help="autoregressive decoding (default true; false: all at once)")
    group.add_argument("--refine_iters", type=int, help="refinement passes after decoding (default 1)")
    group = parser.add_argument_group("what the checkpoint does not record (default: strhub's)")
    group.add_argument("--character", help="the charset in the head's order (default: from the head's size)")
    group.add_argument("--imgH", "--img_h", dest="img_h", type=int, help="image height (default 32)")
    group.add_argument("--imgW", "--img_w", dest="img_w", type=int, help="image width (default 128)")
    group.add_argument("--batch_max_length", type=int, help="ViTSTR: labels' longest length (default 25)")
    group.add_argument("--encoder_heads", type=int, help="ViT heads (default: width / 64)")
    group.add_argument("--decoder_heads", type=int, help="PARSeq decoder heads (default: width / 32)")
    args = parser.parse_args(argv)

    output_dir = Path(args.output_dir)
    if output_dir.exists() and any(output_dir.iterdir()) and not args.overwrite:
        raise ValueError(f"{str(output_dir)!r} exists and is not empty; pass --overwrite to replace its files.")
    overrides = {name: getattr(args, name) for name in ("character", "img_h", "img_w", "batch_max_length",
                                                        "encoder_heads", "decoder_heads")
                 if getattr(args, name) is not None}  # fmt: skip
    model = TextRecognitionModel.from_strhub_checkpoint(args.saved_model, architecture=args.architecture,
                                                        decode_ar=args.decode_ar, refine_iters=args.refine_iters,
                                                        **overrides)  # fmt: skip
    (output_dir / "README.md").unlink(missing_ok=True)  # the card describes this model, not an earlier one
    model.save_pretrained(output_dir, model_card_kwargs={"training": {"converted from": Path(args.saved_model).name}})
    print(f"{model.config.stage_string} ({model.num_parameters:,} parameters) written to {output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
