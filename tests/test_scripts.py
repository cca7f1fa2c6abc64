"""scripts/convert_dtrb_checkpoint.py and scripts/demo.py, run as users run them."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, assert_same_texts_but_near_ties, subprocess_env
from dtrb_reference import dtrb_manifest, random_dtrb_state_dict
from PIL import Image

from text_recognition import ModelConfig, TextRecognitionModel
from text_recognition.cli import run
from text_recognition.tokenizer import EOS_ID
from text_recognition.transforms import preprocess

CRNN_FLAGS = ["--Transformation", "None", "--FeatureExtraction", "VGG", "--SequenceModeling", "BiLSTM",
              "--Prediction", "CTC", "--output_channel", "64", "--hidden_size", "32"]  # fmt: skip


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def crnn_pth(tmp_path):
    path = tmp_path / "None-VGG-BiLSTM-CTC.pth"
    state = random_dtrb_state_dict(
        dtrb_manifest("None", "VGG", "BiLSTM", "CTC", num_class=37, output_channel=64, hidden_size=32), seed=5
    )
    torch.save({"module." + k: v for k, v in state.items()}, path)
    return path


def test_convert_dtrb_checkpoint(tmp_path, crnn_pth, capsys):
    convert = load_script("convert_dtrb_checkpoint")
    out = tmp_path / "converted"
    assert run(convert.main, ["--saved_model", str(crnn_pth), "--output_dir", str(out), *CRNN_FLAGS]) == 0
    assert "None-VGG-BiLSTM-CTC" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    converted = TextRecognitionModel.from_pretrained(out)
    direct = TextRecognitionModel.from_dtrb_checkpoint(
        crnn_pth, ModelConfig("None", "VGG", "BiLSTM", "CTC", output_channel=64, hidden_size=32)
    )
    images = torch.rand(2, 1, 32, 100) * 2 - 1
    with torch.no_grad():
        assert torch.equal(converted(images), direct(images))
    assert "converted from: `None-VGG-BiLSTM-CTC.pth`" in (out / "README.md").read_text()

    # An existing folder is not overwritten by accident.
    assert run(convert.main, ["--saved_model", str(crnn_pth), "--output_dir", str(out), *CRNN_FLAGS]) == 1
    assert "pass --overwrite" in capsys.readouterr().err


def test_convert_with_snake_case_aliases_and_wrong_flags(tmp_path, crnn_pth, capsys):
    convert = load_script("convert_dtrb_checkpoint")
    snake = ["--transformation", "none", "--feature_extraction", "vgg", "--sequence_modeling", "bilstm",
             "--prediction", "ctc", "--output_channel", "64", "--hidden_size", "32"]  # fmt: skip
    assert run(convert.main, ["--saved_model", str(crnn_pth), "--output_dir", str(tmp_path / "a"), *snake]) == 0
    wrong = [*CRNN_FLAGS, "--sensitive"]
    assert run(convert.main, ["--saved_model", str(crnn_pth), "--output_dir", str(tmp_path / "b"), *wrong]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: The checkpoint") and "a charset of 36 symbols" in err and "Traceback" not in err
    assert not (tmp_path / "b").exists()
    assert run(convert.main, ["--saved_model", str(crnn_pth), "--output_dir", str(tmp_path / "c")]) == 1
    assert "Missing --Transformation, --FeatureExtraction, --SequenceModeling, --Prediction" in capsys.readouterr().err
    assert run(convert.main, ["--saved_model", str(crnn_pth), "--output_dir", str(tmp_path / "d"), *CRNN_FLAGS,
                              "--Prediction", "Atn"]) == 1  # fmt: skip
    assert "Unknown prediction 'Atn'. Available: CTC, Attn, PARSeq, ViTSTR. Did you mean 'Attn'?" in capsys.readouterr().err


def test_unknown_flag_is_rejected(crnn_pth, tmp_path):
    convert = load_script("convert_dtrb_checkpoint")
    with pytest.raises(SystemExit) as exit_info:
        convert.main(["--saved_model", str(crnn_pth), "--output_dir", str(tmp_path), "--num_iter", "3"])
    assert exit_info.value.code == 2


@pytest.fixture
def image_folder(tmp_path):
    folder = tmp_path / "images"
    (folder / "nested").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("demo_10.png", "demo_2.png", "demo_1.JPG", "nested/demo_3.jpeg"):
        image = Image.fromarray(rng.integers(0, 256, (32, 80, 3), dtype=np.uint8))
        image.save(folder / name, format="JPEG" if name.lower().endswith(("jpg", "jpeg")) else "PNG")
    (folder / "broken.png").write_bytes(b"not an image")
    (folder / "notes.txt").write_text("ignored")
    return folder


def demo_rows(output: str) -> list[list[str]]:
    lines = output.strip().splitlines()
    assert lines[0] == lines[2] == "-" * 80
    assert lines[1].split("\t") == [f"{'image_path':25s}", f"{'predicted_labels':25s}", "confidence score"]
    return [line.split("\t") for line in lines[3:]]


def test_demo_on_a_model_folder(tmp_path, image_folder, capsys, monkeypatch):
    torch.manual_seed(0)
    model = TextRecognitionModel(ModelConfig("None", "VGG", "BiLSTM", "Attn", output_channel=32, hidden_size=16))
    model.save_pretrained(tmp_path / "model")
    monkeypatch.chdir(tmp_path)
    demo = load_script("demo")
    argv = ["--image_folder", str(image_folder), "--saved_model", str(tmp_path / "model"), "--workers", "0",
            "--batch_size", "2"]  # fmt: skip
    assert run(demo.main, argv) == 0
    captured = capsys.readouterr()
    rows = demo_rows(captured.out)
    names = [row[0].strip().removeprefix(str(image_folder) + "/") for row in rows]
    assert names == ["demo_1.JPG", "demo_2.png", "demo_10.png", "nested/demo_3.jpeg"]  # natural order
    paths = [image_folder / name for name in names]
    expected = model.recognize(paths)
    with torch.no_grad():
        greedy = model.eval()(preprocess(paths, model.config))  # [B, T, C]: the path `expected` was decoded on
    # The demo batches by 2 (and the unreadable file leaves one image alone): other matrix shapes than one batch of
    # 4, so rounding may swap an untrained model's near-tie; every other image reads the same.
    printed = [(row[1].strip(), float(row[2])) for row in rows]
    assert_same_texts_but_near_ties(printed, expected, greedy, "demo", eos_id=EOS_ID, abs=6e-5)
    assert "skipped" in captured.err and "broken.png" in captured.err and "1 of 5 images" in captured.err
    log = (tmp_path / "log_demo_result.txt").read_text()
    assert log == captured.out
    assert run(demo.main, argv) == 0  # appends, as DTRB's demo.py
    assert (tmp_path / "log_demo_result.txt").read_text() == log * 2


@pytest.mark.parametrize(
    "flags", [["--imgH", "64"], ["--imgW", "120"], ["--PAD"], ["--character", "abc"], ["--sensitive"], ["--rgb"]],
    ids=["imgH", "imgW", "PAD", "character", "sensitive", "rgb"],
)
def test_demo_refuses_flags_a_model_folder_contradicts(tmp_path, image_folder, capsys, monkeypatch, flags):
    TextRecognitionModel(ModelConfig("None", "VGG", "None", "CTC", output_channel=32)).save_pretrained(tmp_path / "m")
    monkeypatch.chdir(tmp_path)
    demo = load_script("demo")
    argv = ["--image_folder", str(image_folder), "--saved_model", str(tmp_path / "m"), "--workers", "0", *flags]
    assert run(demo.main, argv) == 1
    err = capsys.readouterr().err
    assert f"error: '{tmp_path / 'm'}' records its own configuration" in err and flags[0].split(":")[0] in err
    assert not (tmp_path / "log_demo_result.txt").exists()  # refused before anything was read or written
    assert run(demo.main, [*argv[:6], "--imgH", "32", "--imgW", "100"]) == 0  # the folder's own values are fine


def test_demo_with_a_dtrb_checkpoint_and_workers(tmp_path, image_folder, crnn_pth):
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "demo.py"), "--image_folder", str(image_folder),
         "--saved_model", str(crnn_pth), "--workers", "2", *CRNN_FLAGS],
        cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert len(demo_rows(result.stdout)) == 4


def test_demo_errors(tmp_path, capsys, monkeypatch, crnn_pth):
    monkeypatch.chdir(tmp_path)
    demo = load_script("demo")
    assert run(demo.main, ["--image_folder", str(tmp_path / "none"), "--saved_model", str(crnn_pth), *CRNN_FLAGS]) == 1
    assert "Image folder not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert (
        run(demo.main, ["--image_folder", str(tmp_path / "empty"), "--saved_model", str(crnn_pth), *CRNN_FLAGS]) == 1
    )
    assert "No .jpg/.jpeg/.png images" in capsys.readouterr().err
    assert run(demo.main, ["--image_folder", str(tmp_path), "--saved_model", str(crnn_pth)]) == 1
    assert "does not record its architecture" in capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".tsv", ".json"])
def test_demo_output_file(tmp_path, image_folder, crnn_pth, monkeypatch, suffix):
    monkeypatch.chdir(tmp_path)
    demo = load_script("demo")
    out = tmp_path / f"results{suffix}"
    argv = ["--image_folder", str(image_folder), "--saved_model", str(crnn_pth), "--workers", "0", "--output",
            str(out), *CRNN_FLAGS]  # fmt: skip
    assert run(demo.main, argv) == 0
    if suffix == ".json":
        rows = json.loads(out.read_text())
        assert len(rows) == 4 and set(rows[0]) == {"image_path", "text", "confidence", "abstained"}
    else:
        lines = out.read_text().splitlines()
        assert lines[0] == "image_path\ttext\tconfidence\tabstained" and len(lines) == 5
    assert run(demo.main, [*argv[: -len(CRNN_FLAGS) - 2], "--output", "x.csv", *CRNN_FLAGS]) == 1


@pytest.mark.slow
def test_compiled_recognize_gives_the_same_results():
    torch.manual_seed(0)
    model = TextRecognitionModel(ModelConfig("None", "VGG", "BiLSTM", "Attn", output_channel=32, hidden_size=16))
    model.eval()  # as recognize runs it (BatchNorm on its running statistics)
    images = [np.random.default_rng(i).integers(0, 256, (32, 60), dtype=np.uint8) for i in range(3)]
    pixel_values = preprocess(images, model.config)
    with torch.no_grad():
        features = model.encode(pixel_values)
        greedy = model.Prediction(features)  # [B, T, C]: the eager greedy path
    eager = model.recognize(images)
    compiled = model.compile_encoder().recognize(images)
    with torch.no_grad():
        compiled_features = model.encode(pixel_values)
    scale = features.abs().max()
    assert (compiled_features - features).abs().max() <= 1e-4 * scale, "the compiled encoder computes otherwise"
    # Inductor's kernels depend on the CPU's vector width: a near-tie of this untrained decoder may flip (and the
    # greedy decoding then goes on from another symbol); every other image reads the same.
    assert_same_texts_but_near_ties(compiled, eager, greedy, "compiled", eos_id=EOS_ID)
