#!/usr/bin/env python
"""Read every word image in a folder, as DTRB's demo.py: prints and appends to ./log_demo_result.txt.

    python scripts/demo.py --image_folder demo_image/ --saved_model user/repo
    python scripts/demo.py --image_folder demo_image/ --saved_model TPS-ResNet-BiLSTM-Attn.pth \\
        --Transformation TPS --FeatureExtraction ResNet --SequenceModeling BiLSTM --Prediction Attn

--saved_model is a model folder, a Hub id, a DTRB .pth with its model flags, or an exported .onnx (fp32 or int8,
with its sidecar .onnx.json), run by onnxruntime.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from text_recognition.cli import (
    add_decoding_arguments,
    add_model_arguments,
    add_speed_arguments,
    apply_decoding_flags,
    check_model_flags,
    decoding_options_from_args,
    model_config_from_args,
    run,
)
from text_recognition.inference import find_images, recognize_files
from text_recognition.loading import is_dtrb_checkpoint, load_model

LOG_FILE = "log_demo_result.txt"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image_folder", required=True, help="folder of .jpg/.jpeg/.png word images (recursive)")
    parser.add_argument("--saved_model", required=True, help="model folder, Hub id, DTRB .pth, or exported .onnx")
    parser.add_argument("--batch_size", type=int, default=192, help="images per forward pass (default 192)")
    parser.add_argument("--workers", type=int, default=4, help="image-decoding worker processes (default 4)")
    parser.add_argument("--output", help="also write the results to FILE.tsv (path, text, confidence) or FILE.json")
    add_model_arguments(parser)
    add_decoding_arguments(parser)
    add_speed_arguments(parser)
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        raise ValueError(f"--batch_size must be at least 1, got {args.batch_size}.")
    if args.workers < 0:
        raise ValueError(f"--workers must be 0 (decode in this process) or more, got {args.workers}.")

    config = model_config_from_args(args, require_stages=False)
    model = load_model(args.saved_model, config).to("cuda" if torch.cuda.is_available() else "cpu")
    if config is None or not is_dtrb_checkpoint(args.saved_model):  # a folder, Hub id or .onnx: flags must agree
        check_model_flags(args, model.config, repr(args.saved_model))
    apply_decoding_flags(args, model)
    if args.output and not args.output.endswith((".tsv", ".json")):
        raise ValueError(f"--output must end with .tsv or .json, got {args.output!r}.")
    decoding = decoding_options_from_args(args)
    model.decoder(decoding)  # impossible constraints fail here, before any image is read
    paths = find_images(args.image_folder)
    if not paths:
        raise ValueError(f"No .jpg/.jpeg/.png images under {args.image_folder!r}.")

    dashed_line = "-" * 80
    head = f"{'image_path':25s}\t{'predicted_labels':25s}\tconfidence score"
    failures, abstained, rows = 0, 0, []
    with open(LOG_FILE, "a", encoding="utf-8") as log:
        print(f"{dashed_line}\n{head}\n{dashed_line}")
        log.write(f"{dashed_line}\n{head}\n{dashed_line}\n")
        for result in recognize_files(model, paths, args.batch_size, args.workers, decoding,
                                      precision=args.precision, compile=args.compile):
            if result.error:
                failures += 1
                print(f"skipped {result.path}: {result.error}", file=sys.stderr)
                continue
            line = f"{str(result.path):25s}\t{result.recognition.text:25s}\t{result.recognition.confidence:0.4f}"
            if result.recognition.abstained:
                abstained += 1
                line += "\tabstained"
            print(line)
            log.write(line + "\n")
            rows.append({"image_path": str(result.path), "text": result.recognition.text,
                         "confidence": result.recognition.confidence,
                         "abstained": result.recognition.abstained})  # fmt: skip
    if args.output:
        write_results(args.output, rows)
    if abstained:
        print(f"abstained on {abstained} of {len(paths)} images (confidence below --min_confidence, or no reading "
              f"within the constraints)", file=sys.stderr)  # fmt: skip
    if failures == len(paths):
        raise ValueError(f"None of the {len(paths)} images under {args.image_folder!r} could be decoded (each is "
                         f"listed above): nothing was recognised.")  # fmt: skip
    if failures:
        print(f"{failures} of {len(paths)} images could not be decoded (listed above)", file=sys.stderr)
    return 0


def write_results(path: str, rows: list[dict]) -> None:
    output = Path(path)
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix == ".json":
        output.write_text(json.dumps(rows, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    else:
        lines = ["image_path\ttext\tconfidence\tabstained"] + [
            f"{r['image_path']}\t{r['text']}\t{r['confidence']:.6f}\t{str(r['abstained']).lower()}" for r in rows
        ]
        output.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(run(main))
