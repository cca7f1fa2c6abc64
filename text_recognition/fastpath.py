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
from collections.abc import Iterator

import torch
from torch import nn

#: ``--precision`` / ``recognize(precision=...)`` choices, and the accelerate spellings they may be given as.
PRECISIONS = ("fp32", "bf16", "fp16")
_ALIASES = {"no": "fp32", "float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16"}
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

#: Feature extractors whose convolutions run in ``channels_last`` when a model without TPS is built (all three:
#: measured faster on this project's CPU for training and inference; see ``BENCHMARKS.md``).
CHANNELS_LAST_BY_DEFAULT = frozenset({"VGG", "RCNN", "ResNet"})
#: The model's stages that hold convolutions (TPS's localisation network and the feature extractor).
CONV_STAGES = ("Transformation", "FeatureExtraction")


def check_precision(precision: str) -> str:
    """The canonical name (``fp32``, ``bf16``, ``fp16``) of ``precision``; accelerate's ``no`` means ``fp32``.

    Raises:
        ValueError: an unknown precision, with the choices.
    """
    name = _ALIASES.get(str(precision).lower(), str(precision).lower())
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)} (or accelerate's 'no'), got "
                         f"{precision!r}.")  # fmt: skip
    return name


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
    precision = check_precision(precision)
    if compile:
        compile_encoder(model)
    device = next(model.parameters()).device
    with autocast(device, precision):
        yield
