"""scripts/train.py with FeatureExtraction ViT and Prediction PARSeq / ViTSTR under `accelerate launch`, on small
synthetic data, on CPU: permutation language modelling trains, validates, saves, resumes exactly and loads back."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file
from test_training import base_args, data, launch, run_files  # noqa: F401  (data: the session's fixture)

from text_recognition import TextRecognitionModel

TINY_PARSEQ = ["--Transformation", "None", "--FeatureExtraction", "ViT", "--SequenceModeling", "None",
               "--Prediction", "PARSeq", "--rgb", "--imgW", "64", "--embed_dim", "32", "--encoder_depth", "1",
               "--encoder_heads", "2", "--decoder_heads", "1", "--batch_max_length", "8"]  # fmt: skip
TINY_VITSTR = ["--Transformation", "None", "--FeatureExtraction", "ViT", "--SequenceModeling", "None",
               "--Prediction", "ViTSTR", "--rgb", "--imgW", "64", "--embed_dim", "32", "--encoder_depth", "1",
               "--encoder_heads", "2", "--batch_max_length", "8"]  # fmt: skip


@pytest.mark.slow
def test_parseq_trains_resumes_exactly_and_loads(data, tmp_path):  # noqa: F811
    common = [*TINY_PARSEQ, "--num_iter", "6", "--valInterval", "3", "--checkpointing_steps", "3",
              "--optimizer", "adamw", "--lr", "1e-3", "--scheduler", "cosine", "--ema_decay", "0.9",
              "--decode_ar", "false"]  # fmt: skip
    straight = launch(base_args(data, tmp_path / "a", *common), tmp_path)
    assert straight.returncode == 0, straight.stdout + straight.stderr
    run = tmp_path / "a" / "run"
    assert "prediction: PARSeq" in (run / "opt.txt").read_text()
    assert run_files(tmp_path / "a")["iterations"] == 6
    model = TextRecognitionModel.from_pretrained(run / "best_accuracy")
    assert model.config.prediction == "PARSeq" and model.config.decode_ar is False  # the mode trained with
    assert "PARSeq" in (run / "best_accuracy" / "README.md").read_text()
    assert len(model.recognize([torch.rand(3, 32, 80)])) == 1

    # the same run resumed from its checkpoint-3: the permutations (torch's generator) and everything else repeat
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "run" / "checkpoints" / "checkpoint-6")
    (tmp_path / "b" / "run" / "all_results.json").unlink()
    resumed = launch(base_args(data, tmp_path / "b", *common, "--resume_from_checkpoint", "latest"), tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    a, b = (load_file(tmp_path / r / "run" / "checkpoints" / "checkpoint-6" / "model.safetensors") for r in "ab")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_vitstr_trains_in_bf16(data, tmp_path):  # noqa: F811
    result = launch(base_args(data, tmp_path, *TINY_VITSTR, "--num_iter", "3", "--valInterval", "3", "--adam",
                              "--lr", "1e-3"), tmp_path, launch_args=["--mixed_precision", "bf16"])  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert TextRecognitionModel.from_pretrained(tmp_path / "run" / "best_accuracy").config.prediction == "ViTSTR"
