"""The stage registry: the four DTRB stage kinds and the modules that implement each choice.

Stage names are part of every saved ``config.json`` and of users' command lines (``--FeatureExtraction ResNet``),
so they are short, stable strings rather than import paths. Lookup is case-insensitive; the canonical spelling is
what gets stored. The stage modules register themselves when ``text_recognition.stages`` is imported, which
``text_recognition.config`` (and so ``import text_recognition``) does.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import TYPE_CHECKING

from torch import nn

if TYPE_CHECKING:
    from .config import ModelConfig

STAGE_KINDS = ("transformation", "feature_extraction", "sequence_modeling", "prediction")

#: DTRB's grid (2 x 3 x 2 x 2 = 24 combinations), whose checkpoints load bit for bit; the registry also holds the
#: stages beyond it (ViT, PARSeq, ViTSTR).
DTRB_STAGES: dict[str, tuple[str, ...]] = {
    "transformation": ("None", "TPS"),
    "feature_extraction": ("VGG", "RCNN", "ResNet"),
    "sequence_modeling": ("None", "BiLSTM"),
    "prediction": ("CTC", "Attn"),
}

# kind -> canonical stage name -> module class (each class has `from_config(config, in_features)` and `out_features`)
_STAGES: dict[str, dict[str, type[nn.Module]]] = {kind: {} for kind in STAGE_KINDS}


def register_stage(kind: str, name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator that registers a stage implementation under ``name`` for ``kind``.

    Raises:
        ValueError: if ``kind`` is unknown or ``name`` is already registered (the set of stages is closed).
    """
    if kind not in _STAGES:
        raise ValueError(f"Unknown stage kind {kind!r}. Available: {', '.join(STAGE_KINDS)}.")

    def decorator(cls: type[nn.Module]) -> type[nn.Module]:
        if name.lower() in (existing.lower() for existing in _STAGES[kind]):
            raise ValueError(f"A {kind} stage named {name!r} is already registered.")
        _STAGES[kind][name] = cls
        return cls

    return decorator


def list_stages(kind: str | None = None) -> list[str] | dict[str, list[str]]:
    """The registered stage names: for one kind as a list, or for all kinds as ``{kind: [names]}``."""
    if kind is None:
        return {k: list(v) for k, v in _STAGES.items()}
    _check_kind(kind)
    return list(_STAGES[kind])


def canonical_stage_name(kind: str, name: str) -> str:
    """Return the canonical spelling of ``name`` (``"tps"`` -> ``"TPS"``).

    Raises:
        ValueError: naming the available choices and the closest match, e.g.
            ``Unknown feature_extraction 'Resnet50'. Available: VGG, RCNN, ResNet, ViT. Did you mean 'ResNet'?``
    """
    _check_kind(kind)
    choices = list(_STAGES[kind])
    by_lower = {choice.lower(): choice for choice in choices}
    if not isinstance(name, str) or name.lower() not in by_lower:
        message = f"Unknown {kind} {name!r}. Available: {', '.join(choices)}."
        close = difflib.get_close_matches(str(name).lower(), list(by_lower), n=1, cutoff=0.5)
        if close:
            message += f" Did you mean {by_lower[close[0]]!r}?"
        raise ValueError(message) from None
    return by_lower[name.lower()]


def stage_class(kind: str, name: str) -> type[nn.Module]:
    """The class registered as ``name`` of ``kind`` (for its static methods, e.g. a head's ``loss``)."""
    return _STAGES[kind][canonical_stage_name(kind, name)]


def build_stage(kind: str, name: str, config: ModelConfig, in_features: int) -> nn.Module:
    """Instantiate the stage ``name`` of ``kind`` for ``config`` with ``in_features`` input channels/features."""
    return stage_class(kind, name).from_config(config, in_features)


def _check_kind(kind: str) -> None:
    if kind not in _STAGES:
        raise ValueError(f"Unknown stage kind {kind!r}. Available: {', '.join(STAGE_KINDS)}.")

