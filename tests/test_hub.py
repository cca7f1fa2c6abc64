"""Model folders, model cards, strict loading, offline Hub loading, pushing to a (loopback) Hub."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from dataclasses import asdict

import pytest
import torch
import yaml
from conftest import REPO_ROOT
from fake_hub import FakeHub, run_client
from huggingface_hub import ModelCard
from safetensors.torch import load_file, save_file

from text_recognition import ModelConfig, TextRecognitionModel
from text_recognition.checkpoints import CheckpointMismatchError
from text_recognition.hub import load_model_card_template
from text_recognition.loading import load_model

SMALL = {"output_channel": 32, "hidden_size": 16}


def tiny(stage_string: str = "None-VGG-BiLSTM-CTC", **kwargs) -> TextRecognitionModel:
    torch.manual_seed(0)
    return TextRecognitionModel(ModelConfig.from_stage_string(stage_string, **{**SMALL, **kwargs})).eval()


def front_matter(readme: str) -> dict:
    assert readme.startswith("---\n")
    return yaml.safe_load(readme.split("---\n")[1])


def test_model_card_describes_the_model(tmp_path):
    model = tiny("TPS-ResNet-BiLSTM-Attn", sensitive=True)
    model.save_pretrained(tmp_path, model_card_kwargs={"repo_id": "acme/trba"})
    readme = (tmp_path / "README.md").read_text()
    meta = front_matter(readme)
    assert meta["library_name"] == "text_recognition"
    assert meta["pipeline_tag"] == "image-to-text"
    assert meta["license"] == "apache-2.0"
    assert {"scene-text-recognition", "ocr", "TPS-ResNet-BiLSTM-Attn", "tps", "resnet", "bilstm", "attn"} <= set(
        meta["tags"]
    )
    assert "# TPS-ResNet-BiLSTM-Attn" in readme
    assert 'TextRecognitionModel.from_pretrained("acme/trba")' in readme
    assert "94 symbols" in readme and "case-sensitive" in readme
    assert f"{model.num_parameters:,}" in readme
    assert "Baek" in readme and "No evaluation results yet" in readme


def test_model_card_with_evaluation_results_has_model_index(tmp_path):
    results = [
        {"dataset": "IIIT5k_3000", "num_samples": 3000, "accuracy": 87.367, "norm_ED": 0.9512, "mean_confidence": 0.8},
        {"dataset": "SVT", "num_samples": 647, "accuracy": 87.326, "norm_ED": 0.9401, "mean_confidence": 0.7},
    ]
    training = {"train_data": "data/training", "select_data": "MJ-ST", "batch_ratio": "0.5-0.5"}
    tiny().save_pretrained(
        tmp_path,
        model_card_kwargs={"model_name": "crnn-demo", "eval_results": results, "training": training,
                           "run_config": {"model": {"prediction": "CTC"}, "train": {"num_iter": 300000}}},
    )  # fmt: skip
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.model_name == "crnn-demo"
    parsed = {r.dataset_name: r.metric_value for r in card.data.eval_results}
    assert parsed == {"IIIT5k_3000": 87.367, "SVT": 87.326}
    assert all(r.metric_type == "accuracy" and r.task_type == "image-to-text" for r in card.data.eval_results)
    assert all(r.metric_config == "dtrb" and r.metric_name == "Word accuracy (dtrb)" for r in card.data.eval_results)
    assert "| IIIT5k_3000 | 3000 | 87.367 | 0.9512 | 0.8000 |" in card.content
    assert "- select_data: `MJ-ST`" in card.content
    assert '"num_iter": 300000' in card.content


def test_template_ships_inside_the_package_or_checkout():
    assert load_model_card_template() == (REPO_ROOT / "model_card_template.md").read_text()


@pytest.mark.slow
def test_wheel_contains_the_model_card_template(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
         str(REPO_ROOT)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    [wheel] = tmp_path.glob("text_recognition-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        assert "text_recognition/model_card_template.md" in names
        assert archive.read("text_recognition/model_card_template.md").decode() == load_model_card_template()
        assert "text_recognition/stages/prediction.py" in names
        assert "text_recognition/app/examples/01_station.png" in names  # the app's examples, for Spaces too


def test_from_pretrained_is_strict_about_missing_and_extra_weights(tmp_path):
    model = tiny()
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    weights.pop("Prediction.bias")
    weights["Prediction.extra"] = torch.zeros(3)
    save_file(weights, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointMismatchError, match=r"missing keys \(1\):\n    Prediction.bias") as error:
        TextRecognitionModel.from_pretrained(tmp_path)
    assert "unexpected keys (1):\n    Prediction.extra" in str(error.value)


def test_config_of_another_architecture_is_a_clear_error(tmp_path):
    tiny("None-VGG-BiLSTM-CTC").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "prediction": "Attn"}))
    with pytest.raises(CheckpointMismatchError, match=r"prediction CTC \('.*config\.json' says Attn\)"):
        TextRecognitionModel.from_pretrained(tmp_path)


def test_folder_without_weights(tmp_path):
    tiny().save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors.*not found"):
        TextRecognitionModel.from_pretrained(tmp_path)


def populate_cache(cache_dir, repo_id, folder, commit="0" * 40):
    """The Hugging Face cache layout (models--org--name/{refs/main, snapshots/<sha>/}) that offline loading reads."""
    repo = cache_dir / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for file in folder.iterdir():
        shutil.copy(file, snapshot / file.name)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)


def test_from_pretrained_hub_id_offline_from_cache(tmp_path, hf_hub_cache):
    model = tiny("TPS-RCNN-None-Attn")
    model.save_pretrained(tmp_path / "folder")
    populate_cache(hf_hub_cache, "acme/str-tiny", tmp_path / "folder")
    for loaded in (TextRecognitionModel.from_pretrained("acme/str-tiny"), load_model("acme/str-tiny")):
        assert asdict(loaded.config) == asdict(model.config)
        for key, value in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), key


def test_load_model_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"Cannot load 'acme/not-cached'"):
        load_model("acme/not-cached")
    with pytest.raises(FileNotFoundError, match=r"does not exist"):
        load_model(tmp_path / "missing.pth")
    with pytest.raises(FileNotFoundError, match=r"has no config.json"):
        load_model(tmp_path)
    (tmp_path / "model.pth").write_bytes(b"")
    with pytest.raises(ValueError, match=r"does not record its architecture"):
        load_model(tmp_path / "model.pth")


PUSH_CODE = """
import json, torch
from text_recognition import ModelConfig, TextRecognitionModel
torch.manual_seed(0)
model = TextRecognitionModel(ModelConfig("None", "VGG", "BiLSTM", "Attn", output_channel=32, hidden_size=16))
model.save_pretrained("local")
results = [{"dataset": "IIIT5k_3000", "num_samples": 3000, "accuracy": 80.5, "norm_ED": 0.9, "mean_confidence": 0.7}]
url = model.push_to_hub("REPO", token="hf_fake", private=True,
                        model_card_kwargs={"repo_id": "REPO", "eval_results": results})
print("COMMIT", url)
loaded = TextRecognitionModel.from_pretrained("REPO", token="hf_fake")
same = all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
print("ROUNDTRIP", same)
"""


def test_push_to_hub_through_a_local_hub_server(tmp_path):
    with FakeHub() as hub:
        result = run_client(hub, PUSH_CODE.replace("REPO", "acme/crnn-attn"), tmp_path / "home")
        assert result.returncode == 0, result.stderr
        assert "ROUNDTRIP True" in result.stdout
        files = hub.repos["acme/crnn-attn"]
        assert sorted(files) == ["README.md", "config.json", "model.safetensors"]
        assert ("POST", "/api/repos/create") in hub.requests
    local = tmp_path / "local"
    assert files["model.safetensors"] == (local / "model.safetensors").read_bytes()
    assert json.loads(files["config.json"]) == json.loads((local / "config.json").read_text())
    readme = files["README.md"].decode()
    meta = front_matter(readme)
    assert meta["library_name"] == "text_recognition" and "scene-text-recognition" in meta["tags"]
    assert meta["model-index"][0]["results"][0]["metrics"][0]["value"] == 80.5
    assert 'from_pretrained("acme/crnn-attn")' in readme


def test_push_errors_are_clear(tmp_path):
    code = PUSH_CODE.replace('token="hf_fake", ', "")
    with FakeHub(forbidden={"acme/secret"}) as hub:
        no_token = run_client(hub, code.replace("REPO", "acme/crnn"), tmp_path / "a")
        forbidden = run_client(hub, PUSH_CODE.replace("REPO", "acme/secret"), tmp_path / "b")
    assert no_token.returncode != 0 and "401" in no_token.stderr
    assert forbidden.returncode != 0 and "403" in forbidden.stderr


def test_push_to_hub_script(tmp_path):
    tiny().save_pretrained(tmp_path / "run" / "best_accuracy")
    script = REPO_ROOT / "scripts" / "push_to_hub.py"
    with FakeHub(forbidden={"acme/secret"}) as hub:
        ok = run_client(hub, f"import runpy, sys; sys.argv = ['x', '--run_dir', {str(tmp_path / 'run')!r}, "
                             f"'--hub_model_id', 'acme/pushed', '--token', 'hf_fake']; "
                             f"runpy.run_path({str(script)!r}, run_name='__main__')", tmp_path / "h1")  # fmt: skip
        refused = run_client(hub, f"import runpy, sys; sys.argv = ['x', '--model_dir', "
                                  f"{str(tmp_path / 'run' / 'best_accuracy')!r}, '--hub_model_id', 'acme/secret', "
                                  f"'--token', 'hf_fake']; runpy.run_path({str(script)!r}, run_name='__main__')",
                             tmp_path / "h2")  # fmt: skip
        files = sorted(hub.repos.get("acme/pushed", {}))
    assert ok.returncode == 0, ok.stderr
    assert files == ["README.md", "config.json", "model.safetensors"]
    assert refused.returncode == 1
    assert "error: The Hub refused the push to 'acme/secret'" in refused.stderr and "HF_TOKEN" in refused.stderr
