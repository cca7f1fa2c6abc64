"""strhub (baudm/parseq) checkpoints: key/shape manifests, logits equal to an independent implementation of strhub's
maths in every decoding mode, and the conversion script.

``parseq_reference`` is written from reference/parseq.md alone and shares no code with the package. The synthetic
checkpoints are small (width 128, 1 encoder block, labels of at most 10) but in strhub's layout: released PARSeq
``.pt`` keys without prefix, ViTSTR keys with ``model.``, Lightning checkpoints with ``state_dict`` and
``hyper_parameters``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from parseq_reference import (
    random_strhub_state_dict,
    reference_parseq_forward,
    reference_parseq_permutation_logits,
    reference_vitstr_forward,
    strhub_manifest,
)
from PIL import Image

from text_recognition import ModelConfig, TextRecognitionModel
from text_recognition.checkpoints import CheckpointMismatchError, strhub_to_model_state_dict
from text_recognition.config import CHARSET_36, CHARSET_94
from text_recognition.transforms import preprocess

SMALL = {"embed_dim": 128, "depth": 1, "num_symbols": 36, "max_label_length": 10}
ENC_HEADS, DEC_HEADS = 2, 4  # strhub's 64 and 32 dimensions per head at width 128
MODES = [(True, 0), (True, 1), (False, 0), (False, 1), (False, 2)]  # (decode_ar, refine_iters)


def write_checkpoint(path, architecture="parseq", *, seed=0, lightning=False, hparams=None, **sizes):
    state = random_strhub_state_dict(strhub_manifest(architecture, **{**SMALL, **sizes}), seed=seed)
    if lightning:
        keys = {("model." + k if not k.startswith("model.") else k): v for k, v in state.items()}
        torch.save({"state_dict": keys, "hyper_parameters": hparams or {}, "epoch": 3}, path)
    else:
        torch.save(state, path)
    return state


def images(batch=2, seed=1):
    return torch.rand(batch, 3, 32, 128, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.fixture(scope="module")
def parseq_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("strhub") / "parseq_small.pt"
    return path, write_checkpoint(path)


def assert_close_logits(ours, reference):
    assert ours.shape == reference.shape
    assert (ours - reference).abs().max().item() < 1e-4


@pytest.mark.parametrize(("architecture", "expected"), [
    ("parseq", {"vit_size": "small", "embed_dim": 384, "encoder_heads": 6, "decoder_heads": 12, "params": 23_832_671}),
    ("parseq-tiny", {"vit_size": "tiny", "embed_dim": 192, "encoder_heads": 3, "decoder_heads": 6,
                     "params": 6_018_143}),
    ("vitstr", {"vit_size": "small", "embed_dim": 384, "encoder_heads": 6, "params": 21_418_079}),
])  # fmt: skip
def test_released_sizes_have_strhub_keys_shapes_and_parameter_counts(architecture, expected):
    """The model built for a released size has exactly strhub's keys and shapes (note 4, 5.1, 8) and the
    parameter counts of the note (PARSeq-S as strhub's README)."""
    prediction = "ViTSTR" if architecture == "vitstr" else "PARSeq"
    config = ModelConfig("None", "ViT", "None", prediction, input_channel=3, img_w=128, character="94_full",
                         vit_size="tiny" if architecture == "parseq-tiny" else None)  # fmt: skip
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = TextRecognitionModel(config)
    manifest = strhub_manifest("vitstr" if architecture == "vitstr" else "parseq",
                               embed_dim=expected["embed_dim"])  # fmt: skip
    renamed = strhub_to_model_state_dict(
        {k.removeprefix("model."): torch.empty(0) for k in manifest}, config
    )
    shapes = {new: manifest[old] for new, old in zip(renamed, manifest, strict=True)}
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes
    assert model.num_parameters == expected["params"]
    for name in ("vit_size", "embed_dim", "encoder_heads", "decoder_heads"):
        if name in expected:
            assert getattr(config, name) == expected[name], name


@pytest.mark.parametrize(("decode_ar", "refine_iters"), MODES)
def test_parseq_checkpoint_gives_strhub_logits_in_every_mode(parseq_checkpoint, decode_ar, refine_iters):
    path, state = parseq_checkpoint
    model = TextRecognitionModel.from_strhub_checkpoint(path, decode_ar=decode_ar, refine_iters=refine_iters)
    assert not model.training
    assert (model.config.decode_ar, model.config.refine_iters) == (decode_ar, refine_iters)
    assert model.config.character == CHARSET_36 and model.config.batch_max_length == 10
    x = images()
    with torch.no_grad():
        ours = model(x)
    reference = reference_parseq_forward(state, x, decode_ar=decode_ar, refine_iters=refine_iters,
                                         enc_heads=ENC_HEADS, dec_heads=DEC_HEADS)  # fmt: skip
    assert ours.shape[1] == 11 or (decode_ar and not refine_iters)
    assert_close_logits(ours, reference)


def test_autoregressive_decoding_stops_when_every_row_has_ended(tmp_path):
    """strhub's test-time AR loop stops once every row holds an [E]: the logits are that many steps long, and
    refinement brings them back to max_label_length + 1 rows."""
    path = tmp_path / "eos.pt"
    state = write_checkpoint(path, seed=3)
    state["head.bias"][0] += 6.0  # [E] likely after a few steps
    torch.save(state, path)
    x = images(batch=4, seed=5)
    for refine_iters in (0, 1):
        model = TextRecognitionModel.from_strhub_checkpoint(path, refine_iters=refine_iters)
        with torch.no_grad():
            ours = model(x)
        reference = reference_parseq_forward(state, x, refine_iters=refine_iters, enc_heads=ENC_HEADS,
                                             dec_heads=DEC_HEADS)  # fmt: skip
        assert_close_logits(ours, reference)
        assert (ours.shape[1] < 11) == (refine_iters == 0)


def test_training_permutation_logits_equal_the_reference(parseq_checkpoint):
    """Each training order's logits (content and query masks, padding of [E] and [P]) equal the reference's."""
    path, state = parseq_checkpoint
    model = TextRecognitionModel.from_strhub_checkpoint(path)
    head = model.Prediction
    x = images(batch=2)
    text, _ = model.tokenizer.encode(["ab1c", "z9"], model.config.batch_max_length)
    target = text[:, :6]  # [B] + 4 characters + [E]
    torch.manual_seed(0)
    with torch.no_grad():
        memory = model.encode(x)
        for order in head.gen_permutations(4, memory.device):
            content_mask, query_mask = head.attention_masks(order)
            context = target[:, :-1]
            padding = (context == head.pad_id) | (context == head.eos_id)
            ours = head.head(head.decode(context, memory, content_mask, padding, query_mask=query_mask))
            reference = reference_parseq_permutation_logits(state, x, target, order.tolist(), enc_heads=ENC_HEADS,
                                                            dec_heads=DEC_HEADS)  # fmt: skip
            assert_close_logits(ours, reference)


def test_vitstr_checkpoint_gives_strhub_logits(tmp_path):
    path = tmp_path / "vitstr.pt"
    state = write_checkpoint(path, "vitstr")  # keys "model.*", as strhub's released ViTSTR
    model = TextRecognitionModel.from_strhub_checkpoint(path, architecture="vitstr", batch_max_length=10)
    assert model.config.stage_string == "None-ViT-None-ViTSTR"
    x = images()
    with torch.no_grad():
        ours = model(x)
    assert_close_logits(ours, reference_vitstr_forward(state, x, heads=ENC_HEADS, max_label_length=10))


def test_lightning_checkpoint_with_prefix_and_hyper_parameters(tmp_path):
    path = tmp_path / "last.ckpt"
    charset = "0123456789abcdefghijklmnopqrstuvwxyz"[::-1]  # any 36 symbols: the hyper-parameters name them
    state = write_checkpoint(path, lightning=True, hparams={"charset_train": charset, "img_size": [32, 128]})
    model = TextRecognitionModel.from_strhub_checkpoint(path, decode_ar=False, refine_iters=2)
    assert model.config.character == charset
    x = images(batch=2)
    with torch.no_grad():
        ours = model(x)
    assert_close_logits(ours, reference_parseq_forward(state, x, decode_ar=False, refine_iters=2,
                                                       enc_heads=ENC_HEADS, dec_heads=DEC_HEADS))  # fmt: skip


def test_strhub_test_transform_is_the_models_preprocess():
    """RGB, PIL bicubic straight to 32x128, ToTensor, Normalize(0.5, 0.5): strhub's test transform (note 3)."""
    config = ModelConfig("None", "ViT", "None", "PARSeq", input_channel=3, img_w=128)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (45, 170, 3), dtype=np.uint8))
    resized = np.asarray(image.resize((128, 32), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0
    expected = (torch.from_numpy(resized).permute(2, 0, 1) - 0.5) / 0.5
    assert torch.equal(preprocess([image.convert("L").convert("RGB"), image], config)[1], expected)


def test_charset_presets_follow_the_head_size(tmp_path):
    path = tmp_path / "p94.pt"
    write_checkpoint(path, num_symbols=94)
    config = TextRecognitionModel.from_strhub_checkpoint(path).config
    assert config.character == CHARSET_94 and config.sensitive  # strhub's 94_full: digits, a-z, A-Z, punctuation


def test_bad_checkpoints_and_flags_are_named(tmp_path, parseq_checkpoint):
    path, state = parseq_checkpoint
    with pytest.raises(CheckpointMismatchError, match="--architecture parseq-tiny was given, but .* holds a parseq"):
        TextRecognitionModel.from_strhub_checkpoint(path, architecture="parseq-tiny")
    with pytest.raises(ValueError, match="Unknown --architecture 'abinet'"):
        TextRecognitionModel.from_strhub_checkpoint(path, architecture="abinet")
    with pytest.raises(CheckpointMismatchError, match="--character has 37 symbols, but the head .* predicts 36"):
        TextRecognitionModel.from_strhub_checkpoint(path, character=CHARSET_36 + "-")
    with pytest.raises(CheckpointMismatchError, match="--imgH 32 --imgW 100 make 8x12 patches"):
        TextRecognitionModel.from_strhub_checkpoint(path, img_w=100)
    with pytest.raises(ValueError, match="--refine_iters must be 0 or more"):
        TextRecognitionModel.from_strhub_checkpoint(path, refine_iters=-1)

    vitstr = tmp_path / "vitstr.pt"
    write_checkpoint(vitstr, "vitstr")
    with pytest.raises(ValueError, match="ViTSTR, which reads every position at once"):
        TextRecognitionModel.from_strhub_checkpoint(vitstr, refine_iters=1)

    truncated = tmp_path / "missing.pt"
    torch.save({k: v for k, v in state.items() if k != "decoder.layers.0.linear1.bias"}, truncated)
    with pytest.raises(CheckpointMismatchError, match=r"missing keys \(1\):\n    Prediction.decoder.layers.0.linear1"):
        TextRecognitionModel.from_strhub_checkpoint(truncated)

    dtrb_like = tmp_path / "dtrb.pth"
    torch.save({"module.Prediction.weight": torch.zeros(37, 256)}, dtrb_like)
    with pytest.raises(CheckpointMismatchError, match="not a strhub PARSeq or ViTSTR checkpoint"):
        TextRecognitionModel.from_strhub_checkpoint(dtrb_like)

    pickled = tmp_path / "object.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "callback": Image.new("L", (1, 1))}, pickled)
    with pytest.raises(ValueError, match=r"torch.load\(weights_only=True\) refused it"):
        TextRecognitionModel.from_strhub_checkpoint(pickled)


def test_convert_script_writes_a_model_folder_whose_decoding_mode_is_settable(tmp_path, parseq_checkpoint):
    from test_scripts import load_script

    main = load_script("convert_strhub_checkpoint").main

    path, state = parseq_checkpoint
    out = tmp_path / "parseq"
    assert main(["--saved_model", str(path), "--output_dir", str(out), "--refine_iters", "0"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    saved = json.loads((out / "config.json").read_text())
    assert saved["prediction"] == "PARSeq" and saved["refine_iters"] == 0 and saved["decode_ar"] is True
    assert "PARSeq" in (out / "README.md").read_text()

    x = images(batch=2)
    loaded = TextRecognitionModel.from_pretrained(out, decode_ar=False, refine_iters=2)  # set when loading
    assert (loaded.config.decode_ar, loaded.config.refine_iters) == (False, 2)
    with torch.no_grad():
        ours = loaded(x)
    assert_close_logits(ours, reference_parseq_forward(state, x, decode_ar=False, refine_iters=2,
                                                       enc_heads=ENC_HEADS, dec_heads=DEC_HEADS))  # fmt: skip
    with pytest.raises(ValueError, match="is not empty; pass --overwrite"):
        main(["--saved_model", str(path), "--output_dir", str(out)])


def test_scripts_read_a_strhub_checkpoint_and_take_the_decoding_mode(tmp_path, parseq_checkpoint, capsys,
                                                                     monkeypatch):  # fmt: skip
    """demo.py reads a strhub .pt as it is (load_model recognises it), and --decode_ar / --refine_iters set the
    decoding mode of a saved PARSeq (its config.json yields to them); other heads refuse them."""
    from test_scripts import load_script

    from text_recognition.cli import run
    from text_recognition.loading import load_model

    path, state = parseq_checkpoint
    assert load_model(path).config.stage_string == "None-ViT-None-PARSeq"
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    pictures = [Image.fromarray(rng.integers(0, 256, (40, 150, 3), dtype=np.uint8)) for _ in range(2)]
    for i, picture in enumerate(pictures):
        picture.save(folder / f"word_{i}.png")
    monkeypatch.chdir(tmp_path)
    demo = load_script("demo")
    argv = ["--image_folder", str(folder), "--saved_model", str(path), "--workers", "0", "--decode_ar", "false",
            "--refine_iters", "2"]  # fmt: skip
    assert run(demo.main, argv) == 0
    printed = [line.split("\t")[1].strip() for line in capsys.readouterr().out.strip().splitlines()[3:]]
    x = preprocess(pictures, ModelConfig("None", "ViT", "None", "PARSeq", input_channel=3, img_w=128))
    reference = reference_parseq_forward(state, x, decode_ar=False, refine_iters=2, enc_heads=ENC_HEADS,
                                         dec_heads=DEC_HEADS)  # fmt: skip
    model = load_model(path)
    assert printed == [text for text, _ in model.tokenizer.decode_with_confidence(reference)]

    ctc = TextRecognitionModel(ModelConfig("None", "VGG", "None", "CTC", output_channel=32))
    ctc.save_pretrained(tmp_path / "ctc")
    assert run(demo.main, ["--image_folder", str(folder), "--saved_model", str(tmp_path / "ctc"), "--workers", "0",
                           "--refine_iters", "1"]) == 1  # fmt: skip
    assert "--refine_iters set(s) the PARSeq decoder, but --Prediction is CTC" in capsys.readouterr().err


def test_model_card_names_the_architecture(parseq_checkpoint):
    model = TextRecognitionModel(ModelConfig("None", "ViT", "None", "PARSeq", input_channel=3, img_w=128,
                                             vit_size="tiny"))  # fmt: skip
    card = str(model.generate_model_card())
    assert "**None-ViT-None-PARSeq** (PARSeq-Ti)" in card
    assert "ViT (tiny preset: width 192, 12 blocks, 3 heads, 4x8 patches)" in card
    assert "PARSeq (1 decoder layer(s), 6 heads; autoregressive decoding, 1 refinement pass(es))" in card
    assert "bautista2022parseq" in card and "baek2019STRcomparisons" in card
    path, _ = parseq_checkpoint
    assert "(PARSeq (ViT 128 wide, 1 blocks))" in str(TextRecognitionModel.from_strhub_checkpoint(path)
                                                      .generate_model_card())  # fmt: skip
