"""The fast path: reduced-precision autocast, ``channels_last`` convolutions and ``torch.compile`` of the encoder.

Small helpers that training, evaluation and ``recognize`` share, so that each entry point only names what it wants:

- ``autocast(device, precision)``: ``fp32`` (no autocast), ``bf16`` or ``fp16``. What must stay in fp32 does so
  inside the model whatever the context (the CTC and cross-entropy losses upcast their logits, the TPS grid is
  computed with autocast off, decoding takes float logits).
- ``set_channels_last(model)``: the convolution stages' 4-D weights in ``channels_last`` memory order. Values are
  unchanged; only the layout the convolution kernels run in. Measured faster for every feature extractor (VGG,
  RCNN, ResNet) with and without TPS, in training and inference, fp32 and bf16 (``BENCHMARKS.md``), so a model
  without TPS is built that way (``CHANNELS_LAST_BY_DEFAULT``). With TPS it is opt-in: the sampling grid amplifies
  the layout's rounding past the 1e-4 equality with DTRB's outputs.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch
from torch import nn

#: ``--precision`` / ``recognize(precision=...)`` choices, and the accelerate spellings they may be given as.
PRECISIONS = ("fp32", "bf16", "fp16")
#: ``--precision auto``: the fastest precision that keeps the measured accuracy on the machine at hand.
AUTO = "auto"
_ALIASES = {"no": "fp32", "float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16"}
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

#: Feature extractors whose convolutions run in ``channels_last`` when a model without TPS is built (all three:
#: measured faster on this project's CPU for training and inference; see ``BENCHMARKS.md``).
CHANNELS_LAST_BY_DEFAULT = frozenset({"VGG", "RCNN", "ResNet"})
#: The model's stages that hold convolutions (TPS's localisation network and the feature extractor).
CONV_STAGES = ("Transformation", "FeatureExtraction")


def check_precision(precision: str, allow_auto: bool = False) -> str:
    """The canonical name (``fp32``, ``bf16``, ``fp16``; ``auto`` where allowed) of ``precision``; accelerate's
    ``no`` means ``fp32``.

    Raises:
        ValueError: an unknown precision, with the choices.
    """
    name = _ALIASES.get(str(precision).lower(), str(precision).lower())
    if name not in PRECISIONS and not (allow_auto and name == AUTO):
        choices = ", ".join((AUTO, *PRECISIONS) if allow_auto else PRECISIONS)
        raise ValueError(f"precision must be one of {choices} (or accelerate's 'no'), got {precision!r}.")
    return name


class SlowPrecisionWarning(UserWarning):
    """bf16 or fp16 asked for on a CPU without native kernels for it: it runs many times slower than fp32."""


def native_support(precision: str, device: torch.device | str = "cpu") -> bool:
    """Whether ``device`` computes ``precision`` natively, i.e. at least as fast as fp32.

    On the CPU, bf16 needs AVX512-BF16 or AMX (without them PyTorch runs bf16 convolutions and matmuls on slow
    reference kernels: a CRNN training step measured 22x slower than fp32 on an AVX2-only AMD EPYC), and fp16 needs
    AMX-FP16. CUDA: bf16 where ``torch.cuda.is_bf16_supported()``, fp16 always. Other devices: assumed native.
    """
    precision = check_precision(precision)
    device = torch.device(device)
    if precision == "fp32":
        return True
    if device.type == "cuda":
        return precision == "fp16" or torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return True
    if precision == "bf16":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return torch.cpu._is_amx_fp16_supported()


_WARNED: set[tuple[str, str]] = set()


def slow_precision_message(precision: str, device: torch.device | str = "cpu") -> str | None:
    """The warning for ``precision`` on ``device`` when it has no native kernels for it; ``None`` when it has."""
    precision = check_precision(precision)
    if native_support(precision, device):
        return None
    missing = "AVX512-BF16 or AMX" if precision == "bf16" else "AMX-FP16"
    return (f"{precision} on this CPU (no {missing}) runs on PyTorch's reference kernels: measured 22x slower than "
            f"fp32 for a CRNN training step (3.9 vs 87 images/s on an AVX2-only AMD EPYC). Use fp32 "
            f"(--precision fp32, or --mixed_precision no when training), or --precision auto, which picks what "
            f"this machine runs fastest.")  # fmt: skip


def warn_slow_precision(precision: str, device: torch.device | str = "cpu") -> None:
    """Warn once per process and (precision, device type) when ``precision`` is not native on ``device``."""
    message = slow_precision_message(precision, device)
    key = (check_precision(precision), torch.device(device).type)
    if message is not None and key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, SlowPrecisionWarning, stacklevel=3)


#: Prediction heads whose bf16 accuracy on real words is measured (english_g2, CTC: -0.015 points over 6,725 words,
#: BENCHMARKS.md); ``auto`` keeps the others in fp32 until theirs is.
BF16_MEASURED_HEADS = frozenset({"CTC"})


def resolve_precision(precision: str | None, device: torch.device | str = "cpu", config=None) -> str:
    """The precision to run: ``precision`` itself (warning once when the device lacks native kernels for it), or for
    ``auto`` the fastest that keeps the measured accuracy: bf16 where it is native (CUDA with bf16; a CPU with AMX,
    where it measured 2.6-3.9x fp32's speed, or with AVX512-BF16, 1.8x at batch 64 on an AMD EPYC) for the heads
    whose bf16 accuracy is measured (``BF16_MEASURED_HEADS``), fp32 otherwise (an AVX2-only CPU, where bf16 runs on
    reference kernels; an attention model).

    Args:
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16`` (accelerate's spellings too); ``None`` is ``fp32``.
        device: where the model runs.
        config: the model's ``ModelConfig`` (its prediction head decides ``auto``); ``None``: as a CTC model.
    """
    if precision is None:
        return "fp32"
    if str(precision).lower() == "int8":
        raise ValueError("int8 is the precision of an int8 export: write one with scripts/export_onnx.py --quantize "
                         "int8 and give that .onnx as --saved_model; a PyTorch model runs in auto, fp32, bf16 or "
                         "fp16.")  # fmt: skip
    precision = check_precision(precision, allow_auto=True)
    device = torch.device(device)
    if precision != AUTO:
        warn_slow_precision(precision, device)
        return precision
    head = getattr(config, "prediction", "CTC")
    if head not in BF16_MEASURED_HEADS:
        return "fp32"
    if device.type in ("cuda", "cpu") and native_support("bf16", device):
        return "bf16"
    return "fp32"


def autocast(device: torch.device | str, precision: str = "fp32") -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``precision`` on ``device`` (``fp32``: a null context, nothing changes)."""
    precision = check_precision(precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    device_type = torch.device(device).type
    return torch.autocast(device_type=device_type, dtype=_DTYPES[precision])


def set_channels_last(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Put the convolution stages' weights in ``channels_last`` (or back in the contiguous layout); in place, the
    ``Parameter`` objects kept (an optimizer holding them goes on working). Returns ``model``."""
    memory_format = torch.channels_last if enabled else torch.contiguous_format
    with torch.inference_mode(False), torch.no_grad():  # never leave inference tensors behind as weights
        for name in CONV_STAGES:
            stage = getattr(model, name, None)
            if stage is not None:
                stage.to(memory_format=memory_format)
    return model


def is_channels_last(model: nn.Module) -> bool:
    """Whether the model's convolution weights are in ``channels_last``."""
    weights = [p for name in CONV_STAGES if hasattr(model, name) for p in getattr(model, name).parameters()
               if p.dim() == 4]  # fmt: skip
    return bool(weights) and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)


def compile_encoder(model: nn.Module, **kwargs) -> nn.Module:
    """``torch.compile`` the model's ``encode`` (CNN and BiLSTM) once; the attention decoder's step loop stays eager,
    so decoding any number of steps never recompiles. A second call does nothing. Returns ``model``."""
    if getattr(model, "_compiled_encoder", False):
        return model
    model.encode = torch.compile(model.encode, **kwargs)  # type: ignore[method-assign]
    model._compiled_encoder = True
    return model


def uncompiled(model: nn.Module) -> nn.Module:
    """Drop a compiled ``encode`` (so that the eager method is used again). Returns ``model``."""
    if getattr(model, "_compiled_encoder", False):
        del model.encode
        model._compiled_encoder = False
    return model


@contextlib.contextmanager
def inference_settings(model: nn.Module, precision: str = "fp32", compile: bool = False) -> Iterator[None]:
    """Within: autocast for ``precision`` on the model's device, and the encoder compiled when ``compile``."""
    device = next(model.parameters()).device
    precision = resolve_precision(precision, device, getattr(model, "config", None))
    if compile:
        compile_encoder(model)
    with autocast(device, precision):
        yield
