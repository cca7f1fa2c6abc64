"""The fields of the stages beyond DTRB's grid (ViT, PARSeq, ViTSTR) in ``ModelConfig``: their defaults, from the
named sizes, and their checks. Every such field is ``None`` in a DTRB configuration (so a DTRB ``config.json`` from
before they existed loads unchanged) and is refused, naming its flag, with a stage that does not use it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .stages.vit import VIT_SIZES

if TYPE_CHECKING:
    from .config import ModelConfig


def resolve_vit_fields(config: ModelConfig) -> None:
    """Fill in the ViT fields from ``vit_size`` (ViT), or check that none is set (the other extractors)."""
    names = ("vit_size", "patch_h", "patch_w", "embed_dim", "encoder_depth", "encoder_heads", "encoder_mlp_ratio")
    if config.feature_extraction != "ViT":
        given = [f"--{name}" for name in names if getattr(config, name) is not None]
        if given:
            raise ValueError(f"{', '.join(given)} set(s) the ViT encoder, but --FeatureExtraction is "
                             f"{config.feature_extraction}: use --FeatureExtraction ViT or leave them out.")
        return
    if config.vit_size is None:
        config.vit_size = "small"
    if config.vit_size not in VIT_SIZES:
        raise ValueError(f"Unknown --vit_size {config.vit_size!r}. Choose one of: {', '.join(VIT_SIZES)} (or set "
                         f"--embed_dim --encoder_depth --encoder_heads freely).")  # fmt: skip
    embed_dim, depth, heads = VIT_SIZES[config.vit_size]
    defaults = {"patch_h": 4, "patch_w": 8, "embed_dim": embed_dim, "encoder_depth": depth,
                "encoder_heads": heads, "encoder_mlp_ratio": 4.0}  # fmt: skip
    for name, value in defaults.items():
        if getattr(config, name) is None:
            setattr(config, name, value)
    _check_positive(config, ("patch_h", "patch_w", "embed_dim", "encoder_depth", "encoder_heads"))
    config.encoder_mlp_ratio = _positive_float(config.encoder_mlp_ratio, "encoder_mlp_ratio")
    if config.embed_dim % config.encoder_heads:
        raise ValueError(f"--embed_dim ({config.embed_dim}) must be a multiple of --encoder_heads "
                         f"({config.encoder_heads}): each head takes an equal share of the width.")  # fmt: skip
    if config.img_h % config.patch_h or config.img_w % config.patch_w:
        raise ValueError(f"The ViT cuts the image into {config.patch_h}x{config.patch_w} patches: --imgH "
                         f"({config.img_h}) must be a multiple of --patch_h and --imgW ({config.img_w}) of --patch_w "
                         f"(strhub's models read 32x128: --imgH 32 --imgW 128).")  # fmt: skip

def resolve_head_fields(config: ModelConfig) -> None:
    """Fill in the PARSeq fields (PARSeq), or check that none is set (the other heads)."""
    names = ("decoder_depth", "decoder_heads", "decoder_mlp_ratio", "dropout", "perm_num", "perm_forward",
             "perm_mirrored", "decode_ar", "refine_iters")  # fmt: skip
    if config.prediction != "PARSeq":
        given = [f"--{name}" for name in names if getattr(config, name) is not None]
        if given:
            modes = " (ViTSTR reads every position at once: it has no decoding mode)" if (
                config.prediction == "ViTSTR" and ("--decode_ar" in given or "--refine_iters" in given)) else ""
            raise ValueError(f"{', '.join(given)} set(s) the PARSeq decoder, but --Prediction is "
                             f"{config.prediction}{modes}: use --Prediction PARSeq or leave them out.")
        if config.prediction == "ViTSTR":
            if config.feature_extraction != "ViT":
                raise ValueError(f"--Prediction ViTSTR classifies the first tokens of a ViT with a class token: it "
                                 f"needs --FeatureExtraction ViT, got {config.feature_extraction}.")  # fmt: skip
            tokens = (config.img_h // config.patch_h) * (config.img_w // config.patch_w)
            if tokens < config.batch_max_length + 1:
                raise ValueError(f"--Prediction ViTSTR reads batch_max_length + 1 = {config.batch_max_length + 1} "
                                 f"patch tokens, but a {config.img_h}x{config.img_w} image in {config.patch_h}x"
                                 f"{config.patch_w} patches has {tokens}: use a larger image or smaller patches, or "
                                 f"lower --batch_max_length.")  # fmt: skip
        return
    defaults = {"decoder_depth": 1, "decoder_mlp_ratio": 4.0, "dropout": 0.1, "perm_num": 6, "perm_forward": True,
                "perm_mirrored": True, "decode_ar": True, "refine_iters": 1}  # fmt: skip
    for name, value in defaults.items():
        if getattr(config, name) is None:
            setattr(config, name, value)
    width = config.prediction_in_features
    if config.decoder_heads is None:
        if width % 32:
            raise ValueError(f"The PARSeq decoder's width is that of its input, {width}, which is no multiple "
                             f"of 32: give --decoder_heads (a divisor of {width}).")  # fmt: skip
        config.decoder_heads = width // 32
    _check_positive(config, ("decoder_depth", "decoder_heads", "perm_num"))
    if width % config.decoder_heads:
        raise ValueError(f"--decoder_heads ({config.decoder_heads}) must divide the PARSeq decoder's width, that of "
                         f"its input ({width}).")  # fmt: skip
    config.decoder_mlp_ratio = _positive_float(config.decoder_mlp_ratio, "decoder_mlp_ratio")
    if isinstance(config.dropout, bool) or not isinstance(config.dropout, (int, float)) or not 0 <= config.dropout < 1:
        raise ValueError(f"--dropout must be in [0, 1), got {config.dropout!r}.")
    config.dropout = float(config.dropout)
    for name in ("perm_forward", "perm_mirrored", "decode_ar"):
        if not isinstance(getattr(config, name), bool):
            raise ValueError(f"--{name} must be true or false, got {getattr(config, name)!r}.")
    if isinstance(config.refine_iters, bool) or not isinstance(config.refine_iters, int) or config.refine_iters < 0:
        raise ValueError(f"--refine_iters must be 0 or more, got {config.refine_iters!r}.")
    if config.perm_mirrored and config.perm_num % 2:
        raise ValueError(f"--perm_num ({config.perm_num}) must be even with --perm_mirrored (each order is paired "
                         f"with its reverse).")  # fmt: skip


def _check_positive(config: ModelConfig, names: Sequence[str]) -> None:
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"--{name} must be a positive integer, got {value!r}.")


def _positive_float(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise ValueError(f"--{name} must be a positive number, got {value!r}.")
    return float(value)
