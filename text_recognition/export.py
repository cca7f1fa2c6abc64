"""ONNX export of ``TextRecognitionModel``: ``pixel_values`` [B, C, img_h, img_w] -> ``logits`` [B, T, num_class].

The graph computes what ``model(pixel_values)`` computes: CTC logits per feature column, ViTSTR's slots, or, for
attention, DTRB's greedy decoding of ``batch_max_length + 1`` steps with each step's argmax fed back as a one-hot,
unrolled by tracing (no ONNX ``Loop``: DTRB always ran the fixed number of steps). PARSeq's decoding is unrolled the
same way in its mode (``decode_ar``, ``refine_iters``), every autoregressive step run (PyTorch stops once every row
has read ``[E]``; the steps after a row's ``[E]`` are never read, and refinement masks them). Turning ids into text
is left to the consumer; the sidecar ``<name>.onnx.json`` gives the charset, the special tokens (strhub's ``[E]`` =
0 for PARSeq and ViTSTR) and the preprocessing.

The TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``) is used: it needs no ``onnxscript`` and
handles every DTRB construct but one. PyTorch deprecates it (a ``DeprecationWarning`` since 2.9, silenced here) in
favour of the ``torch.export`` one. What DTRB users ran into (DTRB issues #42, #76, #373):

- TPS samples with ``F.grid_sample(..., padding_mode="border", align_corners=True)``. ONNX ``GridSample`` exists
  from opset 16, so TPS models need ``opset >= 16`` (17 by default); it then exports as it is.
- The column pooling ``nn.AdaptiveAvgPool2d((None, 1))`` on the permuted features [B, W', C, H'] does not export
  ("adaptive pooling, since output_size is not constant"): the ``None`` keeps a size the exporter does not see as a
  constant. ``OnnxExportModule`` computes the same average as a ``mean`` over the feature-map height instead.
  ``model.py`` keeps its pooling: it is what DTRB's checkpoints were trained with.
- The attention decoder's loop, argmax feedback and ``F.one_hot`` trace as they are (ONNX ``ArgMax`` and
  ``OneHot``); the batch size stays symbolic because the tracer records ``batch_H.size(0)``.

``verify_onnx`` runs the file with onnxruntime on sample images and compares with PyTorch under the rule of
``export_parity`` (a greedy attention decode that takes another branch at a near-tie is compared on onnxruntime's own
path, not reported as an error). On a mismatch it names the first image, step and class that differ, exports each
stage prefix (Transformation; + FeatureExtraction; + pooling and SequenceModeling; the full model) on its own, and
names the first one whose output differs.

Float32 note: TPS's sampling grid comes out of two small matmuls whose rounding differs between PyTorch and
onnxruntime by a few ulps (~5e-7 in grid units). ``grid_sample`` turns that into ~3e-5 on sharp images, and a deep
CNN without a squashing sequence stage (e.g. TPS-RCNN-None-CTC) can amplify it to ~1e-4 on its logits. That is
rounding, not a broken export, and ``verify_onnx``'s error says so when it is the case.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import warnings
from copy import deepcopy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import ModelConfig
from .decoding import DecodingOptions
from .export_parity import (  # noqa: F401  (all of these were defined here before export_parity.py held them)
    INSTALL_HINT,
    Difference,
    NearTie,
    OnnxMismatchError,
    OnnxUnavailableError,
    Parity,
    _import_onnxruntime,
    _max_abs_diff,
    _run_onnx,
    _scale,
    _sci,
    compare_logits,
    describe_difference,
    load_check_images,
    describe_near_ties,
    full_logits,
    reference_prefix,
)
from .model import TextRecognitionModel, expected_sequence_length
from .onnx_model import SIDECAR_FORMAT, file_sha256, sidecar_path, write_sidecar  # noqa: F401  (sidecar_path: was here)
from .tokenizer import BLANK_ID, EOS_ID, GO_ID, STRHUB_EOS_ID

INPUT_NAME = "pixel_values"
OUTPUT_NAME = "logits"
DEFAULT_OPSET = 17
MIN_OPSET_TPS = 16  # ONNX GridSample
SIDECAR_FORMAT_VERSION = 2  # 2: onnx_sha256, precision and quantization (version 1 files are still read)

#: Prediction heads this exporter writes a graph and a sidecar for.
EXPORTABLE_HEADS = ("CTC", "Attn", "PARSeq", "ViTSTR")

# The stage prefixes verify_onnx exports on their own to find a faulty stage, in model order.
STAGES = ("Transformation", "FeatureExtraction", "SequenceModeling", "Prediction")

_STAGE_FIELDS = {
    "Transformation": "transformation",
    "FeatureExtraction": "feature_extraction",
    "SequenceModeling": "sequence_modeling",
    "Prediction": "prediction",
}
_STAGE_HINTS = {
    "Transformation": "TPS's grid_sample (ONNX GridSample: opset >= 16, border padding, align_corners=True) or its "
    "fiducial-point matmuls",
    "FeatureExtraction": "the CNN's convolutions, max-pools or eval-mode BatchNorms",
    "SequenceModeling": "the height mean that stands in for AdaptiveAvgPool2d((None, 1)), or the bidirectional LSTMs",
    "Prediction": "the head (for Attn: the attention cell, the generator, or the argmax fed back as a one-hot)",
}


class OnnxExportError(ValueError):
    """The model, or one of its stages, does not export to ONNX with the requested options."""


def _import_onnx():
    try:
        import onnx
    except ImportError:
        raise OnnxUnavailableError(
            f"Exporting to ONNX needs the onnx package, which is not installed: {INSTALL_HINT}"
        ) from None
    return onnx


class OnnxExportModule(nn.Module):
    """Export-only view of a ``TextRecognitionModel``: the same weights and values, with ops the exporter takes.

    Only the column pooling is rewritten: ``AdaptiveAvgPool2d((None, 1))`` over the height of the permuted
    [B, W', C, H'] features becomes a ``mean`` over the height of [B, C, H', W'] (the same average, bit-identical
    when H' = 1 as for 32-pixel-high inputs). Every stage module is called as it is.

    Args:
        model: the model to export (shared, not copied).
        until: the last stage to run, one of ``STAGES``; the shorter prefixes are what ``verify_onnx`` exports to
            find which stage's export is wrong.
    """

    def __init__(self, model: TextRecognitionModel, until: str = "Prediction") -> None:
        super().__init__()
        if until not in STAGES:
            raise ValueError(f"until must be one of {', '.join(STAGES)}, got {until!r}.")
        self.model = model
        self.until = until

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.model.Transformation(pixel_values)  # [B, C, img_h, img_w]
        if self.until == "Transformation":
            return x
        x = self.model.FeatureExtraction(x)  # [B, oc, H', W']
        if self.until == "FeatureExtraction":
            return x
        if not getattr(self.model.FeatureExtraction, "outputs_sequence", False):  # a ViT's tokens go on as they are
            x = x.mean(dim=2).permute(0, 2, 1)  # [B, oc, H', W'] -> [B, W', oc]: the model's AdaptiveAvgPool
        x = self.model.SequenceModeling(x)  # [B, T, F]
        if self.until == "SequenceModeling":
            return x
        return full_logits(self.model.Prediction, x)  # [B, T, num_class]; Attn, PARSeq: every step, greedy


def _export_copy(model: TextRecognitionModel) -> TextRecognitionModel:
    """A float32 CPU copy in eval mode, so exporting leaves the caller's model (device, dtype, mode) unchanged."""
    return deepcopy(model).to(device="cpu", dtype=torch.float32).eval()


def _export_graph(
    model: TextRecognitionModel, path: Path, *, until: str, opset: int, batch_size_dynamic: bool
) -> None:
    """Trace ``OnnxExportModule(model, until)`` into ``path``; ``model`` is already an eval float32 CPU copy."""
    config = model.config
    # Batch 2 while tracing, so that no size-1 batch dimension can be mistaken for a constant of the graph.
    generator = torch.Generator().manual_seed(0)
    shape = (2 if batch_size_dynamic else 1, config.input_channel, config.img_h, config.img_w)
    sample = torch.rand(shape, generator=generator) * 2 - 1
    dynamic_axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if batch_size_dynamic else None
    with warnings.catch_warnings():
        # Expected and harmless here: the exporter's deprecation; the tracer's notes on nn.LSTM's input checks; and
        # "LSTM with a batch size other than 1" (no initial state is given, so ONNX's LSTM starts from zeros at any
        # batch size, which the round-trip tests check at batch 1 and 3).
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"Exporting a model to ONNX with a batch_size other than 1")
        with torch.no_grad():
            torch.onnx.export(
                # eval() on the wrapper too: the exporter restores the wrapper's mode afterwards, recursively, and a
                # new module is in training mode, which would leave the model's BatchNorms in training mode.
                OnnxExportModule(model, until).eval(),
                (sample,),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
            )


def _stage_label(config: ModelConfig, stage: str) -> str:
    """``"Transformation (TPS)"``; the SequenceModeling prefix also holds the column pooling."""
    label = f"{stage} ({getattr(config, _STAGE_FIELDS[stage])}"
    return label + (", with the column pooling before it)" if stage == "SequenceModeling" else ")")


def _stages_to_check(config: ModelConfig) -> list[str]:
    """Stage prefixes worth exporting on their own: an identity Transformation has nothing to get wrong."""
    return [stage for stage in STAGES if not (stage == "Transformation" and config.transformation == "None")]


def export_onnx(
    model: TextRecognitionModel,
    path: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    batch_size_dynamic: bool = True,
    decoding: DecodingOptions | None = None,
) -> Path:
    """Export ``model(pixel_values)`` to ONNX, with a sidecar JSON of what decoding needs.

    The graph has one input ``pixel_values`` [B, input_channel, img_h, img_w] (float32, preprocessed as
    ``transforms.preprocess`` does it: resized and scaled to [-1, 1]) and one output ``logits`` [B, T, num_class]:
    CTC logits per column, or the attention decoder's greedy logits over ``batch_max_length + 1`` steps.

    Args:
        model: the model to export; a float32 CPU copy in eval mode is exported, so ``model`` is left as it is.
        path: the ``.onnx`` file to write (missing folders are created); the sidecar goes to ``<path>.json``.
        opset: the ONNX opset; TPS models need at least 16 (``GridSample``).
        batch_size_dynamic: a symbolic batch axis named ``"batch"``; ``False`` fixes the batch size to 1.
        decoding: decoding options recorded in the sidecar (``decoding_options``) for a consumer's decoder (beam
            width, allowlist, blocklist, lexicon, pattern, min_confidence); the graph itself decodes nothing.

    Returns:
        The path of the ``.onnx`` file.

    Raises:
        OnnxUnavailableError: ``onnx`` is not installed.
        ValueError: an opset too old for the model.
        OnnxExportError: the exporter failed; the message names the first stage that does not export.

    Example:
        >>> path = export_onnx(model, "crnn.onnx")  # and crnn.onnx.json
        >>> verify_onnx(model, path, preprocess(images, model.config))["max_abs_diff"]
    """
    onnx = _import_onnx()
    if decoding is not None:
        model.decoder(decoding)  # impossible constraints fail before anything is written
    if not isinstance(model, TextRecognitionModel):
        raise TypeError(f"export_onnx expects a TextRecognitionModel, got {type(model).__name__}.")
    if model.config.prediction not in EXPORTABLE_HEADS:
        raise OnnxExportError(f"ONNX export of {model.config.prediction} heads is not supported (only "
                              f"{', '.join(EXPORTABLE_HEADS)}): evaluate and read the model folder with PyTorch.")
    if model.config.transformation == "TPS" and opset < MIN_OPSET_TPS:
        raise ValueError(
            f"TPS models need ONNX opset >= {MIN_OPSET_TPS} (GridSample, which TPS's grid_sample becomes), got "
            f"opset {opset}. Use --opset {DEFAULT_OPSET}."
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = _export_copy(model)
    try:
        _export_graph(model, path, until="Prediction", opset=opset, batch_size_dynamic=batch_size_dynamic)
    except Exception as error:
        raise OnnxExportError(_export_failure_message(model, error, opset)) from error
    onnx.checker.check_model(str(path))
    metadata = onnx_metadata(model.config, opset=opset, batch_size_dynamic=batch_size_dynamic, decoding=decoding)
    write_sidecar(path, {**metadata, "num_parameters": model.num_parameters, "onnx_sha256": file_sha256(path)})
    return path


def _export_failure_message(model: TextRecognitionModel, error: Exception, opset: int) -> str:
    """Say which stage prefix is the first that fails to export on its own."""
    text = str(error).strip()
    cause = f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"
    what = f"ONNX export (opset {opset}) of {model.config.stage_string} failed"
    with tempfile.TemporaryDirectory(prefix="text_recognition_onnx_") as folder:
        for stage in _stages_to_check(model.config):
            try:
                _export_graph(model, Path(folder) / f"{stage}.onnx", until=stage, opset=opset, batch_size_dynamic=True)
            except Exception:
                return f"{what} in stage {_stage_label(model.config, stage)}: {cause}"
    return f"{what}: {cause}"


def onnx_metadata(
    config: ModelConfig, *, opset: int, batch_size_dynamic: bool = True, decoding: DecodingOptions | None = None
) -> dict[str, Any]:
    """The sidecar's content: what a consumer needs to preprocess images and decode ``logits`` to text.

    ``tokens`` lists every class in id order (the special tokens first); ``special_tokens`` maps their names to ids.
    ``temperature`` divides the logits before the softmax of the confidence; ``decoding_options`` are the decoding
    options the export was made for (greedy and unconstrained unless given).
    """
    from . import __version__
    from .tokenizer import build_tokenizer

    if config.prediction == "CTC":
        special = {"[CTCblank]": BLANK_ID}
        text = "CTC greedy: argmax per step, merge repeats, then drop the blank (id 0); symbol j has id j + 1."
        confidence = "product over all steps of the max of softmax(logits / temperature)"
    elif config.prediction == "Attn":
        special = {"[GO]": GO_ID, "[s]": EOS_ID}
        text = "Attention greedy: argmax per step, cut before the first [s] (id 1); symbol j has id j + 2."
        confidence = ("product over the steps before the first [s] of the max of softmax(logits / temperature); "
                      "0 if empty")
    else:  # strhub's ids: [E] = 0, symbols 1..N ([B] = N + 1 and [P] = N + 2 are inputs only)
        special = {"[E]": STRHUB_EOS_ID}
        how = {"ViTSTR": "every position read at once",
               "PARSeq": f"PARSeq, {'autoregressive' if config.decode_ar else 'all positions at once'}, "
                         f"{config.refine_iters} refinement pass(es)"}[config.prediction]  # fmt: skip
        text = f"{how}: argmax per step, cut before the first [E] (id 0); symbol j has id j + 1."
        confidence = ("product over the steps up to and including the first [E] of the max of "
                      "softmax(logits / temperature) (strhub's)")
    return {
        "format": SIDECAR_FORMAT,
        "format_version": SIDECAR_FORMAT_VERSION,
        "precision": "fp32",
        "quantization": None,
        "text_recognition_version": __version__,
        "stage_string": config.stage_string,
        "prediction": config.prediction,
        "character": config.character,
        "sensitive": config.sensitive,
        "special_tokens": special,
        "tokens": build_tokenizer(config).tokens,
        "num_class": config.num_class,
        "batch_max_length": config.batch_max_length,
        "sequence_length": expected_sequence_length(config),
        "decoding": text,
        "confidence": confidence,
        "temperature": config.temperature,
        "decoding_options": (decoding or DecodingOptions()).to_json(),
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "img_h": config.img_h,
        "img_w": config.img_w,
        "input_channel": config.input_channel,
        "pad": config.pad,
        "preprocessing": (
            "mode L (input_channel 1) or RGB (3); PIL bicubic resize to img_w x img_h, or with pad: to width "
            "min(ceil(img_h * w / h), img_w), right-padded to img_w by repeating the last column; then "
            "(pixel / 255 - 0.5) / 0.5 as float32 [B, C, H, W]"
        ),
        "opset": opset,
        "batch_size_dynamic": batch_size_dynamic,
        "model_config": config.to_dict(),
    }


def _opset_of(path: Path) -> int:
    onnx = _import_onnx()
    graph = onnx.load(str(path), load_external_data=False)
    return next((entry.version for entry in graph.opset_import if entry.domain in ("", "ai.onnx")), DEFAULT_OPSET)


def _diagnose(
    model: TextRecognitionModel, pixel_values: torch.Tensor, opset: int, atol: float
) -> tuple[str | None, str]:
    """Export each stage prefix on its own; return (the first stage beyond tolerance or None, what was found).

    A stage prefix fails when its ONNX output differs from PyTorch's by more than ``atol`` times the magnitude of
    that output (at least 1): a 1e-3 difference on ResNet features as large as 200 is rounding, not a bug. The full
    model is compared under ``compare_logits``'s rule, so a greedy branch at a near-tie is not a difference.
    """
    config = model.config
    checked: list[tuple[str, float, float]] = []  # (stage, max abs diff, scale)
    with tempfile.TemporaryDirectory(prefix="text_recognition_onnx_") as folder:
        for stage in _stages_to_check(config):
            stage_path = Path(folder) / f"{stage}.onnx"
            try:
                _export_graph(model, stage_path, until=stage, opset=opset, batch_size_dynamic=True)
            except Exception as error:
                return stage, f"{_stage_label(config, stage)}: it does not export on its own ({type(error).__name__})"
            with torch.no_grad():
                expected = reference_prefix(model, pixel_values, stage)
            actual, scale = _run_onnx(stage_path, pixel_values), _scale(expected)
            if stage == "Prediction":
                diff = compare_logits(model, pixel_values, actual, atol * scale).max_abs_diff
            else:
                diff = _max_abs_diff(actual, expected)
            if not diff <= atol * scale:
                before = ""
                if checked:
                    worst = max(checked, key=lambda item: item[1] / item[2])
                    before = f"; the stages before it agree (at most {_sci(worst[1])} in {worst[0]})"
                return stage, (
                    f"{_stage_label(config, stage)}: its ONNX graph alone differs by {_sci(diff)} on outputs up to "
                    f"{scale:.3g}{before}. Suspect {_STAGE_HINTS[stage]}"
                )
            checked.append((stage, diff, scale))
    full_diff = checked[-1][1]
    if full_diff <= atol:
        return None, (
            f"an export made now from this model agrees within {_sci(full_diff)}, so the file was exported from "
            f"another model or other weights: export it again"
        )
    stage, diff, scale = max(checked[:-1] or checked, key=lambda item: item[1] / item[2])
    return None, (
        f"no stage is broken: each stage's ONNX graph agrees within the tolerance relative to its output's size "
        f"(the largest, {_sci(diff)} on {stage} outputs up to {scale:.3g}, is float32 rounding), and the later "
        f"stages amplify it to {_sci(full_diff)} on logits up to {checked[-1][2]:.3g}. Raise the tolerance if that "
        f"is acceptable"
    )


def verify_onnx(
    model: TextRecognitionModel, path: str | os.PathLike, images: torch.Tensor, atol: float = 1e-4
) -> dict[str, Any]:
    """Run the exported graph with onnxruntime on ``images`` and compare its logits with PyTorch's.

    The rule is ``export_parity.compare_logits``'s: every logit within ``atol`` of PyTorch's, where for attention an
    image whose greedy decoding took another branch at a near-tie (the two logits within ``2 * atol``) is compared,
    after that step, with PyTorch teacher-forced on onnxruntime's own symbols.

    Args:
        model: the exported model (any device or dtype; a float32 CPU copy is compared).
        path: the ``.onnx`` file.
        images: preprocessed images [B, input_channel, img_h, img_w] in [-1, 1] (``transforms.preprocess`` or
            ``load_check_images``).
        atol: the largest absolute difference of the logits accepted.

    Returns:
        ``{"max_abs_diff", "atol", "num_images", "output_shape", "texts_match", "near_ties", "path"}``;
        ``texts_match`` says whether greedy decoding of both logits gives the same texts; ``near_ties`` lists, as
        dicts of ``NearTie``'s fields, each image's step where the greedy symbols differ within rounding.

    Raises:
        OnnxUnavailableError: ``onnx`` or ``onnxruntime`` is not installed.
        OnnxMismatchError: (a ``ValueError``) the logits differ beyond ``atol``. The message names the first image,
            step and class beyond it, and the first stage whose own ONNX graph differs, found by exporting each
            stage prefix into a temporary folder.
        ValueError: ``images`` do not have the model's input shape, or onnxruntime cannot run the file.
        FileNotFoundError: no file at ``path``.
    """
    _import_onnxruntime()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No ONNX file at {str(path)!r}.")
    config = model.config
    expected_shape = (config.input_channel, config.img_h, config.img_w)
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or tuple(images.shape[1:]) != expected_shape:
        got = tuple(images.shape) if hasattr(images, "shape") else type(images).__name__
        raise ValueError(
            f"verify_onnx needs preprocessed images [B, {', '.join(map(str, expected_shape))}] "
            f"(transforms.preprocess or export.load_check_images), got {got}."
        )
    if images.size(0) == 0:
        raise ValueError("verify_onnx needs at least one image.")
    model = _export_copy(model)
    pixel_values = images.detach().cpu().float()
    actual = _run_onnx(path, pixel_values)
    parity = compare_logits(model, pixel_values, actual, atol)
    expected, diff = parity.pytorch_logits, parity.max_abs_diff
    tokens = model.tokenizer.tokens
    ties = describe_near_ties(parity, tokens, config.prediction, atol)
    if not diff <= atol:
        stage, detail = _diagnose(model, pixel_values, _opset_of(path), atol)
        if actual.shape == tuple(expected.shape):
            how = f"by {_sci(diff)}"
        else:
            how = f"in shape ({list(actual.shape)} instead of {list(expected.shape)})"
        first = describe_difference(parity, tokens, config.prediction)
        where = "it differs first in stage " if stage else ""
        raise OnnxMismatchError(
            f"ONNX output of {str(path)!r} differs from PyTorch {how} (tolerance {_sci(atol)})"
            f"{', ' + first if first else ''}. Stage by stage, {where}{detail}.{' ' + ties if ties else ''}",
            diff,
            stage,
        )
    decode = model.tokenizer.decode_with_confidence
    texts_match = [t for t, _ in decode(torch.from_numpy(actual))] == [t for t, _ in decode(expected)]
    return {
        "max_abs_diff": diff,
        "atol": atol,
        "num_images": int(pixel_values.size(0)),
        "output_shape": list(actual.shape),
        "texts_match": texts_match,
        "near_ties": [dataclasses.asdict(tie) for tie in parity.near_ties],
        "path": str(path),
    }
