#!/usr/bin/env python
"""Convert a DTRB checkpoint (.pth) into a model folder (config.json + model.safetensors + model card).

    python scripts/convert_dtrb_checkpoint.py --saved_model TPS-ResNet-BiLSTM-Attn.pth --output_dir trba \\
        --Transformation TPS --FeatureExtraction ResNet --SequenceModeling BiLSTM --Prediction Attn

The model flags are DTRB's (the .pth does not record them); every key and shape is checked against them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from text_recognition import TextRecognitionModel
from text_recognition.cli import add_model_arguments, model_config_from_args, run


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--saved_model", required=True, help="the DTRB .pth checkpoint")
    parser.add_argument("--output_dir", required=True, help="folder to write the converted model to")
    parser.add_argument("--overwrite", action="store_true", help="replace the files of an existing output folder")
    add_model_arguments(parser)
    args = parser.parse_args(argv)

    output_dir = Path(args.output_dir)
    if output_dir.exists() and any(output_dir.iterdir()) and not args.overwrite:
        raise ValueError(f"{str(output_dir)!r} exists and is not empty; pass --overwrite to replace its files.")
    model = TextRecognitionModel.from_dtrb_checkpoint(args.saved_model, model_config_from_args(args))
    (output_dir / "README.md").unlink(missing_ok=True)  # the card describes this model, not an earlier one
    model.save_pretrained(output_dir, model_card_kwargs={"training": {"converted from": Path(args.saved_model).name}})
    print(f"{model.config.stage_string} ({model.num_parameters:,} parameters) written to {output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
