#!/usr/bin/env python
"""Calibrate a model's confidence: fit a temperature on held-out data and store it in the model's config.json.

    python scripts/calibrate.py --saved_model saved_models/TPS-ResNet-BiLSTM-Attn-Seed1111/best_accuracy \\
        --data data_lmdb_release/validation
    python scripts/calibrate.py --saved_model user/repo --data my_val_lmdb --output_dir calibrated_model

The temperature T divides the logits before the softmax: predictions do not change, confidences do. It is fitted to
minimise the log loss of "the word is right" under --protocol (default dtrb with --sensitive/--data_filtering_off
as given), and the expected calibration error (15 bins) is printed before and after, with the coverage at 95 % and
99 % accuracy. Fit it on data the model was not trained on (a validation split), not on a test benchmark.

--saved_model is a model folder (updated in place unless --output_dir), a Hub id, or a DTRB .pth with its model
flags (both need --output_dir), or an exported .onnx, run by onnxruntime: its temperature goes to its sidecar
(FILE.onnx.json; with --output_dir, the file and its new sidecar are written there). --data is an LMDB tree, datasets folders or a Hub dataset; every source under it
counts (--select_data narrows it, as in train.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from text_recognition.cli import (
    add_model_arguments,
    apply_decoding_flags,
    check_model_flags,
    model_config_from_args,
    run,
)
from text_recognition.data.loaders import build_eval_data
from text_recognition.evaluation import calibrate, write_temperature
from text_recognition.loading import is_dtrb_checkpoint, load_model
from text_recognition.metrics import PROTOCOLS, Protocol
from text_recognition.onnx_model import sidecar_path, write_onnx_temperature


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--saved_model", required=True, help="model folder, Hub id, DTRB .pth, or exported .onnx")
    parser.add_argument("--data", required=True, help="held-out data: LMDB tree, datasets folders, or Hub dataset id")
    parser.add_argument("--select_data", default="/", help="sources under --data to use (default: all)")
    parser.add_argument("--output_dir", help="write the calibrated model here (default: update --saved_model)")
    parser.add_argument("--batch_size", type=int, default=192, help="batch size (default 192)")
    parser.add_argument("--workers", type=int, default=4, help="data loading workers (default 4)")
    parser.add_argument("--data_filtering_off", action="store_true", help="keep every sample (DTRB's flag)")
    parser.add_argument("--protocol", default="dtrb", choices=PROTOCOLS,
                        help="how a prediction is judged right (as in scripts/test.py; default dtrb)")
    parser.add_argument("--output_json", help="also write the measurements to this JSON file")
    add_model_arguments(parser)
    args = parser.parse_args(argv)

    source = Path(args.saved_model)
    exported = source.suffix.lower() == ".onnx"
    if not source.is_dir() and not exported and not args.output_dir:
        raise ValueError(f"--saved_model {args.saved_model!r} is not a local model folder: give --output_dir for "
                         f"the calibrated copy.")  # fmt: skip
    model = load_model(args.saved_model, model_config_from_args(args, require_stages=False))
    if not is_dtrb_checkpoint(args.saved_model):
        check_model_flags(args, model.config, repr(args.saved_model), evaluation_flags=("sensitive",))
    apply_decoding_flags(args, model)
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    protocol = Protocol(args.protocol, args.sensitive, args.data_filtering_off)
    rules = dataclasses.replace(model.config, sensitive=protocol.sensitive)  # DTRB's data rules for the flags
    data = build_eval_data(args.data, rules, select_data=args.select_data, data_filtering_off=args.data_filtering_off)
    result = calibrate(model, data, protocol, batch_size=args.batch_size, num_workers=args.workers)
    if exported:  # the temperature lives in the sidecar; the graph does not change
        target_file = write_onnx_temperature(source, result.temperature, args.output_dir)
        target = target_file.parent
        written = sidecar_path(target_file)
    elif args.output_dir:
        model.config = model._hub_mixin_config = dataclasses.replace(model.config, temperature=result.temperature)
        model.save_pretrained(args.output_dir)
        target = Path(args.output_dir)
    else:
        write_temperature(source, result.temperature)
        target = source
    if not exported:
        written = target / "config.json"
    print(f"{args.saved_model}: {result.summary()}\ntemperature written to {written}")
    if args.output_json:
        Path(args.output_json).write_text(json.dumps({
            "model": str(args.saved_model), "data": str(args.data), "protocol": protocol.description,
            "num_samples": result.num_samples, "temperature": result.temperature,
            "previous_temperature": result.previous_temperature,
            "ece_before": result.ece_before, "ece_after": result.ece_after, "selective": result.selective,
        }, indent=2) + "\n")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
