#!/usr/bin/env python
"""Push a training run's best model (or any model folder) to the Hugging Face Hub, with its model card.

python scripts/push_to_hub.py --run_dir saved_models/TPS-ResNet-BiLSTM-Attn-Seed1111 --hub_model_id user/trba
python scripts/push_to_hub.py --model_dir my_model --hub_model_id user/my-model --private
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from text_recognition.cli import run
from text_recognition.hub import push_model_folder


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run_dir", help="a training run folder: its --which model folder is pushed")
    source.add_argument("--model_dir", help="a model folder (config.json, model.safetensors, README.md)")
    parser.add_argument("--which", choices=["best_accuracy", "best_norm_ED"], default="best_accuracy")
    parser.add_argument("--hub_model_id", required=True, help="user/repo")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--token", help="Hub token (default: the logged-in one or HF_TOKEN)")
    parser.add_argument("--commit_message")
    args = parser.parse_args(argv)

    folder = Path(args.model_dir) if args.model_dir else Path(args.run_dir) / args.which
    url = push_model_folder(folder, args.hub_model_id, private=args.private or None, token=args.token,
                            commit_message=args.commit_message)  # fmt: skip
    print(f"pushed {folder} to {args.hub_model_id}: {url}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
