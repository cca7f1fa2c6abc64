"""The stages beyond DTRB's grid (FeatureExtraction ViT, Prediction PARSeq and ViTSTR) under the model-wide checks
of test_model.py, plus PARSeq's permutation training, decoding modes, configuration errors and charset resizing.

Logit equality with strhub's maths is in test_strhub_checkpoint.py. Dimensions are tiny (width 32, 1 block).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from text_recognition import ModelConfig, Recognition, TextRecognitionModel
from text_recognition.decoding import DecodingOptions
from text_recognition.model import expected_sequence_length
from text_recognition.stages.parseq import PARSeq
from text_recognition.transforms import preprocess

TINY = {"input_channel": 3, "img_h": 32, "img_w": 64, "embed_dim": 32, "encoder_depth": 1, "encoder_heads": 2,
        "output_channel": 32, "hidden_size": 16, "batch_max_length": 8, "num_fiducial": 6}  # fmt: skip
# Every new stage with every stage choice it meets at least once: ViT under each head, with TPS and BiLSTM; PARSeq
# after ViT and after a CNN (with and without BiLSTM).
COMBINATIONS = ["None-ViT-None-PARSeq", "None-ViT-None-ViTSTR", "None-ViT-BiLSTM-PARSeq", "None-ViT-BiLSTM-CTC",
                "TPS-ViT-None-Attn", "None-VGG-BiLSTM-PARSeq", "None-RCNN-None-PARSeq"]  # fmt: skip
LABELS = ["ab1", "hello", "z", "abcdefgh"]  # the longest fills batch_max_length: every position query is trained


def tiny_config(stage_string: str, **kwargs) -> ModelConfig:
    values = dict(TINY)
    if "ViT" not in stage_string:
        values = {k: v for k, v in values.items() if not k.startswith(("embed", "encoder"))}
    if "PARSeq" in stage_string:
        values["decoder_heads"] = 2
    return ModelConfig.from_stage_string(stage_string, **{**values, **kwargs})


def tiny_model(stage_string: str, **kwargs) -> TextRecognitionModel:
    torch.manual_seed(0)
    model = TextRecognitionModel(tiny_config(stage_string, **kwargs))
    model.init_weights()
    return model


def batch(size: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.rand(size, 3, 32, 64, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("stage_string", COMBINATIONS)
def test_forward_shapes_and_every_parameter_gets_a_gradient(stage_string):
    model = tiny_model(stage_string)
    if model.config.transformation == "TPS":
        torch.nn.init.normal_(model.Transformation.LocalizationNetwork.localization_fc2.weight, std=1e-3)
    model.train()
    config = model.config
    targets, lengths = model.tokenizer.encode(LABELS, config.batch_max_length)
    logits = model(batch(), targets if model.teacher_forced else None)
    if config.prediction == "PARSeq":  # one [B, T + 1, C] per training permutation
        assert logits.shape == (config.perm_num, 4, 9, config.num_class)
    else:
        assert logits.shape == (4, expected_sequence_length(config), config.num_class)
    assert torch.isfinite(logits).all()
    loss = model.loss(logits, targets, lengths)
    assert torch.isfinite(loss)
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, f"No gradient for {name}"
        assert param.grad.abs().sum() > 0, f"Zero gradient for {name}"


@pytest.mark.parametrize("stage_string", COMBINATIONS)
def test_save_pretrained_round_trip_and_recognize(stage_string, tmp_path):
    model = tiny_model(stage_string).eval()
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text()) == asdict(model.config)
    loaded = TextRecognitionModel.from_pretrained(tmp_path)
    assert asdict(loaded.config) == asdict(model.config)
    original, restored = model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys() and all(torch.equal(original[k], restored[k]) for k in original)
    with torch.no_grad():
        logits = model(batch(2))
        assert torch.equal(logits, loaded(batch(2)))
    assert logits.shape[0] == 2 and logits.shape[1] <= expected_sequence_length(model.config)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in ((40, 20), (300, 80))]
    results = loaded.recognize(images)
    assert len(results) == 2 and all(isinstance(r, Recognition) and 0.0 <= r.confidence <= 1.0 for r in results)
    with torch.no_grad():
        expected = loaded.tokenizer.decode_with_confidence(loaded(preprocess(images, loaded.config)))
    assert [r.text for r in results] == [text for text, _ in expected]


def test_dtrb_config_json_has_no_value_for_the_new_fields():
    """A DTRB model's config leaves every ViT / PARSeq field unset (its config.json from before loads as it was)."""
    config = asdict(ModelConfig("TPS", "ResNet", "BiLSTM", "Attn"))
    new = ["vit_size", "patch_h", "patch_w", "embed_dim", "encoder_depth", "encoder_heads", "encoder_mlp_ratio",
           "decoder_depth", "decoder_heads", "decoder_mlp_ratio", "dropout", "perm_num", "perm_forward",
           "perm_mirrored", "decode_ar", "refine_iters"]  # fmt: skip
    assert all(config[name] is None for name in new)
    old = {k: v for k, v in config.items() if k not in new}
    assert asdict(ModelConfig.from_dict(old)) == config


def test_vit_sizes_and_free_sizes():
    small = ModelConfig("None", "ViT", "None", "PARSeq", img_w=128)
    assert (small.embed_dim, small.encoder_depth, small.encoder_heads, small.decoder_heads) == (384, 12, 6, 12)
    assert (small.patch_h, small.patch_w, small.decode_ar, small.refine_iters, small.perm_num) == (4, 8, True, 1, 6)
    tiny = ModelConfig("None", "ViT", "None", "PARSeq", img_w=128, vit_size="tiny")
    assert (tiny.embed_dim, tiny.encoder_heads, tiny.decoder_heads) == (192, 3, 6)
    free = ModelConfig("None", "ViT", "None", "CTC", img_h=48, img_w=96, patch_h=8, patch_w=8, embed_dim=96,
                       encoder_depth=3, encoder_heads=4)  # fmt: skip
    model = TextRecognitionModel(free)
    assert model(torch.zeros(1, 1, 48, 96)).shape == (1, 6 * 12, free.num_class)
    assert len(model.FeatureExtraction.blocks) == 3


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"feature_extraction": "ResNet", "embed_dim": 64}, "--embed_dim set.* but --FeatureExtraction is ResNet"),
    ({"prediction": "Attn", "refine_iters": 2}, "--refine_iters set.* but --Prediction is Attn"),
    ({"prediction": "ViTSTR", "refine_iters": 2}, "ViTSTR reads every position at once: it has no decoding mode"),
    ({"feature_extraction": "ResNet", "prediction": "ViTSTR"}, "ViTSTR .* needs --FeatureExtraction ViT"),
    ({"img_w": 100}, r"--imgW \(100\) of --patch_w .* --imgH 32 --imgW 128"),
    ({"vit_size": "base"}, "Unknown --vit_size 'base'. Choose one of: tiny, small"),
    ({"embed_dim": 100}, r"--embed_dim \(100\) must be a multiple of --encoder_heads \(6\)"),
    ({"decoder_heads": 5}, r"--decoder_heads \(5\) must divide the PARSeq decoder's width"),
    ({"embed_dim": 120, "encoder_heads": 4}, "which is no multiple of 32: give --decoder_heads"),
    ({"perm_num": 3}, r"--perm_num \(3\) must be even with --perm_mirrored"),
    ({"refine_iters": -1}, "--refine_iters must be 0 or more"),
    ({"dropout": 1.5}, r"--dropout must be in \[0, 1\)"),
    ({"prediction": "ViTSTR", "img_w": 32, "patch_w": 16}, "ViTSTR reads batch_max_length \\+ 1 = 26 patch tokens"),
])  # fmt: skip
def test_bad_configurations_name_the_flag(kwargs, match):
    values = {"transformation": "None", "feature_extraction": "ViT", "sequence_modeling": "None",
              "prediction": "PARSeq", "img_w": 128, **kwargs}  # fmt: skip
    with pytest.raises(ValueError, match=match):
        ModelConfig(**values)


def test_optional_boolean_flags_take_a_value():
    import argparse

    from text_recognition.cli import add_model_arguments, model_config_from_args

    parser = add_model_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--Transformation", "None", "--FeatureExtraction", "ViT", "--SequenceModeling", "None",
                              "--Prediction", "PARSeq", "--imgW", "128", "--decode_ar", "false", "--refine_iters",
                              "2", "--vit_size", "tiny"])  # fmt: skip
    config = model_config_from_args(args)
    assert (config.decode_ar, config.refine_iters, config.embed_dim) == (False, 2, 192)


def test_permutations_follow_strhub():
    head = PARSeq(32, 37, batch_max_length=10, num_heads=2)
    assert head.gen_permutations(1, torch.device("cpu")).tolist() == [[0, 1, 2]]
    torch.manual_seed(0)
    for length in (2, 3, 4, 5, 9):
        perms = head.gen_permutations(length, torch.device("cpu"))
        expected_count = 2 * min(3, math.factorial(length) // 2)
        assert perms.shape == (expected_count, length + 2)
        assert perms[0].tolist() == list(range(length + 2))  # left to right first
        assert perms[1].tolist() == [0, length + 1, *range(length, 0, -1)]  # [E] with a null context
        for row in perms.tolist():
            assert sorted(row) == list(range(length + 2)) and row[0] == 0
        for k in range(2, len(perms), 2):  # the others come in mirrored pairs, [E] last
            assert perms[k + 1, 1:-1].tolist() == perms[k, 1:-1].flip(0).tolist()
            assert perms[k, -1] == perms[k + 1, -1] == length + 1
        if length < 5:  # few orders: no repeats
            assert len({tuple(r) for r in perms[:, 1:-1].tolist()}) == len(perms)
    content, query = PARSeq.attention_masks(torch.arange(5))
    assert torch.equal(query, torch.ones(4, 4).triu(1).bool())  # left to right: the inference mask
    assert torch.equal(content, torch.ones(4, 4).triu(1).bool())


def test_permutation_loss_trains_eos_only_in_the_first_two_orders():
    head = PARSeq(32, 37, batch_max_length=10, num_heads=2)
    text = torch.tensor([[37, 11, 12, 0, 38], [37, 13, 0, 38, 38]])  # [B] a b [E] [P] / [B] c [E] [P] [P]
    logits = torch.randn(4, 2, 4, 37, generator=torch.Generator().manual_seed(0))
    target = text[:, 1:]
    total, count = 0.0, 0
    for k in range(4):
        t = target if k < 2 else torch.where(target == 0, 38, target)
        total += F.cross_entropy(logits[k].flatten(0, 1), t.flatten(), ignore_index=38, reduction="sum")
        count += int((t != 38).sum())
    assert head.loss(logits, text) == pytest.approx(float(total / count), rel=1e-6)


def test_decoding_mode_is_settable_and_checked(tmp_path):
    model = tiny_model("None-ViT-None-PARSeq").eval()
    with torch.no_grad():
        model.set_decoding(decode_ar=False, refine_iters=0)
        nar = model(batch(2))
        model.set_decoding(refine_iters=2)
        refined = model(batch(2))
    assert nar.shape == refined.shape == (2, 9, model.config.num_class)
    assert (model.config.decode_ar, model.config.refine_iters) == (False, 2)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["refine_iters"] == 2
    assert TextRecognitionModel.from_pretrained(tmp_path, refine_iters=0).config.refine_iters == 0
    vitstr = tiny_model("None-ViT-None-ViTSTR")
    with pytest.raises(ValueError, match="--refine_iters set.*ViTSTR reads every position at once"):
        vitstr.set_decoding(refine_iters=1)


@pytest.mark.parametrize("stage_string", ["None-ViT-None-PARSeq", "None-ViT-None-ViTSTR"])
def test_resize_charset_keeps_what_was_learned(stage_string):
    model = tiny_model(stage_string).eval()
    images = batch(3)
    with torch.no_grad():
        before = model(images)
    old_embedding = model.Prediction.text_embed.embedding.weight.clone() if "PARSeq" in stage_string else None
    change = model.resize_charset(model.config.character + "#@")
    assert (change.added, change.removed) == ("#@", "")
    assert model.config.num_class == model.tokenizer.num_class == 39
    with torch.no_grad():
        after = model(images)
    # the old classes keep their logits; the new ones are never the argmax
    assert torch.allclose(after[..., :37], before, atol=1e-5)
    assert (after.argmax(-1) < 37).all()
    if old_embedding is not None:
        embedding = model.Prediction.text_embed.embedding.weight
        assert embedding.shape == (41, 32)
        assert torch.equal(embedding[:37], old_embedding[:37])
        assert torch.equal(embedding[39:], old_embedding[37:])  # [B] and [P] moved to the end
        assert (model.Prediction.bos_id, model.Prediction.pad_id) == (39, 40)
    targets, lengths = model.tokenizer.encode(["a#", "@b"], model.config.batch_max_length)
    model.train()
    loss = model.loss(model(images[:2], targets if model.teacher_forced else None), targets, lengths)
    assert torch.isfinite(loss)


def test_init_weights_are_strhubs_for_the_transformer_stages():
    model = tiny_model("None-ViT-None-PARSeq", embed_dim=256, encoder_heads=4, decoder_heads=8)
    assert model.FeatureExtraction.pos_embed.std().item() == pytest.approx(0.02, rel=0.1)
    assert model.FeatureExtraction.blocks[0].attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert model.Prediction.pos_queries.std().item() == pytest.approx(0.02, rel=0.2)
    assert model.Prediction.head.bias.eq(0).all()
    ctc = tiny_model("None-ViT-BiLSTM-CTC")  # DTRB's stages keep DTRB's rules
    assert ctc.Prediction.bias.eq(0).all()
    assert ctc.SequenceModeling[0].rnn.weight_ih_l0.std().item() == pytest.approx((2 / 32) ** 0.5, rel=0.1)


def test_evaluation_and_calibration_follow_strhubs_confidence(tmp_path):
    """scripts/test.py's evaluate() scores a PARSeq model with the confidences recognize gives (strhub's product up
    to and including [E]), and calibration fits its temperature on the same rows."""
    from conftest import make_lmdb

    from text_recognition.calibration import confidences_at, path_logits
    from text_recognition.evaluation import evaluate

    model = tiny_model("None-ViT-None-PARSeq").eval()
    labels = ["ab", "c1d", "zz", "hello", "x9"]
    images = make_lmdb(tmp_path / "eval" / "words", labels)
    report = evaluate(model, tmp_path / "eval", batch_size=3, timing_samples=0)
    (result,) = report.results
    assert result.num_samples == len(labels)
    expected = model.recognize(images, batch_size=3)
    assert [r.prediction for r in result.records] == [r.text for r in expected]
    assert [r.confidence for r in result.records] == pytest.approx([r.confidence for r in expected], rel=1e-5)
    with torch.no_grad():
        logits = model(batch(3))
    rows = path_logits(logits, is_ctc=False, strhub=True)
    confidences = [c for _, c in model.tokenizer.decode_with_confidence(logits)]
    assert confidences_at(rows, 1.0).tolist() == pytest.approx(confidences, rel=1e-5)
    assert "temperature" in result.calibration


def test_strhub_tokenizer_ids_and_confidence():
    from text_recognition import StrhubTokenizer

    tokenizer = StrhubTokenizer("0123456789abcdefghijklmnopqrstuvwxyz")
    ids, lengths = tokenizer.encode(["ab", ""], batch_max_length=4)
    assert ids.tolist() == [[37, 11, 12, 0, 38, 38], [37, 0, 38, 38, 38, 38]]  # [B] a b [E] [P] / [B] [E] [P]
    assert lengths.tolist() == [3, 1] and tokenizer.num_class == 37
    with pytest.raises(ValueError, match="more than batch_max_length=4"):
        tokenizer.encode(["abcde"], batch_max_length=4)
    logits = torch.full((2, 3, 37), -10.0)
    logits[0, 0, 11], logits[0, 1, 0], logits[0, 2, 12] = 2.0, 1.0, 5.0  # 'a', [E], then ignored
    logits[1, :, 13] = 3.0  # 'ccc', no [E]: every step counts
    (text0, conf0), (text1, conf1) = tokenizer.decode_with_confidence(logits)
    probs = logits.softmax(-1).max(-1).values
    assert (text0, text1) == ("a", "ccc")
    assert conf0 == pytest.approx(float(probs[0, :2].prod()))  # P([E]) included, as strhub
    assert conf1 == pytest.approx(float(probs[1].prod()))


def sharpened(stage_string: str, **kwargs) -> TextRecognitionModel:
    """A tiny model whose classifier is scaled up: an untrained head's nearly uniform logits become decisive, so
    that readings and searches differ from one image to the next."""
    model = tiny_model(stage_string, **kwargs).eval()
    with torch.no_grad():
        model.Prediction.head.weight.mul_(30)
    return model


@pytest.mark.parametrize("stage_string", ["None-ViT-None-PARSeq", "None-VGG-BiLSTM-PARSeq", "None-ViT-None-ViTSTR"])
def test_beam_search_and_constraints(stage_string):
    """Width 1 under a constraint that allows everything is greedy decoding (PARSeq: autoregressive, without
    refinement), text and confidence; a wider beam finds a reading at least as probable; a lexicon or a pattern is
    obeyed; the confidence keeps strhub's meaning (the [E] included)."""
    model = sharpened(stage_string, **({"refine_iters": 0} if "PARSeq" in stage_string else {}))
    images = batch(6, seed=1)
    greedy = model.recognize_batch(images)
    width_one = model.recognize_batch(images, model.decoder(DecodingOptions(blocklist="")))
    assert [r.text for r in width_one] == [r.text for r in greedy]
    assert [r.confidence for r in width_one] == pytest.approx([r.confidence for r in greedy], rel=1e-5)
    wide = model.recognize_batch(images, model.decoder(DecodingOptions(beam_width=4)))
    assert all(w.confidence >= g.confidence * (1 - 1e-5) for w, g in zip(wide, greedy, strict=True))
    lexicon = ("ab", "hello", "z1")
    for r in model.recognize_batch(images, model.decoder(DecodingOptions(beam_width=3, lexicon=lexicon))):
        assert r.text in lexicon and 0 < r.confidence < 1 and not r.abstained
    for r in model.recognize_batch(images, model.decoder(DecodingOptions(beam_width=2, pattern=r"[0-9]{2,4}"))):
        assert r.text.isdigit() and 2 <= len(r.text) <= 4
    # a constrained reading's confidence is the model's probability of that text, [E] included
    [r] = model.recognize_batch(images[:1], model.decoder(DecodingOptions(lexicon=("z1",))))
    ids, _ = model.tokenizer.encode(["z1"], model.config.batch_max_length)
    with torch.no_grad():
        features = model.encode(images[:1])
        if stage_string.endswith("ViTSTR"):
            logits = model.Prediction(features)[:, :3]
        else:
            logits = model.Prediction.forced(features, ids[:, 1:4])
    probs = logits.softmax(-1)[0]
    assert r.confidence == pytest.approx(float(probs[0, ids[0, 1]] * probs[1, ids[0, 2]] * probs[2, 0]), rel=1e-4)


def test_parseq_refinement_is_left_out_of_the_search():
    """Search runs the autoregressive decoder without refinement, whatever the mode: a refined reading could leave
    the lexicon. Greedy decoding keeps the configured mode."""
    refined, plain = sharpened("None-ViT-None-PARSeq", refine_iters=2), sharpened("None-ViT-None-PARSeq", refine_iters=0)
    nar = sharpened("None-ViT-None-PARSeq", decode_ar=False)
    images = batch(4, seed=2)
    searched = [model.recognize_batch(images, model.decoder(DecodingOptions(beam_width=3)))
                for model in (refined, plain, nar)]  # fmt: skip
    assert searched[0] == searched[1] == searched[2]
