"""Checks of the independent DTRB reference (``tests/dtrb_reference.py``) against the numbers in dtrb.md.

These tests exercise the reference only; they do not import ``text_recognition``.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from dtrb_reference import (
    FEATURE_EXTRACTIONS,
    dtrb_combinations,
    dtrb_manifest,
    dtrb_num_class,
    dtrb_param_count,
    dtrb_reference_forward,
    fiducial_bias,
    random_dtrb_state_dict,
    reference_attention,
    reference_feature_extraction,
    reference_height_pool,
    reference_lstm_cell,
    reference_lstm_direction,
    reference_tps,
    reference_tps_grid,
    tps_buffers,
    tps_delta_c,
    tps_output_points,
    tps_sampling_grid,
)

torch.set_num_threads(min(2, torch.get_num_threads()))

# dtrb.md 3.9: 1 channel, 32x100, oc 512, hidden 256, F 20; 37 classes for CTC, 38 for Attn.
PARAM_COUNTS: dict[str, int] = {
    "None-VGG-None-CTC": 5_568_805,
    "None-VGG-None-Attn": 6_584_102,
    "None-VGG-BiLSTM-CTC": 8_451_621,
    "None-VGG-BiLSTM-Attn": 9_148_710,
    "None-RCNN-None-CTC": 1_878_949,
    "None-RCNN-None-Attn": 2_894_246,
    "None-RCNN-BiLSTM-CTC": 4_761_765,
    "None-RCNN-BiLSTM-Attn": 5_458_854,
    "None-ResNet-None-CTC": 44_282_885,
    "None-ResNet-None-Attn": 45_298_182,
    "None-ResNet-BiLSTM-CTC": 47_165_701,
    "None-ResNet-BiLSTM-Attn": 47_862_790,
    "TPS-VGG-None-CTC": 7_261_197,
    "TPS-VGG-None-Attn": 8_276_494,
    "TPS-VGG-BiLSTM-CTC": 10_144_013,
    "TPS-VGG-BiLSTM-Attn": 10_841_102,
    "TPS-RCNN-None-CTC": 3_571_341,
    "TPS-RCNN-None-Attn": 4_586_638,
    "TPS-RCNN-BiLSTM-CTC": 6_454_157,
    "TPS-RCNN-BiLSTM-Attn": 7_151_246,
    "TPS-ResNet-None-CTC": 45_975_277,
    "TPS-ResNet-None-Attn": 46_990_574,
    "TPS-ResNet-BiLSTM-CTC": 48_858_093,
    "TPS-ResNet-BiLSTM-Attn": 49_555_182,
}

# dtrb.md 3.9: case-sensitive variants (94 symbols: 95 classes CTC, 96 Attn).
CASE_SENSITIVE_PARAM_COUNTS: dict[str, int] = {
    "TPS-ResNet-BiLSTM-Attn": 49_629_480,
    "TPS-ResNet-BiLSTM-CTC": 48_872_999,
    "None-VGG-BiLSTM-CTC": 8_466_527,
    "None-ResNet-None-CTC": 44_312_639,
}

# dtrb.md 3.1: (H', T) per feature extractor for input H x W.
GEOMETRY: dict[tuple[int, int], dict[str, tuple[int, int]]] = {
    (32, 100): {"VGG": (1, 24), "RCNN": (1, 26), "ResNet": (1, 26)},
    (32, 200): {"VGG": (1, 49), "RCNN": (1, 51), "ResNet": (1, 51)},
    (32, 400): {"VGG": (1, 99), "RCNN": (1, 101), "ResNet": (1, 101)},
    (48, 160): {"VGG": (2, 39), "RCNN": (2, 41), "ResNet": (2, 41)},
    (64, 256): {"VGG": (3, 63), "RCNN": (3, 65), "ResNet": (3, 65)},
}

COMBOS = ["-".join(c) for c in dtrb_combinations()]
SMALL = {"output_channel": 32, "hidden_size": 16}


def _manifest(name: str, num_symbols: int = 36, **kwargs: int) -> dict[str, tuple[int, ...]]:
    t, fe, s, p = name.split("-")
    return dtrb_manifest(t, fe, s, p, num_class=dtrb_num_class(p, num_symbols), **kwargs)


def _stages(name: str) -> dict[str, str]:
    t, fe, s, p = name.split("-")
    return {"transformation": t, "feature_extraction": fe, "sequence_modeling": s, "prediction": p}


def _image(batch: int = 2, h: int = 32, w: int = 100, seed: int = 0, channels: int = 1) -> torch.Tensor:
    return torch.rand(batch, channels, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ---------------------------------------------------------------------------------------------------------------------
# Manifest and parameter counts
# ---------------------------------------------------------------------------------------------------------------------


def test_combinations_cover_all_24() -> None:
    assert len(COMBOS) == 24 == len(set(COMBOS))
    assert set(COMBOS) == set(PARAM_COUNTS)


@pytest.mark.parametrize("name", COMBOS)
def test_param_count_matches_table(name: str) -> None:
    assert dtrb_param_count(_manifest(name)) == PARAM_COUNTS[name]


@pytest.mark.parametrize("name", sorted(CASE_SENSITIVE_PARAM_COUNTS))
def test_case_sensitive_param_count(name: str) -> None:
    assert dtrb_num_class(name.split("-")[-1], 94) in (95, 96)
    assert dtrb_param_count(_manifest(name, num_symbols=94)) == CASE_SENSITIVE_PARAM_COUNTS[name]


def test_per_stage_param_counts() -> None:
    manifest = _manifest("TPS-ResNet-BiLSTM-Attn")

    def stage(prefix: str, m: dict[str, tuple[int, ...]] = manifest) -> int:
        return dtrb_param_count({k: v for k, v in m.items() if k.startswith(prefix)})

    assert stage("Transformation.") == 1_692_392
    assert stage("FeatureExtraction.") == 44_263_904
    assert stage("SequenceModeling.") == 2_892_288
    assert stage("Prediction.") == 706_598
    assert stage("FeatureExtraction.", _manifest("None-VGG-None-CTC")) == 5_549_824
    assert stage("FeatureExtraction.", _manifest("None-RCNN-None-CTC")) == 1_859_968
    assert stage("Prediction.", _manifest("None-VGG-BiLSTM-CTC")) == 9_509


@pytest.mark.parametrize(
    ("name", "count"),
    [("TPS-ResNet-BiLSTM-Attn", 252), ("None-VGG-BiLSTM-CTC", 44), ("None-RCNN-BiLSTM-CTC", 432)],
)
def test_state_dict_key_counts(name: str, count: int) -> None:
    # dtrb.md 3.11 counts state_dict keys: parameters plus BN buffers (num_batches_tracked included) and TPS buffers.
    assert len(_manifest(name)) == count


def test_manifest_documented_shapes_and_names() -> None:
    trba = _manifest("TPS-ResNet-BiLSTM-Attn")
    assert trba["Transformation.GridGenerator.inv_delta_C"] == (23, 23)
    assert trba["Transformation.GridGenerator.P_hat"] == (3200, 23)
    assert trba["Prediction.attention_cell.rnn.weight_ih"] == (1024, 294)
    assert trba["Transformation.LocalizationNetwork.localization_fc1.0.weight"] == (256, 512)
    assert trba["Transformation.LocalizationNetwork.localization_fc2.weight"] == (40, 256)
    assert trba["FeatureExtraction.ConvNet.bn4_2.num_batches_tracked"] == ()
    loc_idx = {
        int(m.group(1)) for k in trba if (m := re.match(r"Transformation\.LocalizationNetwork\.conv\.(\d+)\.", k))
    }
    assert loc_idx == {0, 1, 4, 5, 8, 9, 12, 13}
    downsample = {k.split(".downsample")[0] for k in trba if ".downsample." in k}
    assert downsample == {f"FeatureExtraction.ConvNet.layer{i}.0" for i in (1, 2, 3)}
    assert not any(k.startswith("module.") for k in trba)

    crnn = _manifest("None-VGG-BiLSTM-CTC")
    vgg_idx = {int(k.split(".")[2]) for k in crnn if k.startswith("FeatureExtraction.")}
    assert vgg_idx == {0, 3, 6, 8, 11, 12, 14, 15, 18}
    assert {i for i in vgg_idx if f"FeatureExtraction.ConvNet.{i}.bias" in crnn} == {0, 3, 6, 8, 12, 15, 18}
    assert crnn["FeatureExtraction.ConvNet.18.weight"] == (512, 512, 2, 2)

    grcnn = _manifest("None-RCNN-BiLSTM-CTC")
    rcnn_idx = {int(k.split(".")[2]) for k in grcnn if k.startswith("FeatureExtraction.")}
    assert rcnn_idx == {0, 3, 5, 7, 9, 10}
    assert grcnn["FeatureExtraction.ConvNet.5.wgf_u.weight"] == (128, 64, 1, 1)
    assert grcnn["FeatureExtraction.ConvNet.5.wr_x.weight"] == (128, 128, 3, 3)
    assert grcnn["FeatureExtraction.ConvNet.7.GRCL.4.BN_Gx.running_var"] == (256,)
    assert "FeatureExtraction.ConvNet.7.GRCL.5.BN_Gx.weight" not in grcnn
    assert grcnn["Prediction.weight"] == (37, 256)


def test_manifest_matches_torch_module_naming() -> None:
    manifest = _manifest("None-VGG-BiLSTM-Attn", **SMALL)
    lstm = torch.nn.LSTM(32, 16, bidirectional=True, batch_first=True)
    for k, v in lstm.state_dict().items():
        assert manifest[f"SequenceModeling.0.rnn.{k}"] == tuple(v.shape)
    cell = torch.nn.LSTMCell(16 + 38, 16)
    for k, v in cell.state_dict().items():
        assert manifest[f"Prediction.attention_cell.rnn.{k}"] == tuple(v.shape)
    bn = torch.nn.BatchNorm2d(32)
    for k, v in bn.state_dict().items():
        assert manifest[f"FeatureExtraction.ConvNet.12.{k}"] == tuple(v.shape)


def test_unknown_stage_rejected() -> None:
    with pytest.raises(ValueError):
        dtrb_manifest("TPS", "VGG16", "None", "CTC", num_class=37)
    with pytest.raises(ValueError):
        dtrb_manifest("None", "VGG", "LSTM", "CTC", num_class=37)


# ---------------------------------------------------------------------------------------------------------------------
# TPS
# ---------------------------------------------------------------------------------------------------------------------


def test_tps_buffers_shapes_and_inverse() -> None:
    inv, p_hat = tps_buffers(20, 32, 100)
    assert inv.dtype == p_hat.dtype == torch.float32
    assert tuple(inv.shape) == (23, 23) and tuple(p_hat.shape) == (3200, 23)
    np.testing.assert_allclose(inv.double().numpy() @ tps_delta_c(20), np.eye(23), atol=1e-5)
    points = tps_output_points(32, 100)
    np.testing.assert_allclose(p_hat[:, 1:3].double().numpy(), points, atol=1e-7)
    np.testing.assert_allclose(points[0], [-99 / 100, -31 / 32])
    np.testing.assert_allclose(points[1], [-97 / 100, -31 / 32])  # row-major: x varies fastest
    np.testing.assert_allclose(points[-1], [99 / 100, 31 / 32])
    assert torch.all(p_hat[:, 0] == 1)


def test_fiducial_bias_pattern() -> None:
    c = fiducial_bias(20).reshape(20, 2)
    np.testing.assert_allclose(c[0].numpy(), [-1.0, 0.0])
    np.testing.assert_allclose(c[9].numpy(), [1.0, -1.0])
    np.testing.assert_allclose(c[10].numpy(), [-1.0, 1.0])
    np.testing.assert_allclose(c[19].numpy(), [1.0, 0.0])
    np.testing.assert_allclose(c[:10, 0].numpy(), np.linspace(-1, 1, 10), atol=1e-7)


def test_tps_reproduces_affine_maps() -> None:
    # A TPS with affine-displaced fiducials is exactly that affine map: identity C' = C gives P' = P.
    inv, p_hat = tps_buffers(20, 32, 100)
    c = torch.from_numpy(tps_delta_c(20)[:20, 1:3]).float()
    points = torch.from_numpy(tps_output_points(32, 100)).float().reshape(32, 100, 2)
    grid = tps_sampling_grid(c[None], inv, p_hat, 32, 100)[0]
    torch.testing.assert_close(grid, points, atol=1e-4, rtol=0)
    a = torch.tensor([[0.8, 0.1], [-0.2, 0.5]])
    t = torch.tensor([0.05, -0.1])
    grid = tps_sampling_grid((c @ a.T + t)[None], inv, p_hat, 32, 100)[0]
    torch.testing.assert_close(grid, points @ a.T + t, atol=1e-4, rtol=0)


EXPECTED_CORNERS = {"TL": (-0.99, 0.011), "TR": (0.99, -0.979), "BL": (-0.99, 0.979), "BR": (0.99, -0.011)}


def _corners(grid: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"TL": grid[0, 0], "TR": grid[0, -1], "BL": grid[-1, 0], "BR": grid[-1, -1]}


def test_initial_tps_grid_corners() -> None:
    inv, p_hat = tps_buffers(20, 32, 100)
    grid = tps_sampling_grid(fiducial_bias(20).reshape(1, 20, 2), inv, p_hat, 32, 100)[0]
    for name, value in _corners(grid).items():
        np.testing.assert_allclose(value.numpy(), EXPECTED_CORNERS[name], atol=0.01, err_msg=name)


def test_tps_stage_samples_initial_grid() -> None:
    # With localization_fc2.weight = 0 the LocalizationNetwork outputs the fiducial bias for any input; sampling a
    # coordinate ramp with align_corners=True then returns the sample coordinate itself.
    manifest = _manifest("TPS-VGG-None-CTC", **SMALL)
    sd = random_dtrb_state_dict(manifest, seed=3)
    sd["Transformation.LocalizationNetwork.localization_fc2.weight"].zero_()
    sd["Transformation.LocalizationNetwork.localization_fc2.bias"] = fiducial_bias(20)
    ramp_x = torch.linspace(-1, 1, 100).expand(32, 100)
    ramp_y = torch.linspace(-1, 1, 32)[:, None].expand(32, 100)
    image = torch.stack([ramp_x, ramp_y])[None]  # channels: x ramp, y ramp
    sd_rgb = dict(sd)
    w0 = sd["Transformation.LocalizationNetwork.conv.0.weight"]
    sd_rgb["Transformation.LocalizationNetwork.conv.0.weight"] = w0.repeat(1, 2, 1, 1)
    out = reference_tps(sd_rgb, image)[0]
    sampled = out.permute(1, 2, 0)  # [H, W, (x, y)]
    for name, value in _corners(sampled).items():
        np.testing.assert_allclose(value.numpy(), EXPECTED_CORNERS[name], atol=0.01, err_msg=name)
    grid = reference_tps_grid(sd_rgb, image)[0]
    torch.testing.assert_close(sampled, grid, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------------------------------
# Random weights
# ---------------------------------------------------------------------------------------------------------------------


def test_random_state_dict_matches_manifest_and_is_deterministic() -> None:
    manifest = _manifest("TPS-RCNN-BiLSTM-Attn", **SMALL)
    sd = random_dtrb_state_dict(manifest, seed=7)
    assert list(sd) == list(manifest)
    for key, shape in manifest.items():
        assert tuple(sd[key].shape) == shape, key
        expected = torch.long if key.endswith("num_batches_tracked") else torch.float32
        assert sd[key].dtype == expected, key
    again = random_dtrb_state_dict(manifest, seed=7)
    other = random_dtrb_state_dict(manifest, seed=8)
    assert all(torch.equal(sd[k], again[k]) for k in sd)
    assert not torch.equal(sd["SequenceModeling.0.rnn.weight_ih_l0"], other["SequenceModeling.0.rnn.weight_ih_l0"])
    inv, p_hat = tps_buffers(20, 32, 100)
    assert torch.equal(sd["Transformation.GridGenerator.inv_delta_C"], inv)
    assert torch.equal(sd["Transformation.GridGenerator.P_hat"], p_hat)
    bias = sd["Transformation.LocalizationNetwork.localization_fc2.bias"]
    assert (bias - fiducial_bias(20)).abs().max() < 0.1
    rv = sd["FeatureExtraction.ConvNet.3.GRCL.0.BN_fu.running_var"]
    assert rv.min() >= 0.5 and rv.max() <= 1.5


# ---------------------------------------------------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fe", FEATURE_EXTRACTIONS)
def test_feature_map_geometry(fe: str) -> None:
    sd = random_dtrb_state_dict(dtrb_manifest("None", fe, "None", "CTC", num_class=37, **SMALL), seed=1)
    for (h, w), table in GEOMETRY.items():
        feats = reference_feature_extraction(sd, fe, _image(1, h, w))
        assert tuple(feats.shape) == (1, 32, *table[fe]), (h, w)
        expected_t = w // 4 - 1 if fe == "VGG" else w // 4 + 1
        assert feats.shape[2:] == (h // 16 - 1, expected_t)


def test_ctc_sequence_length_at_other_size_with_tps() -> None:
    manifest = _manifest("TPS-ResNet-None-CTC", img_h=48, img_w=160, **SMALL)
    sd = random_dtrb_state_dict(manifest, seed=2, img_h=48, img_w=160)
    out = dtrb_reference_forward(sd, **_stages("TPS-ResNet-None-CTC"), image=_image(2, 48, 160))
    assert tuple(out.shape) == (2, 41, 37)


def test_height_pool_matches_adaptive_avg_pool() -> None:
    feats = torch.randn(2, 8, 3, 11, generator=torch.Generator().manual_seed(0))
    pooled = torch.nn.AdaptiveAvgPool2d((None, 1))(feats.permute(0, 3, 1, 2)).squeeze(3)
    torch.testing.assert_close(reference_height_pool(feats), pooled)


@pytest.mark.parametrize("name", COMBOS)
def test_forward_shapes_all_combinations(name: str) -> None:
    manifest = _manifest(name, **SMALL)
    sd = random_dtrb_state_dict(manifest, seed=11)
    image = _image()
    out = dtrb_reference_forward(sd, **_stages(name), image=image)
    assert torch.isfinite(out).all()
    if name.endswith("CTC"):
        t = 24 if "-VGG-" in name else 26
        assert tuple(out.shape) == (2, t, 37)
    else:
        assert tuple(out.shape) == (2, 26, 38)
        text = torch.randint(0, 38, (2, 26), generator=torch.Generator().manual_seed(0))
        forced = dtrb_reference_forward(sd, **_stages(name), image=image, text=text)
        assert tuple(forced.shape) == (2, 26, 38) and torch.isfinite(forced).all()
        short = dtrb_reference_forward(sd, **_stages(name), image=image, batch_max_length=7)
        assert tuple(short.shape) == (2, 8, 38)
        torch.testing.assert_close(short, out[:, :8])  # greedy decoding is causal


def test_teacher_forcing_with_greedy_inputs_reproduces_greedy() -> None:
    name = "None-VGG-BiLSTM-Attn"
    sd = random_dtrb_state_dict(_manifest(name, **SMALL), seed=5)
    image = _image(3)
    greedy = dtrb_reference_forward(sd, **_stages(name), image=image)
    text = torch.cat([torch.zeros(3, 1, dtype=torch.long), greedy.argmax(-1)[:, :-1]], dim=1)  # [GO] + predictions
    forced = dtrb_reference_forward(sd, **_stages(name), image=image, text=text)
    torch.testing.assert_close(forced, greedy)
    wide = torch.cat([text, torch.zeros(3, 1, dtype=torch.long)], dim=1)  # width 27: only the first 26 are used
    torch.testing.assert_close(dtrb_reference_forward(sd, **_stages(name), image=image, text=wide), greedy)
    other = text.clone()
    other[:, 1] = (other[:, 1] + 1) % 38
    changed = dtrb_reference_forward(sd, **_stages(name), image=image, text=other)
    torch.testing.assert_close(changed[:, :1], greedy[:, :1])  # step i only sees text[:, :i + 1]
    assert not torch.allclose(changed[:, 1], greedy[:, 1])


def test_attention_decoder_rejects_short_text() -> None:
    sd = random_dtrb_state_dict(_manifest("None-VGG-None-Attn", **SMALL), seed=0)
    with pytest.raises(ValueError):
        reference_attention(sd, torch.zeros(2, 24, 32), text=torch.zeros(2, 10, dtype=torch.long))


def test_hand_written_lstm_matches_torch() -> None:
    gen = torch.Generator().manual_seed(0)
    lstm = torch.nn.LSTM(12, 7, bidirectional=True, batch_first=True)
    with torch.no_grad():
        for p in lstm.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    sd = {f"rnn.{k}": v for k, v in lstm.state_dict().items()}
    x = torch.randn(3, 9, 12, generator=gen)
    with torch.no_grad():
        expected, _ = lstm(x)
    ours = torch.cat(
        [reference_lstm_direction(sd, "rnn", x, reverse=False), reference_lstm_direction(sd, "rnn", x, reverse=True)],
        dim=2,
    )
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)

    cell = torch.nn.LSTMCell(12, 7)
    h, c = torch.randn(3, 7, generator=gen), torch.randn(3, 7, generator=gen)
    with torch.no_grad():
        eh, ec = cell(x[:, 0], (h, c))
    oh, oc = reference_lstm_cell(x[:, 0], (h, c), cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)
    torch.testing.assert_close(oh, eh, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(oc, ec, atol=1e-5, rtol=1e-5)


def test_module_prefix_and_float64() -> None:
    name = "TPS-ResNet-BiLSTM-Attn"
    sd = random_dtrb_state_dict(_manifest(name, **SMALL), seed=9)
    image = _image()
    out = dtrb_reference_forward(sd, **_stages(name), image=image)
    prefixed = {f"module.{k}": v for k, v in sd.items()}
    torch.testing.assert_close(dtrb_reference_forward(prefixed, **_stages(name), image=image), out)
    # float64 fed the float32 greedy ids ([GO] first): the logits of one path. Greedy on its own, a near-tie of these
    # random weights that float32 rounds the other way (differently on AVX2, AVX-512, AMX) would change the path.
    ids = out.argmax(-1)  # [B, T]
    text = torch.cat([torch.zeros_like(ids[:, :1]), ids[:, :-1]], dim=1)
    out64 = dtrb_reference_forward(sd, **_stages(name), image=image.double(), text=text)
    assert out64.dtype == torch.float64
    torch.testing.assert_close(out64.float(), out, atol=1e-4, rtol=1e-4)


def test_random_weights_keep_activations_sane() -> None:
    for fe in FEATURE_EXTRACTIONS:
        sd = random_dtrb_state_dict(dtrb_manifest("None", fe, "None", "CTC", num_class=37), seed=0)
        feats = reference_feature_extraction(sd, fe, _image(1))
        assert 0.05 < feats.std().item() < 20, fe


def test_forward_uses_functional_batch_norm_in_eval_mode() -> None:
    # Eval-mode BN uses running statistics: a batch of one image gives the same features as inside a batch of two.
    name = "None-RCNN-None-CTC"
    sd = random_dtrb_state_dict(_manifest(name, **SMALL), seed=4)
    image = _image(2)
    both = dtrb_reference_forward(sd, **_stages(name), image=image)
    first = dtrb_reference_forward(sd, **_stages(name), image=image[:1])
    torch.testing.assert_close(first, both[:1], atol=1e-5, rtol=1e-5)
