#!/usr/bin/env python
"""Export a model to ONNX and check the file against PyTorch with onnxruntime.

    python scripts/export_onnx.py --saved_model user/repo --output model.onnx
    python scripts/export_onnx.py --saved_model TPS-ResNet-BiLSTM-Attn.pth --output trba.onnx \\
        --Transformation TPS --FeatureExtraction ResNet --SequenceModeling BiLSTM --Prediction Attn

--saved_model is a model folder, a Hub id, or a DTRB .pth with its model flags. Writes FILE.onnx (input
pixel_values [B, C, imgH, imgW], output logits [B, T, num_class]) and FILE.onnx.json (charset, special tokens and
preprocessing, for decoding). The check runs on --check_images, or on rendered synthetic words; a difference beyond
--atol exits 1 and names the first image, step and class, and the first stage, whose export differs. With
--quantize int8 --calibration_data DIR|synth, the checked fp32 graph is quantized by onnxruntime (static int8,
calibrated on those images) into --output; its sidecar records how. Any .onnx written here is a model for
scripts/test.py, demo.py and calibrate.py (--saved_model FILE.onnx). An attention
model whose greedy decoding takes another branch at a near-tie (two logits within 2 x --atol, which rounding may
flip) is compared on onnxruntime's own path after it, and the near-tie is listed. Needs: pip install
'text_recognition[onnx]'.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from text_recognition.cli import (
    add_decoding_arguments,
    add_model_arguments,
    apply_decoding_flags,
    check_model_flags,
    decoding_options_from_args,
    model_config_from_args,
    run,
)
from text_recognition.export import DEFAULT_OPSET, export_onnx, load_check_images, sidecar_path, verify_onnx
from text_recognition.loading import is_dtrb_checkpoint, load_model
from text_recognition.onnx_model import OnnxModel
from text_recognition.quantize import (
    DEFAULT_CALIBRATION_IMAGES,
    compare_exports,
    load_calibration_images,
    quantize_onnx,
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--saved_model", required=True, help="model folder, Hub id, or DTRB .pth")
    parser.add_argument("--output", required=True, help="the .onnx file to write (the sidecar goes to FILE.json)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (default 17; TPS needs >= 16)")
    parser.add_argument("--check_images", help="folder of word images to check on (default: synthetic words)")
    parser.add_argument("--num_check_images", type=int, default=8, help="images used by the check (default 8)")
    parser.add_argument("--atol", type=float, default=1e-4, help="largest accepted logit difference (default 1e-4)")
    parser.add_argument("--quantize", choices=["int8"],
                        help="write an int8 file: the fp32 export is checked as usual, then quantized by onnxruntime "
                             "(static, calibrated on --calibration_data)")  # fmt: skip
    parser.add_argument("--calibration_data", metavar="DIR",
                        help="with --quantize: a folder of word images, an LMDB tree, or 'synth' (words rendered by "
                             "the realistic engine in the model's charset)")  # fmt: skip
    parser.add_argument("--num_calibration_images", type=int, default=DEFAULT_CALIBRATION_IMAGES,
                        help=f"images to calibrate on (default {DEFAULT_CALIBRATION_IMAGES})")
    add_model_arguments(parser)
    add_decoding_arguments(parser)  # recorded in the sidecar for a consumer's decoder; the graph stays greedy
    args = parser.parse_args(argv)
    if args.num_check_images < 1:
        raise ValueError(f"--num_check_images must be at least 1, got {args.num_check_images}.")
    if not 0 < args.atol < float("inf"):  # a negative or NaN tolerance would fail every check, blamed on a stage
        raise ValueError(f"--atol must be a positive number, got {args.atol:g} (default 1e-4).")
    if args.quantize and not args.calibration_data:
        raise ValueError("--quantize int8 needs --calibration_data: a folder of word images like those the model will "
                         "read, an LMDB tree, or 'synth' for rendered words.")  # fmt: skip
    if args.calibration_data and not args.quantize:
        raise ValueError("--calibration_data is used by --quantize int8 only: add --quantize int8, or leave it out.")
    if args.num_calibration_images < 1:
        raise ValueError(f"--num_calibration_images must be at least 1, got {args.num_calibration_images}.")
    if Path(args.output).suffix.lower() != ".onnx":
        raise ValueError(f"--output must end with .onnx (test.py, demo.py and calibrate.py recognise exports by it), "
                         f"got {args.output!r}.")  # fmt: skip

    config = model_config_from_args(args, require_stages=False)
    model = load_model(args.saved_model, config)
    if config is None or not is_dtrb_checkpoint(args.saved_model):  # a folder, Hub id or .onnx: flags must agree
        check_model_flags(args, model.config, repr(args.saved_model))
    apply_decoding_flags(args, model)  # PARSeq's mode is exported as set (an .onnx refuses a new one)
    if isinstance(model, OnnxModel):
        return quantize_export(model, args)
    skipped: list[str] = []
    images = load_check_images(model.config, args.check_images, args.num_check_images, skipped=skipped)
    for reason in skipped:  # as demo.py: an image that does not decode is reported and passed over
        print(f"skipped (cannot be decoded): {reason}", file=sys.stderr)
    calibration = None
    if args.quantize:  # read before anything is written: unusable calibration data fails here
        skipped = []
        calibration = load_calibration_images(model.config, args.calibration_data, args.num_calibration_images,
                                              skipped=skipped)  # fmt: skip
        for reason in skipped:
            print(f"skipped calibration image (cannot be decoded): {reason}", file=sys.stderr)
    output = Path(args.output)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=output.parent if output.parent.is_dir() else None) as tmp:
        # int8: the fp32 export is made and checked in a temporary folder, then quantized to --output
        fp32_output = Path(tmp) / output.name if args.quantize else output
        path = export_onnx(model, fp32_output, opset=args.opset, decoding=decoding_options_from_args(args))
        report = verify_onnx(model, path, images, atol=args.atol)
        if args.quantize:
            path = quantize_onnx(path, output, calibration, calibration_source=str(args.calibration_data))
            agreement = compare_exports(fp32_output, path, images)

    texts = "identical" if report["texts_match"] else "DIFFERENT (at a near-tie, listed below)"
    print(f"exported {model.config.stage_string} (opset {args.opset}) to {path}, decoding metadata in "
          f"{sidecar_path(path)}")  # fmt: skip
    if args.quantize:
        print_int8_summary(path, calibration.size(0), args.calibration_data, agreement)
        print("the fp32 graph it was quantized from passed the check below:")
    print(f"onnxruntime vs PyTorch on {report['num_images']} images: max abs diff {report['max_abs_diff']:.2e} "
          f"(tolerance {args.atol:g}); greedy texts {texts}")  # fmt: skip
    tokens = model.tokenizer.tokens
    for tie in report["near_ties"]:
        print(f"near-tie (float32 rounding, not an export error): image {tie['image']} step {tie['step']}: PyTorch "
              f"chose {tokens[tie['pytorch_id']]!r}, onnxruntime {tokens[tie['onnx_id']]!r}, {tie['margin']:.1e} "
              f"apart; later steps compared on onnxruntime's path")  # fmt: skip
    return 0


def quantize_export(model: OnnxModel, args: argparse.Namespace) -> int:
    """--saved_model FILE.onnx: quantize an existing fp32 export (with --quantize int8); nothing else applies."""
    if not args.quantize:
        raise ValueError(f"{args.saved_model!r} is already an ONNX export: give the PyTorch model (folder, Hub id or "
                         f".pth) to export it, or add --quantize int8 --calibration_data DIR to quantize this "
                         f"file.")  # fmt: skip
    skipped: list[str] = []
    calibration = load_calibration_images(model.config, args.calibration_data, args.num_calibration_images,
                                          skipped=skipped)  # fmt: skip
    for reason in skipped:
        print(f"skipped calibration image (cannot be decoded): {reason}", file=sys.stderr)
    images = load_check_images(model.config, args.check_images, args.num_check_images)
    path = quantize_onnx(model.path, args.output, calibration, calibration_source=str(args.calibration_data))
    agreement = compare_exports(model.path, path, images)
    print_int8_summary(path, calibration.size(0), args.calibration_data, agreement)
    return 0


def print_int8_summary(path: Path, num_images: int, source: str, agreement: dict) -> None:
    quantization = OnnxModel(path).quantization
    kept = [*quantization["fp32_ops"], *(f"{kind} ({len(names)} node{'s' * (len(names) > 1)})"
                                         for kind, names in quantization["fp32_nodes"].items())]  # fmt: skip
    print(f"int8: {path}, static quantization calibrated on {num_images} images from {source} (kept in fp32: "
          f"{'; '.join(kept) or 'nothing'}); on the {agreement['num_images']} check images it reads "
          f"{agreement['same_texts']} the same "
          f"as fp32 (max abs logit difference {agreement['max_abs_diff']:.2g}). Score it on real words: "
          f"scripts/test.py --saved_model {path} --eval_data ...")  # fmt: skip


if __name__ == "__main__":
    sys.exit(run(main))
