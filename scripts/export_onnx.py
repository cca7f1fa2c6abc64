#!/usr/bin/env python
"""Export a model to ONNX and check the file against PyTorch with onnxruntime.

    python scripts/export_onnx.py --saved_model user/repo --output model.onnx
    python scripts/export_onnx.py --saved_model TPS-ResNet-BiLSTM-Attn.pth --output trba.onnx \\
        --Transformation TPS --FeatureExtraction ResNet --SequenceModeling BiLSTM --Prediction Attn

--saved_model is a model folder, a Hub id, or a DTRB .pth with its model flags. Writes FILE.onnx (input
pixel_values [B, C, imgH, imgW], output logits [B, T, num_class]) and FILE.onnx.json (charset, special tokens and
preprocessing, for decoding). The check runs on --check_images, or on rendered synthetic words; a difference beyond
--atol exits 1 and names the first image, step and class, and the first stage, whose export differs. An attention
model whose greedy decoding takes another branch at a near-tie (two logits within 2 x --atol, which rounding may
flip) is compared on onnxruntime's own path after it, and the near-tie is listed. Needs: pip install
'text_recognition[onnx]'.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from text_recognition.cli import (
    add_decoding_arguments,
    add_model_arguments,
    check_model_flags,
    decoding_options_from_args,
    model_config_from_args,
    run,
)
from text_recognition.export import DEFAULT_OPSET, export_onnx, load_check_images, sidecar_path, verify_onnx
from text_recognition.model import load_model


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--saved_model", required=True, help="model folder, Hub id, or DTRB .pth")
    parser.add_argument("--output", required=True, help="the .onnx file to write (the sidecar goes to FILE.json)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (default 17; TPS needs >= 16)")
    parser.add_argument("--check_images", help="folder of word images to check on (default: synthetic words)")
    parser.add_argument("--num_check_images", type=int, default=8, help="images used by the check (default 8)")
    parser.add_argument("--atol", type=float, default=1e-4, help="largest accepted logit difference (default 1e-4)")
    add_model_arguments(parser)
    add_decoding_arguments(parser)  # recorded in the sidecar for a consumer's decoder; the graph stays greedy
    args = parser.parse_args(argv)
    if args.num_check_images < 1:
        raise ValueError(f"--num_check_images must be at least 1, got {args.num_check_images}.")
    if not 0 < args.atol < float("inf"):  # a negative or NaN tolerance would fail every check, blamed on a stage
        raise ValueError(f"--atol must be a positive number, got {args.atol:g} (default 1e-4).")

    config = model_config_from_args(args, require_stages=False)
    model = load_model(args.saved_model, config)
    if config is None or not Path(args.saved_model).is_file():  # a folder or Hub id: flags must agree with it
        check_model_flags(args, model.config, repr(args.saved_model))
    skipped: list[str] = []
    images = load_check_images(model.config, args.check_images, args.num_check_images, skipped=skipped)
    for reason in skipped:  # as demo.py: an image that does not decode is reported and passed over
        print(f"skipped (cannot be decoded): {reason}", file=sys.stderr)
    path = export_onnx(model, args.output, opset=args.opset, decoding=decoding_options_from_args(args))
    report = verify_onnx(model, path, images, atol=args.atol)

    texts = "identical" if report["texts_match"] else "DIFFERENT (at a near-tie, listed below)"
    print(f"exported {model.config.stage_string} (opset {args.opset}) to {path}, decoding metadata in "
          f"{sidecar_path(path)}")  # fmt: skip
    print(f"onnxruntime vs PyTorch on {report['num_images']} images: max abs diff {report['max_abs_diff']:.2e} "
          f"(tolerance {args.atol:g}); greedy texts {texts}")  # fmt: skip
    tokens = model.tokenizer.tokens
    for tie in report["near_ties"]:
        print(f"near-tie (float32 rounding, not an export error): image {tie['image']} step {tie['step']}: PyTorch "
              f"chose {tokens[tie['pytorch_id']]!r}, onnxruntime {tokens[tie['onnx_id']]!r}, {tie['margin']:.1e} "
              f"apart; later steps compared on onnxruntime's path")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
