"""Independent, test-side reference implementation of DTRB's model maths.

Everything here is written from the documented maths in ``/work/shared/reference/dtrb.md`` (section 3 "Model" and
section 4 for class counts) and deliberately shares no code with the ``text_recognition`` package, so that the two can
be checked against each other.

Contents:

* :func:`dtrb_manifest` / :func:`dtrb_param_count`: the DTRB ``state_dict`` key -> shape mapping (keys without the
  ``module.`` prefix, buffers included) and the learnable-parameter count.
* :func:`tps_buffers` / :func:`fiducial_bias`: the TPS ``GridGenerator`` buffers and the RARE initial fiducial bias.
* :func:`random_dtrb_state_dict`: deterministic, numerically sane random weights for a manifest.
* :func:`dtrb_reference_forward`: DTRB's eval-mode forward written with ``torch.nn.functional`` only, with a
  hand-written LSTM / LSTMCell.

The stage helpers (``reference_tps``, ``reference_feature_extraction``, ...) are public too, so tests can check a
single stage.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F

TRANSFORMATIONS: tuple[str, ...] = ("None", "TPS")
FEATURE_EXTRACTIONS: tuple[str, ...] = ("VGG", "RCNN", "ResNet")
SEQUENCE_MODELINGS: tuple[str, ...] = ("None", "BiLSTM")
PREDICTIONS: tuple[str, ...] = ("CTC", "Attn")

BN_EPS = 1e-5
"""BatchNorm epsilon (torch default, dtrb.md 3.1)."""

GRCL_NUM_ITERATION = 5
"""Number of recurrent iterations (and ``GRCL_unit`` modules) in every GRCL (dtrb.md 3.4)."""

RESNET_LAYERS: tuple[int, ...] = (1, 2, 5, 3)
"""BasicBlocks per ResNet layer (dtrb.md 3.5)."""

TPS_LOCALIZATION_CHANNELS: tuple[int, ...] = (64, 128, 256, 512)
"""LocalizationNetwork conv widths; fixed, they do not scale with ``output_channel`` (dtrb.md 3.2)."""

TPS_FC1_UNITS = 256
"""Width of ``localization_fc1`` (dtrb.md 3.2)."""

TPS_EPS = 1e-6
"""The eps inside ``ln(d + eps)`` of ``P_hat`` (dtrb.md 3.2); it does not appear in ``delta_C``."""

NON_PARAMETER_SUFFIXES: tuple[str, ...] = (
    "running_mean",
    "running_var",
    "num_batches_tracked",
    "inv_delta_C",
    "P_hat",
)
"""Last key components of ``state_dict`` entries that are buffers, not learnable parameters."""

GRCL_UNIT_BNS: tuple[str, ...] = ("BN_gfu", "BN_grx", "BN_fu", "BN_rx", "BN_Gx")


def dtrb_combinations() -> Iterator[tuple[str, str, str, str]]:
    """Iterate over all 24 DTRB stage combinations.

    Yields:
        ``(transformation, feature_extraction, sequence_modeling, prediction)`` tuples, in the order
        Transformation x FeatureExtraction x SequenceModeling x Prediction.
    """
    yield from itertools.product(TRANSFORMATIONS, FEATURE_EXTRACTIONS, SEQUENCE_MODELINGS, PREDICTIONS)


def dtrb_num_class(prediction: str, num_symbols: int) -> int:
    """Return DTRB's class count for a character set (dtrb.md 4.1 / 4.3).

    Args:
        prediction: ``"CTC"`` (adds the blank) or ``"Attn"`` (adds ``[GO]`` and ``[s]``).
        num_symbols: Number of symbols of the character set (36 default, 94 case-sensitive).

    Returns:
        ``num_symbols + 1`` for CTC, ``num_symbols + 2`` for Attn.
    """
    _check_choice("prediction", prediction, PREDICTIONS)
    return num_symbols + (1 if prediction == "CTC" else 2)


def _check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; expected one of {choices}")


# ---------------------------------------------------------------------------------------------------------------------
# Manifest
# ---------------------------------------------------------------------------------------------------------------------


def _add(manifest: dict[str, tuple[int, ...]], key: str, shape: tuple[int, ...]) -> None:
    if key in manifest:
        raise AssertionError(f"duplicate manifest key {key}")
    manifest[key] = tuple(int(s) for s in shape)


def _conv(
    manifest: dict[str, tuple[int, ...]],
    prefix: str,
    cin: int,
    cout: int,
    kernel: int,
    *,
    bias: bool,
) -> None:
    _add(manifest, f"{prefix}.weight", (cout, cin, kernel, kernel))
    if bias:
        _add(manifest, f"{prefix}.bias", (cout,))


def _bn(manifest: dict[str, tuple[int, ...]], prefix: str, channels: int) -> None:
    _add(manifest, f"{prefix}.weight", (channels,))
    _add(manifest, f"{prefix}.bias", (channels,))
    _add(manifest, f"{prefix}.running_mean", (channels,))
    _add(manifest, f"{prefix}.running_var", (channels,))
    _add(manifest, f"{prefix}.num_batches_tracked", ())


def _linear(manifest: dict[str, tuple[int, ...]], prefix: str, fin: int, fout: int, *, bias: bool = True) -> None:
    _add(manifest, f"{prefix}.weight", (fout, fin))
    if bias:
        _add(manifest, f"{prefix}.bias", (fout,))


def _bilstm(manifest: dict[str, tuple[int, ...]], prefix: str, fin: int, hidden: int) -> None:
    for suffix in ("", "_reverse"):
        _add(manifest, f"{prefix}.weight_ih_l0{suffix}", (4 * hidden, fin))
        _add(manifest, f"{prefix}.weight_hh_l0{suffix}", (4 * hidden, hidden))
        _add(manifest, f"{prefix}.bias_ih_l0{suffix}", (4 * hidden,))
        _add(manifest, f"{prefix}.bias_hh_l0{suffix}", (4 * hidden,))


def _tps_manifest(
    manifest: dict[str, tuple[int, ...]], input_channel: int, num_fiducial: int, img_h: int, img_w: int
) -> None:
    loc = "Transformation.LocalizationNetwork"
    chans = (input_channel, *TPS_LOCALIZATION_CHANNELS)
    for i in range(4):
        _conv(manifest, f"{loc}.conv.{4 * i}", chans[i], chans[i + 1], 3, bias=False)
        _bn(manifest, f"{loc}.conv.{4 * i + 1}", chans[i + 1])
    _linear(manifest, f"{loc}.localization_fc1.0", TPS_LOCALIZATION_CHANNELS[-1], TPS_FC1_UNITS)
    _linear(manifest, f"{loc}.localization_fc2", TPS_FC1_UNITS, 2 * num_fiducial)
    _add(manifest, "Transformation.GridGenerator.inv_delta_C", (num_fiducial + 3, num_fiducial + 3))
    _add(manifest, "Transformation.GridGenerator.P_hat", (img_h * img_w, num_fiducial + 3))


def _vgg_manifest(manifest: dict[str, tuple[int, ...]], input_channel: int, oc: int) -> None:
    p = "FeatureExtraction.ConvNet"
    w = (oc // 8, oc // 4, oc // 2, oc)
    _conv(manifest, f"{p}.0", input_channel, w[0], 3, bias=True)
    _conv(manifest, f"{p}.3", w[0], w[1], 3, bias=True)
    _conv(manifest, f"{p}.6", w[1], w[2], 3, bias=True)
    _conv(manifest, f"{p}.8", w[2], w[2], 3, bias=True)
    _conv(manifest, f"{p}.11", w[2], w[3], 3, bias=False)
    _bn(manifest, f"{p}.12", w[3])
    _conv(manifest, f"{p}.14", w[3], w[3], 3, bias=False)
    _bn(manifest, f"{p}.15", w[3])
    _conv(manifest, f"{p}.18", w[3], w[3], 2, bias=True)


def _grcl_manifest(manifest: dict[str, tuple[int, ...]], prefix: str, cin: int, cout: int) -> None:
    _conv(manifest, f"{prefix}.wgf_u", cin, cout, 1, bias=False)
    _conv(manifest, f"{prefix}.wgr_x", cout, cout, 1, bias=False)
    _conv(manifest, f"{prefix}.wf_u", cin, cout, 3, bias=False)
    _conv(manifest, f"{prefix}.wr_x", cout, cout, 3, bias=False)
    _bn(manifest, f"{prefix}.BN_x_init", cout)
    for k in range(GRCL_NUM_ITERATION):
        for name in GRCL_UNIT_BNS:
            _bn(manifest, f"{prefix}.GRCL.{k}.{name}", cout)


def _rcnn_manifest(manifest: dict[str, tuple[int, ...]], input_channel: int, oc: int) -> None:
    p = "FeatureExtraction.ConvNet"
    w = (oc // 8, oc // 4, oc // 2, oc)
    _conv(manifest, f"{p}.0", input_channel, w[0], 3, bias=True)
    _grcl_manifest(manifest, f"{p}.3", w[0], w[0])
    _grcl_manifest(manifest, f"{p}.5", w[0], w[1])
    _grcl_manifest(manifest, f"{p}.7", w[1], w[2])
    _conv(manifest, f"{p}.9", w[2], w[3], 2, bias=False)
    _bn(manifest, f"{p}.10", w[3])


def _resnet_manifest(manifest: dict[str, tuple[int, ...]], input_channel: int, oc: int) -> None:
    p = "FeatureExtraction.ConvNet"
    widths = (oc // 4, oc // 2, oc, oc)
    _conv(manifest, f"{p}.conv0_1", input_channel, oc // 16, 3, bias=False)
    _bn(manifest, f"{p}.bn0_1", oc // 16)
    _conv(manifest, f"{p}.conv0_2", oc // 16, oc // 8, 3, bias=False)
    _bn(manifest, f"{p}.bn0_2", oc // 8)
    inplanes = oc // 8
    for li, (planes, blocks) in enumerate(zip(widths, RESNET_LAYERS, strict=True), start=1):
        for b in range(blocks):
            bp = f"{p}.layer{li}.{b}"
            _conv(manifest, f"{bp}.conv1", inplanes, planes, 3, bias=False)
            _bn(manifest, f"{bp}.bn1", planes)
            _conv(manifest, f"{bp}.conv2", planes, planes, 3, bias=False)
            _bn(manifest, f"{bp}.bn2", planes)
            if b == 0 and inplanes != planes:
                _conv(manifest, f"{bp}.downsample.0", inplanes, planes, 1, bias=False)
                _bn(manifest, f"{bp}.downsample.1", planes)
            inplanes = planes
        if li <= 3:
            _conv(manifest, f"{p}.conv{li}", planes, planes, 3, bias=False)
            _bn(manifest, f"{p}.bn{li}", planes)
    _conv(manifest, f"{p}.conv4_1", widths[3], widths[3], 2, bias=False)
    _bn(manifest, f"{p}.bn4_1", widths[3])
    _conv(manifest, f"{p}.conv4_2", widths[3], widths[3], 2, bias=False)
    _bn(manifest, f"{p}.bn4_2", widths[3])


def dtrb_manifest(
    transformation: str,
    feature_extraction: str,
    sequence_modeling: str,
    prediction: str,
    *,
    num_class: int,
    input_channel: int = 1,
    output_channel: int = 512,
    hidden_size: int = 256,
    num_fiducial: int = 20,
    img_h: int = 32,
    img_w: int = 100,
) -> dict[str, tuple[int, ...]]:
    """Build the full DTRB ``state_dict`` key -> shape mapping (dtrb.md 3.2-3.8, 3.11).

    Keys carry no ``module.`` prefix. BatchNorm buffers (``running_mean``, ``running_var`` and the 0-d
    ``num_batches_tracked``) and the TPS buffers ``Transformation.GridGenerator.{inv_delta_C,P_hat}`` are included. The
    insertion order follows the module registration order as far as the notes describe it; callers should not rely on
    the order.

    Args:
        transformation: ``"None"`` or ``"TPS"``.
        feature_extraction: ``"VGG"``, ``"RCNN"`` or ``"ResNet"``.
        sequence_modeling: ``"None"`` or ``"BiLSTM"``.
        prediction: ``"CTC"`` or ``"Attn"``.
        num_class: Number of output classes (see :func:`dtrb_num_class`).
        input_channel: Image channels (1 grayscale, 3 RGB).
        output_channel: CNN output channels; inner widths are fractions of it.
        hidden_size: BiLSTM hidden/output size and attention decoder hidden size.
        num_fiducial: TPS fiducial points F (even).
        img_h: Image height (only affects ``P_hat``).
        img_w: Image width (only affects ``P_hat``).

    Returns:
        Ordered mapping of key to shape tuple (``()`` for ``num_batches_tracked``).

    Raises:
        ValueError: On an unknown stage name or an odd ``num_fiducial``.
    """
    _check_choice("transformation", transformation, TRANSFORMATIONS)
    _check_choice("feature_extraction", feature_extraction, FEATURE_EXTRACTIONS)
    _check_choice("sequence_modeling", sequence_modeling, SEQUENCE_MODELINGS)
    _check_choice("prediction", prediction, PREDICTIONS)
    if num_fiducial % 2:
        raise ValueError(f"num_fiducial must be even, got {num_fiducial}")

    manifest: dict[str, tuple[int, ...]] = {}
    if transformation == "TPS":
        _tps_manifest(manifest, input_channel, num_fiducial, img_h, img_w)

    if feature_extraction == "VGG":
        _vgg_manifest(manifest, input_channel, output_channel)
    elif feature_extraction == "RCNN":
        _rcnn_manifest(manifest, input_channel, output_channel)
    else:
        _resnet_manifest(manifest, input_channel, output_channel)

    if sequence_modeling == "BiLSTM":
        _bilstm(manifest, "SequenceModeling.0.rnn", output_channel, hidden_size)
        _linear(manifest, "SequenceModeling.0.linear", 2 * hidden_size, hidden_size)
        _bilstm(manifest, "SequenceModeling.1.rnn", hidden_size, hidden_size)
        _linear(manifest, "SequenceModeling.1.linear", 2 * hidden_size, hidden_size)
        seq_out = hidden_size
    else:
        seq_out = output_channel

    if prediction == "CTC":
        _linear(manifest, "Prediction", seq_out, num_class)
    else:
        cell = "Prediction.attention_cell"
        _linear(manifest, f"{cell}.i2h", seq_out, hidden_size, bias=False)
        _linear(manifest, f"{cell}.h2h", hidden_size, hidden_size, bias=True)
        _linear(manifest, f"{cell}.score", hidden_size, 1, bias=False)
        _add(manifest, f"{cell}.rnn.weight_ih", (4 * hidden_size, seq_out + num_class))
        _add(manifest, f"{cell}.rnn.weight_hh", (4 * hidden_size, hidden_size))
        _add(manifest, f"{cell}.rnn.bias_ih", (4 * hidden_size,))
        _add(manifest, f"{cell}.rnn.bias_hh", (4 * hidden_size,))
        _linear(manifest, "Prediction.generator", hidden_size, num_class)
    return manifest


def is_parameter_key(key: str) -> bool:
    """Tell whether a ``state_dict`` key is a learnable parameter (not a BN or TPS buffer).

    Args:
        key: A ``state_dict`` key, with or without the ``module.`` prefix.

    Returns:
        ``False`` for ``running_mean``, ``running_var``, ``num_batches_tracked``, ``inv_delta_C`` and ``P_hat``.
    """
    return key.rsplit(".", 1)[-1] not in NON_PARAMETER_SUFFIXES


def dtrb_param_count(manifest: Mapping[str, tuple[int, ...]]) -> int:
    """Sum the element counts of the learnable parameters of a manifest (dtrb.md 3.9).

    Args:
        manifest: Output of :func:`dtrb_manifest`.

    Returns:
        Number of learnable parameters (buffers excluded).
    """
    return sum(int(np.prod(shape, dtype=np.int64)) for key, shape in manifest.items() if is_parameter_key(key))


# ---------------------------------------------------------------------------------------------------------------------
# TPS constants
# ---------------------------------------------------------------------------------------------------------------------


def _fiducial_targets(num_fiducial: int) -> np.ndarray:
    """Fiducial points C of the rectified image, float64 ``[F, 2]`` in (x, y) order, top row first."""
    half = num_fiducial // 2
    xs = np.linspace(-1.0, 1.0, half)
    top = np.stack([xs, -np.ones(half)], axis=1)
    bottom = np.stack([xs, np.ones(half)], axis=1)
    return np.concatenate([top, bottom], axis=0)


def tps_delta_c(num_fiducial: int) -> np.ndarray:
    """Build the float64 TPS system matrix ``delta_C`` ((F+3)x(F+3), dtrb.md 3.2).

    Args:
        num_fiducial: Number of fiducial points F (even).

    Returns:
        ``delta_C`` as a float64 array; ``inv_delta_C`` is its inverse.
    """
    f = num_fiducial
    c = _fiducial_targets(f)
    r = np.sqrt(((c[:, None, :] - c[None, :, :]) ** 2).sum(axis=2))
    np.fill_diagonal(r, 1.0)
    r_mat = r**2 * np.log(r)
    return np.concatenate(
        [
            np.concatenate([np.ones((f, 1)), c, r_mat], axis=1),
            np.concatenate([np.zeros((2, 3)), c.T], axis=1),
            np.concatenate([np.zeros((1, 3)), np.ones((1, f))], axis=1),
        ],
        axis=0,
    )


def tps_output_points(img_h: int, img_w: int) -> np.ndarray:
    """Normalised output-pixel centres P, float64 ``[H*W, 2]`` in (x, y) order, row-major (dtrb.md 3.2).

    Args:
        img_h: Rectified image height H_r.
        img_w: Rectified image width W_r.

    Returns:
        ``P`` with ``P[i * W + j] = ((2j + 1 - W) / W, (2i + 1 - H) / H)``.
    """
    xs = (2.0 * np.arange(img_w) + 1.0 - img_w) / img_w
    ys = (2.0 * np.arange(img_h) + 1.0 - img_h) / img_h
    grid_x, grid_y = np.meshgrid(xs, ys)  # both [H, W]
    return np.stack([grid_x, grid_y], axis=2).reshape(-1, 2)


def tps_buffers(num_fiducial: int, img_h: int, img_w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Compute the TPS ``GridGenerator`` buffers (dtrb.md 3.2).

    All arithmetic is float64 NumPy; the results are cast to float32 like DTRB's registered buffers.

    Args:
        num_fiducial: Number of fiducial points F (even).
        img_h: Rectified image height.
        img_w: Rectified image width.

    Returns:
        ``(inv_delta_C, P_hat)``: float32 tensors of shape ``[F+3, F+3]`` and ``[H*W, F+3]``.
    """
    if num_fiducial % 2:
        raise ValueError(f"num_fiducial must be even, got {num_fiducial}")
    inv_delta_c = np.linalg.inv(tps_delta_c(num_fiducial))
    c = _fiducial_targets(num_fiducial)
    p = tps_output_points(img_h, img_w)
    d = np.sqrt(((p[:, None, :] - c[None, :, :]) ** 2).sum(axis=2))  # [n, F]
    rbf = d**2 * np.log(d + TPS_EPS)
    p_hat = np.concatenate([np.ones((p.shape[0], 1)), p, rbf], axis=1)
    return torch.from_numpy(inv_delta_c).float(), torch.from_numpy(p_hat).float()


def fiducial_bias(num_fiducial: int) -> torch.Tensor:
    """Initial ``localization_fc2.bias``: the RARE "Fig. 6(a)" pattern (dtrb.md 3.2).

    Top row x = linspace(-1, 1, F/2), y = linspace(0, -1, F/2); bottom row the same x, y = linspace(1, 0, F/2); top
    points first, flattened as (x0, y0, x1, y1, ...).

    Args:
        num_fiducial: Number of fiducial points F (even).

    Returns:
        Float32 tensor of shape ``[2F]``.
    """
    if num_fiducial % 2:
        raise ValueError(f"num_fiducial must be even, got {num_fiducial}")
    half = num_fiducial // 2
    xs = np.linspace(-1.0, 1.0, half)
    top = np.stack([xs, np.linspace(0.0, -1.0, half)], axis=1)
    bottom = np.stack([xs, np.linspace(1.0, 0.0, half)], axis=1)
    return torch.from_numpy(np.concatenate([top, bottom], axis=0).reshape(-1)).float()


def tps_sampling_grid(
    c_prime: torch.Tensor, inv_delta_c: torch.Tensor, p_hat: torch.Tensor, img_h: int, img_w: int
) -> torch.Tensor:
    """Map predicted fiducials C' to the ``grid_sample`` grid P' (dtrb.md 3.2, GridGenerator forward).

    Args:
        c_prime: Predicted fiducials ``[B, F, 2]`` in (x, y) order.
        inv_delta_c: ``[F+3, F+3]`` buffer.
        p_hat: ``[H*W, F+3]`` buffer.
        img_h: Output height H_r.
        img_w: Output width W_r.

    Returns:
        The sampling grid ``[B, H_r, W_r, 2]``.
    """
    batch = c_prime.shape[0]
    zeros = c_prime.new_zeros(batch, 3, 2)
    c_ext = torch.cat([c_prime, zeros], dim=1)  # [B, F+3, 2]
    t = torch.matmul(inv_delta_c.to(c_prime.dtype), c_ext)  # [B, F+3, 2]
    p_prime = torch.matmul(p_hat.to(c_prime.dtype), t)  # [B, n, 2]
    return p_prime.reshape(batch, img_h, img_w, 2)


# ---------------------------------------------------------------------------------------------------------------------
# Random weights
# ---------------------------------------------------------------------------------------------------------------------


_RESNET_BRANCH_END = re.compile(r"\.layer\d+\.\d+\.conv2\.weight$")


def _weight_gain(key: str, shape: tuple[int, ...]) -> float:
    if len(shape) != 4:
        return 1.0
    if _RESNET_BRANCH_END.search(key):
        return 0.3
    if key.endswith(".wr_x.weight"):
        return 0.5
    return 2.0**0.5


def random_dtrb_state_dict(
    manifest: Mapping[str, tuple[int, ...]],
    *,
    seed: int,
    num_fiducial: int = 20,
    img_h: int = 32,
    img_w: int = 100,
) -> dict[str, torch.Tensor]:
    """Draw deterministic, numerically sane random values for every key of a manifest.

    * Conv / Linear / LSTM weights: ``N(0, gain^2 / fan_in)`` with ``fan_in = numel / shape[0]``; gain sqrt(2) for conv
      kernels (they are followed by ReLU), 1 otherwise, except for the convs whose output is added to a running sum
      (ResNet ``layer*.*.conv2``: 0.3, GRCL ``wr_x``: 0.5) so that the BN-free-in-effect stacks (running statistics
      are random, not data statistics) keep the CNN output at O(1) instead of growing block after block.
    * Plain biases: ``N(0, 0.05^2)``.
    * BatchNorm: weight ``U(0.5, 1.5)``, bias ``N(0, 0.1^2)``, running_mean ``N(0, 0.1^2)``, running_var
      ``U(0.5, 1.5)``, num_batches_tracked a random 0-d int64.
    * TPS: ``inv_delta_C`` / ``P_hat`` from :func:`tps_buffers`; ``localization_fc2.weight`` ``N(0, 1e-3^2)``,
      ``localization_fc2.bias`` = :func:`fiducial_bias` + ``N(0, 0.01^2)``.

    Values are drawn from one ``torch.Generator`` seeded with ``seed``, in manifest order.

    Args:
        manifest: Output of :func:`dtrb_manifest`.
        seed: Seed of the generator.
        num_fiducial: F used for the TPS buffers and fiducial bias (must match the manifest).
        img_h: Image height used for ``P_hat`` (must match the manifest).
        img_w: Image width used for ``P_hat`` (must match the manifest).

    Returns:
        A ``state_dict`` (float32 tensors, int64 for ``num_batches_tracked``) with exactly the manifest's keys/shapes.
    """
    gen = torch.Generator().manual_seed(int(seed))
    bn_prefixes = {key[: -len(".running_mean")] for key in manifest if key.endswith(".running_mean")}
    tps = None
    out: dict[str, torch.Tensor] = {}

    def normal(shape: tuple[int, ...], std: float) -> torch.Tensor:
        return torch.randn(shape, generator=gen, dtype=torch.float32) * std

    def uniform(shape: tuple[int, ...], low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(shape, generator=gen, dtype=torch.float32)

    for key, shape in manifest.items():
        prefix, leaf = key.rsplit(".", 1) if "." in key else ("", key)
        if leaf in ("inv_delta_C", "P_hat"):
            if tps is None:
                tps = tps_buffers(num_fiducial, img_h, img_w)
            value = tps[0] if leaf == "inv_delta_C" else tps[1]
        elif prefix.endswith("localization_fc2"):
            if leaf == "weight":
                value = normal(shape, 1e-3)
            else:
                value = fiducial_bias(num_fiducial) + normal(shape, 0.01)
        elif prefix in bn_prefixes:
            if leaf == "num_batches_tracked":
                value = torch.randint(0, 100_000, (), generator=gen, dtype=torch.long)
            elif leaf == "running_mean":
                value = normal(shape, 0.1)
            elif leaf == "running_var":
                value = uniform(shape, 0.5, 1.5)
            elif leaf == "weight":
                value = uniform(shape, 0.5, 1.5)
            else:
                value = normal(shape, 0.1)
        elif len(shape) >= 2:
            fan_in = int(np.prod(shape[1:]))
            value = normal(shape, _weight_gain(key, shape) / fan_in**0.5)
        else:
            value = normal(shape, 0.05)
        if tuple(value.shape) != tuple(shape):
            raise ValueError(f"{key}: generated shape {tuple(value.shape)} != manifest shape {tuple(shape)}")
        out[key] = value
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------------------------------------------------

StateDict = Mapping[str, torch.Tensor]


def _conv2d(
    sd: StateDict,
    prefix: str,
    x: torch.Tensor,
    *,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
) -> torch.Tensor:
    return F.conv2d(x, sd[f"{prefix}.weight"], sd.get(f"{prefix}.bias"), stride=stride, padding=padding)


def _batch_norm(sd: StateDict, prefix: str, x: torch.Tensor) -> torch.Tensor:
    return F.batch_norm(
        x,
        sd[f"{prefix}.running_mean"],
        sd[f"{prefix}.running_var"],
        weight=sd[f"{prefix}.weight"],
        bias=sd[f"{prefix}.bias"],
        training=False,
        eps=BN_EPS,
    )


def _linear_fn(sd: StateDict, prefix: str, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, sd[f"{prefix}.weight"], sd.get(f"{prefix}.bias"))


def reference_tps(sd: StateDict, image: torch.Tensor, *, num_fiducial: int = 20) -> torch.Tensor:
    """TPS spatial transformer: LocalizationNetwork, GridGenerator and ``grid_sample`` (dtrb.md 3.2).

    Args:
        sd: State dict (no ``module.`` prefix) holding the ``Transformation.*`` keys.
        image: ``[B, C, H, W]`` input; the rectified output has the same size (I_r_size = I_size).
        num_fiducial: F; must match ``localization_fc2``.

    Returns:
        The rectified image ``[B, C, H, W]``.
    """
    grid = reference_tps_grid(sd, image, num_fiducial=num_fiducial)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)


def reference_localization(sd: StateDict, image: torch.Tensor, *, num_fiducial: int = 20) -> torch.Tensor:
    """LocalizationNetwork: predicted fiducials C' ``[B, F, 2]`` in (x, y) order (dtrb.md 3.2).

    Args:
        sd: State dict holding ``Transformation.LocalizationNetwork.*``.
        image: ``[B, C, H, W]`` input.
        num_fiducial: F; must match ``localization_fc2``.

    Returns:
        C' of shape ``[B, F, 2]``.
    """
    loc = "Transformation.LocalizationNetwork"
    if sd[f"{loc}.localization_fc2.bias"].numel() != 2 * num_fiducial:
        raise ValueError(f"localization_fc2 does not produce {num_fiducial} fiducials")
    h = image
    for i in range(4):
        h = F.relu(_batch_norm(sd, f"{loc}.conv.{4 * i + 1}", _conv2d(sd, f"{loc}.conv.{4 * i}", h, padding=1)))
        if i < 3:
            h = F.max_pool2d(h, kernel_size=2, stride=2)
    h = h.mean(dim=(2, 3))  # AdaptiveAvgPool2d(1) + flatten -> [B, 512]
    h = F.relu(_linear_fn(sd, f"{loc}.localization_fc1.0", h))
    h = _linear_fn(sd, f"{loc}.localization_fc2", h)
    return h.reshape(image.shape[0], num_fiducial, 2)


def reference_tps_grid(sd: StateDict, image: torch.Tensor, *, num_fiducial: int = 20) -> torch.Tensor:
    """Sampling grid P' ``[B, H, W, 2]`` that the TPS stage feeds to ``grid_sample`` (dtrb.md 3.2).

    Args:
        sd: State dict holding the ``Transformation.*`` keys.
        image: ``[B, C, H, W]`` input.
        num_fiducial: F.

    Returns:
        P' of shape ``[B, H, W, 2]`` in (x, y) order.
    """
    img_h, img_w = image.shape[-2:]
    p_hat = sd["Transformation.GridGenerator.P_hat"]
    if p_hat.shape[0] != img_h * img_w:
        raise ValueError(f"P_hat has {p_hat.shape[0]} rows but the image is {img_h}x{img_w}")
    c_prime = reference_localization(sd, image, num_fiducial=num_fiducial)
    return tps_sampling_grid(c_prime, sd["Transformation.GridGenerator.inv_delta_C"], p_hat, img_h, img_w)


def _reference_vgg(sd: StateDict, x: torch.Tensor) -> torch.Tensor:
    p = "FeatureExtraction.ConvNet"
    x = F.max_pool2d(F.relu(_conv2d(sd, f"{p}.0", x, padding=1)), 2, 2)
    x = F.max_pool2d(F.relu(_conv2d(sd, f"{p}.3", x, padding=1)), 2, 2)
    x = F.relu(_conv2d(sd, f"{p}.6", x, padding=1))
    x = F.relu(_conv2d(sd, f"{p}.8", x, padding=1))
    x = F.max_pool2d(x, (2, 1), (2, 1))
    x = F.relu(_batch_norm(sd, f"{p}.12", _conv2d(sd, f"{p}.11", x, padding=1)))
    x = F.relu(_batch_norm(sd, f"{p}.15", _conv2d(sd, f"{p}.14", x, padding=1)))
    x = F.max_pool2d(x, (2, 1), (2, 1))
    return F.relu(_conv2d(sd, f"{p}.18", x, padding=0))


def reference_grcl(sd: StateDict, prefix: str, u: torch.Tensor) -> torch.Tensor:
    """Gated recurrent convolution layer with ``GRCL_NUM_ITERATION`` iterations (dtrb.md 3.4).

    Args:
        sd: State dict.
        prefix: Key prefix of the GRCL module, e.g. ``"FeatureExtraction.ConvNet.3"``.
        u: Input ``[B, in, H, W]``.

    Returns:
        ``[B, out, H, W]``.
    """
    gf_u = _conv2d(sd, f"{prefix}.wgf_u", u, padding=0)
    f_u = _conv2d(sd, f"{prefix}.wf_u", u, padding=1)
    x = F.relu(_batch_norm(sd, f"{prefix}.BN_x_init", f_u))
    for k in range(GRCL_NUM_ITERATION):
        unit = f"{prefix}.GRCL.{k}"
        gate = torch.sigmoid(
            _batch_norm(sd, f"{unit}.BN_gfu", gf_u)
            + _batch_norm(sd, f"{unit}.BN_grx", _conv2d(sd, f"{prefix}.wgr_x", x, padding=0))
        )
        recurrent = _batch_norm(sd, f"{unit}.BN_rx", _conv2d(sd, f"{prefix}.wr_x", x, padding=1))
        x = F.relu(_batch_norm(sd, f"{unit}.BN_fu", f_u) + _batch_norm(sd, f"{unit}.BN_Gx", recurrent * gate))
    return x


def _reference_rcnn(sd: StateDict, x: torch.Tensor) -> torch.Tensor:
    p = "FeatureExtraction.ConvNet"
    x = F.max_pool2d(F.relu(_conv2d(sd, f"{p}.0", x, padding=1)), 2, 2)
    x = F.max_pool2d(reference_grcl(sd, f"{p}.3", x), 2, 2)
    x = F.max_pool2d(reference_grcl(sd, f"{p}.5", x), 2, (2, 1), (0, 1))
    x = F.max_pool2d(reference_grcl(sd, f"{p}.7", x), 2, (2, 1), (0, 1))
    return F.relu(_batch_norm(sd, f"{p}.10", _conv2d(sd, f"{p}.9", x, padding=0)))


def _reference_basic_block(sd: StateDict, prefix: str, x: torch.Tensor) -> torch.Tensor:
    out = F.relu(_batch_norm(sd, f"{prefix}.bn1", _conv2d(sd, f"{prefix}.conv1", x, padding=1)))
    out = _batch_norm(sd, f"{prefix}.bn2", _conv2d(sd, f"{prefix}.conv2", out, padding=1))
    if f"{prefix}.downsample.0.weight" in sd:
        residual = _batch_norm(sd, f"{prefix}.downsample.1", _conv2d(sd, f"{prefix}.downsample.0", x, padding=0))
    else:
        residual = x
    return F.relu(out + residual)


def _reference_resnet(sd: StateDict, x: torch.Tensor) -> torch.Tensor:
    p = "FeatureExtraction.ConvNet"

    def conv_bn_relu(
        x: torch.Tensor,
        conv: str,
        bn: str,
        *,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 1,
    ) -> torch.Tensor:
        return F.relu(_batch_norm(sd, f"{p}.{bn}", _conv2d(sd, f"{p}.{conv}", x, stride=stride, padding=padding)))

    def layer(x: torch.Tensor, index: int) -> torch.Tensor:
        for b in range(RESNET_LAYERS[index - 1]):
            x = _reference_basic_block(sd, f"{p}.layer{index}.{b}", x)
        return x

    x = conv_bn_relu(x, "conv0_1", "bn0_1")
    x = conv_bn_relu(x, "conv0_2", "bn0_2")
    x = F.max_pool2d(x, 2, 2)
    x = conv_bn_relu(layer(x, 1), "conv1", "bn1")
    x = F.max_pool2d(x, 2, 2)
    x = conv_bn_relu(layer(x, 2), "conv2", "bn2")
    x = F.max_pool2d(x, 2, (2, 1), (0, 1))
    x = conv_bn_relu(layer(x, 3), "conv3", "bn3")
    x = layer(x, 4)
    x = conv_bn_relu(x, "conv4_1", "bn4_1", stride=(2, 1), padding=(0, 1))
    return conv_bn_relu(x, "conv4_2", "bn4_2", stride=1, padding=0)


def reference_feature_extraction(sd: StateDict, feature_extraction: str, x: torch.Tensor) -> torch.Tensor:
    """Run the CNN stage (dtrb.md 3.3-3.5).

    Args:
        sd: State dict holding ``FeatureExtraction.*``.
        feature_extraction: ``"VGG"``, ``"RCNN"`` or ``"ResNet"``.
        x: ``[B, C, H, W]`` image (after TPS, if any).

    Returns:
        The feature map ``[B, output_channel, H', W']``.
    """
    _check_choice("feature_extraction", feature_extraction, FEATURE_EXTRACTIONS)
    if feature_extraction == "VGG":
        return _reference_vgg(sd, x)
    if feature_extraction == "RCNN":
        return _reference_rcnn(sd, x)
    return _reference_resnet(sd, x)


def reference_height_pool(features: torch.Tensor) -> torch.Tensor:
    """``AdaptiveAvgPool2d((None, 1))`` on the ``[B, W', C, H']`` permutation, squeezed (dtrb.md 3.1).

    Args:
        features: ``[B, C, H', W']``.

    Returns:
        ``[B, T = W', C]``: the mean over height.
    """
    return features.permute(0, 3, 1, 2).mean(dim=3)


def reference_lstm_cell(
    x: torch.Tensor,
    state: tuple[torch.Tensor, torch.Tensor],
    weight_ih: torch.Tensor,
    weight_hh: torch.Tensor,
    bias_ih: torch.Tensor | None,
    bias_hh: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One LSTM step with torch's gate order (i, f, g, o).

    Args:
        x: ``[B, in]`` input.
        state: ``(h, c)``, each ``[B, hidden]``.
        weight_ih: ``[4 * hidden, in]``.
        weight_hh: ``[4 * hidden, hidden]``.
        bias_ih: ``[4 * hidden]`` or ``None``.
        bias_hh: ``[4 * hidden]`` or ``None``.

    Returns:
        The new ``(h, c)``.
    """
    h, c = state
    gates = F.linear(x, weight_ih, bias_ih) + F.linear(h, weight_hh, bias_hh)
    i, f, g, o = gates.chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    return h, c


def reference_lstm_direction(sd: StateDict, prefix: str, x: torch.Tensor, *, reverse: bool) -> torch.Tensor:
    """Run one direction of a single-layer, batch-first ``nn.LSTM`` from its ``state_dict`` entries.

    Args:
        sd: State dict.
        prefix: Key prefix of the LSTM module, e.g. ``"SequenceModeling.0.rnn"``.
        x: ``[B, T, in]``.
        reverse: Use the ``_reverse`` weights and run from the last time step to the first.

    Returns:
        Hidden states ``[B, T, hidden]`` aligned with the input time steps.
    """
    sfx = "_reverse" if reverse else ""
    w_ih = sd[f"{prefix}.weight_ih_l0{sfx}"]
    w_hh = sd[f"{prefix}.weight_hh_l0{sfx}"]
    b_ih = sd.get(f"{prefix}.bias_ih_l0{sfx}")
    b_hh = sd.get(f"{prefix}.bias_hh_l0{sfx}")
    batch, steps, _ = x.shape
    hidden = w_hh.shape[1]
    state = (x.new_zeros(batch, hidden), x.new_zeros(batch, hidden))
    outputs: list[torch.Tensor | None] = [None] * steps
    for t in range(steps - 1, -1, -1) if reverse else range(steps):
        state = reference_lstm_cell(x[:, t], state, w_ih, w_hh, b_ih, b_hh)
        outputs[t] = state[0]
    return torch.stack(outputs, dim=1)  # type: ignore[arg-type]


def reference_bilstm_stack(sd: StateDict, x: torch.Tensor) -> torch.Tensor:
    """Two ``BidirectionalLSTM`` blocks, each LSTM(bi) then Linear(2h -> h) (dtrb.md 3.6).

    Args:
        sd: State dict holding ``SequenceModeling.*``.
        x: ``[B, T, output_channel]``.

    Returns:
        ``[B, T, hidden_size]``.
    """
    for block in range(2):
        p = f"SequenceModeling.{block}"
        forward = reference_lstm_direction(sd, f"{p}.rnn", x, reverse=False)
        backward = reference_lstm_direction(sd, f"{p}.rnn", x, reverse=True)
        x = _linear_fn(sd, f"{p}.linear", torch.cat([forward, backward], dim=2))
    return x


def reference_attention_step(
    sd: StateDict,
    features: torch.Tensor,
    state: tuple[torch.Tensor, torch.Tensor],
    char_onehot: torch.Tensor,
) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    """One attention-decoder step (dtrb.md 3.8).

    Args:
        sd: State dict holding ``Prediction.attention_cell.*``.
        features: Encoder output H ``[B, T, in]``.
        state: Previous ``(h, c)``, each ``[B, hidden]``.
        char_onehot: One-hot previous character ``[B, num_class]``.

    Returns:
        ``((h, c), alpha)`` with the new state and the attention weights ``[B, T, 1]``.
    """
    cell = "Prediction.attention_cell"
    h_prev = state[0]
    projected = F.linear(features, sd[f"{cell}.i2h.weight"])  # [B, T, hidden]
    hidden_term = F.linear(h_prev, sd[f"{cell}.h2h.weight"], sd[f"{cell}.h2h.bias"]).unsqueeze(1)
    energy = F.linear(torch.tanh(projected + hidden_term), sd[f"{cell}.score.weight"])  # [B, T, 1]
    alpha = torch.softmax(energy, dim=1)
    context = torch.bmm(alpha.transpose(1, 2), features).squeeze(1)  # [B, in]
    rnn_input = torch.cat([context, char_onehot], dim=1)
    new_state = reference_lstm_cell(
        rnn_input,
        state,
        sd[f"{cell}.rnn.weight_ih"],
        sd[f"{cell}.rnn.weight_hh"],
        sd.get(f"{cell}.rnn.bias_ih"),
        sd.get(f"{cell}.rnn.bias_hh"),
    )
    return new_state, alpha


def reference_attention(
    sd: StateDict,
    features: torch.Tensor,
    *,
    text: torch.Tensor | None = None,
    batch_max_length: int = 25,
) -> torch.Tensor:
    """Attention decoder over ``batch_max_length + 1`` steps (dtrb.md 3.8).

    Args:
        sd: State dict holding ``Prediction.*``.
        features: Encoder output ``[B, T, in]``.
        text: ``None`` for greedy decoding from ``[GO]`` = 0 (argmax fed back as one-hot); otherwise int ids
            ``[B, >= batch_max_length + 1]`` and step ``i`` is fed the one-hot of ``text[:, i]`` (teacher forcing).
        batch_max_length: Maximum label length; the decoder runs ``batch_max_length + 1`` steps.

    Returns:
        Logits ``[B, batch_max_length + 1, num_class]``.
    """
    num_steps = batch_max_length + 1
    num_class = sd["Prediction.generator.weight"].shape[0]
    hidden = sd["Prediction.attention_cell.h2h.weight"].shape[0]
    batch = features.shape[0]
    if text is not None and (text.dim() != 2 or text.shape[0] != batch or text.shape[1] < num_steps):
        raise ValueError(f"text must be [B={batch}, >= {num_steps}] class ids, got {tuple(text.shape)}")
    state = (features.new_zeros(batch, hidden), features.new_zeros(batch, hidden))
    prev = torch.zeros(batch, dtype=torch.long, device=features.device)  # [GO]
    logits: list[torch.Tensor] = []
    for i in range(num_steps):
        current = text[:, i].long() if text is not None else prev
        onehot = F.one_hot(current, num_class).to(features.dtype)
        state, _ = reference_attention_step(sd, features, state, onehot)
        step_logits = F.linear(state[0], sd["Prediction.generator.weight"], sd["Prediction.generator.bias"])
        logits.append(step_logits)
        prev = step_logits.argmax(dim=1)
    return torch.stack(logits, dim=1)


def _prepare_state_dict(state_dict: StateDict, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    keys = list(state_dict)
    strip = bool(keys) and all(k.startswith("module.") for k in keys)
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        name = key[len("module.") :] if strip else key
        out[name] = value.to(dtype) if value.is_floating_point() else value
    return out


def dtrb_reference_forward(
    state_dict: StateDict,
    *,
    transformation: str,
    feature_extraction: str,
    sequence_modeling: str,
    prediction: str,
    image: torch.Tensor,
    text: torch.Tensor | None = None,
    batch_max_length: int = 25,
    num_fiducial: int = 20,
) -> torch.Tensor:
    """DTRB's eval-mode forward (BatchNorm on running statistics), from ``torch.nn.functional`` only (dtrb.md 3.1).

    Floating-point weights are cast to ``image.dtype``, so a float64 image gives a float64 reference. A ``module.``
    prefix on every key is stripped.

    Args:
        state_dict: DTRB-layout state dict (see :func:`dtrb_manifest`).
        transformation: ``"None"`` or ``"TPS"``.
        feature_extraction: ``"VGG"``, ``"RCNN"`` or ``"ResNet"``.
        sequence_modeling: ``"None"`` or ``"BiLSTM"``.
        prediction: ``"CTC"`` or ``"Attn"``.
        image: ``[B, C, H, W]`` images in [-1, 1].
        text: Attn only. ``None`` for greedy decoding; otherwise ``[B, batch_max_length + 1]`` class ids for
            teacher forcing (``text[:, i]`` is the input of step ``i``). Ignored for CTC.
        batch_max_length: Attn only; the decoder runs ``batch_max_length + 1`` steps.
        num_fiducial: TPS fiducial count F.

    Returns:
        Logits: ``[B, T, num_class]`` for CTC (T = W'), ``[B, batch_max_length + 1, num_class]`` for Attn.
    """
    _check_choice("transformation", transformation, TRANSFORMATIONS)
    _check_choice("feature_extraction", feature_extraction, FEATURE_EXTRACTIONS)
    _check_choice("sequence_modeling", sequence_modeling, SEQUENCE_MODELINGS)
    _check_choice("prediction", prediction, PREDICTIONS)
    sd = _prepare_state_dict(state_dict, image.dtype)
    with torch.no_grad():
        x = image
        if transformation == "TPS":
            x = reference_tps(sd, x, num_fiducial=num_fiducial)
        features = reference_height_pool(reference_feature_extraction(sd, feature_extraction, x))
        if sequence_modeling == "BiLSTM":
            features = reference_bilstm_stack(sd, features)
        if prediction == "CTC":
            return _linear_fn(sd, "Prediction", features)
        return reference_attention(sd, features, text=text, batch_max_length=batch_max_length)
