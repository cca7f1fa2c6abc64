"""Command-line plumbing shared by ``scripts/``: DTRB's model flags (CamelCase names with snake_case aliases) and
error reporting that says what is wrong without a traceback."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .config import ModelConfig
from .registry import list_stages

# (flags, dest, type, help); DTRB's spelling first, so `--help` shows the name DTRB users know.
_MODEL_FLAGS: list[tuple[tuple[str, ...], str, Any, str]] = [
    (("--Transformation", "--transformation"), "transformation", str, "None | TPS"),
    (("--FeatureExtraction", "--feature_extraction"), "feature_extraction", str, "VGG | RCNN | ResNet"),
    (("--SequenceModeling", "--sequence_modeling"), "sequence_modeling", str, "None | BiLSTM"),
    (("--Prediction", "--prediction"), "prediction", str, "CTC | Attn"),
    (("--num_fiducial",), "num_fiducial", int, "number of TPS fiducial points (default 20)"),
    (("--input_channel",), "input_channel", int, "input channels (default 1; --rgb sets 3)"),
    (("--output_channel",), "output_channel", int, "CNN output channels (default 512)"),
    (("--hidden_size",), "hidden_size", int, "LSTM hidden size (default 256)"),
    (("--imgH", "--img_h"), "img_h", int, "input height (default 32)"),
    (("--imgW", "--img_w"), "img_w", int, "input width (default 100)"),
    (("--character",), "character", str, "charset (default 0-9a-z; '94_full' or --sensitive for DTRB's 94 symbols)"),
    (("--batch_max_length",), "batch_max_length", int, "maximum label length (default 25)"),
]
_MODEL_SWITCHES: list[tuple[tuple[str, ...], str, str]] = [
    (("--PAD", "--pad"), "pad", "keep the aspect ratio and right-pad instead of stretching"),
    (("--rgb",), "rgb", "RGB input (sets --input_channel 3)"),
    (("--sensitive",), "sensitive", "case-sensitive; alone it selects DTRB's 94-symbol charset"),
]
STAGE_FIELDS = ("transformation", "feature_extraction", "sequence_modeling", "prediction")


def add_model_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add DTRB's model flags. Unset flags stay ``None`` so callers can tell them from defaults."""
    group = parser.add_argument_group(
        "model (DTRB's flags; needed for a DTRB .pth, whose file does not record them)"
    )
    choices = list_stages()
    for flags, dest, kind, help_text in _MODEL_FLAGS:
        if dest in STAGE_FIELDS:
            help_text = " | ".join(choices[dest])
        group.add_argument(*flags, dest=dest, type=kind, default=None, help=help_text)
    for flags, dest, help_text in _MODEL_SWITCHES:
        group.add_argument(*flags, dest=dest, action="store_true", help=help_text)
    return parser


def model_config_from_args(args: argparse.Namespace, require_stages: bool = True) -> ModelConfig | None:
    """The ``ModelConfig`` the flags describe; ``None`` when no stage is given and ``require_stages`` is False.

    Raises:
        ValueError: when stages are missing or a value is invalid (the message names the flag).
    """
    given = {dest: getattr(args, dest) for _, dest, _, _ in _MODEL_FLAGS if getattr(args, dest) is not None}
    missing = [name for name in STAGE_FIELDS if name not in given]
    if missing:
        if not require_stages and len(missing) == len(STAGE_FIELDS):
            return None
        names = ", ".join("--" + "".join(part.capitalize() for part in m.split("_")) for m in missing)
        raise ValueError(
            f"Missing {names}: a DTRB .pth does not record its architecture, so all four stages must be given "
            f"(e.g. --Transformation TPS --FeatureExtraction ResNet --SequenceModeling BiLSTM --Prediction Attn)."
        )
    if args.rgb:
        if given.get("input_channel", 3) != 3:
            raise ValueError(f"--rgb means 3 input channels, but --input_channel {given['input_channel']} was given.")
        given["input_channel"] = 3
    return ModelConfig(**given, pad=args.pad, sensitive=args.sensitive)


def model_flags_given(args: argparse.Namespace) -> list[str]:
    """The model flags set on the command line (to warn that a model folder ignores them)."""
    flags = [flags[0] for flags, dest, _, _ in _MODEL_FLAGS if getattr(args, dest) is not None]
    return flags + [flags[0] for flags, dest, _ in _MODEL_SWITCHES if getattr(args, dest)]


def str2bool(value: str | bool) -> bool:
    """``--flag=False`` / ``--flag true`` / ``--flag 0`` as DTRB's fire-based scripts accepted them."""
    if isinstance(value, bool):
        return value
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "y", "on"):
        return True
    if lowered in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (True/False), got {value!r}")


def run(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run a script's ``main``: user errors print ``error: ...`` on stderr and exit 1, without a traceback."""
    try:
        return main(argv)
    except (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
