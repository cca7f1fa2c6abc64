"""Training features for real data: schedules, optimizers, freezing, EMA, label smoothing, early stopping and
charset surgery. All are off by default, so DTRB's command lines keep DTRB's behaviour."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import assert_same_texts_but_near_ties

from text_recognition import ModelConfig, TextRecognitionModel
from text_recognition.config import TrainConfig
from text_recognition.tokenizer import EOS_ID
from text_recognition.training import EMA, build_optimizer, build_scheduler, freeze_stages, lr_factor


def curve(**kwargs) -> list[float]:
    config = TrainConfig(num_iter=100, lr=2.0, **kwargs)
    model = torch.nn.Linear(2, 2)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config)
    rates = []
    for _ in range(config.num_iter):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_constant_is_dtrbs_default():
    assert curve() == [2.0] * 100
    assert TrainConfig().scheduler == "constant" and TrainConfig().optimizer == "adadelta"


def test_warmup_then_linear_decay_to_zero():
    rates = curve(scheduler="linear", warmup_steps=10)
    assert rates[:10] == pytest.approx([2.0 * (k + 1) / 10 for k in range(10)])
    assert rates[10] == pytest.approx(2.0) and rates[55] == pytest.approx(1.0) and rates[99] == pytest.approx(2.0 / 90)


def test_cosine_decay():
    rates = curve(scheduler="cosine")
    assert rates[0] == pytest.approx(2.0) and rates[50] == pytest.approx(1.0)
    assert rates[25] == pytest.approx(1.0 + math.cos(math.pi / 4))
    assert all(a >= b for a, b in zip(rates, rates[1:]))


def test_onecycle_rises_then_falls_like_torchs():
    rates = curve(scheduler="onecycle", warmup_steps=30)
    assert rates[0] == pytest.approx(2.0 / 25) and max(rates) == pytest.approx(2.0) and rates.index(2.0) == 29
    assert rates[-1] == pytest.approx(2.0 / 25e4)
    torch_rates, optimizer = [], torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=2.0)
    reference = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2.0, total_steps=100, pct_start=30 / 100,
                                                    cycle_momentum=False, anneal_strategy="cos")  # fmt: skip
    for _ in range(100):
        torch_rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        reference.step()
    assert rates == pytest.approx(torch_rates, rel=1e-6)


def test_optimizers_and_weight_decay():
    model = torch.nn.Linear(2, 2)
    assert isinstance(build_optimizer(model, TrainConfig(adam=True)), torch.optim.Adam)
    adamw = build_optimizer(model, TrainConfig(optimizer="adamw", weight_decay=0.05, lr=1e-3))
    assert isinstance(adamw, torch.optim.AdamW) and adamw.param_groups[0]["weight_decay"] == 0.05
    assert isinstance(build_optimizer(model, TrainConfig()), torch.optim.Adadelta)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"optimizer": "sgd"}, r"Unknown optimizer 'sgd'. Choose one of: adadelta, adam, adamw"),
        ({"scheduler": "step"}, r"Unknown scheduler 'step'"),
        ({"adam": True, "optimizer": "adamw"}, r"--adam means --optimizer adam"),
        ({"freeze": "CNN"}, r"Unknown stage\(s\) \['CNN'\] to freeze. The stages are: Transformation"),
        ({"ema_decay": 1.0}, r"ema_decay must be in \(0, 1\)"),
        ({"label_smoothing": 1.0}, r"label_smoothing must be in \[0, 1\)"),
        ({"early_stopping_patience": 0}, r"early_stopping_patience must be at least 1"),
    ],
)
def test_bad_training_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


def test_a_warmup_longer_than_the_run_warns():
    with pytest.warns(UserWarning, match=r"warmup_steps \(40\) is not below num_iter \(10\)"):
        config = TrainConfig(num_iter=10, warmup_steps=40, scheduler="cosine")
    assert [lr_factor(step, config) for step in (0, 9)] == [1 / 40, 10 / 40]


def test_lr_factor_never_negative():
    for scheduler in ("constant", "cosine", "onecycle", "linear"):
        config = TrainConfig(num_iter=10, scheduler=scheduler, warmup_steps=2)
        assert all(0 <= lr_factor(step, config) <= 1 for step in range(12))


def tiny(prediction: str, character: str = "abcdef") -> TextRecognitionModel:
    torch.manual_seed(0)
    model = TextRecognitionModel(ModelConfig("None", "VGG", "BiLSTM", prediction, output_channel=32, hidden_size=16,
                                             character=character))  # fmt: skip
    model.init_weights()
    return model


def test_freeze_leaves_the_stage_unchanged_by_training():
    model = tiny("CTC")
    frozen = freeze_stages(model, "FeatureExtraction")
    assert frozen == [model.FeatureExtraction]
    before = {k: v.clone() for k, v in model.FeatureExtraction.state_dict().items()}
    head = model.Prediction.weight.clone()
    optimizer = build_optimizer(model, TrainConfig(adam=True, lr=1e-2))
    assert all(p.requires_grad is False for p in model.FeatureExtraction.parameters())
    targets, lengths = model.tokenizer.encode(["abc", "fed"], 25)
    for _ in range(3):
        loss = model.loss(model(torch.rand(2, 1, 32, 100) * 2 - 1), targets, lengths)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = model.FeatureExtraction.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BatchNorm statistics
    assert not torch.equal(head, model.Prediction.weight)


def test_ema_follows_the_weights():
    model = tiny("CTC")
    ema = EMA(model, decay=0.5)
    start = model.Prediction.weight.clone()
    with torch.no_grad():
        model.Prediction.weight.add_(1.0)
    ema.update(model)
    assert torch.allclose(ema.model.Prediction.weight, start + 0.5)
    restored = EMA(model, decay=0.5)
    restored.load_state_dict(ema.state_dict())
    assert torch.equal(restored.model.Prediction.weight, ema.model.Prediction.weight)


# ---- resize_charset ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prediction", ["CTC", "Attn"])
def test_resize_charset_keeps_predictions_of_inputs_without_new_symbols(prediction):
    model = tiny(prediction).eval()
    images = torch.rand(6, 1, 32, 100) * 2 - 1
    with torch.no_grad():
        model.Prediction.bias.copy_(torch.randn_like(model.Prediction.bias)) if prediction == "CTC" else None
    before = model.recognize_batch(images)
    with torch.no_grad():
        greedy = model(images)  # [B, T, C]: the path `before` was decoded on
    change = model.resize_charset("abcdefXYZ")
    assert (change.kept, change.added, change.removed) == ("abcdef", "XYZ", "")
    assert model.config.character == "abcdefXYZ" and model.config.num_class == len(model.tokenizer.tokens)
    after = model.recognize_batch(images)
    # The head (and the attention cell's one-hot input) has more classes now: other matrix shapes, which the CPU's
    # kernels may round otherwise. Only a near-tie of this untrained model may read differently.
    eos_id = EOS_ID if prediction == "Attn" else None
    assert_same_texts_but_near_ties(after, before, greedy, "resized", eos_id=eos_id, rel=1e-3)
    with torch.no_grad():
        assert model(images).shape[-1] == model.config.num_class


@pytest.mark.parametrize("prediction", ["CTC", "Attn"])
def test_resize_charset_keeps_learned_rows_and_new_symbols_are_learnable(prediction, tmp_path):
    model = tiny(prediction)
    head = model.Prediction if prediction == "CTC" else model.Prediction.generator
    old_rows = {token: head.weight[i].clone() for i, token in enumerate(model.tokenizer.tokens)}
    model.resize_charset("fedcbaQ")  # reordered, plus one new symbol
    head = model.Prediction if prediction == "CTC" else model.Prediction.generator
    for i, token in enumerate(model.tokenizer.tokens):
        if token in old_rows:
            assert torch.equal(head.weight[i], old_rows[token]), token
    # Q is learnable: training on the word "Q" alone drives its loss down (only a rising p(Q) can do that)
    model.train()
    q = model.tokenizer.tokens.index("Q")
    new_row = head.weight[q].clone()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    images = torch.rand(4, 1, 32, 100) * 2 - 1
    targets, lengths = model.tokenizer.encode(["Q"] * 4, model.config.batch_max_length)
    losses = []
    for _ in range(60):
        logits = model(images, targets if prediction == "Attn" else None)
        loss = model.loss(logits, targets, lengths)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0] and not torch.equal(head.weight[q], new_row)
    model.save_pretrained(tmp_path / "m")  # config.json follows the new charset
    assert TextRecognitionModel.from_pretrained(tmp_path / "m").config.character == "fedcbaQ"
