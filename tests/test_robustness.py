"""Bad input and faults in training, evaluation and inference: each test names the bad input it feeds.

Training runs in this process (``train()`` on one CPU process, a few steps of a tiny CRNN), so each costs seconds.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import re
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import make_lmdb, png_bytes
from PIL import Image
from safetensors.torch import load_file
from test_scripts import load_script

from text_recognition import ModelConfig, TextRecognitionModel
from text_recognition.cli import parse_train_args, run, train_configs_from_args
from text_recognition.data import SyntheticWords
from text_recognition.loading import load_model
from text_recognition.training import TrainingStopped, train

TINY = ["--Transformation", "None", "--FeatureExtraction", "VGG", "--SequenceModeling", "None",
        "--Prediction", "CTC", "--output_channel", "32", "--hidden_size", "32"]  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("robust_data")
    SyntheticWords(min_length=2, max_length=6, seed=0).write_lmdb(root / "train" / "MJ", 120, progress=False)
    SyntheticWords(min_length=2, max_length=6, seed=1).write_lmdb(root / "train" / "ST", 60, progress=False)
    SyntheticWords(min_length=2, max_length=6, seed=2).save_dataset(root / "valid" / "synth", 12)
    return root


def argv(data, out, *extra, train_data=None):
    return ["--train_data", str(train_data or data / "train"), "--valid_data", str(data / "valid"),
            "--batch_size", "4", "--workers", "0", "--output_dir", str(out), "--exp_name", "run",
            "--report_to", "none", "--num_iter", "3", "--valInterval", "2", *TINY, *extra]  # fmt: skip


def train_with(*args):
    return train(*train_configs_from_args(parse_train_args(list(args))))


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def checkpoints(out):
    return sorted(p.name for p in (out / "run" / "checkpoints").iterdir())


# ---- the run folder -------------------------------------------------------------------------------------------


def test_rerun_into_a_folder_holding_a_run_is_refused_and_loses_nothing(data, tmp_path, capsys):
    train_with(*argv(data, tmp_path))
    best = tmp_path / "run" / "best_accuracy" / "model.safetensors"
    before, kept = digest(best), checkpoints(tmp_path)
    train_script = load_script("train")
    capsys.readouterr()
    assert run(train_script.main, argv(data, tmp_path)) == 1
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "already holds a run" in error and "--overwrite_output_dir" in error
    assert digest(best) == before and checkpoints(tmp_path) == kept
    # asked for: the old run's files go, the new run's stay
    (tmp_path / "run" / "notes.txt").write_text("mine")
    train_with(*argv(data, tmp_path, "--overwrite_output_dir", "--num_iter", "2", "--valInterval", "1"))
    assert checkpoints(tmp_path) == ["checkpoint-1", "checkpoint-2"]
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"  # only the trainer's own files are removed


def test_resume_latest_in_a_run_folder_without_checkpoints_is_refused(data, tmp_path):
    train_with(*argv(data, tmp_path))
    for path in (tmp_path / "run" / "checkpoints").iterdir():
        import shutil

        shutil.rmtree(path)
    with pytest.raises(TrainingStopped, match="no checkpoint to resume from"):
        train_with(*argv(data, tmp_path, "--resume_from_checkpoint", "latest"))


def test_default_checkpoints_at_every_validation_and_the_end_keep_the_last_two(data, tmp_path):
    train_with(*argv(data, tmp_path / "default", "--num_iter", "5", "--valInterval", "3"))  # validates at 1, 3, 5
    assert checkpoints(tmp_path / "default") == ["checkpoint-3", "checkpoint-5"]
    last = tmp_path / "default" / "run" / "checkpoints" / "checkpoint-5"
    manifest = json.loads((last / "manifest.json").read_text())
    assert "model.safetensors" in manifest and "run_config.json" in manifest
    train_with(*argv(data, tmp_path / "steps", "--num_iter", "5", "--checkpointing_steps", "2",
                     "--checkpoints_total_limit", "5"))  # fmt: skip
    assert checkpoints(tmp_path / "steps") == ["checkpoint-2", "checkpoint-4", "checkpoint-5"]


def test_leftover_temporary_folders_of_a_killed_run_are_removed_at_start(data, tmp_path):
    train_with(*argv(data, tmp_path))
    run_dir = tmp_path / "run"
    (run_dir / ".best_accuracy.tmpab12").mkdir()
    (run_dir / ".best_accuracy.tmpab12" / "model.safetensors").write_bytes(b"half")
    (run_dir / "checkpoints" / ".tmp-checkpoint-7").mkdir()
    (run_dir / "best_norm_ED").rename(run_dir / ".best_norm_ED.old")  # killed between the two renames
    train_with(*argv(data, tmp_path, "--resume_from_checkpoint", "latest", "--num_iter", "4"))
    assert not list(run_dir.glob(".best_*")) and not list((run_dir / "checkpoints").glob(".tmp-*"))
    assert (run_dir / "best_norm_ED" / "model.safetensors").is_file()


def test_log_train_does_not_repeat_steps_replayed_after_resume(data, tmp_path):
    train_with(*argv(data, tmp_path, "--num_iter", "3", "--valInterval", "1", "--checkpointing_steps", "2"))
    import shutil

    shutil.rmtree(tmp_path / "run" / "checkpoints" / "checkpoint-3")  # as if killed after logging step 3
    train_with(*argv(data, tmp_path, "--num_iter", "3", "--valInterval", "1", "--checkpointing_steps", "2",
                     "--resume_from_checkpoint", "latest"))  # fmt: skip
    log = (tmp_path / "run" / "log_train.txt").read_text()
    assert [log.count(f"[{step}/3] Train loss") for step in (1, 2, 3)] == [1, 1, 1]


# ---- resume checks its configuration ------------------------------------------------------------------------


def test_resume_with_a_changed_batch_size_and_seed_is_refused_with_a_table(data, tmp_path, caplog):
    train_with(*argv(data, tmp_path))
    changed = argv(data, tmp_path, "--resume_from_checkpoint", "latest", "--num_iter", "5", "--batch_size", "6",
                   "--manualSeed", "7")  # fmt: skip
    with pytest.raises(TrainingStopped) as refused:
        train_with(*changed)
    message = str(refused.value)
    assert "train.batch_size  checkpoint: 4  now: 6" in message.replace("   ", "  ") or "train.batch_size" in message
    assert "train.seed" in message and "--allow_config_change" in message
    old = (tmp_path / "run" / "run_config.json").read_text()
    with caplog.at_level(logging.WARNING):
        train_with(*changed, "--allow_config_change")
    assert "--allow_config_change" in caplog.text and "train.batch_size" in caplog.text
    assert (tmp_path / "run" / "run_config.json").read_text() == old  # the old one is kept
    assert json.loads((tmp_path / "run" / "run_config.resume-3.json").read_text())["train"]["batch_size"] == 6


def test_resume_of_another_model_is_refused(data, tmp_path):
    train_with(*argv(data, tmp_path))
    with pytest.raises(TrainingStopped, match="model.hidden_size"):
        train_with(*argv(data, tmp_path, "--resume_from_checkpoint", "latest", "--num_iter", "5",
                         "--hidden_size", "16"))  # fmt: skip


def test_resume_with_allow_config_change_and_a_changed_model_flag_names_the_flag(data, tmp_path):
    train_with(*argv(data, tmp_path))
    with pytest.raises(TrainingStopped, match="model flags cannot change on resume") as refused:
        train_with(*argv(data, tmp_path, "--resume_from_checkpoint", "latest", "--num_iter", "5",
                         "--output_channel", "16", "--allow_config_change"))  # fmt: skip
    message = str(refused.value)
    assert "output_channel (checkpoint: 32, now: 16)" in message and "\n" not in message and "--FT" in message
    assert "Error(s) in loading state_dict" not in message


# ---- broken checkpoints ----------------------------------------------------------------------------------------


def test_truncated_file_in_the_latest_checkpoint_falls_back_to_the_previous_one(data, tmp_path, caplog):
    train_with(*argv(data, tmp_path, "--num_iter", "4", "--valInterval", "2"))  # checkpoints 2 and 4
    latest = tmp_path / "run" / "checkpoints" / "checkpoint-4" / "model.safetensors"
    latest.write_bytes(latest.read_bytes()[:100])
    with caplog.at_level(logging.WARNING):
        results = train_with(*argv(data, tmp_path, "--num_iter", "4", "--valInterval", "2",
                                   "--resume_from_checkpoint", "latest"))  # fmt: skip
    assert "checkpoint-4" in caplog.text and "truncated" in caplog.text and "falling back" in caplog.text
    assert results["iterations"] == 4
    latest.write_bytes(latest.read_bytes()[:100])  # the resumed run wrote checkpoint-4 again
    with pytest.raises(TrainingStopped, match="model.safetensors is truncated"):
        train_with(*argv(data, tmp_path / "x"), "--resume_from_checkpoint",
                   str(tmp_path / "run" / "checkpoints" / "checkpoint-4"))  # fmt: skip


def test_resume_latest_when_every_checkpoint_is_truncated_is_refused_and_loses_nothing(data, tmp_path):
    train_with(*argv(data, tmp_path, "--num_iter", "4", "--valInterval", "2"))  # checkpoints 2 and 4
    run_dir = tmp_path / "run"
    for step in (2, 4):
        weights = run_dir / "checkpoints" / f"checkpoint-{step}" / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])
    kept = {path: digest(path) for path in sorted(run_dir.rglob("*")) if path.is_file()}
    with pytest.raises(TrainingStopped, match=r"none of the 2 checkpoint\(s\) .* can be resumed from") as refused:
        train_with(*argv(data, tmp_path, "--num_iter", "4", "--valInterval", "2", "--resume_from_checkpoint",
                         "latest"))  # fmt: skip
    assert "\n" not in str(refused.value) and "--overwrite_output_dir" in str(refused.value)
    assert {path: digest(path) for path in sorted(run_dir.rglob("*")) if path.is_file()} == kept


def test_disk_full_during_a_checkpoint_write_is_a_clear_error_and_leaves_no_temporary_folder(
    data, tmp_path, monkeypatch
):
    from accelerate import Accelerator

    def full_disk(self, output_dir, **kwargs):
        from pathlib import Path

        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / "optimizer.bin").write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Accelerator, "save_state", full_disk)
    with pytest.raises(OSError, match="the disk is full") as error:
        train_with(*argv(data, tmp_path))
    assert error.value.errno == errno.ENOSPC and "The temporary folder was removed" in str(error.value)
    assert not list((tmp_path / "run" / "checkpoints").iterdir())


SAFETENSORS_FULL_DISK = ('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left '
                         'on device" })')  # what safetensors raises when the disk fills during a write


def test_disk_full_during_a_safetensors_checkpoint_write_is_a_clear_error_and_leaves_no_temporary_folder(
    data, tmp_path, monkeypatch
):
    from accelerate import Accelerator
    from safetensors import SafetensorError

    def full_disk(self, output_dir, **kwargs):
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / "model.safetensors").write_bytes(b"partial")
        raise SafetensorError(SAFETENSORS_FULL_DISK)

    monkeypatch.setattr(Accelerator, "save_state", full_disk)
    with pytest.raises(OSError, match="Cannot write the checkpoint .*; the disk is full") as error:
        train_with(*argv(data, tmp_path))
    assert error.value.errno == errno.ENOSPC and "The temporary folder was removed" in str(error.value)
    assert "\n" not in str(error.value) and not list((tmp_path / "run" / "checkpoints").iterdir())


def test_disk_full_during_a_safetensors_best_model_write_is_one_line_and_keeps_the_previous_best(
    data, tmp_path, monkeypatch, capsys, model_folder
):
    from safetensors import SafetensorError

    from text_recognition.training import save_model_folder

    def full_disk(self, save_directory, **kwargs):
        (Path(save_directory) / "model.safetensors").write_bytes(b"partial")
        raise SafetensorError(SAFETENSORS_FULL_DISK)

    monkeypatch.setattr(TextRecognitionModel, "save_pretrained", full_disk)
    train_script = load_script("train")
    capsys.readouterr()
    assert run(train_script.main, argv(data, tmp_path, "--num_iter", "1")) == 1  # the first validation is a best
    lines = capsys.readouterr().err.splitlines()  # the progress bar's line, then the error's one line
    (error,) = [line for line in lines if line.startswith("error:")]
    assert lines[-1] == error
    assert "Cannot write the best model" in error and "the disk is full" in error
    assert "The temporary folder was removed" in error and not list((tmp_path / "run").glob(".best_*"))
    before = digest(model_folder / "model.safetensors")
    with pytest.raises(OSError, match="the previous one is kept"):
        save_model_folder(load_model(model_folder), model_folder, {})
    assert digest(model_folder / "model.safetensors") == before and not list(tmp_path.glob(".model.tmp*"))


# ---- non-finite and empty steps --------------------------------------------------------------------------------


def test_lr_inf_is_refused():
    with pytest.raises(ValueError, match="lr must be a finite number"):
        train_configs_from_args(parse_train_args(["--train_data", "t", "--valid_data", "v", "--lr", "inf", *TINY]))


def test_nan_losses_are_skipped_counted_and_stop_training_without_a_nan_best(data, tmp_path, monkeypatch):
    def nan_loss(self, logits, *args, **kwargs):
        return logits.sum() * float("nan")

    monkeypatch.setattr(TextRecognitionModel, "loss", nan_loss)
    with pytest.raises(TrainingStopped, match=r"Training diverged: the last 3 optimizer steps .* non-finite"):
        train_with(*argv(data, tmp_path, "--num_iter", "10", "--max_skipped_steps", "3"))
    # fewer than max_skipped_steps: the run ends, counts them, and writes valid JSON without NaN
    results = train_with(*argv(data, tmp_path / "short", "--num_iter", "2", "--valInterval", "1"))
    assert results["nonfinite_steps_skipped"] == 2
    text = (tmp_path / "short" / "run" / "all_results.json").read_text()
    parsed = json.loads(text, parse_constant=lambda name: pytest.fail(f"bare {name} in all_results.json"))
    assert parsed["final_valid_loss"] is None  # the validation loss is NaN too: written as null


def test_a_huge_lr_never_saves_a_non_finite_model_as_best(data, tmp_path):
    with pytest.raises(TrainingStopped, match="Training diverged"):
        train_with(*argv(data, tmp_path, "--num_iter", "20", "--valInterval", "1", "--max_skipped_steps", "2",
                         "--lr", "1e30", "--grad_clip", "1e30"))  # fmt: skip
    best = tmp_path / "run" / "best_accuracy" / "model.safetensors"
    if best.exists():
        assert all(torch.isfinite(t).all() for t in load_file(best).values() if t.is_floating_point())


def test_lr_1e30_finite_weights_with_a_nan_validation_loss_never_make_a_best(data, tmp_path, caplog, capsys):
    with caplog.at_level(logging.WARNING):  # the weights go to ~1e30: finite, but the validation loss is NaN
        train_with(*argv(data, tmp_path, "--num_iter", "2", "--valInterval", "1", "--adam", "--lr", "1e30",
                         "--grad_clip", "1e30"))  # fmt: skip
    run_dir = tmp_path / "run"
    history = [json.loads(line, parse_constant=lambda name: pytest.fail(f"bare {name} in the history"))
               for line in (run_dir / "validation_history.jsonl").read_text().splitlines()]  # fmt: skip
    assert history[-1]["valid_loss"] is None and "is not finite; no best model is saved" in caplog.text
    assert not (run_dir / "best_accuracy").exists() and not (run_dir / "best_norm_ED").exists()
    assert json.loads((run_dir / "all_results.json").read_text())["best_accuracy"] == -1.0
    assert "no best model was saved" in capsys.readouterr().out


def test_a_fully_corrupt_training_set_fails_with_a_clear_error(data, tmp_path):
    make_lmdb(tmp_path / "corrupt" / "MJ", ["ab", "cd", "ef", "gh"], corrupt={0, 1, 2, 3})
    with pytest.raises(TrainingStopped, match=r"No decodable training image in the last 4 optimizer steps"):
        train_with(*argv(data, tmp_path / "out", "--num_iter", "50", "--max_skipped_steps", "4", "--select_data", "MJ",
                         "--batch_ratio", "1", train_data=tmp_path / "corrupt"))  # fmt: skip


def test_an_all_corrupt_valid_data_is_refused_before_the_first_step(data, tmp_path):
    make_lmdb(tmp_path / "valid" / "IIIT5k_3000", ["ab", "cd", "ef"], corrupt={0, 1, 2})
    train = argv(data, tmp_path / "out", "--num_iter", "2")
    train[train.index("--valid_data") + 1] = str(tmp_path / "valid")
    with pytest.raises(ValueError, match=r"No image of --valid_data .* can be decoded \(all 3 samples are corrupt\)"):
        train_with(*train)
    assert not (tmp_path / "out" / "run" / "best_accuracy").exists()
    assert not (tmp_path / "out" / "run" / "log_train.txt").exists()


def test_a_validation_after_only_skipped_steps_logs_no_train_loss_not_0(data, tmp_path, monkeypatch):
    scored = TextRecognitionModel.loss

    def nan_when_training(self, logits, *args, **kwargs):  # every optimizer step skipped, validation scored
        loss = scored(self, logits, *args, **kwargs)
        return loss * float("nan") if self.training else loss

    monkeypatch.setattr(TextRecognitionModel, "loss", nan_when_training)
    train_with(*argv(data, tmp_path, "--num_iter", "2", "--valInterval", "1"))
    log = (tmp_path / "run" / "log_train.txt").read_text()
    assert "[1/2] Train loss: n/a, Valid loss: " in log and "Train loss: 0.00000" not in log
    history = [json.loads(line) for line in (tmp_path / "run" / "validation_history.jsonl").read_text().splitlines()]
    assert [entry["train_loss"] for entry in history] == [None, None]


def test_accumulation_with_corrupt_only_batches_counts_optimizer_steps_right(data, tmp_path):
    make_lmdb(tmp_path / "half" / "MJ", ["ab"] * 8, corrupt={0, 2, 4, 6})
    results = train_with(*argv(data, tmp_path / "out", "--batch_size", "1", "--gradient_accumulation_steps", "2",
                               "--num_iter", "6", "--adam", "--lr", "1e-3", "--select_data", "MJ", "--batch_ratio",
                               "1", train_data=tmp_path / "half"))  # fmt: skip
    empty = results["empty_batches_skipped"]
    assert empty > 0
    optimizer = torch.load(tmp_path / "out" / "run" / "checkpoints" / "checkpoint-6" / "optimizer.bin",
                           weights_only=True)  # fmt: skip
    steps = {float(state["step"]) for state in optimizer["state"].values()}
    # every one of the 6 steps had at least one decodable batch unless both of its batches were corrupt
    assert len(steps) == 1 and 6 - empty // 2 <= steps.pop() <= 6


# ---- where a corrupt image is -----------------------------------------------------------------------------------


def corrupt_image_warnings(data_root, caplog) -> list[str]:
    from text_recognition.data import SkipTracker, build_eval_data

    evaluation = build_eval_data(data_root, ModelConfig("None", "VGG", "None", "CTC"))
    tracker = SkipTracker()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="text_recognition.data.collate"):
        for position in range(len(evaluation.dataset)):
            tracker.update(evaluation.collator([evaluation.dataset[position]])["skipped"])
    return [record.getMessage() for record in caplog.records if "Corrupt image" in record.getMessage()]


def test_a_corrupt_image_is_named_by_its_lmdb_key_in_training_evaluation_and_conversion_alike(tmp_path, caplog):
    from text_recognition.data import convert_lmdb_tree

    # LMDB index 4 (key image-000000004) is corrupt; index 2's label '@@' is filtered out, so the corrupt image is
    # the third sample served: counted from the served rows it would be 'index 2', from the stored rows 'index 3'
    make_lmdb(tmp_path / "lmdb" / "MJ", ["ab", "@@", "cd", "ef", "gh"], corrupt={3})
    (warning,) = corrupt_image_warnings(tmp_path / "lmdb", caplog)
    assert "Corrupt image in MJ at LMDB index 4 (key image-000000004)" in warning
    summary = convert_lmdb_tree(tmp_path / "lmdb", tmp_path / "arrow", progress=False)
    assert ("undecodable images at LMDB indices [4] (1-based, as the LMDB's keys: image-000000004 is row 3 of the "
            "datasets folder)") in summary.report()  # fmt: skip
    (warning,) = corrupt_image_warnings(tmp_path / "arrow", caplog)  # the converted folder: its own 0-based row
    assert "Corrupt image in MJ at row 3 (0-based, dataset[3])" in warning


def test_a_datasets_folder_converted_inside_the_lmdb_tree_is_refused_not_trained_on_twice(data, tmp_path):
    from text_recognition.data import convert_lmdb_tree
    from text_recognition.data.datasets import local_sources

    labels = [f"w{i}" for i in range(20)]
    make_lmdb(tmp_path / "tree" / "MJ", labels)
    convert_lmdb_tree(tmp_path / "tree" / "MJ", tmp_path / "tree" / "MJ_arrow", progress=False)
    with pytest.raises(ValueError) as error:  # --select_data MJ selects both MJ and MJ_arrow
        train_with(*argv(data, tmp_path / "out", "--select_data", "MJ", "--batch_ratio", "1",
                         train_data=tmp_path / "tree"))  # fmt: skip
    message = str(error.value)
    assert f"{str(tmp_path / 'tree')!r} holds the same 20 samples twice: the sources MJ and MJ_arrow" in message
    assert "MJ_arrow looks like a datasets folder that scripts/convert_lmdb.py wrote from the LMDB MJ" in message
    assert "move the other out of" in message
    assert not (tmp_path / "out" / "run" / "log_train.txt").exists()
    # the same length is not a copy: other images, or other labels, are two sources
    make_lmdb(tmp_path / "other" / "A", labels, seed=1)
    make_lmdb(tmp_path / "other" / "B", labels, seed=2)
    make_lmdb(tmp_path / "other" / "C", [*labels[:-1], "changed"], seed=1)
    assert list(local_sources(tmp_path / "other")) == ["A", "B", "C"]


# ---- --config values -----------------------------------------------------------------------------------------


BOOLEANS = [("no", False), ("false", False), ("No", False), (0, False), (False, False), ("yes", True),
            ("true", True), (1, True)]  # fmt: skip


@pytest.mark.parametrize(("value", "expected"), BOOLEANS)
def test_config_file_boolean_strings_are_parsed_strictly(tmp_path, value, expected):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"PAD": value, "FT": False}))
    args = parse_train_args(["--config", str(config), "--train_data", "t", "--valid_data", "v"])
    assert args.pad is expected


@pytest.mark.parametrize("value", ["maybe", "nope", 2, [True]])
def test_config_file_boolean_that_is_not_one_is_an_error(tmp_path, value):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"PAD": value}))
    with pytest.raises(ValueError, match="PAD is a switch and takes true or false"):
        parse_train_args(["--config", str(config)])


def test_config_file_number_given_a_boolean_or_invalid_yaml_is_an_error(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"batch_size": True}))
    with pytest.raises(ValueError, match="batch_size takes a int, got True"):
        parse_train_args(["--config", str(config)])
    config.write_text("batch_size: [1,\n")
    with pytest.raises(ValueError, match="is not valid YAML"):
        parse_train_args(["--config", str(config)])


# ---- model folders ---------------------------------------------------------------------------------------------


@pytest.fixture
def model_folder(tmp_path):
    model = TextRecognitionModel(ModelConfig("None", "VGG", "None", "CTC", output_channel=32, hidden_size=16))
    model.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def test_truncated_model_safetensors_names_the_file(model_folder):
    weights = model_folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"model\.safetensors' cannot be read as safetensors weights .*truncated"):
        load_model(model_folder)


@pytest.mark.parametrize(("content", "match"), [("[1, 2]", "holds a JSON list, not an object"),
                                                ("{not json", "is not valid JSON")])  # fmt: skip
def test_config_json_that_is_a_list_or_invalid_names_the_file(model_folder, content, match):
    (model_folder / "config.json").write_text(content)
    with pytest.raises(ValueError, match=match) as error:
        load_model(model_folder)
    assert "config.json" in str(error.value)


@pytest.mark.parametrize(("edit", "match"), [({"hiden_size": 16}, r"Unknown ModelConfig keys \['hiden_size'\]"),
                                             ({"img_h": "32"}, "img_h must be an integer, got '32'")])  # fmt: skip
def test_config_json_with_an_unknown_key_or_a_string_number_names_the_file(model_folder, edit, match):
    """Issue 21 case 12: the error named neither config.json nor its folder."""
    config = json.loads((model_folder / "config.json").read_text())
    (model_folder / "config.json").write_text(json.dumps({**config, **edit}))
    with pytest.raises(ValueError, match=match) as error:
        load_model(model_folder)
    assert str(model_folder / "config.json") in str(error.value) and "Fix it there" in str(error.value)


@pytest.mark.parametrize(("edit", "hint"), [({"prediction": "Attn"}, "prediction CTC ({file} says Attn)"),
                                            ({"output_channel": 64}, "output_channel 32 ({file} says 64)")])
def test_weights_that_do_not_fit_their_config_json_blame_the_file_not_a_flag(model_folder, edit, hint):
    """Issue 21 case 12: a value read from the folder's config.json was reported as 'you gave Attn'."""
    config = json.loads((model_folder / "config.json").read_text())
    (model_folder / "config.json").write_text(json.dumps({**config, **edit}))
    with pytest.raises(ValueError) as error:
        load_model(model_folder)
    file = repr(str(model_folder / "config.json"))
    assert hint.format(file=file) in str(error.value)
    assert "you gave" not in str(error.value) and "--Prediction" not in str(error.value)
    assert f"{file} does not describe the weights beside it" in str(error.value)


def test_a_run_folder_or_a_bare_safetensors_as_saved_model_points_to_the_model_folder(model_folder, tmp_path):
    """Issue 21 case 12: a run folder was 'not a model folder'; model.safetensors was read as a DTRB .pth."""
    run_dir = tmp_path / "runs" / "exp"
    run_dir.mkdir(parents=True)
    model_folder.rename(run_dir / "best_accuracy")
    (run_dir / "run_config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="is a training run's folder, not a model folder: give") as error:
        load_model(run_dir)
    assert str(run_dir / "best_accuracy") in str(error.value)
    with pytest.raises(ValueError, match="is the weights file of a model folder: give the folder") as error:
        load_model(run_dir / "best_accuracy" / "model.safetensors", ModelConfig("None", "VGG", "None", "CTC"))
    assert str(run_dir / "best_accuracy") in str(error.value)
    bare = tmp_path / "weights.safetensors"
    bare.write_bytes((run_dir / "best_accuracy" / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="is a bare safetensors file: a model is a folder with its config.json"):
        load_model(bare)


# ---- recognize() inputs ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model():
    return TextRecognitionModel(ModelConfig("None", "VGG", "None", "CTC", output_channel=32, hidden_size=16)).eval()


@pytest.mark.parametrize("value", [2.0, -0.5, np.nan], ids=["above_1", "negative", "nan"])
def test_recognize_float_array_outside_0_1_is_refused(tiny_model, value):
    array = np.full((32, 80), value, np.float32)
    with pytest.raises(ValueError, match=r"float image must hold values in \[0, 1\]"):
        tiny_model.recognize(array)


def test_a_float_just_above_1_is_not_printed_as_1(tiny_model):
    """Issue 21 case 14: the message rounded 1.0000001 to '[1, 1]', which reads as inside the range."""
    array = np.full((32, 80), np.nextafter(np.float32(1), np.float32(2)), np.float32)
    with pytest.raises(ValueError, match=r"got values in \[1\.0000001\d*, 1\.0000001\d*\]"):
        tiny_model.recognize(array)


def test_recognize_uint16_array_is_scaled_not_saturated(tiny_model):
    pixels = np.random.default_rng(0).integers(0, 256, (32, 80), dtype=np.uint8)
    as_16_bits = pixels.astype(np.uint16) * 257  # the same image at 16 bits
    assert tiny_model.recognize(as_16_bits) == tiny_model.recognize(pixels)
    with pytest.raises(ValueError, match=r"integer image must hold values in \[0, 255\]"):
        tiny_model.recognize(pixels.astype(np.int32) + 300)


def test_16_bit_png_file_bytes_and_lmdb_read_as_the_8_bit_image_not_white(tiny_model, tmp_path):
    from text_recognition.data.collate import TextCollator
    from text_recognition.transforms import load_image

    pixels = np.random.default_rng(0).integers(0, 256, (32, 80), dtype=np.uint8)
    Image.fromarray(pixels.astype(np.uint16) * 257).save(tmp_path / "hello16.png")  # a 16-bit grayscale PNG
    png16 = (tmp_path / "hello16.png").read_bytes()
    assert Image.open(tmp_path / "hello16.png").mode == "I;16"
    for channels in (1, 3):
        expected = np.asarray(load_image(pixels, channels))
        for given in (tmp_path / "hello16.png", png16, Image.open(io.BytesIO(png16))):
            assert np.array_equal(np.asarray(load_image(given, channels)), expected), (type(given), channels)
    assert tiny_model.recognize(tmp_path / "hello16.png") == tiny_model.recognize(pixels)
    collator = TextCollator(tiny_model.config)  # training and evaluation decode LMDB and datasets bytes here
    batch = collator([{"image": png16, "label": "ab"}])
    assert torch.equal(batch["pixel_values"], collator([{"image": png_of(pixels), "label": "ab"}])["pixel_values"])


def test_float_tiff_outside_0_1_is_an_error_naming_the_file_not_clipped(tmp_path):
    from text_recognition.transforms import load_image

    Image.fromarray(np.full((32, 80), 300.0, np.float32)).save(tmp_path / "float.tiff")
    with pytest.raises(ValueError, match=r"Cannot decode image .*float\.tiff.*float image must hold values in \[0, 1"):
        load_image(tmp_path / "float.tiff", 1)


def png_of(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("shape", [(0, 40), (0, 0), (32, 0)], ids=["0xN", "0x0", "Nx0"])
def test_recognize_array_without_pixels_is_refused(tiny_model, shape):
    with pytest.raises(ValueError, match="has no pixels"):
        tiny_model.recognize(np.zeros(shape, np.uint8))


def test_recognize_bytes_are_one_encoded_image(tiny_model):
    png = png_bytes(60, 32)
    assert tiny_model.recognize(png) == tiny_model.recognize(Image.open(io.BytesIO(png)))
    with pytest.raises(ValueError, match="Cannot decode 9 bytes as an image"):
        tiny_model.recognize(b"not a png")


# ---- demo.py ---------------------------------------------------------------------------------------------------


def test_demo_skips_and_reports_a_decompression_bomb_png(model_folder, tmp_path, monkeypatch, capsys):
    demo = load_script("demo")

    images = tmp_path / "images"
    images.mkdir()
    (images / "a_small.png").write_bytes(png_bytes(60, 32))
    Image.new("L", (400, 300)).save(images / "b_bomb.png")  # 120,000 pixels: over twice the limit set below
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50_000)
    monkeypatch.chdir(tmp_path)
    assert run(demo.main, ["--image_folder", str(images), "--saved_model", str(model_folder), "--workers", "0"]) == 0
    captured = capsys.readouterr()
    assert "a_small.png" in captured.out and "b_bomb.png" not in captured.out
    assert "skipped" in captured.err and "b_bomb.png" in captured.err and "decompression bomb" in captured.err
    assert "1 of 2 images could not be decoded" in captured.err


def test_demo_where_every_image_is_undecodable_or_a_dangling_link_exits_non_zero(model_folder, tmp_path, capsys,
                                                                                    monkeypatch):  # fmt: skip
    demo = load_script("demo")
    images = tmp_path / "images"
    images.mkdir()
    (images / "a_broken.png").write_bytes(b"not a png")
    (images / "b_gone.png").symlink_to(tmp_path / "deleted.png")  # a dangling symbolic link
    monkeypatch.chdir(tmp_path)
    assert run(demo.main, ["--image_folder", str(images), "--saved_model", str(model_folder), "--workers", "0"]) == 1
    error = capsys.readouterr().err
    assert "skipped" in error and "b_gone.png" in error and "Image file not found" in error
    assert error.strip().splitlines()[-1].startswith("error: None of the 2 images under")


@pytest.mark.parametrize(("flags", "message"), [(["--batch_size", "0"], "--batch_size must be at least 1"),
                                                (["--workers", "-1"], "--workers must be 0")])  # fmt: skip
def test_demo_bad_batch_size_or_workers_fail_before_the_log_file_is_touched(model_folder, tmp_path, capsys,
                                                                            monkeypatch, flags, message):  # fmt: skip
    demo = load_script("demo")
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(png_bytes(60, 32))
    monkeypatch.chdir(tmp_path)
    assert run(demo.main, ["--image_folder", str(tmp_path / "images"), "--saved_model", str(model_folder),
                           *flags]) == 1  # fmt: skip
    assert message in capsys.readouterr().err and not (tmp_path / "log_demo_result.txt").exists()


def test_demo_given_a_file_as_image_folder_says_it_is_a_file(model_folder, tmp_path, capsys, monkeypatch):
    demo = load_script("demo")
    (tmp_path / "word.png").write_bytes(png_bytes(60, 32))
    monkeypatch.chdir(tmp_path)
    assert run(demo.main, ["--image_folder", str(tmp_path / "word.png"), "--saved_model", str(model_folder)]) == 1
    assert "is a file, not a folder: give the folder that holds the images" in capsys.readouterr().err


# ---- evaluation ------------------------------------------------------------------------------------------------


def test_evaluation_counts_undecodable_images_and_fails_when_none_is_scored(tiny_model, tmp_path):
    from text_recognition.evaluation import evaluate

    make_lmdb(tmp_path / "eval" / "IIIT5k_3000", ["ab", "cd", "ef", "gh", "ij"], corrupt={1, 3})
    report = evaluate(tiny_model, tmp_path / "eval", batch_size=2, timing_samples=0)
    (result,) = report.results
    assert (result.num_samples, result.num_undecodable) == (3, 2)
    assert "| samples | undecodable (not scored) |" in report.table() and "| IIIT5k_3000 | 3 | 2 |" in report.table()
    assert report.to_json()["datasets"]["IIIT5k_3000"]["num_undecodable"] == 2
    make_lmdb(tmp_path / "eval" / "SVT", ["ab", "cd"], corrupt={0, 1})
    with pytest.raises(ValueError, match=r"No sample could be scored in SVT \(2 undecodable image\(s\)\)"):
        evaluate(tiny_model, tmp_path / "eval", batch_size=2, timing_samples=0)


def test_test_script_reports_the_scorable_datasets_when_one_is_not_then_fails(model_folder, tmp_path, capsys):
    """Issue 21 case 11: one unscorable dataset discarded every other result (no table, no JSON)."""
    test_script = load_script("test")
    make_lmdb(tmp_path / "eval" / "IIIT5k_3000", ["ab", "cd", "ef"])
    make_lmdb(tmp_path / "eval" / "SVT", ["ab", "cd"], corrupt={0, 1})
    output = tmp_path / "results.json"
    code = run(test_script.main, ["--eval_data", str(tmp_path / "eval"), "--saved_model", str(model_folder),
                                  "--workers", "0", "--timing_samples", "0", "--result_dir", str(tmp_path / "result"),
                                  "--output_json", str(output)])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 1
    assert "| IIIT5k_3000 | 3 |" in captured.out and "Not scored (no sample could be): SVT" in captured.out
    assert "error: No sample could be scored in SVT (2 undecodable image(s))" in captured.err
    results = json.loads(output.read_text())
    assert list(results["datasets"]) == ["IIIT5k_3000"] and results["unscored"] == ["SVT (2 undecodable image(s))"]


@pytest.mark.parametrize(("flags", "message"), [(["--batch_size", "0"], "--batch_size must be at least 1, got 0"),
                                                (["--workers", "-1"], "--workers must be at least 0, got -1"),
                                                (["--timing_samples", "-5"], "--timing_samples must be at least 0")])
def test_test_script_bad_sizes_are_one_line_errors(model_folder, tmp_path, capsys, flags, message):
    """Issue 21 case 11: --batch_size 0 said 'range() arg 3 must not be zero'."""
    test_script = load_script("test")
    make_lmdb(tmp_path / "eval" / "IIIT5k_3000", ["ab", "cd"])
    code = run(test_script.main, ["--eval_data", str(tmp_path / "eval"), "--saved_model", str(model_folder),
                                  "--result_dir", str(tmp_path / "result"), *flags])  # fmt: skip
    assert code == 1 and f"error: {message}" in capsys.readouterr().err
    assert not (tmp_path / "result").exists()


@pytest.mark.parametrize(("pattern", "reason"), [("[a-", "unterminated character set at position 0"),
                                                 ("(ab", "missing ), unterminated subpattern at position 0"),
                                                 (r"(a)\1", "unsupported: Group references are not implemented"),
                                                 ("^ab$", "unsupported: '^'")])  # fmt: skip
def test_a_bad_pattern_says_what_is_wrong(tiny_model, pattern, reason):
    """Issue 21 case 11: --pattern '[a-' gave an empty reason."""
    from text_recognition.decoding import DecodingOptions

    with pytest.raises(ValueError, match=f"Cannot use the pattern {re.escape(repr(pattern))}") as error:
        tiny_model.decoder(DecodingOptions(pattern=pattern))
    assert reason in str(error.value) and ": ." not in str(error.value)


def test_test_script_on_an_all_corrupt_lmdb_exits_non_zero(model_folder, tmp_path, capsys):
    test_script = load_script("test")
    make_lmdb(tmp_path / "eval" / "IC13_857", ["ab", "cd"], corrupt={0, 1})
    code = run(test_script.main, ["--eval_data", str(tmp_path / "eval"), "--saved_model", str(model_folder),
                                  "--workers", "0", "--result_dir", str(tmp_path / "result")])  # fmt: skip
    assert code == 1 and "No sample could be scored in IC13_857" in capsys.readouterr().err


# ---- the Hub pusher ---------------------------------------------------------------------------------------------


class StubHubApi:
    """``create_repo`` and ``upload_folder(run_as_future=True)`` whose futures end when the test says so."""

    def __init__(self, refuse: set[str] = frozenset()):
        self.uploads: list[tuple[str, str, Future, Path]] = []  # (message, file content, future, folder)
        self.refuse = refuse

    def create_repo(self, repo_id, **kwargs):
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def upload_folder(self, *, repo_id, folder_path, commit_message, run_as_future):
        future = Future()
        self.uploads.append((commit_message, (Path(folder_path) / "weights").read_text(), future, Path(folder_path)))
        return future

    def finish(self, number):
        message, _, future, _ = self.uploads[number]
        if message in self.refuse:
            future.set_exception(PermissionError("403 Forbidden: no write access"))
        else:
            future.set_result("commit")


def test_pusher_keeps_one_copy_skips_a_stale_best_and_reports_a_refused_push(tmp_path):
    from accelerate import PartialState

    from text_recognition.training.hub_push import HubPusher

    PartialState()  # the accelerate logger needs it, as in training
    api = StubHubApi(refuse={"best 3"})
    pusher = HubPusher("acme/run", private=False, api=api)
    folder = tmp_path / "best_accuracy"
    folder.mkdir()
    for number in (1, 2, 3):  # three bests while the first upload runs
        (folder / "weights").write_text(f"v{number}")
        pusher.push(folder, f"best {number}")
    assert len(api.uploads) == 1 and pusher.skipped_stale == 1  # best 2 was made stale by best 3
    api.finish(0)
    pusher.poll()
    assert not api.uploads[0][3].exists()  # the first copy is removed as soon as its upload ended
    assert [(message, files) for message, files, _, _ in api.uploads] == [("best 1", "v1"), ("best 3", "v3")]
    api.finish(1)
    assert pusher.wait() == ["403 Forbidden: no write access"]
    assert pusher.pushed == ["best 1"] and not api.uploads[1][3].exists()


# ---- two processes ---------------------------------------------------------------------------------------------


def launch(*args, timeout=300):
    import subprocess
    import sys

    from conftest import REPO_ROOT, subprocess_env

    command = [sys.executable, str(REPO_ROOT / "scripts" / "launch.py"), "--config_file",
               str(REPO_ROOT / "accelerate_configs" / "cpu_ddp.yaml"), str(REPO_ROOT / "scripts" / "train.py"), *args]
    return subprocess.run(command, env=subprocess_env(ACCELERATE_USE_CPU="1"), capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


@pytest.mark.slow
def test_two_processes_with_corrupt_only_batches_on_one_rank_stay_in_step(data, tmp_path):
    # batch 1 per process, half the images corrupt: often one rank's batch is empty while the other's is not.
    # Were the skip decided per rank, the ranks' all-reduces would fall out of step and the run would hang.
    make_lmdb(tmp_path / "half" / "MJ", [f"w{i}" for i in range(16)], corrupt=set(range(0, 16, 2)))
    result = launch(*argv(data, tmp_path / "out", "--batch_size", "1", "--gradient_accumulation_steps", "2",
                          "--num_iter", "8", "--valInterval", "4", "--select_data", "MJ", "--batch_ratio", "1",
                          "--max_skipped_steps", "8", train_data=tmp_path / "half"))  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    results = json.loads((tmp_path / "out" / "run" / "all_results.json").read_text())
    assert results["iterations"] == 8 and results["empty_batches_skipped"] > 0


@pytest.mark.slow
def test_launcher_adds_no_traceback_after_the_scripts_one_line_error(data, tmp_path):
    result = launch(*argv(data, tmp_path, train_data=tmp_path / "missing"))
    assert result.returncode == 1
    assert "error: Data folder not found" in result.stderr
    assert "Traceback" not in result.stderr and "ChildFailedError" not in result.stderr, result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("case", ["node_local_folders", "shared_folder", "missing_train_data"])
def test_two_nodes_without_a_shared_output_folder_fail_with_a_message_on_each_node(data, tmp_path, case):
    # Two "nodes" on this machine (accelerate's --machine_rank 0 and 1, gloo), each with its own --output_dir unless
    # shared: node 1 cannot see the run folder node 0 made. Each node's terminal says why, not only the launcher's
    # "1 process(es) failed (see their errors above)" with nothing above.
    import socket
    import subprocess
    import sys

    from conftest import REPO_ROOT, subprocess_env

    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    nodes = []
    for rank in (0, 1):
        out = tmp_path / (f"node{rank}" if case == "node_local_folders" else "shared")
        train_data = tmp_path / "missing" if case == "missing_train_data" else None
        train_args = argv(data, out, "--num_iter", "2", train_data=train_data)
        command = [sys.executable, str(REPO_ROOT / "scripts" / "launch.py"), "--config_file",
                   str(REPO_ROOT / "accelerate_configs" / "cpu_ddp.yaml"), "--num_machines", "2", "--num_processes",
                   "2", "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1", "--main_process_port", port,
                   str(REPO_ROOT / "scripts" / "train.py"), *train_args]  # fmt: skip
        nodes.append(subprocess.Popen(command, env=subprocess_env(ACCELERATE_USE_CPU="1"), stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))  # fmt: skip
    outputs = [node.communicate(timeout=300) for node in nodes]
    codes = [node.returncode for node in nodes]
    errors = [[line for line in err.splitlines() if line.startswith("error: ")] for _, err in outputs]
    if case == "shared_folder":
        assert codes == [0, 0], outputs
        assert json.loads((tmp_path / "shared" / "run" / "all_results.json").read_text())["iterations"] == 2
        assert not list((tmp_path / "shared" / "run").glob(".shared-*"))  # the marker is removed
        return
    assert codes == [1, 1], outputs
    assert [len(lines) for lines in errors] == [1, 1], outputs  # one error line on each node's terminal
    if case == "node_local_folders":
        assert "node0/run is not shared by every node: process 1 on node 1" in errors[0][0]
        # the node that cannot see the folder names it as it resolves there, and the folder the main process wrote
        assert (f"error: {tmp_path / 'node1' / 'run'} is not the run folder the main process writes to: process 0 on "
                f"node 0") in errors[1][0]  # fmt: skip
        assert f"wrote a file into {tmp_path / 'node0' / 'run'}" in errors[1][0]
        assert f"(here {tmp_path / 'node1' / 'run'} does not exist)" in errors[1][0]
        assert "shared by all nodes" in errors[1][0] and "same path on each node" in errors[1][0]
        assert not (tmp_path / "node0" / "run" / "best_accuracy").exists()
        assert not (tmp_path / "node1").exists()  # nothing written where the main process does not write
    else:  # the main process fails: the other node quotes its error and says where it happened
        assert errors[0][0].startswith("error: Data folder not found")
        where = f"process 0 on node 0 (host {socket.gethostname()})"
        assert errors[1][0] == f"error: stopped because {where} failed: {errors[0][0].removeprefix('error: ')}"
