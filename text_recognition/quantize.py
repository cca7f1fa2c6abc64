"""int8 quantization of an exported model with onnxruntime, calibrated on images the user gives.

``quantize_onnx`` turns an fp32 export (``export.export_onnx``) into an int8 one: static quantization in the QDQ
format, activations calibrated (MinMax) on preprocessed images, weights per output channel. What it does, and why,
measured on EasyOCR's english_g2 (None-VGG-BiLSTM-CTC) over 6,725 real words (``BENCHMARKS.md``):

- Convolutions and matmuls (the CNN, the BiLSTMs' projections, the attention decoder's cell) run in int8.
- Kept in fp32 (``fp32_nodes``): the feature extractor's first convolution (one or three input channels: little
  work, and the layer whose int8 form cost most), the classifier that produces the logits (the CTC head, the
  attention generator at every step), and a TPS transformation (a small network whose output is the sampling grid).
  On english_g2 this took the int8 loss from 0.46 to 0.33 points.
- Weights use 7 of their 8 bits (``reduce_range``). On CPUs without VNNI (AVX2 only), onnxruntime's int8 kernels
  sum pairs of u8 x s8 products in 16 bits, which saturates with full-range weights; with 7-bit weights they cannot
  saturate, so the file reads the same on every x86 CPU. With the layers above in fp32 it cost 0.02 points.
- The LSTMs' recurrences stay fp32 (``fp32_ops``): static QDQ quantization does not cover the ONNX ``LSTM`` op, and
  their dynamic int8 form lost 0.08 points more on english_g2 for a 1.3x faster file.
- Calibration images are preprocessed exactly as for inference. Synthetic words (``"synth"``) calibrate as well as
  real crops did for english_g2 (-0.21 vs -0.22 points with every layer in int8), so no real data is needed.

The sidecar of the int8 file records all of it (``quantization``), with the fp32 file's checksum.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import ModelConfig
from .onnx_model import OnnxModel, file_sha256, read_sidecar, write_sidecar

#: Calibration images used unless told otherwise: enough for stable MinMax ranges on english_g2, seconds to run.
DEFAULT_CALIBRATION_IMAGES = 256
#: Ops left in fp32, with the reason the sidecar gives.
FP32_OPS = {
    "LSTM": "static QDQ quantization does not cover the ONNX LSTM op; its dynamic int8 form cost 0.08 more points "
    "of word accuracy on english_g2's 6,725 real words (BENCHMARKS.md)",
}
SYNTH = "synth"
#: The ops quantized in a graph with a ViT, PARSeq or ViTSTR stage (elsewhere, onnxruntime's default list).
TRANSFORMER_OPS = ("Conv", "MatMul", "Gemm")
#: Why each kind of node is left in fp32 (the sidecar's ``fp32_nodes`` lists them by name).
FP32_NODE_REASONS = {
    "first_convolution": "the feature extractor's first convolution: few input channels, little work, and the "
    "costliest layer to quantize",
    "classifier": "the classifier that produces the logits (the CTC head, the attention generator, the PARSeq and "
    "ViTSTR heads)",
    "transformation": "TPS: a small network whose output is the sampling grid",
}


def fp32_nodes(path: str | os.PathLike) -> dict[str, list[str]]:
    """The nodes of the fp32 graph at ``path`` that quantization leaves in fp32, by reason (``FP32_NODE_REASONS``);
    the exporter names nodes after the model's modules (``/FeatureExtraction/ConvNet/ConvNet.0/Conv``)."""
    import onnx

    nodes = onnx.load(str(path), load_external_data=False).graph.node
    weighted = ("Conv", "MatMul", "Gemm")
    first = next((n.name for n in nodes if n.op_type == "Conv" and n.name.startswith("/FeatureExtraction/")), None)
    found = {
        "first_convolution": [first] if first else [],
        "classifier": [n.name for n in nodes if n.op_type in weighted
                       and n.name.startswith(("/Prediction/generator", "/Prediction/MatMul", "/Prediction/Gemm",
                                              "/Prediction/head"))],  # head: PARSeq's and ViTSTR's
        "transformation": [n.name for n in nodes if n.op_type in weighted and n.name.startswith("/Transformation/")],
    }  # fmt: skip
    return {reason: names for reason, names in found.items() if names}


class QuantizationError(ValueError):
    """Calibration data that cannot be used, or a graph onnxruntime cannot quantize."""


def load_calibration_images(
    config: ModelConfig,
    source: str | os.PathLike,
    count: int = DEFAULT_CALIBRATION_IMAGES,
    skipped: list[str] | None = None,
) -> torch.Tensor:
    """Preprocessed images [N, C, img_h, img_w] to calibrate on, from ``source``:

    - ``"synth"``: ``count`` words rendered by the realistic synthetic engine in the model's charset (needs
      ``text_recognition[synth]``);
    - a folder of .jpg/.jpeg/.png images: the first ``count`` that decode (in natural order; the others are passed
      over and listed in ``skipped``);
    - an LMDB tree (DTRB's layout): the first ``count`` decodable samples, in source order, labels unused.

    Raises:
        QuantizationError: nothing decodable in ``source``.
        FileNotFoundError: ``source`` does not exist.
    """
    from .transforms import preprocess

    if count < 1:
        raise ValueError(f"the number of calibration images must be at least 1, got {count}.")
    if str(source) == SYNTH:
        from .data.synth import RealisticWords

        synth = RealisticWords(charset=config.character, rgb=config.input_channel == 3, seed=0,
                               max_length=config.batch_max_length)  # fmt: skip
        return preprocess([synth.render(i)[0] for i in range(count)], config)
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"--calibration_data {os.fspath(source)!r} does not exist: give a folder of word "
                                f"images, an LMDB tree, or 'synth'.")  # fmt: skip
    from .data.lmdb import find_sources

    if path.is_dir() and not _has_images(path) and find_sources(path):
        return _images_from_lmdb(config, path, count)
    from .export_parity import load_check_images

    try:
        return load_check_images(config, path, count, skipped=skipped)
    except ValueError as error:
        raise QuantizationError(f"--calibration_data: {error} Give word images (or 'synth' for rendered "
                                f"words).") from None  # fmt: skip


def _has_images(folder: Path) -> bool:
    from .inference import IMAGE_EXTENSIONS

    return any(p.suffix.lower() in IMAGE_EXTENSIONS for p in folder.rglob("*"))


def _images_from_lmdb(config: ModelConfig, root: Path, count: int) -> torch.Tensor:
    """The first ``count`` decodable images of the LMDBs under ``root``, in their order."""
    import io

    from PIL import Image, UnidentifiedImageError

    from .data.lmdb import LmdbReader, find_sources
    from .transforms import load_image, preprocess

    images = []
    for path in find_sources(root).values():
        with LmdbReader(path) as reader:
            for index in range(1, len(reader) + 1):
                try:
                    data, _ = reader.get(index)
                    images.append(load_image(Image.open(io.BytesIO(data)), config.input_channel))
                except (OSError, ValueError, UnidentifiedImageError):
                    continue
                if len(images) == count:
                    return preprocess(images, config)
    if not images:
        raise QuantizationError(f"--calibration_data {str(root)!r}: no decodable image in its LMDBs.")
    return preprocess(images, config)


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """onnxruntime's quantizer logs advice through the root logger at WARNING; keep it off the user's terminal."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_onnx(
    fp32_path: str | os.PathLike,
    output: str | os.PathLike,
    calibration: torch.Tensor,
    *,
    calibration_source: str = "",
    batch_size: int = 32,
) -> Path:
    """Write an int8 version of the fp32 export at ``fp32_path`` to ``output`` (with its sidecar).

    Args:
        fp32_path: an fp32 ``.onnx`` written by ``export.export_onnx`` (its sidecar beside it).
        output: the int8 ``.onnx`` to write; its sidecar goes to ``<output>.json``.
        calibration: preprocessed images [N, C, img_h, img_w] (``load_calibration_images``).
        calibration_source: where the images came from, recorded in the sidecar.
        batch_size: images per calibration run.

    Returns:
        The path of the int8 file.

    Raises:
        QuantizationError: the source is not an fp32 export, no calibration image, or onnxruntime failed.
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    fp32_path, output = Path(fp32_path), Path(output)
    meta = read_sidecar(fp32_path)
    if meta.get("precision", "fp32") != "fp32":
        raise QuantizationError(f"{str(fp32_path)!r} is already {meta['precision']}: quantize the fp32 export.")
    config = OnnxModel(fp32_path).config  # checks the file against its sidecar
    expected = (config.input_channel, config.img_h, config.img_w)
    if calibration.dim() != 4 or tuple(calibration.shape[1:]) != expected or calibration.size(0) == 0:
        raise QuantizationError(f"calibration images must be [N >= 1, {', '.join(map(str, expected))}], got "
                                f"{list(calibration.shape)}.")  # fmt: skip
    array = calibration.detach().cpu().float().numpy()

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([array[i : i + batch_size] for i in range(0, len(array), batch_size)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {meta["input_name"]: batch}

    output.parent.mkdir(parents=True, exist_ok=True)
    kept = fp32_nodes(fp32_path)
    settings: dict[str, Any] = {
        "quant_format": QuantFormat.QDQ,
        "activation_type": QuantType.QInt8,
        "weight_type": QuantType.QInt8,
        "per_channel": True,
        "reduce_range": True,
        "nodes_to_exclude": [name for names in kept.values() for name in names],
    }
    transformer = config.feature_extraction == "ViT" or config.prediction in ("PARSeq", "ViTSTR")
    if transformer:  # the weighted ops only: the float attention masks (-inf) give no int8 range
        settings["op_types_to_quantize"] = list(TRANSFORMER_OPS)
    # Written beside the output, then renamed: an interrupted run leaves no half-written model under that name.
    with tempfile.TemporaryDirectory(prefix=".quantize-", dir=output.parent) as folder:
        partial = Path(folder) / output.name
        try:
            with _quiet_quantizer():
                quantize_static(str(fp32_path), str(partial), Batches(), **settings)
        except Exception as error:  # onnxruntime raises its own and plain exception types
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise QuantizationError(f"onnxruntime could not quantize {str(fp32_path)!r}: {first}") from error
        os.replace(partial, output)
    import onnxruntime

    quantization = {
        "method": "static",
        "format": "QDQ",
        "activations": "int8, per tensor, MinMax calibration",
        "op_types": list(TRANSFORMER_OPS) if transformer else "onnxruntime's defaults",
        "weights": "int8 with 7-bit range (reduce_range: no saturation on CPUs without VNNI), per output channel",
        "calibration": {"images": int(array.shape[0]), "source": calibration_source},
        "fp32_ops": {op: reason for op, reason in FP32_OPS.items() if _has_op(fp32_path, op)},
        "fp32_nodes": kept,
        "fp32_nodes_why": {kind: FP32_NODE_REASONS[kind] for kind in kept},
        "from": {"file": fp32_path.name, "onnx_sha256": file_sha256(fp32_path)},
        "onnxruntime_version": onnxruntime.__version__,
    }
    write_sidecar(output, {**meta, "format_version": 2, "precision": "int8", "quantization": quantization,
                           "onnx_sha256": file_sha256(output)})  # fmt: skip
    return output


def _has_op(path: Path, op_type: str) -> bool:
    import onnx

    return any(node.op_type == op_type for node in onnx.load(str(path), load_external_data=False).graph.node)


def compare_exports(reference: str | os.PathLike, other: str | os.PathLike, images: torch.Tensor) -> dict[str, Any]:
    """How closely the export ``other`` (e.g. int8) follows ``reference`` (its fp32 source) on preprocessed
    ``images``: ``{"num_images", "same_texts", "max_abs_diff"}`` (greedy texts; logits compared where their shapes
    agree)."""
    first, second = OnnxModel(reference), OnnxModel(other)
    a, b = first.logits(images), second.logits(images)
    texts_a = [r.text for r in first.decoder().decode_logits(a)]
    texts_b = [r.text for r in second.decoder().decode_logits(b)]
    diff = float((a - b).abs().max()) if a.shape == b.shape else float("nan")
    return {"num_images": len(texts_a), "same_texts": sum(x == y for x, y in zip(texts_a, texts_b)),
            "max_abs_diff": diff}  # fmt: skip
