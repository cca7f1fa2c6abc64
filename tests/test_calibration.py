"""Temperature fitting, ECE, selective prediction, and their plots."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import make_lmdb
from test_scripts import load_script

from text_recognition import ModelConfig, TextRecognitionModel
from text_recognition.calibration import (
    aurc,
    confidences_at,
    coverage_at_accuracy,
    expected_calibration_error,
    fit_temperature,
    path_logits,
    reliability_bins,
    risk_coverage,
)
from text_recognition.cli import run


def test_ece_on_a_hand_made_example():
    # two bins used: (0.8, 0.867] holds 0.85 x2 (1 right), (0.2, 0.267] holds 0.25 x2 (both wrong)
    confidences, correct = [0.85, 0.85, 0.25, 0.25], [1, 0, 0, 0]
    assert expected_calibration_error(confidences, correct) == pytest.approx(0.5 * 0.35 + 0.5 * 0.25)
    bins = reliability_bins([0.0, 1.0, 1 / 15], [1, 1, 0])
    assert bins.counts[0] == 2 and bins.counts[-1] == 1  # 0 and 1/15 in the first bin, 1.0 in the last


def test_coverage_at_accuracy_on_a_hand_made_example():
    confidences = [0.99, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]
    correct = [1, 1, 1, 1, 0, 1, 1, 0, 0, 0]
    # accuracy of the k most confident: 1, 1, 1, 1, .8, .833, .857, .75, .667, .6
    assert coverage_at_accuracy(confidences, correct, 0.95) == pytest.approx(0.4)
    assert coverage_at_accuracy(confidences, correct, 0.85) == pytest.approx(0.7)
    assert coverage_at_accuracy(confidences, correct, 0.6) == pytest.approx(1.0)
    assert coverage_at_accuracy([0.9, 0.8], [0, 1], 0.99) == 0.0
    expected = np.mean(1 - np.array([1, 1, 1, 1, 0.8, 5 / 6, 6 / 7, 0.75, 6 / 9, 0.6]))
    assert aurc(confidences, correct) == pytest.approx(expected)


def test_ties_in_confidence_are_cut_together():
    # the two 0.9s go in or out together: answering only the right one of them is not a threshold
    coverage, accuracy = risk_coverage([0.9, 0.9, 0.5], [1, 0, 1])
    assert accuracy.tolist() == [0.5, 0.5, pytest.approx(2 / 3)]
    assert coverage_at_accuracy([0.9, 0.9, 0.5], [1, 0, 1], 0.99) == 0.0


def test_temperature_fitting_lowers_ece_of_an_over_confident_model():
    """Logits scaled by 4: the model claims ~100 % but is right 70 % of the time."""
    rng = np.random.default_rng(0)
    rows, correct = [], []
    for _ in range(600):
        true_logits = rng.normal(0, 1, size=(3, 5))
        probs = torch.tensor(true_logits).softmax(1).numpy()
        p_word = float(np.prod(probs.max(1)))
        correct.append(float(rng.random() < p_word))  # right as often as the calibrated confidence says
        rows.append(torch.tensor(true_logits * 4.0, dtype=torch.float32))
    before = expected_calibration_error(confidences_at(rows, 1.0), correct)
    temperature = fit_temperature(rows, correct)
    after = expected_calibration_error(confidences_at(rows, temperature), correct)
    assert temperature == pytest.approx(4.0, rel=0.25)
    assert after < before / 3


def test_temperature_keeps_predictions_and_greedy_confidence_matches_the_tokenizer():
    torch.manual_seed(0)
    for prediction in ("CTC", "Attn"):
        model = TextRecognitionModel(ModelConfig("None", "VGG", "None", prediction, output_channel=32,
                                                 hidden_size=32))  # fmt: skip
        model.init_weights()
        model.eval()
        images = torch.rand(4, 1, 32, 100) * 2 - 1
        with torch.inference_mode():
            logits = model(images)
        expected = [c for _, c in model.tokenizer.decode_with_confidence(logits)]
        rows = path_logits(logits, prediction == "CTC")
        assert confidences_at(rows, 1.0) == pytest.approx(expected, rel=1e-5)
        plain = model.recognize_batch(images)
        model.config.temperature = 2.0
        hot = model.recognize_batch(images)
        assert [r.text for r in hot] == [r.text for r in plain]
        assert [r.confidence for r in hot] == pytest.approx(confidences_at(rows, 2.0).tolist(), rel=1e-5)


def test_temperature_must_be_positive():
    with pytest.raises(ValueError, match="temperature"):
        ModelConfig(temperature=0.0)
    assert ModelConfig().temperature == 1.0


@pytest.fixture(scope="module")
def tiny_model_and_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("calibration")
    torch.manual_seed(0)
    model = TextRecognitionModel(ModelConfig("None", "VGG", "None", "CTC", output_channel=32, hidden_size=32))
    model.init_weights()
    model.save_pretrained(root / "model")
    labels = ["ab", "cd", "a1", "zz", "hello", "x", "42", "word", "b", "c"] * 3
    make_lmdb(root / "data" / "val", labels)
    return root


def test_calibrate_script_writes_the_temperature(tiny_model_and_data, tmp_path):
    root = tiny_model_and_data
    calibrate = load_script("calibrate")
    out = tmp_path / "calibrated"
    assert run(calibrate.main, ["--saved_model", str(root / "model"), "--data", str(root / "data"), "--workers", "0",
                                "--output_dir", str(out), "--output_json", str(tmp_path / "c.json")]) == 0
    written = json.loads((out / "config.json").read_text())
    measured = json.loads((tmp_path / "c.json").read_text())
    assert written["temperature"] == pytest.approx(measured["temperature"]) and measured["num_samples"] == 30
    assert measured["ece_after"] <= measured["ece_before"] + 1e-9
    assert TextRecognitionModel.from_pretrained(out).config.temperature == pytest.approx(measured["temperature"])


def test_evaluation_json_has_calibration_selective_and_plots(tiny_model_and_data, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    root = tiny_model_and_data
    monkeypatch.chdir(tmp_path)
    test = load_script("test")
    assert run(test.main, ["--saved_model", str(root / "model"), "--eval_data", str(root / "data"), "--workers", "0",
                           "--timing_samples", "0", "--output_json", "r.json", "--plots", "--beam_width", "2",
                           "--min_confidence", "0.5"]) == 0
    result = json.loads((tmp_path / "r.json").read_text())["datasets"]["val"]
    assert set(result["calibration"]) == {"ece", "temperature"} and 0 <= result["calibration"]["ece"] <= 1
    assert set(result["selective"]["coverage_at_accuracy"]) == {"0.95", "0.99"}
    assert result["abstained"] == 30  # an untrained model is never confident
    plots = sorted(p.name for p in (tmp_path / "result").rglob("*.png"))
    assert plots == ["accuracy_by_length.png", "confusions.png", "coverage_val.png", "reliability_val.png"]
