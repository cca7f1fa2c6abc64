from __future__ import annotations

import itertools
import json
from dataclasses import asdict

import numpy as np
import pytest
import torch
from conftest import assert_same_texts_but_near_ties
from PIL import Image
from safetensors.torch import load_file

from text_recognition import ModelConfig, Recognition, TextRecognitionModel
from text_recognition.registry import DTRB_STAGES
from text_recognition.model import expected_sequence_length
from text_recognition.transforms import preprocess

# DTRB's 24 combinations; the ViT, PARSeq and ViTSTR stages are tested in test_vit_parseq.py
COMBINATIONS = ["-".join(combo) for combo in itertools.product(*DTRB_STAGES.values())]
SMALL = {"output_channel": 32, "hidden_size": 16}

# DTRB's parameter counts (reference/dtrb.md 3.9): 1 channel, 32x100, oc 512, hidden 256, F 20, 36 symbols.
DTRB_PARAMETER_COUNTS = {
    "None-VGG-None-CTC": 5_568_805, "None-VGG-None-Attn": 6_584_102,
    "None-VGG-BiLSTM-CTC": 8_451_621, "None-VGG-BiLSTM-Attn": 9_148_710,
    "None-RCNN-None-CTC": 1_878_949, "None-RCNN-None-Attn": 2_894_246,
    "None-RCNN-BiLSTM-CTC": 4_761_765, "None-RCNN-BiLSTM-Attn": 5_458_854,
    "None-ResNet-None-CTC": 44_282_885, "None-ResNet-None-Attn": 45_298_182,
    "None-ResNet-BiLSTM-CTC": 47_165_701, "None-ResNet-BiLSTM-Attn": 47_862_790,
    "TPS-VGG-None-CTC": 7_261_197, "TPS-VGG-None-Attn": 8_276_494,
    "TPS-VGG-BiLSTM-CTC": 10_144_013, "TPS-VGG-BiLSTM-Attn": 10_841_102,
    "TPS-RCNN-None-CTC": 3_571_341, "TPS-RCNN-None-Attn": 4_586_638,
    "TPS-RCNN-BiLSTM-CTC": 6_454_157, "TPS-RCNN-BiLSTM-Attn": 7_151_246,
    "TPS-ResNet-None-CTC": 45_975_277, "TPS-ResNet-None-Attn": 46_990_574,
    "TPS-ResNet-BiLSTM-CTC": 48_858_093, "TPS-ResNet-BiLSTM-Attn": 49_555_182,
}  # fmt: skip
DTRB_SENSITIVE_COUNTS = {
    "TPS-ResNet-BiLSTM-Attn": 49_629_480, "TPS-ResNet-BiLSTM-CTC": 48_872_999,
    "None-VGG-BiLSTM-CTC": 8_466_527, "None-ResNet-None-CTC": 44_312_639,
}  # fmt: skip


def assert_same_recognitions(actual, expected) -> None:
    assert [r[0] for r in actual] == [r[0] for r in expected]
    assert [r[1] for r in actual] == pytest.approx([r[1] for r in expected], rel=1e-4, abs=1e-12)


def small_model(stage_string: str, **kwargs) -> TextRecognitionModel:
    torch.manual_seed(0)
    model = TextRecognitionModel(ModelConfig.from_stage_string(stage_string, **{**SMALL, **kwargs}))
    model.init_weights()
    return model


@pytest.mark.parametrize("stage_string", COMBINATIONS)
def test_parameter_count_equals_dtrb(stage_string):
    model = TextRecognitionModel(ModelConfig.from_stage_string(stage_string))
    assert model.num_parameters == DTRB_PARAMETER_COUNTS[stage_string]


@pytest.mark.parametrize("stage_string", sorted(DTRB_SENSITIVE_COUNTS))
def test_parameter_count_equals_dtrb_case_sensitive(stage_string):
    model = TextRecognitionModel(ModelConfig.from_stage_string(stage_string, sensitive=True))
    assert model.num_parameters == DTRB_SENSITIVE_COUNTS[stage_string]


@pytest.mark.parametrize("stage_string", COMBINATIONS)
def test_forward_shapes_and_every_parameter_gets_a_gradient(stage_string):
    model = small_model(stage_string)
    if model.config.transformation == "TPS":
        # fc2 starts at weight 0, which blocks the gradient to the localization CNN; give it a little weight.
        torch.nn.init.normal_(model.Transformation.LocalizationNetwork.localization_fc2.weight, std=1e-3)
    model.train()
    config = model.config
    images = torch.rand(3, 1, 32, 100) * 2 - 1
    targets, lengths = model.tokenizer.encode(["ab1", "hello", "z"], config.batch_max_length)

    logits = model(images, targets if config.prediction == "Attn" else None)
    assert logits.shape == (3, expected_sequence_length(config), config.num_class)
    assert torch.isfinite(logits).all(), "Output included NaNs or infs"
    loss = model.loss(logits, targets, lengths)
    assert torch.isfinite(loss)
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, f"No gradient for {name}"
        assert param.grad.abs().sum() > 0, f"Zero gradient for {name}"


@pytest.mark.parametrize("stage_string", [c for c in COMBINATIONS if c.endswith("Attn")][:4])
def test_attention_mode_follows_the_text_argument_not_training(stage_string):
    model = small_model(stage_string).eval()
    images = torch.rand(2, 1, 32, 100) * 2 - 1
    with torch.no_grad():
        greedy_eval = model(images)
        # Teacher forcing with the greedy path as input reproduces the greedy logits.
        path = greedy_eval.argmax(2)
        text = torch.cat([torch.zeros(2, 1, dtype=torch.long), path[:, :-1]], dim=1)
        forced = model(images, text)
        model.train()  # (BatchNorm now updates its statistics, so compare shapes only from here)
        greedy_train = model(images)  # still greedy: no text given
        forced_train = model(images, text)
    assert greedy_eval.shape == forced.shape == greedy_train.shape == forced_train.shape == (2, 26, 38)
    torch.testing.assert_close(forced, greedy_eval, rtol=1e-5, atol=1e-5)


def test_teacher_forcing_needs_enough_ids():
    model = small_model("None-VGG-None-Attn")
    with pytest.raises(ValueError, match="needs 26 input ids per row"):
        model(torch.zeros(1, 1, 32, 100), torch.zeros(1, 10, dtype=torch.long))


def test_stop_at_eos_decodes_the_same():
    model = small_model("None-VGG-BiLSTM-Attn").eval()
    # Bias the generator towards [s] after a few steps so that some rows stop early.
    images = torch.rand(4, 1, 32, 100) * 2 - 1
    with torch.no_grad():
        model.Prediction.generator.bias[1] = 3.0
        full = model(images)
        short = model.Prediction(model.encode(images), None, stop_at_eos=True)
    assert short.shape[1] <= full.shape[1]
    decode = model.tokenizer.decode_with_confidence
    assert decode(short) == decode(full)


@pytest.mark.parametrize("stage_string", COMBINATIONS)
def test_save_pretrained_round_trip(stage_string, tmp_path):
    model = small_model(stage_string).eval()
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert json.loads((tmp_path / "config.json").read_text()) == asdict(model.config)
    loaded = TextRecognitionModel.from_pretrained(tmp_path)
    assert asdict(loaded.config) == asdict(model.config)
    assert not loaded.training
    original, restored = model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    for key in original:
        assert torch.equal(original[key], restored[key]), key
    images = torch.rand(2, 1, 32, 100) * 2 - 1
    with torch.no_grad():
        assert torch.equal(model(images), loaded(images))


def test_weights_are_safetensors_with_dtrb_keys(tmp_path):
    model = small_model("TPS-ResNet-BiLSTM-Attn")
    model.save_pretrained(tmp_path)
    keys = set(load_file(tmp_path / "model.safetensors"))
    assert "Transformation.GridGenerator.P_hat" in keys
    assert "Prediction.attention_cell.rnn.weight_ih" in keys
    assert "FeatureExtraction.ConvNet.layer3.4.bn2.running_var" in keys


def test_init_weights_follows_dtrb_rules():
    torch.manual_seed(0)
    model = TextRecognitionModel(ModelConfig("TPS", "VGG", "BiLSTM", "Attn"))
    fc2 = model.Transformation.LocalizationNetwork.localization_fc2
    bias_before = fc2.bias.detach().clone()
    model.init_weights()
    assert torch.equal(fc2.bias, bias_before) and fc2.weight.eq(0).all()
    for name, param in model.named_parameters():
        if "localization_fc2" in name:
            continue
        if "bias" in name:
            assert param.eq(0).all(), name
        elif param.dim() == 1:
            assert param.eq(1).all(), name  # BatchNorm weights
    # kaiming_normal_ (fan_in, gain sqrt 2): std = sqrt(2 / fan_in)
    weight = model.FeatureExtraction.ConvNet[11].weight  # conv 256 -> 512, 3x3
    assert weight.std().item() == pytest.approx((2 / (256 * 9)) ** 0.5, rel=0.02)
    lstm = model.SequenceModeling[0].rnn.weight_ih_l0  # [4*256, 512]
    assert lstm.std().item() == pytest.approx((2 / 512) ** 0.5, rel=0.02)


def test_tps_starts_at_the_rare_fiducial_pattern():
    model = TextRecognitionModel(ModelConfig("TPS", "VGG", "None", "CTC")).eval()
    tps = model.Transformation
    with torch.no_grad():
        c_prime = tps.LocalizationNetwork(torch.rand(1, 1, 32, 100))
        grid = tps.GridGenerator.build_P_prime(c_prime).reshape(32, 100, 2)
    corners = {"TL": grid[0, 0], "TR": grid[0, -1], "BL": grid[-1, 0], "BR": grid[-1, -1]}
    expected = {"TL": (-0.99, 0.011), "TR": (0.99, -0.979), "BL": (-0.99, 0.979), "BR": (0.99, -0.011)}
    for name, point in corners.items():
        assert point.tolist() == pytest.approx(expected[name], abs=0.01), name


def test_recognize_accepts_any_inputs_and_sizes(tmp_path):
    model = small_model("None-VGG-BiLSTM-CTC").eval()
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)) for w, h in ((40, 20), (300, 80), (100, 32))
    ]
    path = tmp_path / "word.png"
    images[0].convert("RGB").save(path)
    results = model.recognize(images)
    assert len(results) == 3 and all(isinstance(r, Recognition) for r in results)
    assert all(isinstance(r.text, str) and 0.0 <= r.confidence <= 1.0 for r in results)
    # One image per batch: other matrix shapes, which the CPU's kernels round otherwise; only a near-tie of this
    # untrained model may read differently.
    with torch.no_grad():
        greedy = model(preprocess(images, model.config))  # [B, T, C]: the path `results` was decoded on
    assert_same_texts_but_near_ties(model.recognize(images, batch_size=1), results, greedy, "batch_size=1")
    assert model.recognize(path) == model.recognize([images[0]])
    assert_same_recognitions(model.recognize(np.array(images[2])), model.recognize([images[2]]))
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        model.recognize(images, batch_size=0)


def test_recognize_matches_forward_decoding():
    model = small_model("TPS-RCNN-None-Attn").eval()
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, (32, 100), dtype=np.uint8)) for _ in range(3)]
    with torch.no_grad():
        expected = model.tokenizer.decode_with_confidence(model(preprocess(images, model.config)))
    assert_same_recognitions(model.recognize(images), expected)
