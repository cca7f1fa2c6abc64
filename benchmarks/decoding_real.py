#!/usr/bin/env python
"""Decoding and confidence on real words: EasyOCR's english_g2 (a trained DTRB None-VGG-BiLSTM-CTC) on the held-out
10 % of each real training split in ``../shared/data/real_train`` (the same cut as ``finetune_real.py``).

    python benchmarks/decoding_real.py [--runs 3] [--output_json decoding.json]

Measures, under the ``dtrb`` protocol with ``--sensitive --data_filtering_off`` (the data README's reference):
- word accuracy and ms/image (forward pass and search, batch 192, median and range of ``--runs`` runs) of greedy
  decoding, CTC prefix beam search of width 5, and beam search 5 constrained to a lexicon made of the held-out
  part's words plus 1,000 distractors (other real words of the training part, none of them a held-out word);
- the confidence temperature fitted on the training part (never on the held-out words), and on the held-out part
  the ECE (15 bins) before and after it, AURC, and the coverage at 95 % accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from finetune_real import G2_CHARSET, SHARED, split_sources  # noqa: E402

from text_recognition import ModelConfig, TextRecognitionModel  # noqa: E402
from text_recognition.calibration import aurc, confidences_at, coverage_at_accuracy  # noqa: E402
from text_recognition.calibration import expected_calibration_error  # noqa: E402
from text_recognition.data.lmdb import LmdbReader, find_sources  # noqa: E402
from text_recognition.data.loaders import build_eval_data  # noqa: E402
from text_recognition.decoding import DecodingOptions  # noqa: E402
from text_recognition.evaluation import calibrate, evaluate, is_correct, predict_records  # noqa: E402
from text_recognition.evaluation import weighted_accuracy  # noqa: E402
from text_recognition.metrics import Protocol  # noqa: E402

G2 = ModelConfig("None", "VGG", "BiLSTM", "CTC", output_channel=256, hidden_size=256, img_h=64, img_w=256, pad=True,
                 character=G2_CHARSET)  # fmt: skip
PROTOCOL = Protocol("dtrb", sensitive=True, data_filtering_off=True)


def labels_of(root: Path) -> list[str]:
    words = []
    for source in find_sources(root).values():
        with LmdbReader(source) as reader:
            words += list(reader.labels())
    return words


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--output_json")
    args = parser.parse_args()
    weights = SHARED / "weights" / "english_g2.pth"
    if not weights.is_file():
        sys.exit(f"real data not found: {SHARED} (weights/english_g2.pth, real_train/)")
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    model = TextRecognitionModel.from_dtrb_checkpoint(weights, G2)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        sizes = split_sources(root)
        heldout, train = root / "heldout", root / "train"
        held_words = labels_of(heldout)
        rng = np.random.default_rng(0)
        others = sorted(set(labels_of(train)) - set(held_words))
        distractors = [others[i] for i in rng.permutation(len(others))[:1000]]
        lexicon = tuple(dict.fromkeys(held_words + distractors))
        settings = {"greedy": DecodingOptions(), "beam 5": DecodingOptions(beam_width=5),
                    "beam 5 + lexicon": DecodingOptions(beam_width=5, lexicon=lexicon)}  # fmt: skip
        rows = {}
        for name, options in settings.items():
            times, accuracy = [], None
            for _ in range(args.runs):
                report = evaluate(model, heldout, protocol=PROTOCOL, timing_samples=0, decoding=options)
                accuracy = weighted_accuracy(report.results)
                times.append(report.averaged_infer_time)
            rows[name] = {"accuracy": accuracy, "ms_per_image": statistics.median(times),
                          "ms_range": [min(times), max(times)],
                          "by_set": {r.dataset: r.accuracy for r in report.results}}  # fmt: skip
            print(f"{name}: {accuracy:.3f} %, {statistics.median(times):.2f} ms/image "
                  f"({min(times):.2f}-{max(times):.2f})", flush=True)  # fmt: skip

        rules = ModelConfig.from_dict({**G2.to_dict(), "sensitive": True})
        fit = calibrate(model, build_eval_data(train, rules, data_filtering_off=True), PROTOCOL)
        held = build_eval_data(heldout, rules, data_filtering_off=True)
        rows_held: list[torch.Tensor] = []
        records, _, _ = predict_records(model, held, list(range(len(held.dataset))), 192, device=torch.device("cpu"),
                                        logit_rows=rows_held)  # fmt: skip
        correct = [is_correct(r, PROTOCOL) for r in records]
        result = {}
        for label, temperature in (("T = 1", 1.0), (f"T = {fit.temperature:.3f} (fitted on the training part)",
                                                     fit.temperature)):  # fmt: skip
            confidences = confidences_at(rows_held, temperature)
            result[label] = {"ece": expected_calibration_error(confidences, correct),
                             "aurc": aurc(confidences, correct),
                             "coverage_at_95": coverage_at_accuracy(confidences, correct, 0.95),
                             "coverage_at_99": coverage_at_accuracy(confidences, correct, 0.99)}  # fmt: skip
    print(f"\nheld-out samples: {sum(v for k, v in sizes.items() if k.startswith('heldout'))}; lexicon: "
          f"{len(lexicon)} words ({len(set(held_words))} held-out words + {len(distractors)} distractors)")
    print("\n| decoding | word accuracy (%) | ms/image, median (range) |\n|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['accuracy']:.3f} | {row['ms_per_image']:.2f} ({row['ms_range'][0]:.2f}-"
              f"{row['ms_range'][1]:.2f}) |")
    print(f"\ntemperature fitted on the training part ({fit.num_samples} samples): {fit.temperature:.4f}")
    print("\n| confidence | ECE (15 bins) | AURC | coverage @ 95 % | coverage @ 99 % |\n|---|---|---|---|---|")
    for label, values in result.items():
        print(f"| {label} | {values['ece']:.4f} | {values['aurc']:.4f} | {values['coverage_at_95']:.3f} | "
              f"{values['coverage_at_99']:.3f} |")
    print(f"\nload average: {os.getloadavg()}")
    if args.output_json:
        Path(args.output_json).write_text(json.dumps({"decoding": rows, "calibration": result,
                                                      "temperature": fit.temperature, "sizes": sizes,
                                                      "lexicon_size": len(lexicon)}, indent=2) + "\n")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
