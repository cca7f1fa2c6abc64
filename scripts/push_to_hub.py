#!/usr/bin/env python
"""Push a training run's best model (or any model folder) to the Hugging Face Hub, with its model card; with
--space, also a Gradio Space that runs this project's app on it, linked from the model card.

python scripts/push_to_hub.py --run_dir saved_models/TPS-ResNet-BiLSTM-Attn-Seed1111 --hub_model_id user/trba
python scripts/push_to_hub.py --model_dir my_model --hub_model_id user/my-model --private
python scripts/push_to_hub.py --model_dir my_model --hub_model_id user/my-model --space user/my-model-demo
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from text_recognition.app.space import card_with_space, push_space, space_url, write_space
from text_recognition.cli import run
from text_recognition.hub import push_model_folder


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run_dir", help="a training run folder: its --which model folder is pushed")
    source.add_argument("--model_dir", help="a model folder (config.json, model.safetensors, README.md)")
    parser.add_argument("--which", choices=["best_accuracy", "best_norm_ED"], default="best_accuracy")
    parser.add_argument("--hub_model_id", required=True, help="user/repo")
    parser.add_argument("--private", action="store_true", help="create the repo (and the Space) as private")
    parser.add_argument("--token", help="Hub token (default: the logged-in one or HF_TOKEN)")
    parser.add_argument("--commit_message")
    space = parser.add_argument_group("Space (a Gradio page that runs scripts/app.py's app on the pushed model)")
    space.add_argument("--space", metavar="USER/NAME", help="also write and push this Space; the model card links it")
    space.add_argument("--space_dir", help="keep the Space folder written here (default: a temporary folder)")
    space.add_argument("--space_requirement",
                       help="the Space's requirements.txt line for this project (default "
                            "text_recognition[app]==VERSION; a git+https:// URL where it is not on PyPI)")  # fmt: skip
    args = parser.parse_args(argv)

    folder = Path(args.model_dir) if args.model_dir else Path(args.run_dir) / args.which
    with tempfile.TemporaryDirectory() as scratch:
        card_text = None
        if args.space:  # written before anything is pushed, so a bad id stops here
            if "/" not in args.hub_model_id:
                raise ValueError(f"--space needs the model's full id (user/repo) in --hub_model_id, got "
                                 f"{args.hub_model_id!r}: the Space loads the model by it.")  # fmt: skip
            space_folder = write_space(args.space_dir or scratch, args.hub_model_id,
                                       requirement=args.space_requirement)  # fmt: skip
            card = folder / "README.md"
            card_text = card_with_space(card.read_text(encoding="utf-8"), args.space) if card.is_file() else None
        url = push_model_folder(folder, args.hub_model_id, private=args.private or None, token=args.token,
                                commit_message=args.commit_message, card_text=card_text)  # fmt: skip
        print(f"pushed {folder} to {args.hub_model_id}: {url}")
        if args.space:
            url = push_space(space_folder, args.space, private=args.private or None, token=args.token)
            print(f"pushed the Space {args.space} ({space_url(args.space)}): {url}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
