from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from text_recognition import CHARSET_36, CHARSET_94, ModelConfig


def test_defaults_are_dtrb_trba():
    config = ModelConfig()
    assert config.stage_string == "TPS-ResNet-BiLSTM-Attn"
    assert (config.num_fiducial, config.input_channel, config.output_channel, config.hidden_size) == (20, 1, 512, 256)
    assert (config.img_h, config.img_w, config.pad, config.batch_max_length) == (32, 100, False, 25)
    assert config.character == CHARSET_36 == "0123456789abcdefghijklmnopqrstuvwxyz"
    assert config.num_class == 38


def test_num_class_is_derived():
    assert ModelConfig(prediction="CTC").num_class == 37
    assert ModelConfig(prediction="Attn").num_class == 38
    assert ModelConfig(prediction="CTC", sensitive=True).num_class == 95
    assert ModelConfig(prediction="Attn", sensitive=True).num_class == 96


def test_stage_names_are_case_insensitive_and_normalised():
    config = ModelConfig("tps", "resnet", "bilstm", "ctc")
    assert config.stage_string == "TPS-ResNet-BiLSTM-CTC"
    assert ModelConfig("NONE", "vgg", "none", "attn").stage_string == "None-VGG-None-Attn"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"feature_extraction": "Resnet50"},
            r"Unknown feature_extraction 'Resnet50'\. Available: VGG, RCNN, ResNet, ViT\. Did you mean 'ResNet'\?",
        ),
        ({"transformation": "TSP"}, r"Unknown transformation 'TSP'\. Available: None, TPS\. Did you mean 'TPS'\?"),
        ({"sequence_modeling": "LSTM"}, r"Unknown sequence_modeling 'LSTM'.*Did you mean 'BiLSTM'\?"),
        ({"prediction": "Attention"}, r"Unknown prediction 'Attention'.*Available: CTC, Attn"),
    ],
)
def test_unknown_stage_lists_choices_and_suggests(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(**kwargs)


def test_unknown_stage_without_close_match_has_no_suggestion():
    with pytest.raises(ValueError) as error:
        ModelConfig(prediction="zzzzzz")
    assert "Did you mean" not in str(error.value)


def test_sensitive_alone_selects_the_94_symbol_set():
    config = ModelConfig(sensitive=True)
    assert config.character == CHARSET_94
    assert len(CHARSET_94) == 94 and " " not in CHARSET_94


def test_explicit_character_wins_over_sensitive():
    # DTRB silently replaced --character with the 94-symbol set when --sensitive was given.
    assert ModelConfig(sensitive=True, character="abcABC").character == "abcABC"
    assert ModelConfig(sensitive=True, character=CHARSET_36).character == CHARSET_36


def test_charset_presets():
    assert ModelConfig(character="94_full").character == CHARSET_94
    assert ModelConfig(character="36_lowercase", sensitive=True).character == CHARSET_36


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"character": "abca"}, r"duplicate symbols 'a'"),
        ({"character": ""}, r"non-empty"),
        ({"num_fiducial": 21}, r"num_fiducial must be even and at least 4"),
        ({"num_fiducial": 2}, r"num_fiducial must be even and at least 4"),
        ({"hidden_size": 0}, r"hidden_size must be positive, got 0"),
        ({"output_channel": -512}, r"output_channel must be positive"),
        ({"img_w": 0}, r"img_w must be positive"),
        ({"batch_max_length": 0}, r"batch_max_length must be positive"),
        ({"input_channel": 2}, r"input_channel must be 1 \(grayscale\) or 3 \(RGB"),
        ({"img_h": 16}, r"img_h must be at least 32"),
        ({"output_channel": 100}, r"output_channel must be a multiple of 16 for ResNet"),
        ({"feature_extraction": "VGG", "output_channel": 100}, r"multiple of 8 for VGG"),
        ({"hidden_size": 2.5}, r"hidden_size must be an integer"),
    ],
)
def test_bad_values_are_rejected_with_a_clear_message(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(**kwargs)


def test_json_round_trip_is_exact():
    config = ModelConfig("None", "VGG", "BiLSTM", "CTC", character="abc", img_w=128, pad=True)
    restored = ModelConfig(**json.loads(json.dumps(asdict(config))))
    assert asdict(restored) == asdict(config)


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match=r"Unknown ModelConfig keys \['imgH'\]"):
        ModelConfig.from_dict({"imgH": 32})


def test_from_stage_string():
    config = ModelConfig.from_stage_string("None-VGG-BiLSTM-CTC", hidden_size=128)
    assert (config.stage_string, config.hidden_size) == ("None-VGG-BiLSTM-CTC", 128)
    with pytest.raises(ValueError, match="four parts"):
        ModelConfig.from_stage_string("VGG-CTC")


# ---- the command line is derived from the dataclasses ---------------------------------------------------------


def test_every_config_field_is_a_train_flag_with_its_default():
    from dataclasses import fields

    from text_recognition.cli import build_train_parser, parse_train_args
    from text_recognition.config import DataConfig, TrainConfig

    args = parse_train_args([])
    for cls in (DataConfig, TrainConfig):
        for item in fields(cls):
            assert getattr(args, item.name) == item.default, f"--{item.name} default differs from {cls.__name__}"
    spellings = {option for action in build_train_parser()._actions for option in action.option_strings}
    # config_version and temperature (fitted by calibration, not chosen) are no flags
    model_fields = {item.name for item in fields(ModelConfig)} - {"config_version", "temperature"}
    dests = {action.dest for action in build_train_parser()._actions}
    assert model_fields <= dests, model_fields - dests
    # DTRB's spellings and the snake_case aliases both parse
    for flag in ("--imgH", "--img_h", "--PAD", "--pad", "--manualSeed", "--seed", "--valInterval", "--FT",
                 "--baiduCTC", "--Transformation", "--feature_extraction", "--rgb"):  # fmt: skip
        assert flag in spellings


def test_model_flags_stay_unset_until_given():
    import argparse

    from text_recognition.cli import add_model_arguments, model_config_from_args, model_flags_given

    parser = add_model_arguments(argparse.ArgumentParser())
    assert model_config_from_args(parser.parse_args([]), require_stages=False) is None
    args = parser.parse_args(["--imgH", "64", "--PAD"])
    assert model_flags_given(args) == ["--imgH", "--PAD"]
    config = model_config_from_args(parser.parse_args("--Transformation None --FeatureExtraction VGG "
                                                      "--SequenceModeling None --Prediction CTC --rgb".split()))
    assert config.input_channel == 3 and config.img_h == ModelConfig.img_h
