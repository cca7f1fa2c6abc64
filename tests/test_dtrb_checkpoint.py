"""DTRB checkpoints: key/shape manifests and logits equal to an independent implementation of DTRB's maths.

``dtrb_reference`` is written from reference/dtrb.md alone and shares no code with the package.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from dtrb_reference import dtrb_manifest, dtrb_reference_forward, random_dtrb_state_dict

from text_recognition import ModelConfig, TextRecognitionModel
from text_recognition.registry import DTRB_STAGES
from text_recognition.checkpoints import CheckpointMismatchError

COMBINATIONS = list(itertools.product(*DTRB_STAGES.values()))
SMALL = {"output_channel": 64, "hidden_size": 32}


def manifest_of(model: TextRecognitionModel) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def write_dtrb_checkpoint(path, stages, *, seed=0, prefix="module.", **sizes):
    """A DTRB-style .pth: a pickled state dict, keys prefixed by DataParallel's ``module.``."""
    num_class = len(sizes.pop("character", "0123456789abcdefghijklmnopqrstuvwxyz")) + (1 if stages[3] == "CTC" else 2)
    manifest = dtrb_manifest(*stages, num_class=num_class, **sizes)
    state = random_dtrb_state_dict(manifest, seed=seed)
    torch.save({prefix + key: value for key, value in state.items()}, path)
    return state


@pytest.mark.parametrize("stages", COMBINATIONS, ids="-".join)
def test_state_dict_manifest_equals_dtrb(stages):
    model = TextRecognitionModel(ModelConfig(*stages))
    expected = dtrb_manifest(*stages, num_class=model.config.num_class)
    assert manifest_of(model) == expected


def test_manifest_with_other_sizes_equals_dtrb():
    config = ModelConfig("TPS", "RCNN", "BiLSTM", "Attn", input_channel=3, output_channel=128, hidden_size=64,
                         num_fiducial=10, img_h=48, img_w=160, sensitive=True)  # fmt: skip
    expected = dtrb_manifest("TPS", "RCNN", "BiLSTM", "Attn", num_class=96, input_channel=3, output_channel=128,
                             hidden_size=64, num_fiducial=10, img_h=48, img_w=160)  # fmt: skip
    assert manifest_of(TextRecognitionModel(config)) == expected


def _assert_same_logits(model, state, stages, images, text=None):
    with torch.no_grad():
        ours = model(images, text)
        reference_text = text
        if stages[3] == "Attn" and text is None:
            # Greedy decoding: the reference is fed our greedy ids ([GO] first), so both compute the logits of one
            # path. Run greedily on its own, a near-tie of these random weights that the two implementations (or
            # two CPUs' kernels) round apart would send it down another path, and the comparison would be of two
            # decodings, not of the maths. That our greedy feeds back its argmax is still checked: any other
            # symbol fed back would give other logits than the reference's on this path.
            ids = ours.argmax(-1)  # [B, T]
            reference_text = torch.cat([torch.zeros_like(ids[:, :1]), ids[:, :-1]], dim=1)
        reference = dtrb_reference_forward(
            state, transformation=stages[0], feature_extraction=stages[1], sequence_modeling=stages[2],
            prediction=stages[3], image=images, text=reference_text, batch_max_length=model.config.batch_max_length,
        )  # fmt: skip
    assert ours.shape == reference.shape
    assert (ours - reference).abs().max().item() < 1e-4


@pytest.mark.parametrize("stages", COMBINATIONS, ids="-".join)
def test_dtrb_checkpoint_gives_dtrb_logits(stages, tmp_path):
    path = tmp_path / "model.pth"
    state = write_dtrb_checkpoint(path, stages, seed=7, **SMALL)
    model = TextRecognitionModel.from_dtrb_checkpoint(path, ModelConfig(*stages, **SMALL))
    assert not model.training
    images = torch.rand(2, 1, 32, 100, generator=torch.Generator().manual_seed(1)) * 2 - 1
    _assert_same_logits(model, state, stages, images)  # CTC, or greedy attention decoding
    if stages[3] == "Attn":
        text, _ = model.tokenizer.encode(["hello", "a1b2"], 25)
        _assert_same_logits(model, state, stages, images, text)  # teacher forcing


@pytest.mark.slow
@pytest.mark.parametrize("stage_string", ["TPS-ResNet-BiLSTM-Attn", "None-VGG-BiLSTM-CTC"])
def test_full_size_released_architectures_give_dtrb_logits(stage_string, tmp_path):
    stages = tuple(stage_string.split("-"))
    path = tmp_path / f"{stage_string}.pth"
    state = write_dtrb_checkpoint(path, stages, seed=3)
    model = TextRecognitionModel.from_dtrb_checkpoint(path, ModelConfig(*stages))
    images = torch.rand(2, 1, 32, 100, generator=torch.Generator().manual_seed(2)) * 2 - 1
    _assert_same_logits(model, state, stages, images)


def test_checkpoint_without_module_prefix_and_num_batches_tracked(tmp_path):
    stages = ("None", "VGG", "BiLSTM", "CTC")
    path = tmp_path / "plain.pth"
    state = write_dtrb_checkpoint(path, stages, prefix="", **SMALL)
    torch.save({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, path)
    model = TextRecognitionModel.from_dtrb_checkpoint(path, ModelConfig(*stages, **SMALL))
    _assert_same_logits(model, state, stages, torch.rand(1, 1, 32, 100) * 2 - 1)


def test_rgb_and_custom_charset_checkpoint(tmp_path):
    stages = ("TPS", "ResNet", "None", "Attn")
    path = tmp_path / "rgb.pth"
    state = write_dtrb_checkpoint(path, stages, input_channel=3, character="abcdef", **SMALL)
    model = TextRecognitionModel.from_dtrb_checkpoint(
        path, ModelConfig(*stages, input_channel=3, character="abcdef", **SMALL)
    )
    _assert_same_logits(model, state, stages, torch.rand(2, 3, 32, 100) * 2 - 1)


@pytest.mark.parametrize(
    ("config_kwargs", "messages"),
    [
        ({"sensitive": True}, ["shape mismatches", "a charset of 36 symbols (DTRB's default set)", "--sensitive"]),
        ({"prediction": "Attn"}, ["missing keys", "unexpected keys", "--Prediction CTC (you gave Attn)"]),
        ({"transformation": "TPS"}, ["missing keys", "Transformation.", "--Transformation None (you gave TPS)"]),
        ({"sequence_modeling": "None"}, ["unexpected keys", "--SequenceModeling BiLSTM (you gave None)"]),
        ({"feature_extraction": "ResNet"}, ["--FeatureExtraction VGG (you gave ResNet)"]),
        ({"input_channel": 3}, ["--input_channel 1 (you gave 3) (--rgb sets 3)"]),
        ({"hidden_size": 64}, ["--hidden_size 32 (you gave 64)"]),
    ],
)
def test_checkpoint_that_does_not_fit_the_flags_says_which_flag(tmp_path, config_kwargs, messages):
    stages = ("None", "VGG", "BiLSTM", "CTC")
    path = tmp_path / "crnn.pth"
    write_dtrb_checkpoint(path, stages, **SMALL)
    stage_kwargs = dict(zip(("transformation", "feature_extraction", "sequence_modeling", "prediction"), stages))
    config = ModelConfig(**{**stage_kwargs, **SMALL, **config_kwargs})
    with pytest.raises(CheckpointMismatchError) as error:
        TextRecognitionModel.from_dtrb_checkpoint(path, config)
    for message in messages:
        assert message in str(error.value)


def test_tps_checkpoint_of_another_image_size(tmp_path):
    stages = ("TPS", "VGG", "None", "CTC")
    path = tmp_path / "tps.pth"
    write_dtrb_checkpoint(path, stages, **SMALL)
    with pytest.raises(CheckpointMismatchError, match=r"imgH x imgW = 3200 pixels \(you gave --imgH 32 --imgW 128"):
        TextRecognitionModel.from_dtrb_checkpoint(path, ModelConfig(*stages, img_w=128, **SMALL))


def test_unreadable_checkpoints(tmp_path):
    config = ModelConfig("None", "VGG", "None", "CTC")
    with pytest.raises(FileNotFoundError, match="DTRB checkpoint not found"):
        TextRecognitionModel.from_dtrb_checkpoint(tmp_path / "missing.pth", config)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"Cannot read .*weights_only=True\) refused it \(Unsupported operand 110\)"):
        TextRecognitionModel.from_dtrb_checkpoint(garbage, config)
    not_a_state_dict = tmp_path / "list.pth"
    torch.save([1, 2, 3], not_a_state_dict)
    with pytest.raises(ValueError, match="does not hold a state dict of tensors"):
        TextRecognitionModel.from_dtrb_checkpoint(not_a_state_dict, config)


class _Evil:
    def __reduce__(self):
        return (print, ("arbitrary code ran",))


def test_pickled_code_is_not_executed(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    torch.save({"x": _Evil()}, path)
    with pytest.raises(
        ValueError, match=r"refused it \(Unsupported global: GLOBAL print was not an allowed global by default\)"
    ):
        TextRecognitionModel.from_dtrb_checkpoint(path, ModelConfig("None", "VGG", "None", "CTC"))
    assert "arbitrary code ran" not in capsys.readouterr().out
