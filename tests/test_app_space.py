"""A Space for a model, end to end on the loopback fake Hub: ``scripts/push_to_hub.py --space`` pushes the model with
a card that links the Space, and the Space (``app.py``, ``requirements.txt``, its card); the Space's ``app.py``,
started from the pushed files, downloads the model from that Hub and serves the same page, whose readings (called
through Gradio's client) are ``model.recognize``'s."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import torch
import yaml
from app_server import app_env, free_port, served
from conftest import REPO_ROOT, assert_same_texts_but_near_ties, subprocess_env
from fake_hub import SCRUBBED_ENV, FakeHub

from text_recognition import ModelConfig, TextRecognitionModel, __version__
from text_recognition.app.space import SPACE_END, SPACE_START
from text_recognition.data import SyntheticWords
from text_recognition.transforms import preprocess

NO_GRADIO = importlib.util.find_spec("gradio") is None
pytestmark = [pytest.mark.slow, pytest.mark.skipif(NO_GRADIO, reason="needs gradio (text_recognition[app])")]


def hub_env(hub: FakeHub, hf_home) -> dict[str, str]:
    env = {key: value for key, value in subprocess_env().items() if key not in SCRUBBED_ENV}
    return {**env, "HF_ENDPOINT": hub.endpoint, "HF_HOME": str(hf_home), "HF_HUB_DISABLE_TELEMETRY": "1"}


def test_a_pushed_space_serves_the_model_from_the_hub(tmp_path):
    from gradio_client import Client, handle_file

    folder = tmp_path / "model"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = TextRecognitionModel(ModelConfig("None", "VGG", "None", "CTC", output_channel=32, temperature=0.01))
        model.init_weights()
    model.save_pretrained(folder)
    model.eval()
    card_before = (folder / "README.md").read_text()
    with FakeHub() as hub:
        push = subprocess.run(
            [sys.executable, str(REPO_ROOT / "scripts" / "push_to_hub.py"), "--model_dir", str(folder),
             "--hub_model_id", "acme/tiny-crnn", "--space", "acme/tiny-crnn-demo"],
            env={**hub_env(hub, tmp_path / "hf_push"), "HF_TOKEN": "hf_fake"}, capture_output=True, text=True,
            timeout=300,
        )  # fmt: skip
        assert push.returncode == 0, push.stderr
        assert "pushed the Space acme/tiny-crnn-demo" in push.stdout and hub.errors == []
        pushed = hub.repos["acme/tiny-crnn"]
        assert set(pushed) == {"config.json", "model.safetensors", "README.md"}
        assert pushed["model.safetensors"] == (folder / "model.safetensors").read_bytes()
        card = pushed["README.md"].decode()
        assert f"[acme/tiny-crnn-demo]({hub.endpoint}/spaces/acme/tiny-crnn-demo)" in card
        link = card[card.index(SPACE_START) : card.index(SPACE_END) + len(SPACE_END)]
        assert card.replace(link + "\n\n", "") == card_before  # the rest of the card as it was
        assert (folder / "README.md").read_text() == card_before  # the local folder is left as it was
        space_files = hub.repos["spaces/acme/tiny-crnn-demo"]
        assert set(space_files) == {"app.py", "requirements.txt", "README.md"}
        assert space_files["requirements.txt"].decode() == f"text_recognition[app]=={__version__}\n"
        metadata = yaml.safe_load(space_files["README.md"].decode().split("---")[1])
        assert metadata["sdk"] == "gradio" and metadata["models"] == ["acme/tiny-crnn"]

        space = tmp_path / "space"  # the Space as the Hub holds it, started as Spaces start it: python app.py
        space.mkdir()
        for name, content in space_files.items():
            (space / name).write_bytes(content)
        port = free_port()
        env = app_env(hub_env(hub, tmp_path / "hf_space"), port, tmp_path / "gradio")
        with served([sys.executable, "app.py"], env, port, space, tmp_path / "space.log") as url:
            assert ("GET", "/acme/tiny-crnn/resolve/main/model.safetensors") in hub.requests
            image = tmp_path / "word.png"
            SyntheticWords(seed=9).render(0)[0].save(image)
            client = Client(url, verbose=False)
            html, status, readings = client.predict([handle_file(str(image))], 1, "", "", None, "", 0, "fp32",
                                                    api_name="/read")  # fmt: skip
    with torch.inference_mode():  # the Space's process may round otherwise: a text may differ at a near-tie only
        logits = model(preprocess([image], model.config))
    expected = model.recognize(image)
    assert status == "Read 1 image (PyTorch, fp32)." and 'class="tr-text"' in html and expected[0].confidence > 1e-3
    assert readings[0]["name"] == "word.png"
    assert_same_texts_but_near_ties([(readings[0]["text"], readings[0]["confidence"])], expected, logits, "the Space",
                                    rel=1e-5)  # fmt: skip
