"""DTRB ``.pth`` checkpoints: safe reading, key-for-key and shape-for-shape checks, and the flags a state dict
points to.

DTRB checkpoints are bare state dicts (keys prefixed ``module.`` by ``DataParallel``) with no record of the options
they were trained with, so the options come from the user and every key and shape is checked. When they do not fit,
the error lists what is missing, unexpected or mis-shaped, and says which flags the checkpoint itself points to.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from torch import nn

    from .config import ModelConfig


class CheckpointMismatchError(ValueError):
    """A state dict that does not fit the model: lists missing/unexpected keys, shape mismatches and a hint."""


def read_dtrb_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a DTRB ``.pth`` (a pickled state dict) safely with ``weights_only=True`` and strip ``module.``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"DTRB checkpoint not found: {str(path)!r}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and weights-only errors all mean "not a DTRB state dict"
        reason = _torch_load_reason(error)  # torch's own message starts with advice to disable the check
        raise ValueError(
            f"Cannot read {str(path)!r} as a DTRB checkpoint: torch.load(weights_only=True) refused it ({reason}). "
            f"A DTRB .pth is a plain state dict of tensors saved with torch.save(model.state_dict())."
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{str(path)!r} does not hold a state dict of tensors (DTRB saves model.state_dict()).")
    return {key.removeprefix("module."): value for key, value in state.items()}


def infer_dtrb_flags(state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Read what a state dict itself says about its architecture (stages, sizes, class count)."""
    flags: dict[str, Any] = {}
    keys = set(state_dict)
    flags["Transformation"] = "TPS" if any(k.startswith("Transformation.") for k in keys) else "None"
    if "FeatureExtraction.ConvNet.conv0_1.weight" in keys:
        flags["FeatureExtraction"] = "ResNet"
        first_conv = state_dict["FeatureExtraction.ConvNet.conv0_1.weight"]
        flags["output_channel"] = first_conv.shape[0] * 16
    elif any(".wgf_u." in k for k in keys):
        flags["FeatureExtraction"] = "RCNN"
        first_conv = state_dict.get("FeatureExtraction.ConvNet.0.weight")
        if first_conv is not None:
            flags["output_channel"] = first_conv.shape[0] * 8
    elif "FeatureExtraction.ConvNet.0.weight" in keys:
        flags["FeatureExtraction"] = "VGG"
        first_conv = state_dict["FeatureExtraction.ConvNet.0.weight"]
        flags["output_channel"] = first_conv.shape[0] * 8
    else:
        first_conv = None
    if first_conv is not None:
        flags["input_channel"] = first_conv.shape[1]
    flags["SequenceModeling"] = "BiLSTM" if any(k.startswith("SequenceModeling.") for k in keys) else "None"
    if "SequenceModeling.0.linear.weight" in keys:
        flags["hidden_size"] = state_dict["SequenceModeling.0.linear.weight"].shape[0]
    if "Prediction.generator.weight" in keys:
        flags["Prediction"] = "Attn"
        flags["hidden_size"] = state_dict["Prediction.generator.weight"].shape[1]
        flags["num_class"] = state_dict["Prediction.generator.weight"].shape[0]
        flags["charset_size"] = flags["num_class"] - 2
    elif "Prediction.weight" in keys:
        flags["Prediction"] = "CTC"
        flags["num_class"] = state_dict["Prediction.weight"].shape[0]
        flags["charset_size"] = flags["num_class"] - 1
    if "Transformation.LocalizationNetwork.localization_fc2.bias" in keys:
        flags["num_fiducial"] = state_dict["Transformation.LocalizationNetwork.localization_fc2.bias"].shape[0] // 2
    if "Transformation.GridGenerator.P_hat" in keys:
        flags["imgH_x_imgW"] = state_dict["Transformation.GridGenerator.P_hat"].shape[0]
    return flags


#: DTRB's flag -> the ``ModelConfig`` field (the key in config.json) it sets.
FLAG_FIELDS = {"Transformation": "transformation", "FeatureExtraction": "feature_extraction",
               "SequenceModeling": "sequence_modeling", "Prediction": "prediction",
               "input_channel": "input_channel", "output_channel": "output_channel", "hidden_size": "hidden_size",
               "num_fiducial": "num_fiducial"}  # fmt: skip


def _flag_hints(config: ModelConfig, flags: dict[str, Any], config_file: str | None = None) -> list[str]:
    """Flags whose value in ``config`` differs from what the checkpoint shows, worded by where ``config`` came from:
    the model flags ("--Prediction CTC (you gave Attn)"), or a model folder's ``config_file`` ("prediction CTC
    (config.json '...' says Attn)"), which the user did not give."""
    hints = []
    for flag, field in FLAG_FIELDS.items():
        value = getattr(config, field)
        if flag in flags and flags[flag] != value:
            if config_file is None:
                extra = " (--rgb sets 3)" if flag == "input_channel" else ""
                hints.append(f"--{flag} {flags[flag]} (you gave {value}){extra}")
            else:
                hints.append(f"{field} {flags[flag]} ({config_file} says {value})")
    if "charset_size" in flags and flags.get("Prediction", config.prediction) == config.prediction:
        if flags["charset_size"] != len(config.character):
            size = flags["charset_size"]
            known = " (DTRB's --sensitive set)" if size == 94 else " (DTRB's default set)" if size == 36 else ""
            ours = ("--character has", "check --character / --sensitive") if config_file is None else (
                f"character in {config_file} has", "check character / sensitive there")  # fmt: skip
            hints.append(
                f"a charset of {size} symbols{known}: the head has {flags['num_class']} classes, but {ours[0]} "
                f"{len(config.character)} symbols; {ours[1]}"
            )
    if "imgH_x_imgW" in flags and flags["imgH_x_imgW"] != config.img_h * config.img_w:
        given = (f"you gave --imgH {config.img_h} --imgW {config.img_w}" if config_file is None
                else f"{config_file} says img_h {config.img_h}, img_w {config.img_w}")  # fmt: skip
        hints.append(
            f"an image size with imgH x imgW = {flags['imgH_x_imgW']} pixels ({given} = "
            f"{config.img_h * config.img_w}); the TPS grid depends on it"
        )
    return hints


def check_state_dict(
    model: nn.Module, state_dict: dict[str, torch.Tensor], config: ModelConfig, source: str,
    config_file: str | None = None,
) -> dict[str, torch.Tensor]:  # fmt: skip
    """Check that ``state_dict`` fits ``model`` key for key and shape for shape.

    A missing ``num_batches_tracked`` (older PyTorch) is filled in. Returns the state dict ready for a strict
    ``load_state_dict``. ``config_file`` names the model folder's config.json that ``config`` was read from (the
    hints then blame that file, not the user's flags); ``None``: ``config`` comes from the model flags.

    Raises:
        CheckpointMismatchError: listing missing keys, unexpected keys and shape mismatches, with the flags the
            checkpoint points to.
    """
    expected = model.state_dict()
    state_dict = dict(state_dict)
    for key, value in expected.items():
        running_mean = key.removesuffix("num_batches_tracked") + "running_mean"
        if key.endswith("num_batches_tracked") and key not in state_dict and running_mean in state_dict:
            state_dict[key] = torch.zeros_like(value)  # checkpoints from PyTorch < 0.4.1 lack it
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = sorted(
        f"{key}: checkpoint {tuple(state_dict[key].shape)}, model {tuple(expected[key].shape)}"
        for key in set(expected) & set(state_dict)
        if state_dict[key].shape != expected[key].shape
    )
    if not (missing or unexpected or mismatched):
        return state_dict

    def listing(title: str, items: list[str]) -> str:
        shown = "\n".join(f"    {item}" for item in items[:12])
        more = f"\n    ... and {len(items) - 12} more" if len(items) > 12 else ""
        return f"  {title} ({len(items)}):\n{shown}{more}\n"

    message = f"The checkpoint {source} does not fit a {config.stage_string} model with this configuration.\n"
    if missing:
        message += listing("missing keys", missing)
    if unexpected:
        message += listing("unexpected keys", unexpected)
    if mismatched:
        message += listing("shape mismatches", mismatched)
    hints = _flag_hints(config, infer_dtrb_flags(state_dict), config_file)
    if hints:
        message += "The checkpoint looks like it was trained with: " + "; ".join(hints) + "."
    elif config_file is None:
        message += "Check that the model flags are those the checkpoint was trained with."
    if config_file is not None:  # the folder's own files disagree: no flag of the user's can fix that
        message += (f"{' ' if hints else ''}{config_file} does not describe the weights beside it: save the model "
                    f"again with save_pretrained, or correct config.json.")  # fmt: skip
    raise CheckpointMismatchError(message)


def verify_tps_buffers(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """DTRB stores the TPS constants in its checkpoints; they must equal the ones we compute for the config."""
    expected = model.state_dict()
    for key in ("Transformation.GridGenerator.inv_delta_C", "Transformation.GridGenerator.P_hat"):
        if key in state_dict and not torch.allclose(state_dict[key].float(), expected[key], rtol=1e-4, atol=1e-4):
            raise CheckpointMismatchError(
                f"The TPS constant {key} stored in {source} differs from the one computed for num_fiducial / imgH / "
                f"imgW of this configuration: the checkpoint was built for another TPS geometry."
            )


# ---- strhub (baudm/parseq) checkpoints -------------------------------------------------------------------------

STRHUB_ARCHITECTURES = ("parseq", "parseq-tiny", "vitstr")


def _torch_load_reason(error: Exception) -> str:
    """The one-line reason of a ``torch.load(weights_only=True)`` refusal (not its advice to turn the check off)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
    marker = [i for i, line in enumerate(lines) if "WeightsUnpickler error:" in line]
    if marker:
        after = lines[marker[0]].split("WeightsUnpickler error:", 1)[1].strip()
        reason = after or (lines[marker[0] + 1] if marker[0] + 1 < len(lines) else lines[0])
    else:
        reason = lines[0]
    return reason.split(". ")[0].rstrip(".")


def read_strhub_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a strhub checkpoint with ``weights_only=True``: a released ``.pt`` (a state dict; ViTSTR's keys start
    with ``model.``) or a Lightning ``.ckpt`` (``state_dict`` and ``hyper_parameters``). Returns the state dict
    without the ``model.`` prefix and the hyper-parameters (empty when the file has none)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"strhub checkpoint not found: {str(path)!r}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and weights-only errors all mean "not a strhub checkpoint we can read"
        raise ValueError(
            f"Cannot read {str(path)!r} as a strhub checkpoint: torch.load(weights_only=True) refused it "
            f"({_torch_load_reason(error)}). A released strhub .pt is a plain state dict; a Lightning .ckpt whose "
            f"hyper-parameters hold other objects can be reduced to one with torch.save(ckpt['state_dict'], 'x.pt')."
        ) from None
    hparams: dict[str, Any] = {}
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        found = state.get("hyper_parameters")
        hparams = dict(found) if isinstance(found, dict) else {}
        state = state["state_dict"]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{str(path)!r} does not hold a state dict of tensors (strhub's released .pt files and "
                         f"Lightning checkpoints do).")  # fmt: skip
    if all(key.startswith("model.") for key in state):
        state = {key.removeprefix("model."): value for key, value in state.items()}
    return state, hparams


def strhub_architecture(state_dict: dict[str, torch.Tensor], source: str) -> str:
    """``"parseq"`` or ``"vitstr"`` from the keys."""
    if "pos_queries" in state_dict and "encoder.pos_embed" in state_dict:
        return "parseq"
    if "cls_token" in state_dict and "pos_embed" in state_dict and "head.weight" in state_dict:
        return "vitstr"
    shown = ", ".join(sorted(state_dict)[:6])
    raise CheckpointMismatchError(
        f"{source} is not a strhub PARSeq or ViTSTR checkpoint: it has neither PARSeq's 'pos_queries' and "
        f"'encoder.pos_embed' nor ViTSTR's 'cls_token', 'pos_embed' and 'head.weight' (its keys start: {shown}). "
        f"For a DTRB .pth use scripts/convert_dtrb_checkpoint.py; strhub's ABINet, TRBA and CRNN are not supported."
    )


def is_strhub_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` reads as a strhub PARSeq / ViTSTR checkpoint (which records its architecture)."""
    try:
        strhub_architecture(read_strhub_checkpoint(path)[0], repr(os.fspath(path)))
    except ValueError:  # CheckpointMismatchError too
        return False
    return True


def _count_indexed(state_dict: dict[str, torch.Tensor], prefix: str) -> int:
    """How many ``prefix{i}.`` blocks there are (``blocks.0.`` ... ``blocks.11.`` -> 12)."""
    indices = {key[len(prefix) :].split(".", 1)[0] for key in state_dict if key.startswith(prefix)}
    return len([i for i in indices if i.isdigit()])


def strhub_config(
    state_dict: dict[str, torch.Tensor],
    hparams: dict[str, Any],
    source: str,
    *,
    architecture: str | None = None,
    decode_ar: bool | None = None,
    refine_iters: int | None = None,
    **overrides: Any,
) -> ModelConfig:
    """The ``ModelConfig`` of a strhub state dict (prefix removed): what the shapes say, then the Lightning
    hyper-parameters, then ``overrides``, each checked against the shapes."""
    from .config import CHARSET_36, CHARSET_94, ModelConfig

    found = strhub_architecture(state_dict, source)
    encoder = "encoder." if found == "parseq" else ""
    pos_embed = state_dict[f"{encoder}pos_embed"]
    patch_weight = state_dict[f"{encoder}patch_embed.proj.weight"]  # [D, C, ph, pw]
    embed_dim, channels, patch_h, patch_w = patch_weight.shape
    if found == "parseq":
        found = "parseq-tiny" if embed_dim == 192 else "parseq"
    if architecture is not None:
        if architecture not in STRHUB_ARCHITECTURES:
            raise ValueError(f"Unknown --architecture {architecture!r}. Choose one of: "
                             f"{', '.join(STRHUB_ARCHITECTURES)}.")  # fmt: skip
        if architecture != found:
            raise CheckpointMismatchError(
                f"--architecture {architecture} was given, but {source} holds a {found} (embedding width "
                f"{embed_dim}, {_count_indexed(state_dict, encoder + 'blocks.')} encoder blocks): leave "
                f"--architecture out, or give the checkpoint of a {architecture}."
            )
    num_tokens = pos_embed.shape[1] - (1 if found == "vitstr" else 0)
    head = state_dict["head.weight"]  # [N + 1, D]
    num_symbols = head.shape[0] - 1

    values: dict[str, Any] = {
        "transformation": "None", "feature_extraction": "ViT", "sequence_modeling": "None",
        "prediction": "ViTSTR" if found == "vitstr" else "PARSeq",
        "input_channel": channels, "patch_h": patch_h, "patch_w": patch_w, "embed_dim": embed_dim,
        "encoder_depth": _count_indexed(state_dict, encoder + "blocks."),
        "encoder_heads": embed_dim // 64,  # strhub's encoders all have 64 dims per head
        "encoder_mlp_ratio": state_dict[f"{encoder}blocks.0.mlp.fc1.weight"].shape[0] / embed_dim,
        "vit_size": "tiny" if embed_dim == 192 else "small",
    }  # fmt: skip
    # The image: strhub's 32x128, or the square of its 224x224 model, whichever the positions fit.
    if num_tokens == (32 // patch_h) * (128 // patch_w):
        values["img_h"], values["img_w"] = 32, 128
    elif round(num_tokens**0.5) ** 2 == num_tokens:
        side = round(num_tokens**0.5)
        values["img_h"], values["img_w"] = side * patch_h, side * patch_w
    symbols = {94: CHARSET_94, 36: CHARSET_36, 62: CHARSET_94[:62]}
    if num_symbols in symbols:
        values["character"] = symbols[num_symbols]
    if found != "vitstr":
        values["batch_max_length"] = state_dict["pos_queries"].shape[1] - 1
        values["decoder_depth"] = _count_indexed(state_dict, "decoder.layers.")
        values["decoder_heads"] = embed_dim // 32  # strhub's decoders all have 32 dims per head
        values["decoder_mlp_ratio"] = state_dict["decoder.layers.0.linear1.weight"].shape[0] / embed_dim
        values["decode_ar"] = True if decode_ar is None else decode_ar
        values["refine_iters"] = 1 if refine_iters is None else refine_iters
    elif decode_ar is not None or refine_iters is not None:
        raise ValueError("--decode_ar / --refine_iters set PARSeq's decoding mode, but the checkpoint is a ViTSTR, "
                         "which reads every position at once: leave them out.")  # fmt: skip
    # Lightning's hyper-parameters, where they are plain values
    if isinstance(hparams.get("charset_train"), str):
        values["character"] = hparams["charset_train"]
    size = hparams.get("img_size")
    if isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, int) for v in size):
        values["img_h"], values["img_w"] = size
    if found == "vitstr" and isinstance(hparams.get("max_label_length"), int):
        values["batch_max_length"] = hparams["max_label_length"]
    values.update(overrides)

    if "character" not in values:
        raise CheckpointMismatchError(f"The head of {source} predicts {num_symbols} symbols, none of strhub's "
                                      f"charsets (94, 62, 36): give them in order with --character.")  # fmt: skip
    if len(values["character"]) != num_symbols:
        raise CheckpointMismatchError(
            f"--character has {len(values['character'])} symbols, but the head of {source} predicts {num_symbols} "
            f"(and [E]): give the checkpoint's charset, in its order (to change it, convert first, then fine-tune "
            f"with --FT --character ...)."
        )
    if "img_h" not in values or "img_w" not in values:
        raise CheckpointMismatchError(f"The encoder of {source} has {num_tokens} positions of {patch_h}x{patch_w} "
                                      f"patches, which fit no image size strhub uses: give --imgH and --imgW.")
    if (values["img_h"] // patch_h) * (values["img_w"] // patch_w) != num_tokens:
        raise CheckpointMismatchError(
            f"--imgH {values['img_h']} --imgW {values['img_w']} make {(values['img_h'] // patch_h)}x"
            f"{(values['img_w'] // patch_w)} patches of {patch_h}x{patch_w}, but the encoder of {source} has "
            f"{num_tokens} learned positions: give the image size it was trained at (strhub: --imgH 32 --imgW 128)."
        )
    values["sensitive"] = any(symbol.isupper() for symbol in values["character"])
    return ModelConfig(**values)


def read_strhub_model(path: str | os.PathLike, **options: Any) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """A strhub checkpoint's ``ModelConfig`` (``strhub_config`` with ``options``) and its state dict in our keys."""
    state_dict, hparams = read_strhub_checkpoint(path)
    config = strhub_config(state_dict, hparams, repr(os.fspath(path)), **options)
    return config, strhub_to_model_state_dict(state_dict, config)


def strhub_to_model_state_dict(state_dict: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """strhub's keys (prefix removed) -> ours: the encoder under ``FeatureExtraction.``, the decoder (PARSeq) or
    the classifier (ViTSTR) under ``Prediction.``."""
    mapped = {}
    for key, value in state_dict.items():
        if config.prediction == "PARSeq":
            name = ("FeatureExtraction." + key.removeprefix("encoder.")) if key.startswith("encoder.") else \
                "Prediction." + key  # fmt: skip
        else:
            name = ("Prediction." + key) if key.startswith("head.") else "FeatureExtraction." + key
        mapped[name] = value
    return mapped
