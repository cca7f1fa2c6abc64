"""ONNX export of ``TextRecognitionModel``: ``pixel_values`` [B, C, img_h, img_w] -> ``logits`` [B, T, num_class].

The graph is what ``model(pixel_values)`` computes: CTC logits per column, or, for attention, DTRB's greedy decoding
of ``batch_max_length + 1`` steps with the argmax fed back as a one-hot, unrolled by tracing (no ONNX ``Loop``: the
step count is fixed, exactly as DTRB ran it). Decoding ids to text is left to the consumer, with the sidecar JSON
(``<name>.onnx.json``) giving the charset, the special tokens and the preprocessing.

The TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``) is used: it needs neither ``onnxscript`` nor
``torch.export``'s data-dependent-shape rules, and it handles every DTRB construct but one (DTRB issues #42, #76,
#373 collect users' failures):

- TPS samples with ``F.grid_sample(..., padding_mode="border", align_corners=True)``: ONNX ``GridSample`` exists from
  opset 16, so ``opset`` must be at least 16 for TPS models (17 by default).
- The column pooling ``nn.AdaptiveAvgPool2d((None, 1))`` on the permuted features [B, W', C, H'] does not export
  ("adaptive pooling, since output_size is not constant"): its ``None`` keeps a size the exporter cannot see as a
  constant. ``OnnxExportModule`` computes the same value as a mean over the feature-map height instead. The model
  itself (``model.py``) is not changed: its pooling is what DTRB's checkpoints were trained with.
- The attention decoder's loop, argmax feedback and ``F.one_hot`` trace as they are (ONNX ``ArgMax`` and
  ``OneHot``); the batch size stays symbolic because the tracer records ``batch_H.size(0)``.

``verify_onnx`` compares onnxruntime with PyTorch on sample images and, on a mismatch, re-exports each stage prefix
(Transformation; + FeatureExtraction; + pooling and SequenceModeling; the full model) to name the first stage whose
ONNX output differs.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from copy import deepcopy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .model import TextRecognitionModel, expected_sequence_length
from .stages.prediction import BLANK_ID, EOS_ID, GO_ID

INPUT_NAME = "pixel_values"
OUTPUT_NAME = "logits"
DEFAULT_OPSET = 17
MIN_OPSET_TPS = 16  # ONNX GridSample
SIDECAR_FORMAT_VERSION = 1
INSTALL_HINT = "pip install 'text_recognition[onnx]'"

# The prefixes verify_onnx re-exports to find a faulty stage, in model order.
STAGES = ("Transformation", "FeatureExtraction", "SequenceModeling", "Prediction")


class OnnxUnavailableError(ImportError, ValueError):
    """``onnx`` or ``onnxruntime`` is not installed.

    Also a ``ValueError`` so that ``text_recognition.cli.run`` reports it as a one-line error, not a traceback.
    """


class OnnxExportError(ValueError):
    """The model (or one of its stages) could not be exported to ONNX with the requested options."""


class OnnxMismatchError(ValueError):
    """onnxruntime's output differs from PyTorch's beyond the tolerance.

    Attributes:
        max_abs_diff: the largest absolute difference of the logits.
        stage: the first stage whose ONNX graph alone differs (``"Transformation"``, ...), or ``None`` when every
            stage prefix re-exported from the model matches (the file was exported from other weights).
    """

    def __init__(self, message: str, max_abs_diff: float, stage: str | None) -> None:
        super().__init__(message)
        self.max_abs_diff = max_abs_diff
        self.stage = stage


def _import_onnx():
    try:
        import onnx
    except ImportError:
        raise OnnxUnavailableError(f"ONNX export needs the onnx package, which is not installed: {INSTALL_HINT}") from None
    return onnx


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise OnnxUnavailableError(
            f"Checking an ONNX export needs onnxruntime, which is not installed: {INSTALL_HINT}"
        ) from None
    return onnxruntime


class OnnxExportModule(nn.Module):
    """Export-only view of a ``TextRecognitionModel``: the same weights and values, with ops the exporter accepts.

    Only the column pooling is rewritten: ``AdaptiveAvgPool2d((None, 1))`` over the height of the permuted
    [B, W', C, H'] features becomes ``mean`` over the height of [B, C, H', W'] (the same average; bit-identical when
    H' = 1, as for 32-pixel-high inputs). Every stage module is called as it is.

    Args:
        model: the model to export (its stages are shared, not copied).
        until: the last stage to run (one of ``STAGES``); earlier stops give the stage prefixes ``verify_onnx`` uses
            to find which stage's export is wrong.
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
        x = x.mean(dim=2).permute(0, 2, 1)  # [B, oc, H', W'] -> [B, W', oc]: the model's AdaptiveAvgPool
        x = self.model.SequenceModeling(x)  # [B, T, F]
        if self.until == "SequenceModeling":
            return x
        return self.model.Prediction(x)  # [B, T, num_class]; Attn: greedy, batch_max_length + 1 steps


def reference_prefix(model: TextRecognitionModel, pixel_values: torch.Tensor, until: str) -> torch.Tensor:
    """What the model itself (not the export view) computes up to the end of stage ``until``."""
    x = model.Transformation(pixel_values)
    if until == "Transformation":
        return x
    x = model.FeatureExtraction(x)
    if until == "FeatureExtraction":
        return x
    if until == "SequenceModeling":
        return model.encode(pixel_values)
    return model(pixel_values)


def sidecar_path(path: str | os.PathLike) -> Path:
    """The decoding-metadata JSON written next to an export: ``model.onnx`` -> ``model.onnx.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def _export_copy(model: TextRecognitionModel) -> TextRecognitionModel:
    """A float32 CPU copy in eval mode, so exporting leaves the caller's model (device, dtype, mode) as it was."""
    return deepcopy(model).to(device="cpu", dtype=torch.float32).eval()


def _sample_input(model: TextRecognitionModel, batch_size: int) -> torch.Tensor:
    config = model.config
    generator = torch.Generator().manual_seed(0)
    return torch.rand(batch_size, config.input_channel, config.img_h, config.img_w, generator=generator) * 2 - 1


def _export_graph(
    model: TextRecognitionModel, path: Path, *, until: str, opset: int, batch_size_dynamic: bool
) -> None:
    """Trace ``OnnxExportModule(model, until)`` into ``path`` (``model`` is already an eval float32 CPU copy)."""
    # Batch 2 while tracing, so that no size-1 dimension is mistaken for a constant of the graph.
    sample = _sample_input(model, 2 if batch_size_dynamic else 1)
    dynamic_axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if batch_size_dynamic else None
    with warnings.catch_warnings():
        # The tracer warns about every Python int it records (sizes in the TPS grid and the decoder's initial
        # states); the batch size stays symbolic anyway, which the round-trip tests at batch 1 and 3 check.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        with torch.no_grad():
            torch.onnx.export(
                # eval() on the wrapper too: the exporter restores the wrapper's mode afterwards, recursively, and a
                # fresh module is in training mode, which would leave the model's BatchNorms in training mode.
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


def _stage_label(model: TextRecognitionModel, stage: str) -> str:
    config = model.config
    if stage == "Transformation":
        return f"Transformation ({config.transformation})"
    if stage == "FeatureExtraction":
        return f"FeatureExtraction ({config.feature_extraction})"
    if stage == "SequenceModeling":
        return f"SequenceModeling ({config.sequence_modeling}, with the column pooling before it)"
    return f"Prediction ({config.prediction})"


_STAGE_HINTS = {
    "Transformation": "TPS's grid_sample (ONNX GridSample, opset >= 16, border padding, align_corners=True) or its "
    "fiducial-point matmuls",
    "FeatureExtraction": "the CNN's convolutions, max-pools or eval-mode BatchNorm",
    "SequenceModeling": "the height mean that replaces AdaptiveAvgPool2d((None, 1)), or the bidirectional LSTMs",
    "Prediction": "the head; for Attn, a small difference that flips one greedy argmax changes every later step",
}


def _stages_to_check(model: TextRecognitionModel) -> list[str]:
    """Stage prefixes worth exporting: an identity Transformation adds nothing to check."""
    return [s for s in STAGES if not (s == "Transformation" and model.config.transformation == "None")]


def export_onnx(
    model: TextRecognitionModel,
    path: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    batch_size_dynamic: bool = True,
) -> Path:
    """Export ``model.forward(pixel_values)`` to ONNX, with a sidecar JSON of what decoding needs.

    The graph has one input ``pixel_values`` [B, input_channel, img_h, img_w] (float32, preprocessed as
    ``transforms.preprocess`` does: resized, scaled to [-1, 1]) and one output ``logits`` [B, T, num_class]: CTC
    logits per column, or the attention decoder's greedy logits over ``batch_max_length + 1`` steps.

    Args:
        model: the model to export; it is copied to float32 CPU in eval mode first, so it is left unchanged.
        path: the ``.onnx`` file to write (parent folders are created); the sidecar goes to ``<path>.json``.
        opset: the ONNX opset; TPS models need at least 16 (``GridSample``).
        batch_size_dynamic: a symbolic batch axis ``"batch"``; ``False`` fixes the batch size to 1.

    Returns:
        The path of the ``.onnx`` file.

    Raises:
        OnnxUnavailableError: ``onnx`` is not installed.
        ValueError: an opset too old for the model.
        OnnxExportError: the exporter failed; the message names the first stage that does not export.

    Example:
        >>> export_onnx(model, "crnn.onnx")                      # and crnn.onnx.json
        >>> verify_onnx(model, "crnn.onnx", images)["max_abs_diff"]
    """
    onnx = _import_onnx()
    if not isinstance(model, TextRecognitionModel):
        raise TypeError(f"export_onnx expects a TextRecognitionModel, got {type(model).__name__}.")
    if model.config.transformation == "TPS" and opset < MIN_OPSET_TPS:
        raise ValueError(
            f"TPS models need ONNX opset >= {MIN_OPSET_TPS} (GridSample with border padding), got opset {opset}. "
            f"Use --opset {DEFAULT_OPSET}."
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = _export_copy(model)
    try:
        _export_graph(model, path, until="Prediction", opset=opset, batch_size_dynamic=batch_size_dynamic)
    except Exception as error:
        raise OnnxExportError(_export_failure_message(model, error, opset)) from error
    onnx.checker.check_model(str(path))
    sidecar_path(path).write_text(
        json.dumps(onnx_metadata(model, opset=opset, batch_size_dynamic=batch_size_dynamic), indent=2) + "\n",
        encoding="utf-8",
    )
    return path


def _export_failure_message(model: TextRecognitionModel, error: Exception, opset: int) -> str:
    """Name the first stage prefix that fails to export on its own."""
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    with tempfile.TemporaryDirectory(prefix="text_recognition_onnx_") as folder:
        for stage in _stages_to_check(model):
            try:
                _export_graph(model, Path(folder) / f"{stage}.onnx", until=stage, opset=opset, batch_size_dynamic=True)
            except Exception:
                return (
                    f"ONNX export (opset {opset}) of {model.config.stage_string} failed in stage "
                    f"{_stage_label(model, stage)}: {type(error).__name__}: {first_line}"
                )
    return f"ONNX export (opset {opset}) of {model.config.stage_string} failed: {type(error).__name__}: {first_line}"


def onnx_metadata(model: TextRecognitionModel, *, opset: int, batch_size_dynamic: bool = True) -> dict[str, Any]:
    """The sidecar's content: everything a consumer needs to preprocess images and decode ``logits`` to text."""
    from . import __version__

    config = model.config
    tokens = list(model.tokenizer.tokens)
    if config.prediction == "CTC":
        special = {"[CTCblank]": BLANK_ID}
        decoding = (
            "CTC greedy: argmax over classes per step, merge repeats, drop blank (id 0); "
            "symbol j of `character` has id j + 1."
        )
    else:
        special = {"[GO]": GO_ID, "[s]": EOS_ID}
        decoding = (
            "Attention greedy: argmax over classes per step, cut at the first [s] (id 1); "
            "symbol j of `character` has id j + 2."
        )
    return {
        "format": "text_recognition-onnx",
        "format_version": SIDECAR_FORMAT_VERSION,
        "text_recognition_version": __version__,
        "stage_string": config.stage_string,
        "prediction": config.prediction,
        "character": config.character,
        "sensitive": config.sensitive,
        "special_tokens": special,
        "tokens": tokens,
        "num_class": config.num_class,
        "batch_max_length": config.batch_max_length,
        "sequence_length": expected_sequence_length(config),
        "decoding": decoding,
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "img_h": config.img_h,
        "img_w": config.img_w,
        "input_channel": config.input_channel,
        "pad": config.pad,
        "preprocessing": (
            "grayscale (input_channel 1) or RGB (3); PIL bicubic resize to img_h x img_w (pad: keep the ratio, "
            "width ceil(img_h * w / h) capped at img_w, right-padded by repeating the last column); "
            "pixels / 255, then (x - 0.5) / 0.5; layout [B, C, H, W] float32"
        ),
        "opset": opset,
        "batch_size_dynamic": batch_size_dynamic,
        "model_config": config.to_dict(),
    }


def _run_onnx(path: str | os.PathLike, pixel_values: torch.Tensor) -> np.ndarray:
    """onnxruntime (CPUExecutionProvider) on ``pixel_values``; the graph's single output."""
    ort = _import_onnxruntime()
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        input_name = session.get_inputs()[0].name
        return session.run(None, {input_name: pixel_values.detach().cpu().float().numpy()})[0]
    except Exception as error:  # onnxruntime raises its own pybind exception types
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"onnxruntime could not run {str(path)!r}: {message}") from None


def _max_abs_diff(actual: np.ndarray, expected: torch.Tensor) -> float:
    expected = expected.detach().cpu().float().numpy()
    if actual.shape != expected.shape:
        return float("inf")
    diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    return float(np.nan_to_num(diff, nan=np.inf).max()) if diff.size else 0.0


def _opset_of(path: Path) -> int:
    onnx = _import_onnx()
    graph = onnx.load(str(path), load_external_data=False)
    return next((entry.version for entry in graph.opset_import if entry.domain in ("", "ai.onnx")), DEFAULT_OPSET)


def _diagnose(model: TextRecognitionModel, pixel_values: torch.Tensor, opset: int, atol: float) -> tuple[str | None, str]:
    """Export each stage prefix on its own and return (first stage beyond ``atol``, a sentence about it)."""
    previous = 0.0
    with tempfile.TemporaryDirectory(prefix="text_recognition_onnx_") as folder:
        for stage in _stages_to_check(model):
            stage_path = Path(folder) / f"{stage}.onnx"
            try:
                _export_graph(model, stage_path, until=stage, opset=opset, batch_size_dynamic=True)
            except Exception as error:
                return stage, f"{_stage_label(model, stage)}: it does not export on its own ({type(error).__name__})"
            with torch.no_grad():
                expected = reference_prefix(model, pixel_values, stage)
            diff = _max_abs_diff(_run_onnx(stage_path, pixel_values), expected)
            if not diff <= atol:
                return stage, (
                    f"{_stage_label(model, stage)}: its output alone differs by {diff:.1e}"
                    + (f" (the stages before it agree within {previous:.1e})" if stage != _stages_to_check(model)[0]
                       else "")  # fmt: skip
                    + f"; suspect {_STAGE_HINTS[stage]}"
                )
            previous = max(previous, diff)
    return None, (
        f"every stage re-exported from this model agrees within {previous:.1e}, so the file was probably exported "
        f"from another model or other weights: export it again"
    )


def verify_onnx(
    model: TextRecognitionModel, path: str | os.PathLike, images: torch.Tensor, atol: float = 1e-4
) -> dict[str, Any]:
    """Run the exported graph with onnxruntime on ``images`` and compare with PyTorch's logits.

    Args:
        model: the model that was exported (any device; it is copied to float32 CPU for the comparison).
        path: the ``.onnx`` file.
        images: preprocessed images [B, input_channel, img_h, img_w] in [-1, 1].
        atol: the largest absolute difference of the logits accepted.

    Returns:
        ``{"max_abs_diff", "atol", "batch_size", "output_shape", "texts_match", "path"}``; ``texts_match`` says
        whether greedy decoding of both logits gives the same texts.

    Raises:
        OnnxUnavailableError: ``onnx`` or ``onnxruntime`` is not installed.
        OnnxMismatchError: (a ``ValueError``) the logits differ beyond ``atol``; the message names the first stage
            whose own ONNX graph differs, found by re-exporting each stage prefix into a temporary folder.
        ValueError: ``images`` do not have the model's input shape, or onnxruntime cannot run the file.
    """
    _import_onnxruntime()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No ONNX file at {str(path)!r}.")
    config = model.config
    expected_shape = (config.input_channel, config.img_h, config.img_w)
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or tuple(images.shape[1:]) != expected_shape:
        shape = tuple(images.shape) if hasattr(images, "shape") else type(images).__name__
        raise ValueError(
            f"verify_onnx needs preprocessed images [B, {', '.join(map(str, expected_shape))}] (see "
            f"transforms.preprocess), got {shape}."
        )
    model = _export_copy(model)
    pixel_values = images.detach().cpu().float()
    with torch.no_grad():
        expected = model(pixel_values)
    actual = _run_onnx(path, pixel_values)
    diff = _max_abs_diff(actual, expected)
    if not diff <= atol:
        stage, detail = _diagnose(model, pixel_values, _opset_of(path), atol)
        what = (
            f"by {diff:.1e}"
            if actual.shape == tuple(expected.shape)
            else f"in shape ({tuple(actual.shape)} vs {tuple(expected.shape)})"
        )
        where = "first in stage " if stage else "but "
        raise OnnxMismatchError(
            f"ONNX output of {str(path)!r} differs from PyTorch {what} (tolerance {atol:g}), {where}{detail}.",
            diff,
            stage,
        )
    tokenizer = model.tokenizer
    onnx_texts = [text for text, _ in tokenizer.decode_with_confidence(torch.from_numpy(actual))]
    torch_texts = [text for text, _ in tokenizer.decode_with_confidence(expected)]
    return {
        "max_abs_diff": diff,
        "atol": atol,
        "batch_size": int(pixel_values.size(0)),
        "output_shape": list(actual.shape),
        "texts_match": onnx_texts == torch_texts,
        "path": str(path),
    }
