#!/usr/bin/env python
"""Train a DTRB four-stage model. Any DTRB train.py command line runs after ``accelerate launch``:

    accelerate launch --config_file accelerate_configs/single_gpu.yaml scripts/train.py \\
        --train_data data_lmdb_release/training --valid_data data_lmdb_release/validation \\
        --select_data MJ-ST --batch_ratio 0.5-0.5 \\
        --Transformation TPS --FeatureExtraction ResNet --SequenceModeling BiLSTM --Prediction Attn

Devices, mixed precision and the number of processes/nodes come from the accelerate config; ``--batch_size`` and
``--workers`` are per process. Runs go to ``--output_dir``/``--exp_name`` (default saved_models/<stages>-Seed<seed>).
"""

from __future__ import annotations

from collections.abc import Sequence

from text_recognition.cli import parse_train_args, run, train_configs_from_args
from text_recognition.training import train
from text_recognition.training.distributed import exit_process


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_train_args(argv)
    train(*train_configs_from_args(args))
    return 0


if __name__ == "__main__":
    exit_process(run(main))  # a rank of a multi-process run skips the interpreter's teardown, which can abort
