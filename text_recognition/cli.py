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
    group = parser.add_argument_group("model (DTRB's flags; needed for a DTRB .pth, whose file does not record them)")
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


# Training flags: (DTRB name first, then aliases), dest, type, default, help.
_TRAIN_FLAGS: list[tuple[tuple[str, ...], str, Any, Any, str]] = [
    (("--train_data",), "train_data", str, None, "training data: LMDB tree, datasets folders or Hub dataset id"),
    (("--valid_data",), "valid_data", str, None, "validation data (every source under it is used)"),
    (("--select_data",), "select_data", str, "MJ-ST", "training sources, '-'-separated prefixes (default MJ-ST)"),
    (("--batch_ratio",), "batch_ratio", str, "0.5-0.5", "share of each source in every batch (default 0.5-0.5)"),
    (("--total_data_usage_ratio",), "total_data_usage_ratio", float, 1.0, "fraction of each source used"),
    (("--workers",), "workers", int, 4, "data loading workers per process (default 4)"),
    (("--batch_size",), "batch_size", int, 192, "batch size per process (default 192)"),
    (("--exp_name",), "exp_name", str, None, "run name (default {stages}-Seed{seed})"),
    (("--output_dir",), "output_dir", str, "saved_models", "runs go to output_dir/exp_name (default saved_models)"),
    (("--manualSeed", "--manual_seed", "--seed"), "seed", int, 1111, "random seed (default 1111)"),
    (("--num_iter",), "num_iter", int, 300_000, "optimizer steps (default 300000)"),
    (("--valInterval", "--val_interval"), "val_interval", int, 2000, "validate every N steps (default 2000)"),
    (("--saved_model",), "saved_model", str, "", "start from a model folder, Hub id or DTRB .pth"),
    (("--lr",), "lr", float, 1.0, "learning rate (default 1.0 for Adadelta; ~1e-3 with --adam)"),
    (("--beta1",), "beta1", float, 0.9, "Adam beta1 (default 0.9)"),
    (("--rho",), "rho", float, 0.95, "Adadelta rho (default 0.95)"),
    (("--eps",), "eps", float, 1e-8, "Adadelta eps (default 1e-8)"),
    (("--grad_clip",), "grad_clip", float, 5.0, "gradient norm clipping (default 5)"),
    (("--gradient_accumulation_steps",), "gradient_accumulation_steps", int, 1, "batches per optimizer step"),
    (("--checkpointing_steps",), "checkpointing_steps", int, None, "save a resumable checkpoint every N steps"),
    (("--checkpoints_total_limit",), "checkpoints_total_limit", int, None, "keep at most N checkpoints"),
    (("--resume_from_checkpoint",), "resume_from_checkpoint", str, None, "a checkpoint folder or 'latest'"),
    (("--log_interval",), "log_interval", int, 100, "log the training loss every N steps (default 100)"),
    (("--report_to",), "report_to", str, None, "tensorboard | none (default: tensorboard when installed)"),
    (("--hub_model_id",), "hub_model_id", str, None, "Hub repo for --push_to_hub, e.g. user/my-model"),
]
_TRAIN_SWITCHES: list[tuple[tuple[str, ...], str, str]] = [
    (("--FT", "--ft"), "ft", "fine-tune: load what fits from --saved_model and re-initialise the rest"),
    (("--adam",), "adam", "Adam instead of Adadelta"),
    (("--baiduCTC", "--baidu_ctc"), "baidu_ctc", "Baidu warp-ctc's loss (summed, divided by batch size)"),
    (("--data_filtering_off",), "data_filtering_off", "keep every sample (no length/charset filtering)"),
    (("--push_to_hub",), "push_to_hub", "push each new best-accuracy model to --hub_model_id"),
    (("--hub_private_repo",), "hub_private_repo", "create the Hub repo as private"),
]


def build_train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train a DTRB four-stage model with Accelerate: accelerate launch scripts/train.py ...",
        allow_abbrev=False,
    )
    parser.add_argument("--config", help="YAML or JSON file of flag values (the command line wins)")
    group = parser.add_argument_group("training (DTRB's train.py flags)")
    for flags, dest, kind, default, help_text in _TRAIN_FLAGS:
        group.add_argument(*flags, dest=dest, type=kind, default=default, help=help_text)
    for flags, dest, help_text in _TRAIN_SWITCHES:
        group.add_argument(*flags, dest=dest, action="store_true", help=help_text)
    add_model_arguments(parser)
    return parser


def _config_file_defaults(parser: argparse.ArgumentParser, path: str) -> dict[str, Any]:
    """Read ``--config FILE``: keys are flag names (DTRB or snake_case, without dashes)."""
    import json
    from pathlib import Path

    import yaml

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"--config file not found: {path!r}")
    text = file.read_text(encoding="utf-8")
    values = json.loads(text) if file.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(values, dict):
        raise ValueError(f"--config {path!r} must hold a mapping of flag names to values.")
    by_name = {
        option.lstrip("-"): action for action in parser._actions for option in action.option_strings
    }  # every spelling -> its action
    defaults, unknown = {}, []
    for key, value in values.items():
        action = by_name.get(str(key))
        if action is None or action.dest in ("help", "config"):
            unknown.append(key)
            continue
        if action.type is not None and value is not None and not isinstance(value, bool):
            value = action.type(value)
        defaults[action.dest] = value
    if unknown:
        raise ValueError(f"Unknown keys in --config {path!r}: {unknown}. Use the flag names, e.g. batch_size, imgH.")
    return defaults


def parse_train_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse train.py's command line; ``--config FILE`` values become defaults, so the command line wins."""
    parser = build_train_parser()
    pre, _ = parser.parse_known_args(argv)
    if pre.config:
        parser.set_defaults(**_config_file_defaults(parser, pre.config))
    return parser.parse_args(argv)


def train_configs_from_args(args: argparse.Namespace):
    """``(ModelConfig, DataConfig, TrainConfig)`` from train.py's arguments.

    Without stage flags, a ``--saved_model`` folder or Hub id supplies the architecture, and the model flags given
    (e.g. a new ``--character`` with ``--FT``) override it.
    """
    from dataclasses import asdict

    from .config import DataConfig, TrainConfig

    model_config = model_config_from_args(args, require_stages=not args.saved_model)
    if model_config is None:
        from pathlib import Path

        from .model import load_model

        if Path(args.saved_model).is_file():
            model_config_from_args(args)  # raises: a DTRB .pth needs its stages
        base = asdict(load_model(args.saved_model).config)
        overrides = {dest: getattr(args, dest) for _, dest, _, _ in _MODEL_FLAGS if getattr(args, dest) is not None}
        if args.rgb:
            overrides["input_channel"] = 3
        if args.sensitive and "character" not in overrides:
            overrides["character"] = None  # --sensitive alone selects the 94-symbol set
        overrides.update({name: True for name in ("pad", "sensitive") if getattr(args, name)})
        model_config = ModelConfig(**{**base, **overrides})
    data_config = DataConfig(
        train_data=args.train_data or "", valid_data=args.valid_data or "", select_data=args.select_data,
        batch_ratio=args.batch_ratio, total_data_usage_ratio=args.total_data_usage_ratio,
        data_filtering_off=args.data_filtering_off, workers=args.workers,
    )  # fmt: skip
    train_fields = {f: getattr(args, f) for f in TrainConfig.__dataclass_fields__ if hasattr(args, f)}
    return model_config, data_config, TrainConfig(**train_fields)
