"""scripts/train.py under `accelerate launch`, on small synthetic data, on CPU."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from conftest import REPO_ROOT, subprocess_env
from dtrb_reference import dtrb_manifest, random_dtrb_state_dict
from fake_hub import FakeHub
from safetensors.torch import load_file

from text_recognition import TextRecognitionModel
from text_recognition.cli import parse_train_args, train_configs_from_args
from text_recognition.data import SyntheticWords

TINY_CTC = ["--Transformation", "None", "--FeatureExtraction", "VGG", "--SequenceModeling", "BiLSTM",
            "--Prediction", "CTC", "--output_channel", "32", "--hidden_size", "32"]  # fmt: skip
TINY_ATTN = ["--Transformation", "TPS", "--FeatureExtraction", "RCNN", "--SequenceModeling", "None",
             "--Prediction", "Attn", "--output_channel", "32", "--hidden_size", "32", "--num_fiducial", "6"]  # fmt: skip
N_VALID = 61  # odd: a 2-process split must still count every sample once


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_data")
    SyntheticWords(min_length=2, max_length=6, seed=0).write_lmdb(root / "train" / "MJ", 400, progress=False)
    SyntheticWords(min_length=2, max_length=6, seed=1).write_lmdb(root / "train" / "ST", 200, progress=False)
    SyntheticWords(min_length=2, max_length=6, seed=2).save_dataset(root / "valid" / "synth", N_VALID)
    return root


def launch(args, cwd, config="cpu.yaml", env_extra=None, timeout=600, background=False, launch_args=()):
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(REPO_ROOT / "accelerate_configs" / config), *launch_args, str(REPO_ROOT / "scripts" / "train.py"),
               *args]  # fmt: skip
    env = subprocess_env(**(env_extra or {}))
    if background:
        # Its own process group: `accelerate launch` runs the trainer as a child, and a crash takes both.
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)  # fmt: skip
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return result


def base_args(data, run_dir, *extra):
    return ["--train_data", str(data / "train"), "--valid_data", str(data / "valid"), "--batch_size", "8",
            "--workers", "0", "--output_dir", str(run_dir), "--exp_name", "run", "--report_to", "none", *extra]  # fmt: skip


def run_files(run_dir):
    return json.loads((run_dir / "run" / "all_results.json").read_text())


# ---- argument parsing -----------------------------------------------------------------------------------------


def test_dtrb_flags_snake_case_aliases_and_defaults(data):
    args = parse_train_args(["--train_data", "t", "--valid_data", "v", "--Transformation", "TPS",
                             "--feature_extraction", "ResNet", "--SequenceModeling", "BiLSTM", "--prediction", "attn",
                             "--manualSeed", "7", "--valInterval", "5", "--imgW", "128", "--PAD", "--FT",
                             "--saved_model", "x", "--baiduCTC"])  # fmt: skip
    model, data_config, train = train_configs_from_args(args)
    assert model.stage_string == "TPS-ResNet-BiLSTM-Attn" and model.img_w == 128 and model.pad
    assert (train.seed, train.val_interval, train.ft, train.baidu_ctc) == (7, 5, True, True)
    assert (train.batch_size, train.num_iter, train.lr, train.rho, train.eps, train.grad_clip) == (
        192,
        300000,
        1.0,
        0.95,
        1e-8,
        5.0,
    )
    assert (data_config.select_data, data_config.batch_ratio, data_config.workers) == ("MJ-ST", "0.5-0.5", 4)


def test_config_file_values_are_defaults_and_the_command_line_wins(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"batch_size": 16, "imgH": 48, "Prediction": "CTC", "num_iter": 10}))
    args = parse_train_args(["--config", str(config), "--train_data", "t", "--valid_data", "v", "--num_iter", "20",
                             "--Transformation", "None", "--FeatureExtraction", "VGG", "--SequenceModeling", "None"])  # fmt: skip
    model, _, train = train_configs_from_args(args)
    assert (train.batch_size, train.num_iter, model.img_h, model.prediction) == (16, 20, 48, "CTC")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"batchsize": 3}))
    with pytest.raises(ValueError, match=r"Unknown keys in --config .*\['batchsize'\]\. Did you mean: 'batchsize' -> "
                                         r"'batch_size'\?"):  # fmt: skip
        parse_train_args(["--config", str(bad)])
    bad.write_text(json.dumps({"zzz_unknown": 3}))
    with pytest.raises(ValueError, match=r"\['zzz_unknown'\]\. Use the flag names") as error:
        parse_train_args(["--config", str(bad)])
    assert "Did you mean" not in str(error.value)


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--valid_data", "v"], "--train_data is required"),
        (
            ["--train_data", "t", "--valid_data", "v", "--select_data", "MJ-ST", "--batch_ratio", "1"],
            r"batch_ratio has 1 value",
        ),
        (["--train_data", "t", "--valid_data", "v", "--push_to_hub"], "--push_to_hub needs --hub_model_id"),
        (["--train_data", "t", "--valid_data", "v", "--num_iter", "0"], "num_iter must be at least 1"),
    ],
)
def test_bad_arguments(argv, match):
    with pytest.raises(ValueError, match=match):
        train_configs_from_args(parse_train_args([*argv, *TINY_CTC]))


@pytest.fixture
def saved_folder(tmp_path):
    from text_recognition import ModelConfig

    model = TextRecognitionModel(ModelConfig("None", "VGG", "BiLSTM", "CTC", output_channel=32, hidden_size=16,
                                             character="0123456789ABCabc"))  # fmt: skip
    model.save_pretrained(tmp_path / "saved")
    return str(tmp_path / "saved")


def test_sensitive_alone_keeps_a_saved_models_charset(saved_folder):
    args = parse_train_args(["--train_data", "t", "--valid_data", "v", "--saved_model", saved_folder, "--sensitive"])
    model, _, _ = train_configs_from_args(args)
    assert model.sensitive and model.character == "0123456789ABCabc"  # not DTRB's 94 symbols


def test_sensitive_without_upper_case_letters_warns(tmp_path):
    from text_recognition import ModelConfig

    TextRecognitionModel(ModelConfig("None", "VGG", "None", "CTC", output_channel=32)).save_pretrained(tmp_path / "m")
    args = parse_train_args(["--train_data", "t", "--valid_data", "v", "--saved_model", str(tmp_path / "m"),
                             "--sensitive"])  # fmt: skip
    with pytest.warns(UserWarning, match="no upper-case letter: upper-case letters will be removed"):
        model, _, _ = train_configs_from_args(args)
    assert model.character == "0123456789abcdefghijklmnopqrstuvwxyz"


@pytest.mark.parametrize(
    ("flags", "field", "value"),
    [(["--character", "abc"], "character", "abc"), (["--PAD"], "pad", True), (["--imgH", "64"], "img_h", 64),
     (["--imgW", "200"], "img_w", 200)],  # fmt: skip
    ids=["character", "PAD", "imgH", "imgW"],
)
def test_model_flags_with_a_saved_model_apply_in_training(saved_folder, flags, field, value):
    args = parse_train_args(["--train_data", "t", "--valid_data", "v", "--saved_model", saved_folder, "--FT", *flags])
    model, _, _ = train_configs_from_args(args)
    assert getattr(model, field) == value
    assert (model.feature_extraction, model.output_channel) == ("VGG", 32)  # the rest is the saved model's


def test_unknown_flag_exits_with_usage(capsys):
    with pytest.raises(SystemExit) as error:
        parse_train_args(["--train_data", "t", "--num_iters", "3"])
    assert error.value.code == 2 and "unrecognized arguments: --num_iters" in capsys.readouterr().err


# ---- end-to-end runs ------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("model_args", [TINY_CTC, TINY_ATTN], ids=["CTC", "Attn"])
def test_accelerate_launch_trains_and_writes_every_file(data, tmp_path, model_args):
    tracker = ["--report_to", "tensorboard"] if model_args is TINY_CTC else []
    result = launch(base_args(data, tmp_path, *model_args, "--num_iter", "6", "--valInterval", "3",
                              "--checkpointing_steps", "3", *tracker), tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    run = tmp_path / "run"
    for name in ("log_train.txt", "log_dataset.txt", "opt.txt", "run_config.json", "all_results.json"):
        assert (run / name).is_file(), name
    for folder in ("best_accuracy", "best_norm_ED"):
        assert sorted(p.name for p in (run / folder).iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint-3", "checkpoint-6"]
    log = (run / "log_train.txt").read_text()
    assert log.startswith("[1/6] Train loss: ") and "[3/6]" in log and "[6/6]" in log
    assert "Ground Truth              | Prediction                | Confidence Score & T/F" in log
    assert "Total_batch_size: 4+4 = 8" in (run / "log_dataset.txt").read_text()
    assert "------------ Options -------------" in (run / "opt.txt").read_text()
    results = run_files(tmp_path)
    assert results["iterations"] == 6 and results["validation_samples"] == N_VALID
    card = (run / "best_accuracy" / "README.md").read_text()
    assert "model-index" in card and "validation" in card
    model = TextRecognitionModel.from_pretrained(run / "best_accuracy")
    assert len(model.recognize([torch.rand(32, 80)])) == 1
    if tracker:
        assert list((run / "logs").rglob("events.out.tfevents.*")), "no TensorBoard events written"
        assert not (run / "validation_curves.png").exists()
    else:  # no TensorBoard: the validation curves as a picture
        assert results["validation_curves"] == str(run / "validation_curves.png")
        assert (run / "validation_curves.png").stat().st_size > 1000
    # the bests are calibrated on the validation data at the end: the temperature in config.json, ECE on the card
    calibration = results["calibration"]["best_accuracy"]
    assert json.loads((run / "best_accuracy" / "config.json").read_text())["temperature"] == calibration["temperature"]
    assert model.config.temperature == calibration["temperature"] and "ECE" in card
    assert set(calibration) >= {"ece_before", "ece_after", "aurc", "coverage_at_accuracy"}
    assert "label audit" in (run / "log_dataset.txt").read_text()


@pytest.mark.slow
def test_two_process_ddp_counts_every_validation_sample_once(data, tmp_path):
    result = launch(base_args(data, tmp_path, *TINY_CTC, "--num_iter", "4", "--valInterval", "2"), tmp_path,
                    config="cpu_ddp.yaml", env_extra={"ACCELERATE_USE_CPU": "1"})  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "processes: 2" in result.stdout and "total batch: 16" in result.stdout
    assert run_files(tmp_path)["validation_samples"] == N_VALID


@pytest.mark.slow
def test_bf16_on_cpu(data, tmp_path):
    result = launch(base_args(data, tmp_path, *TINY_ATTN, "--num_iter", "3", "--valInterval", "3"), tmp_path,
                    launch_args=["--mixed_precision", "bf16"])  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "mixed precision: bf16" in result.stdout
    assert math.isfinite(run_files(tmp_path)["final_valid_loss"])


def final_weights(run_dir, step):
    return load_file(run_dir / "run" / "checkpoints" / f"checkpoint-{step}" / "model.safetensors")


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_weights_of_an_uninterrupted_run(data, tmp_path):
    # With augmentation, a warm-up + cosine schedule and EMA: each must resume exactly for the weights to match.
    common = [*TINY_CTC, "--num_iter", "120", "--valInterval", "40", "--checkpointing_steps", "10", "--adam",
              "--lr", "1e-3", "--augment", "--augment_strength", "0.7", "--scheduler", "cosine", "--warmup_steps",
              "15", "--ema_decay", "0.95", "--weight_decay", "0.01"]  # fmt: skip
    straight = launch(base_args(data, tmp_path / "a", *common), tmp_path)
    assert straight.returncode == 0, straight.stdout

    process = launch(base_args(data, tmp_path / "b", *common), tmp_path, background=True)
    checkpoints = tmp_path / "b" / "run" / "checkpoints"
    deadline = time.time() + 300
    while not (checkpoints / "checkpoint-20").is_dir() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    reached, exited = (checkpoints / "checkpoint-20").is_dir(), process.poll()
    with contextlib.suppress(ProcessLookupError):  # the group is gone if the run already ended
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert reached, (
        f"checkpoint-20 was not written: the run exited with code {exited}"
        if exited is not None
        else "checkpoint-20 was not written within 300 s (the run was still going: a slow machine?)"
    )
    assert not (tmp_path / "b" / "run" / "all_results.json").exists(), "the run finished before it was killed"
    (checkpoints / ".tmp-checkpoint-999").mkdir(exist_ok=True)  # a half-written checkpoint must be ignored
    resumed = launch(base_args(data, tmp_path / "b", *common, "--resume_from_checkpoint", "latest"), tmp_path)
    assert resumed.returncode == 0, resumed.stdout
    a, b = final_weights(tmp_path / "a", 120), final_weights(tmp_path / "b", 120)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    for run_dir in ("a", "b"):
        assert "augment: True" in (tmp_path / run_dir / "run" / "opt.txt").read_text()
    # the EMA weights: in the checkpoint, and what best_accuracy/ saved
    ema_a, ema_b = (torch.load(tmp_path / r / "run" / "checkpoints" / "checkpoint-120" / "custom_checkpoint_1.pkl",
                               weights_only=True) for r in ("a", "b"))  # fmt: skip
    assert ema_a.keys() == ema_b.keys() and all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    assert any(not torch.equal(ema_a[k], a[k]) for k in a if k in ema_a)  # the EMA is not the raw weights
    best_a, best_b = (load_file(tmp_path / r / "run" / "best_accuracy" / "model.safetensors") for r in ("a", "b"))
    assert all(torch.equal(best_a[k], best_b[k]) for k in best_a)


@pytest.mark.slow
def test_freeze_label_smoothing_and_early_stopping(data, tmp_path):
    from text_recognition import ModelConfig

    config = ModelConfig("TPS", "RCNN", "None", "Attn", output_channel=32, hidden_size=32, num_fiducial=6)
    torch.manual_seed(0)
    start = TextRecognitionModel(config)
    start.init_weights()
    start.save_pretrained(tmp_path / "start")
    result = launch(base_args(data, tmp_path, "--saved_model", str(tmp_path / "start"), "--freeze",
                              "FeatureExtraction", "--label_smoothing", "0.1", "--early_stopping_patience", "2",
                              "--valInterval", "1", "--num_iter", "40", "--checkpointing_steps", "1",
                              "--optimizer", "adamw", "--lr", "1e-3"), tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    results = run_files(tmp_path)
    assert results["stopped_early"] and results["iterations"] < 40
    assert f"early stopping at iteration {results['iterations']}" in result.stdout
    final = final_weights(tmp_path, results["iterations"])
    initial = start.state_dict()
    frozen = [k for k in initial if k.startswith("FeatureExtraction.")]
    assert frozen and all(torch.equal(final[k], initial[k]) for k in frozen)  # running statistics too
    assert not torch.equal(final["Prediction.generator.weight"], initial["Prediction.generator.weight"])


@pytest.mark.slow
def test_fine_tune_on_another_charset(data, tmp_path):
    first = launch(base_args(data, tmp_path / "first", *TINY_ATTN, "--num_iter", "2", "--valInterval", "2"), tmp_path)
    assert first.returncode == 0, first.stdout
    pretrained = tmp_path / "first" / "run" / "best_accuracy"
    fine = launch(base_args(data, tmp_path / "ft", "--saved_model", str(pretrained), "--FT", "--character",
                            "abcdefghijklmnopqrstuvwxyz0123456789-", "--num_iter", "2", "--valInterval", "2"), tmp_path)  # fmt: skip
    assert fine.returncode == 0, fine.stdout + fine.stderr
    # Only the charset differs: the head is resized (model.resize_charset), not re-initialised
    assert "--FT: charset resized, kept 36 symbols, added 1 ('-'), removed 0 ('')" in fine.stdout
    assert "re-initialised" not in fine.stdout
    model = TextRecognitionModel.from_pretrained(tmp_path / "ft" / "run" / "best_accuracy")
    assert model.config.character.endswith("-") and model.config.stage_string == "TPS-RCNN-None-Attn"
    before = load_file(pretrained / "model.safetensors")
    # Kept weights start from the pretrained ones (they then move a little in 2 steps of Adadelta).
    assert torch.allclose(model.state_dict()["FeatureExtraction.ConvNet.0.weight"],
                          before["FeatureExtraction.ConvNet.0.weight"], atol=0.05)  # fmt: skip


@pytest.mark.slow
def test_dtrb_pth_as_saved_model(data, tmp_path):
    state = random_dtrb_state_dict(
        dtrb_manifest("None", "VGG", "BiLSTM", "CTC", num_class=37, output_channel=32, hidden_size=32), seed=1
    )
    torch.save({"module." + k: v for k, v in state.items()}, tmp_path / "crnn.pth")
    result = launch(base_args(data, tmp_path, *TINY_CTC, "--saved_model", str(tmp_path / "crnn.pth"), "--num_iter",
                              "1", "--valInterval", "1", "--lr", "1e-12", "--adam"), tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    trained = load_file(tmp_path / "run" / "best_accuracy" / "model.safetensors")
    assert torch.allclose(trained["Prediction.weight"], state["Prediction.weight"], atol=1e-6)


@pytest.mark.slow
def test_checkpoint_of_another_architecture_is_a_clear_error(data, tmp_path):
    first = launch(base_args(data, tmp_path / "ctc", *TINY_CTC, "--num_iter", "1", "--valInterval", "1"), tmp_path)
    assert first.returncode == 0
    other = [*TINY_CTC[:-6], "--Prediction", "Attn", "--output_channel", "32", "--hidden_size", "32"]
    result = launch(base_args(data, tmp_path / "attn", *other, "--saved_model",
                              str(tmp_path / "ctc" / "run" / "best_accuracy"), "--num_iter", "1"), tmp_path)  # fmt: skip
    assert result.returncode == 1
    assert "error: The checkpoint" in result.stderr and "--Prediction CTC (you gave Attn)" in result.stderr
    assert (
        f'File "{REPO_ROOT / "text_recognition"}' not in result.stderr
    )  # no traceback of ours (the launcher adds one)


@pytest.mark.slow
def test_bad_data_errors(data, tmp_path):
    missing = launch(["--train_data", str(tmp_path / "none"), "--valid_data", str(data / "valid"), *TINY_CTC,
                      "--select_data", "MJ", "--batch_ratio", "1", "--report_to", "none"], tmp_path)  # fmt: skip
    assert missing.returncode == 1 and "Data folder not found" in missing.stderr
    SyntheticWords(charset="ABCDEF", min_length=3, max_length=4, seed=0).write_lmdb(tmp_path / "upper" / "UP", 20,
                                                                                   progress=False)  # fmt: skip
    empty = launch(["--train_data", str(tmp_path / "upper"), "--valid_data", str(data / "valid"), *TINY_CTC,
                    "--select_data", "UP", "--batch_ratio", "1", "--sensitive", "--character", "xyz",
                    "--report_to", "none"], tmp_path)  # fmt: skip
    # A charset that none of the labels fits drops every sample (a custom charset now means what it says, so an
    # uppercase-only charset with --sensitive keeps uppercase labels, unlike DTRB's lowercased check).
    assert empty.returncode == 1
    assert "No sample of 'UP' is left after filtering: kept 0 of 20 (dropped: out_of_charset 20)" in empty.stderr


@pytest.mark.slow
def test_loss_falls_and_accuracy_rises(data, tmp_path):
    result = launch(base_args(data, tmp_path, *TINY_CTC[:-4], "--output_channel", "64", "--hidden_size", "64",
                              "--PAD", "--adam", "--lr", "1e-3", "--num_iter", "400", "--valInterval", "200",
                              "--batch_size", "32", "--select_data", "MJ", "--batch_ratio", "1"), tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stdout
    log = (tmp_path / "run" / "log_train.txt").read_text().splitlines()
    losses = [float(line.split("Train loss: ")[1].split(",")[0]) for line in log if "Train loss" in line]
    current = [line for line in log if line.startswith("Current_accuracy")]
    accuracies = [float(line.split(": ")[1].split(",")[0]) for line in current]
    norm_eds = [float(line.rsplit(": ", 1)[1]) for line in current]
    assert losses[-1] < losses[0] / 2
    # Word accuracy on 61 unseen words after 400 steps on 400 words is at its take-off: 0-26 % by seed and by the
    # rounding of the convolution layout. norm_ED takes off between the validations at 200 and 400 steps (seed 1111:
    # 0.03 at step 1, 0.00-0.01 at 200, at 400 0.44 with AVX-512 kernels and 0.38 with AVX2 ones); at 400 it was
    # 0.32-0.61 over seeds 1, 2, 3 and 1111 on one CPU. Another CPU's kernels round every step differently, which
    # moves the run as another seed does, so the margin is a third of the smallest rise measured: enough to tell a
    # model that learned from one that did not (the loss check above is the main one).
    assert accuracies[0] < 5 and norm_eds[-1] > norm_eds[0] + 0.1


@pytest.mark.slow
def test_push_to_hub_during_training(data, tmp_path):
    with FakeHub(forbidden={"acme/secret"}) as hub:
        extra = {"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": "hf_fake", "HF_HUB_OFFLINE": "0"}
        ok = launch(base_args(data, tmp_path / "ok", *TINY_CTC, "--num_iter", "2", "--valInterval", "1",
                              "--push_to_hub", "--hub_model_id", "acme/crnn-run"), tmp_path, env_extra=extra)  # fmt: skip
        refused = launch(base_args(data, tmp_path / "no", *TINY_CTC, "--num_iter", "1", "--valInterval", "1",
                                   "--push_to_hub", "--hub_model_id", "acme/secret"), tmp_path, env_extra=extra)  # fmt: skip
        files = hub.repos.get("acme/crnn-run", {})
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert sorted(files) == ["README.md", "config.json", "model.safetensors"]
    card = files["README.md"].decode()
    assert "library_name: text_recognition" in card and "model-index" in card and "validation" in card
    assert refused.returncode == 0, refused.stdout  # a refused repo does not stop training
    assert "training continues without --push_to_hub" in refused.stdout + refused.stderr
    assert (tmp_path / "no" / "run" / "best_accuracy" / "model.safetensors").is_file()
    # all_results.json is written once the pushes are over, so it holds their outcome
    assert run_files(tmp_path / "ok")["push_errors"] == []
    assert any("acme/secret" in error for error in run_files(tmp_path / "no")["push_errors"])
    assert "split: validation" in card and "split: test" not in card  # training's results are validation results
