"""Command-line plumbing shared by ``scripts/``: options derived from the config dataclasses (each field is written
once, in ``config.py``, with DTRB's CamelCase name, its snake_case alias and its help), ``--config FILE``, and error
reporting that says what is wrong without a traceback."""

from __future__ import annotations

import argparse
import difflib
import json
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from .config import DataConfig, ModelConfig, TrainConfig
from .decoding import DecodingOptions, read_lexicon
from .fastpath import PRECISIONS, check_precision
from .loading import load_model
from .registry import STAGE_KINDS, list_stages

_TYPES = {"str": str, "int": int, "float": float, "bool": bool}


@dataclass(frozen=True)
class Option:
    """One command-line option, derived from a config dataclass field."""

    dest: str
    flags: tuple[str, ...]
    kind: type
    default: Any
    help: str

    @property
    def is_switch(self) -> bool:
        return self.kind is bool


def _optional_bool(value: str) -> bool:
    """The type of an optional boolean flag (``--decode_ar false``): ``str2bool``."""
    return str2bool(value)


def dataclass_options(cls: type) -> list[Option]:
    """The options of a config dataclass: every field made with ``config.option`` (flags, help) or plainly
    (``--<name>``), its type read from the annotation's first member (``int | None`` -> int)."""
    options = []
    for item in fields(cls):
        if not item.metadata.get("cli", True):
            continue
        kind = _TYPES[str(item.type).split("|")[0].strip()]
        if kind is bool and item.default is None:  # an optional boolean: a value flag, --decode_ar false
            kind = _optional_bool
        if kind is bool and item.default is not False:
            raise TypeError(f"{cls.__name__}.{item.name}: boolean options must default to False (a --flag switch).")
        flags = tuple(item.metadata.get("flags") or ()) or (f"--{item.name}",)
        options.append(Option(item.name, flags, kind, item.default, item.metadata.get("help", "")))
    return options


MODEL_OPTIONS = dataclass_options(ModelConfig)
DATA_OPTIONS = dataclass_options(DataConfig)
TRAIN_OPTIONS = dataclass_options(TrainConfig)


def _help(option: Option) -> str:
    if option.dest in STAGE_KINDS:
        return " | ".join(list_stages(option.dest))
    shown = option.default not in (None, "", False) and "default" not in option.help
    return f"{option.help} (default {option.default})" if shown else option.help


def add_options(group: argparse._ActionsContainer, options: list[Option], *, unset_defaults: bool = False) -> None:
    """Add ``options`` to a parser or group; with ``unset_defaults`` every default is ``None`` (or False), so that
    a value given on the command line can be told from one left out."""
    for option in options:
        if option.is_switch:
            group.add_argument(*option.flags, dest=option.dest, action="store_true", help=_help(option))
        else:
            default = None if unset_defaults else option.default
            group.add_argument(*option.flags, dest=option.dest, type=option.kind, default=default, help=_help(option))


def add_model_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add DTRB's model flags (derived from ``ModelConfig``). Unset flags stay ``None`` so callers can tell them
    from defaults."""
    group = parser.add_argument_group("model (DTRB's flags; needed for a DTRB .pth, whose file does not record them)")
    add_options(group, MODEL_OPTIONS, unset_defaults=True)
    group.add_argument("--rgb", action="store_true", help="RGB input (sets --input_channel 3)")
    return parser


def precision(value: str) -> str:
    """``--precision``'s type: ``auto``, ``fp32``, ``bf16``, ``fp16`` (accelerate's ``no`` is ``fp32``), or ``int8``
    (an int8 export's own)."""
    if str(value).lower() == "int8":
        return "int8"
    return check_precision(value, allow_auto=True)


def add_speed_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--precision`` (alias ``--mixed_precision``) and ``--compile`` for the inference scripts (test.py, demo.py)."""
    group = parser.add_argument_group("speed")
    group.add_argument("--precision", "--mixed_precision", dest="precision", type=precision, default=None,
                       help=f"forward pass under autocast: auto | {' | '.join(PRECISIONS)} (default: fp32, DTRB's, "
                            f"or an exported .onnx's own; losses, CTC, the TPS grid and decoding stay fp32). auto: "
                            f"the fastest that keeps the measured accuracy on this machine (bf16 on a GPU with bf16 "
                            f"or a CPU with AVX512-BF16 or AMX, for CTC models; else fp32)")  # fmt: skip
    group.add_argument("--compile", action="store_true",
                       help="torch.compile the encoder (CNN + BiLSTM) first; the attention decoder stays eager. "
                            "Compilation takes seconds to minutes and pays on large runs")  # fmt: skip
    return parser


def model_values(args: argparse.Namespace) -> dict[str, Any]:
    """The model flags given on the command line, as ``ModelConfig`` keyword arguments."""
    given = {}
    for option in MODEL_OPTIONS:
        value = getattr(args, option.dest)
        if (value is not None and not option.is_switch) or value is True:
            given[option.dest] = value
    return given


def model_config_from_args(args: argparse.Namespace, require_stages: bool = True) -> ModelConfig | None:
    """The ``ModelConfig`` the flags describe; ``None`` when no stage is given and ``require_stages`` is False.

    Raises:
        ValueError: when stages are missing or a value is invalid (the message names the flag).
    """
    given = model_values(args)
    missing = [name for name in STAGE_KINDS if name not in given]
    if missing:
        if not require_stages and len(missing) == len(STAGE_KINDS):
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
    return ModelConfig(**given)


def add_decoding_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--beam_width --allowlist --blocklist --lexicon FILE --pattern --min_confidence`` (demo and evaluation)."""
    group = parser.add_argument_group("decoding")
    group.add_argument("--beam_width", type=int, default=1,
                       help="hypotheses kept per image: CTC prefix / attention beam search (default 1: greedy)")
    group.add_argument("--allowlist", help="the only symbols the output may contain, e.g. 0123456789")
    group.add_argument("--blocklist", help="symbols the output may not contain")
    group.add_argument("--lexicon", metavar="FILE", help="a word list (one word per line): the output is one of them")
    group.add_argument("--pattern", help=r"a regular expression the whole output must match, e.g. '[A-Z]{2}\d{4}'")
    group.add_argument("--min_confidence", type=float,
                       help="abstain below this confidence (the text is kept and marked abstained)")  # fmt: skip
    return parser


def decoding_options_from_args(args: argparse.Namespace) -> DecodingOptions:
    """The ``DecodingOptions`` of ``add_decoding_arguments``' flags (the lexicon read from its file)."""
    lexicon = None
    if args.lexicon is not None:
        if not Path(args.lexicon).is_file():
            raise FileNotFoundError(f"--lexicon {args.lexicon!r} is not a file: give a text file, one word per line.")
        lexicon = read_lexicon(args.lexicon)
    return DecodingOptions(args.beam_width, args.allowlist, args.blocklist, lexicon, args.pattern,
                           args.min_confidence)  # fmt: skip


def model_flags_given(args: argparse.Namespace) -> list[str]:
    """The model flags set on the command line (to warn that a model folder ignores them)."""
    flags = [option.flags[0] for option in MODEL_OPTIONS if option.dest in model_values(args)]
    return flags + (["--rgb"] if args.rgb else [])


#: Model flags that a saved model's own value yields to: PARSeq's decoding mode, chosen when loading
#: (``apply_decoding_flags``).
DECODING_MODE_FLAGS = ("decode_ar", "refine_iters")


def apply_decoding_flags(args: argparse.Namespace, model: Any) -> None:
    """``--decode_ar`` / ``--refine_iters`` given with a saved model set its decoding mode (PARSeq's; any other head
    refuses them, naming the flag)."""
    model.set_decoding(decode_ar=getattr(args, "decode_ar", None), refine_iters=getattr(args, "refine_iters", None))


def check_model_flags(
    args: argparse.Namespace, config: ModelConfig, source: str, *, evaluation_flags: Sequence[str] = ()
) -> None:
    """Model flags given with a model that records its own configuration (a folder or Hub id) must agree with it.

    A flag with the model's own value is accepted; one with another value is an error, never silently ignored.
    ``evaluation_flags`` (``test.py``'s ``sensitive``) are the script's own and not checked here.

    Raises:
        ValueError: naming each flag, its value and the model's, and what to do instead.
    """
    given = {k: v for k, v in model_values(args).items() if k not in evaluation_flags and k not in DECODING_MODE_FLAGS}
    if args.rgb:
        given["input_channel"] = 3
    if not given:
        return
    try:
        wanted = ModelConfig(**{**asdict(config), **given})
    except ValueError as error:
        raise ValueError(f"The model flags given with {source} are not a valid configuration: {error}") from None
    spelled = {option.dest: option.flags[0] for option in MODEL_OPTIONS}
    differ = [
        f"{spelled[name]} {getattr(wanted, name)!r} (the model has {getattr(config, name)!r})"
        for name in given
        if getattr(wanted, name) != getattr(config, name)
    ]
    if "input_channel" in given and wanted.input_channel != config.input_channel and args.rgb:
        differ = [d.replace("--input_channel", "--rgb: --input_channel") for d in differ]
    if differ:
        raise ValueError(
            f"{source} records its own configuration (config.json), and these flags disagree with it: "
            f"{'; '.join(differ)}. Leave them out (the model is read as it was trained), or, to change the charset, "
            f"size or case mode, fine-tune it: scripts/train.py --saved_model {source} --FT with the new flags."
        )


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
    except (ValueError, OSError) as error:  # FileNotFoundError, PermissionError, a full disk ...
        if not getattr(error, "quiet", False):  # quiet: another process printed the error
            print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def build_train_parser() -> argparse.ArgumentParser:
    """train.py's parser: every field of ``DataConfig`` and ``TrainConfig``, plus the model flags."""
    parser = argparse.ArgumentParser(
        description="Train a DTRB four-stage model with Accelerate: accelerate launch scripts/train.py ...",
        allow_abbrev=False,
    )
    parser.add_argument("--config", help="YAML or JSON file of flag values (the command line wins)")
    add_options(parser.add_argument_group("data (DTRB's train.py flags)"), DATA_OPTIONS)
    add_options(parser.add_argument_group("training (DTRB's train.py flags)"), TRAIN_OPTIONS)
    add_model_arguments(parser)
    return parser


def _config_file_defaults(parser: argparse.ArgumentParser, path: str) -> dict[str, Any]:
    """Read ``--config FILE``: keys are flag names (DTRB or snake_case, without dashes)."""

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"--config file not found: {path!r}")
    text = file.read_text(encoding="utf-8")
    try:
        values = json.loads(text) if file.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        kind = "JSON" if file.suffix == ".json" else "YAML"
        raise ValueError(f"--config {path!r} is not valid {kind}: {reason}") from None
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
        defaults[action.dest] = _config_value(action, key, value, path)
    if unknown:
        names = sorted(name for name, action in by_name.items() if action.dest not in ("help", "config"))
        hints = [f"{key!r} -> {close[0]!r}" for key in unknown
                 if (close := difflib.get_close_matches(str(key), names, n=1, cutoff=0.75))]  # fmt: skip
        hint = f" Did you mean: {', '.join(hints)}?" if hints else ""
        raise ValueError(f"Unknown keys in --config {path!r}: {unknown}.{hint} Use the flag names, e.g. batch_size, "
                         f"imgH.")  # fmt: skip
    return defaults


_CONFIG_BOOLEANS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def _config_value(action: argparse.Action, key: str, value: Any, path: str) -> Any:
    """A ``--config`` value checked against its flag: a switch takes a real boolean, or one of the strings
    true/false/yes/no/1/0 (so ``"no"`` is never taken as true); any other flag its own type."""
    if isinstance(action, argparse._StoreTrueAction):
        if isinstance(value, bool):
            return value
        if isinstance(value, (str, int)) and str(value).strip().lower() in _CONFIG_BOOLEANS:
            return _CONFIG_BOOLEANS[str(value).strip().lower()]
        raise ValueError(f"--config {path!r}: {key} is a switch and takes true or false, got {value!r}.")
    if value is None or action.type is None:
        return value
    if action.dest == "synth" and isinstance(value, dict):  # the engine's options, written as a mapping
        return json.dumps(value, sort_keys=True)
    if isinstance(value, bool) or isinstance(value, (list, dict)):
        raise ValueError(f"--config {path!r}: {key} takes a {action.type.__name__}, got {value!r}.")
    try:
        return action.type(value)
    except (TypeError, ValueError):
        raise ValueError(f"--config {path!r}: {key} takes a {action.type.__name__}, got {value!r}.") from None


def parse_train_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse train.py's command line; ``--config FILE`` values become defaults, so the command line wins."""
    parser = build_train_parser()
    pre, _ = parser.parse_known_args(argv)
    if pre.config:
        parser.set_defaults(**_config_file_defaults(parser, pre.config))
    return parser.parse_args(argv)


def train_configs_from_args(args: argparse.Namespace) -> tuple[ModelConfig, DataConfig, TrainConfig]:
    """``(ModelConfig, DataConfig, TrainConfig)`` from train.py's arguments.

    Without stage flags, a ``--saved_model`` folder or Hub id supplies the architecture, and the model flags given
    (e.g. a new ``--character`` with ``--FT``) override it. ``--sensitive`` alone keeps the model's own charset (it
    never swaps in DTRB's 94 symbols behind a saved model's back).
    """
    model_config = model_config_from_args(args, require_stages=not args.saved_model)
    if model_config is None:
        if Path(args.saved_model).is_file():
            model_config_from_args(args)  # raises: a DTRB .pth needs its stages
        base = asdict(load_model(args.saved_model).config)
        overrides = model_values(args)
        if args.rgb:
            overrides["input_channel"] = 3
        model_config = ModelConfig(**{**base, **overrides})  # --sensitive alone keeps the model's own charset
        if model_config.sensitive and not any(c.isupper() for c in model_config.character):
            warnings.warn(
                f"--sensitive with {args.saved_model!r}, whose charset has no upper-case letter: upper-case letters "
                f"will be removed from the labels. To learn them, give the new charset with --character (e.g. "
                f"94_full) and --FT.",
                stacklevel=2,
            )
    data_config = DataConfig(**{option.dest: getattr(args, option.dest) for option in DATA_OPTIONS})
    train_config = TrainConfig(**{option.dest: getattr(args, option.dest) for option in TRAIN_OPTIONS})
    return model_config, data_config, train_config
