#!/usr/bin/env python
"""DTRB's test.py: evaluate a model on benchmark datasets, scored exactly as DTRB scores them.

    python scripts/test.py --eval_data data_lmdb_release/evaluation --benchmark_all_eval \\
        --saved_model saved_models/TPS-ResNet-BiLSTM-Attn-Seed1111/best_accuracy --output_json results.json
    python scripts/test.py --eval_data data_lmdb_release/evaluation --benchmark_all_eval \\
        --saved_model TPS-ResNet-BiLSTM-Attn.pth --Transformation TPS --FeatureExtraction ResNet \\
        --SequenceModeling BiLSTM --Prediction Attn

--saved_model is a model folder, a Hub id, a DTRB .pth with its model flags, or an exported .onnx (fp32 or int8,
with its sidecar .onnx.json: run by onnxruntime, scored the same way); with a folder, Hub id or .onnx, model flags
must agree with its recorded configuration (an error says which do not). --sensitive and --data_filtering_off are evaluation
flags, as in DTRB: they decide which samples load, how ground truths are cleaned and, under the default
--protocol dtrb, how predictions are compared, whatever the model's config says. --eval_data is an LMDB tree,
datasets folders or a Hub dataset. With --benchmark_all_eval, DTRB's ten sets are evaluated (plus --datasets) and
both totals are printed: DTRB's code (all ten sets) and the paper's (7 sets). Without it, every dataset found.
Logs and one failure-case file per dataset go to --result_dir/<exp_name>/ (DTRB's ./result/ layout), and with
--plots, PNG plots to its plots/ folder. Decoding: greedy by default; --beam_width N for beam search, and
--allowlist / --blocklist / --lexicon FILE / --pattern REGEX constrain the output, --min_confidence abstains.
Each dataset also reports its calibration (ECE) and selective scores (AURC, coverage at 95 % / 99 % accuracy).
"""

from __future__ import annotations

import argparse
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
from text_recognition.evaluation import (
    BENCHMARK_DATASETS,
    EvaluationReport,
    dtrb_exp_name,
    evaluate,
    unscored_message,
    write_json,
    write_outputs,
)
from text_recognition.loading import is_dtrb_checkpoint, load_model
from text_recognition.metrics import PROTOCOLS, Protocol


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eval_data", required=True, help="LMDB tree, datasets folders, or Hub dataset id")
    parser.add_argument("--benchmark_all_eval", action="store_true", help="DTRB's ten benchmark sets")
    parser.add_argument("--datasets", nargs="+", default=[], help="more dataset folder names to evaluate")
    parser.add_argument("--saved_model", required=True, help="model folder, Hub id, DTRB .pth, or exported .onnx")
    parser.add_argument("--batch_size", type=int, default=192, help="evaluation batch size (default 192)")
    parser.add_argument("--workers", type=int, default=4, help="data loading workers (default 4)")
    parser.add_argument("--data_filtering_off", action="store_true", help="keep every sample (DTRB's flag)")
    parser.add_argument("--protocol", default="dtrb", choices=PROTOCOLS,
                        help="how predictions and ground truths are compared (default dtrb: DTRB's test.py for "
                             "--sensitive/--data_filtering_off; alnum36: lowercase [0-9a-z]; alnum62: [0-9A-Za-z]; "
                             "printable94: DTRB's 94 symbols; raw: exact after Unicode NFC)")  # fmt: skip
    parser.add_argument("--timing_samples", type=int, default=100, help="images timed at batch 1 (0: skip)")
    parser.add_argument("--result_dir", default="result", help="logs and failure cases go to RESULT_DIR/<exp>/")
    parser.add_argument("--output_json", help="write the results to this JSON file")
    parser.add_argument("--push_results_to_hub", metavar="REPO", nargs="?", const="",
                        help="add the results to the model card of REPO (default: the --saved_model Hub id); a "
                             "local --saved_model folder's card is updated too")  # fmt: skip
    parser.add_argument("--plots", action="store_true",
                        help="write PNG plots under the result folder: reliability diagram, accuracy vs coverage, "
                             "accuracy by label length, most frequent confusions (needs text_recognition[plots])")
    add_model_arguments(parser)
    add_decoding_arguments(parser)
    add_speed_arguments(parser)
    args = parser.parse_args(argv)
    for flag, value, least in (("batch_size", args.batch_size, 1), ("workers", args.workers, 0),
                               ("timing_samples", args.timing_samples, 0)):  # fmt: skip
        if value < least:
            raise ValueError(f"--{flag} must be at least {least}, got {value}.")
    if args.plots:
        from text_recognition.plots import require_matplotlib

        require_matplotlib()  # before the evaluation runs, not after

    protocol = Protocol(args.protocol, args.sensitive, args.data_filtering_off)
    model = load_model(args.saved_model, model_config_from_args(args, require_stages=False))
    if not is_dtrb_checkpoint(args.saved_model):  # a folder, Hub id or .onnx records its config: flags must agree
        check_model_flags(args, model.config, repr(args.saved_model), evaluation_flags=("sensitive",))
    apply_decoding_flags(args, model)
    if protocol.name == "dtrb" and model.config.sensitive and not args.sensitive:
        print(f"note: {args.saved_model} is case-sensitive but --sensitive was not given: as DTRB's test.py, the "
              f"ground truths are lowercased. Pass --sensitive (with --data_filtering_off for DTRB's case-insensitive "
              f"alphanumeric comparison) or choose --protocol alnum62 / printable94.", file=sys.stderr)  # fmt: skip
    decoding = decoding_options_from_args(args)
    model.decoder(decoding)  # impossible constraints fail here, before any image is read
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    names = [*BENCHMARK_DATASETS, *args.datasets] if args.benchmark_all_eval else (args.datasets or None)
    report = evaluate(model, args.eval_data, names=names, batch_size=args.batch_size, num_workers=args.workers,
                      protocol=protocol, timing_samples=args.timing_samples,
                      model_name=str(args.saved_model), decoding=decoding, precision=args.precision,
                      compile=args.compile, keep_unscored=True)  # fmt: skip
    result_dir = write_outputs(report, Path(args.result_dir) / dtrb_exp_name(str(args.saved_model)),
                               args.benchmark_all_eval)  # fmt: skip
    print(f"{args.saved_model}: {model.config.stage_string}, run by {report.run_by}\n{report.table()}\n"
          f"logs and failure cases: {result_dir}")
    if args.plots:
        from text_recognition.plots import write_evaluation_plots

        written = write_evaluation_plots(report, result_dir / "plots")
        print(f"{len(written)} plots in {result_dir / 'plots'}")
    if args.output_json:
        write_json(report, args.output_json)
    if report.unscored:  # the others are reported and written; the run still fails, and pushes nothing
        print(f"error: {unscored_message(report.unscored, args.eval_data)}", file=sys.stderr)
        return 1
    if args.push_results_to_hub is not None:
        push_results(args.saved_model, args.push_results_to_hub, report)
    return 0


def push_results(saved_model: str, repo: str, report: EvaluationReport) -> None:
    """Add the results to the model card: the local folder's README.md and/or the Hub repo's."""
    from huggingface_hub import ModelCard

    from text_recognition.hub import NO_RESULTS, card_with_results, is_repo_id, push_model_card

    folder = Path(saved_model)
    if folder.suffix.lower() == ".onnx":  # an exported file's results go beside its model's, labelled as such
        if not repo:
            raise ValueError("--push_results_to_hub with an .onnx --saved_model needs the Hub id of the model it was "
                             "exported from: --push_results_to_hub user/repo.")  # fmt: skip
        folder = Path()  # no local card
        card = ModelCard.load(repo)
    elif folder.is_dir():
        readme = folder / "README.md"
        card = ModelCard.load(readme) if readme.is_file() else ModelCard(f"## Evaluation\n\n{NO_RESULTS}\n")
    elif is_repo_id(saved_model):
        repo = repo or saved_model
        card = ModelCard.load(saved_model)
    else:
        raise ValueError("--push_results_to_hub needs a model folder or a Hub id as --saved_model.")
    if not repo:
        raise ValueError("--push_results_to_hub needs a repo id when --saved_model is a local folder.")
    card = card_with_results(card, report.card_results(), report.model)
    if folder.is_dir() and folder != Path():
        card.save(folder / "README.md")
    push_model_card(repo, card)
    print(f"evaluation results added to the model card of {repo}")


if __name__ == "__main__":
    sys.exit(run(main))
