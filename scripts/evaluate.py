#!/usr/bin/env python
"""Evaluate a model on every dataset under --eval_data, scored as DTRB's test.py scores it.

    python scripts/evaluate.py --eval_data data_lmdb_release/evaluation --saved_model saved_models/run/best_accuracy
    python scripts/evaluate.py --eval_data eval/ --saved_model TPS-ResNet-BiLSTM-Attn.pth \\
        --Transformation TPS --FeatureExtraction ResNet --SequenceModeling BiLSTM --Prediction Attn

Prints a markdown table per dataset (samples, accuracy, norm_ED, mean confidence, ms/image) and the total weighted
by samples; --output_json writes the same.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch

from text_recognition.cli import add_model_arguments, model_config_from_args, run
from text_recognition.evaluation import evaluate_datasets, results_table, write_results_json
from text_recognition.model import load_model


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eval_data", required=True, help="LMDB tree, datasets folders, or Hub dataset id")
    parser.add_argument("--saved_model", required=True, help="model folder, Hub id, or DTRB .pth")
    parser.add_argument("--batch_size", type=int, default=192, help="evaluation batch size (default 192)")
    parser.add_argument("--workers", type=int, default=4, help="data loading workers (default 4)")
    parser.add_argument("--data_filtering_off", action="store_true", help="keep every sample (DTRB's flag)")
    parser.add_argument("--output_json", help="write the results to this JSON file")
    add_model_arguments(parser)
    args = parser.parse_args(argv)

    model = load_model(args.saved_model, model_config_from_args(args, require_stages=False))
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    results = evaluate_datasets(model, args.eval_data, batch_size=args.batch_size, num_workers=args.workers,
                                data_filtering_off=args.data_filtering_off)  # fmt: skip
    print(f"{args.saved_model}: {model.config.stage_string}, {model.num_parameters:,} parameters")
    print(results_table(results))
    if args.output_json:
        write_results_json(args.output_json, str(args.saved_model), model, results)
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
