"""Model configuration: the one object written to ``config.json`` and read back by ``from_pretrained``.

``ModelConfig`` is flat and JSON-native on purpose: ``PyTorchModelHubMixin`` rebuilds it from ``config.json`` with
plain keyword arguments, and it must rebuild exactly what was saved.
"""

from __future__ import annotations

import math
import string
import warnings
from collections import Counter
from dataclasses import MISSING, asdict, dataclass, field, fields
from collections.abc import Sequence
from typing import Any

from . import stages  # noqa: F401  (registers every stage choice before a config names one)
from .registry import canonical_stage_name
from .stage_fields import resolve_head_fields, resolve_vit_fields

#: DTRB's default charset: case-insensitive alphanumerics (36 symbols).
CHARSET_36 = "0123456789abcdefghijklmnopqrstuvwxyz"
#: DTRB's ``--sensitive`` charset: ``string.printable[:-6]`` (digits, lower, upper, 32 punctuation; 94 symbols).
CHARSET_94 = string.printable[:-6]
#: Named presets accepted for ``character`` (neither name is itself a valid charset: both repeat a symbol).
CHARSET_PRESETS = {"36_lowercase": CHARSET_36, "94_full": CHARSET_94}



def option(default: Any = MISSING, *flags: str, help: str, cli: bool = True) -> Any:
    """A dataclass field that is also a command-line option: the one place its name, default and help are written.

    Args:
        default: the field's default (also the flag's, except model flags, which stay unset so that a saved model's
            own values can be told from flags given on purpose).
        flags: the spellings, DTRB's first (``"--imgH", "--img_h"``); default ``--<field name>``.
        help: the ``--help`` text; the default is appended to it.
        cli: False for fields that are no flag (``config_version``).
    """
    return field(default=default, metadata={"flags": flags, "help": help, "cli": cli})


# Stage name -> the divisor ``output_channel`` must be a multiple of (inner widths are fractions of it).
_CHANNEL_DIVISORS = {"VGG": 8, "RCNN": 8, "ResNet": 16}


@dataclass
class ModelConfig:
    """The architecture of a DTRB four-stage model, as in ``clovaai/deep-text-recognition-benchmark``.

    Args:
        transformation: ``"None"`` or ``"TPS"`` (``--Transformation``).
        feature_extraction: ``"VGG"``, ``"RCNN"``, ``"ResNet"`` or ``"ViT"`` (``--FeatureExtraction``).
        sequence_modeling: ``"None"`` or ``"BiLSTM"`` (``--SequenceModeling``).
        prediction: ``"CTC"``, ``"Attn"``, ``"PARSeq"`` or ``"ViTSTR"`` (``--Prediction``). Stage names are
            case-insensitive.
        num_fiducial: TPS fiducial points F (even, at least 4).
        input_channel: 1 (grayscale) or 3 (RGB, DTRB's ``--rgb``).
        output_channel: CNN output channels; inner widths are fractions of it.
        hidden_size: BiLSTM and attention-decoder hidden size.
        img_h: network input height (``--imgH``, at least 32).
        img_w: network input width (``--imgW``).
        pad: keep the aspect ratio and right-pad (``--PAD``) instead of stretching to ``img_w``.
        character: the charset, or a preset name (``"36_lowercase"``, ``"94_full"``). ``None`` picks DTRB's
            36-symbol set, or the 94-symbol set when ``sensitive`` is set. An explicit charset always wins over
            ``sensitive`` (DTRB silently replaced it).
        sensitive: case-sensitive labels (DTRB's ``--sensitive``).
        batch_max_length: maximum label length; attention decodes ``batch_max_length + 1`` steps.
        temperature: confidences are computed from ``softmax(logits / temperature)``; 1.0 (DTRB's) until a
            calibration fits it (``scripts/calibrate.py``, or training at its end). Predictions do not depend on it.
        config_version: format version of this config, for future migrations.
        vit_size, patch_h, patch_w, embed_dim, encoder_depth, encoder_heads, encoder_mlp_ratio: the ViT encoder
            (``--FeatureExtraction ViT``; ``None`` otherwise): a named size, ``"tiny"`` or ``"small"`` (strhub's
            parseq-tiny and parseq), fills in whatever is not given.
        decoder_depth, decoder_heads, decoder_mlp_ratio, dropout, perm_num, perm_forward, perm_mirrored: the PARSeq
            decoder and its permutation training (``--Prediction PARSeq``; ``None`` otherwise; strhub's defaults).
        decode_ar, refine_iters: PARSeq's decoding mode: autoregressive or all positions at once, then that many
            refinement passes (default ``True``, 1, strhub's).

    Raises:
        ValueError: for an unknown stage name (with the choices and a close match), an odd or too small
            ``num_fiducial``, an empty charset or one with duplicate symbols, a non-positive size, an
            ``input_channel`` other than 1 or 3, or an ``output_channel`` the feature extractor cannot divide.
    """

    transformation: str = option("TPS", "--Transformation", "--transformation", help="Transformation stage")
    feature_extraction: str = option("ResNet", "--FeatureExtraction", "--feature_extraction",
                                     help="FeatureExtraction stage")
    sequence_modeling: str = option("BiLSTM", "--SequenceModeling", "--sequence_modeling",
                                    help="SequenceModeling stage")
    prediction: str = option("Attn", "--Prediction", "--prediction", help="Prediction stage")
    num_fiducial: int = option(20, help="number of TPS fiducial points")
    input_channel: int = option(1, help="input channels (--rgb sets 3)")
    output_channel: int = option(512, help="CNN output channels")
    hidden_size: int = option(256, help="LSTM hidden size")
    img_h: int = option(32, "--imgH", "--img_h", help="input height")
    img_w: int = option(100, "--imgW", "--img_w", help="input width")
    pad: bool = option(False, "--PAD", "--pad", help="keep the aspect ratio and right-pad instead of stretching")
    character: str | None = option(
        None, help="charset (default 0-9a-z; '94_full' or --sensitive alone for DTRB's 94 symbols)"
    )
    sensitive: bool = option(False, help="case-sensitive; alone it selects DTRB's 94-symbol charset")
    batch_max_length: int = option(25, help="maximum label length")
    temperature: float = option(1.0, help="confidence temperature (fitted by calibration)", cli=False)
    config_version: int = option(1, help="format version of config.json", cli=False)
    # ViT feature extraction (None for the other stages; resolved from vit_size for ViT)
    vit_size: str | None = option(None, help="ViT size: tiny | small (strhub's parseq-tiny, parseq; default small)")
    patch_h: int | None = option(None, help="ViT patch height (default 4)")
    patch_w: int | None = option(None, help="ViT patch width (default 8)")
    embed_dim: int | None = option(None, help="ViT width (default from --vit_size: 192 tiny, 384 small)")
    encoder_depth: int | None = option(None, help="ViT blocks (default 12)")
    encoder_heads: int | None = option(None, help="ViT attention heads (default from --vit_size: 3 tiny, 6 small)")
    encoder_mlp_ratio: float | None = option(None, help="ViT MLP expansion (default 4)")
    # PARSeq prediction (None for the other heads)
    decoder_depth: int | None = option(None, help="PARSeq decoder layers (default 1)")
    decoder_heads: int | None = option(None, help="PARSeq decoder heads (default: its width / 32)")
    decoder_mlp_ratio: float | None = option(None, help="PARSeq decoder MLP expansion (default 4)")
    dropout: float | None = option(None, help="PARSeq decoder dropout (default 0.1)")
    perm_num: int | None = option(None, help="PARSeq training permutations per batch (default 6)")
    perm_forward: bool | None = option(None, help="PARSeq: always train the left-to-right order (default true)")
    perm_mirrored: bool | None = option(None, help="PARSeq: pair each order with its reverse (default true)")
    decode_ar: bool | None = option(None, help="PARSeq: decode autoregressively (default true; false: all at once)")
    refine_iters: int | None = option(None, help="PARSeq: cloze refinement passes after decoding (default 1)")

    def __post_init__(self) -> None:
        self.transformation = canonical_stage_name("transformation", self.transformation)
        self.feature_extraction = canonical_stage_name("feature_extraction", self.feature_extraction)
        self.sequence_modeling = canonical_stage_name("sequence_modeling", self.sequence_modeling)
        self.prediction = canonical_stage_name("prediction", self.prediction)

        for name in ("num_fiducial", "input_channel", "output_channel", "hidden_size", "img_h", "img_w",
                     "batch_max_length"):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}.")
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}.")
        if self.input_channel not in (1, 3):
            raise ValueError(
                f"input_channel must be 1 (grayscale) or 3 (RGB, DTRB's --rgb), got {self.input_channel}."
            )
        if self.num_fiducial < 4 or self.num_fiducial % 2:
            raise ValueError(
                f"num_fiducial must be even and at least 4 (TPS puts F/2 points on each of the top and bottom "
                f"edges), got {self.num_fiducial}."
            )
        resolve_vit_fields(self)
        resolve_head_fields(self)
        if self.feature_extraction != "ViT" and self.img_h < 32:
            raise ValueError(
                f"img_h must be at least 32: the CNNs downsample the height by 16 and need 2 rows left, got "
                f"{self.img_h}."
            )
        if self.feature_extraction != "ViT" and self.img_w < 16:
            raise ValueError(f"img_w must be at least 16 for the CNNs to produce any column, got {self.img_w}.")
        divisor = _CHANNEL_DIVISORS.get(self.feature_extraction, 1)
        if self.output_channel % divisor:
            raise ValueError(
                f"output_channel must be a multiple of {divisor} for {self.feature_extraction} (its inner widths "
                f"are output_channel/{divisor}, ...), got {self.output_channel}."
            )
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) or not (
            0 < self.temperature < float("inf")
        ):
            raise ValueError(f"temperature must be a positive finite number, got {self.temperature!r}.")
        self.temperature = float(self.temperature)
        if not isinstance(self.pad, bool) or not isinstance(self.sensitive, bool):
            raise ValueError(
                f"pad and sensitive must be booleans, got pad={self.pad!r}, sensitive={self.sensitive!r}."
            )

        if self.character is None:
            self.character = CHARSET_94 if self.sensitive else CHARSET_36
        elif self.character in CHARSET_PRESETS:
            self.character = CHARSET_PRESETS[self.character]
        if not isinstance(self.character, str) or not self.character:
            raise ValueError(f"character must be a non-empty string of symbols, got {self.character!r}.")
        duplicates = [symbol for symbol, count in Counter(self.character).items() if count > 1]
        if duplicates:
            raise ValueError(
                f"character has duplicate symbols {''.join(duplicates)!r}: each symbol must appear once, because "
                f"its position is its class id."
            )

    @property
    def prediction_in_features(self) -> int:
        """Width of the features the prediction head reads (the last stage before it)."""
        if self.sequence_modeling == "BiLSTM":
            return self.hidden_size
        return self.embed_dim if self.feature_extraction == "ViT" else self.output_channel

    @property
    def num_class(self) -> int:
        """Output classes: the charset plus the CTC blank, plus ``[GO]`` and ``[s]`` for attention, or plus ``[E]``
        for PARSeq and ViTSTR (whose ``[B]`` and ``[P]`` are inputs only)."""
        return len(self.character) + (2 if self.prediction == "Attn" else 1)

    @property
    def stage_string(self) -> str:
        """``"TPS-ResNet-BiLSTM-Attn"``: DTRB's model name, used for ``exp_name`` and card titles."""
        return "-".join((self.transformation, self.feature_extraction, self.sequence_modeling, self.prediction))

    @property
    def rgb(self) -> bool:
        return self.input_channel == 3

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build from a dict such as a ``config.json``; unknown keys are an error, not silently dropped."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown ModelConfig keys {unknown}. Known keys: {', '.join(sorted(known))}.")
        return cls(**data)

    @classmethod
    def from_stage_string(cls, stage_string: str, **kwargs: Any) -> ModelConfig:
        """``ModelConfig.from_stage_string("TPS-ResNet-BiLSTM-Attn", hidden_size=256)``."""
        parts = stage_string.split("-")
        if len(parts) != 4:
            raise ValueError(
                f"A stage string has four parts, Transformation-FeatureExtraction-SequenceModeling-Prediction "
                f"(e.g. 'TPS-ResNet-BiLSTM-Attn'), got {stage_string!r}."
            )
        return cls(*parts, **kwargs)


def parse_select_data(select_data: str | Sequence[str]) -> list[str]:
    """``"MJ-ST"`` (DTRB's spelling) or ``["MJ", "ST"]`` -> ``["MJ", "ST"]``."""
    tokens = select_data.split("-") if isinstance(select_data, str) else list(select_data)
    tokens = [token.strip() for token in tokens]
    if not tokens or any(not token for token in tokens):
        raise ValueError(
            f"select_data must name at least one source, e.g. 'MJ-ST' or ['MJ', 'ST']; got {select_data!r}."
        )
    return tokens


def parse_batch_ratio(batch_ratio: str | float | Sequence[float | str], num_sources: int) -> list[float]:
    """``"0.5-0.5"`` or ``[0.5, 0.5]`` -> ``[0.5, 0.5]``, one positive ratio per selected source."""
    if isinstance(batch_ratio, str):
        parts: Sequence[Any] = batch_ratio.split("-")
    elif isinstance(batch_ratio, (int, float)):
        parts = [batch_ratio]
    else:
        parts = list(batch_ratio)
    try:
        ratios = [float(part) for part in parts]
    except ValueError:
        raise ValueError(f"batch_ratio must be numbers such as '0.5-0.5', got {batch_ratio!r}.") from None
    if len(ratios) != num_sources:
        raise ValueError(
            f"batch_ratio has {len(ratios)} value(s) ({batch_ratio!r}) but select_data names {num_sources} source(s): "
            f"give one ratio per source, e.g. --select_data MJ-ST --batch_ratio 0.5-0.5."
        )
    if any(ratio <= 0 for ratio in ratios):
        raise ValueError(f"batch_ratio values must be positive, got {batch_ratio!r}.")
    return ratios


#: ``TrainConfig.optimizer`` and ``TrainConfig.scheduler`` choices.
OPTIMIZERS = ("adadelta", "adam", "adamw")
SCHEDULERS = ("constant", "cosine", "onecycle", "linear")
#: The model's stage attributes, the names ``--freeze`` takes.
STAGE_ATTRIBUTES = ("Transformation", "FeatureExtraction", "SequenceModeling", "Prediction")


def parse_stage_names(text: str | Sequence[str]) -> list[str]:
    """``"FeatureExtraction-SequenceModeling"`` (or a list; snake_case and any case accepted) -> the stage names.

    Raises:
        ValueError: for an unknown stage, listing them.
    """
    names = text.replace(",", "-").split("-") if isinstance(text, str) else list(text)
    by_key = {name.lower(): name for name in STAGE_ATTRIBUTES}
    by_key.update({"transformation": "Transformation", "feature_extraction": "FeatureExtraction",
                   "sequence_modeling": "SequenceModeling", "prediction": "Prediction"})  # fmt: skip
    unknown = [name for name in names if name.strip().lower() not in by_key]
    if unknown or not names:
        raise ValueError(f"Unknown stage(s) {unknown} to freeze. The stages are: {', '.join(STAGE_ATTRIBUTES)} "
                         f"(e.g. --freeze FeatureExtraction).")  # fmt: skip
    return list(dict.fromkeys(by_key[name.strip().lower()] for name in names))


SYNTH_TOKEN = "synth"  # the select_data token of the synthetic engine (data/synth_source.py)
DEFAULT_SHUFFLE_BLOCK = 2000  # --shuffle_block: samples of a stream shuffled together


@dataclass
class DataConfig:
    """Where the training and validation data come from and how sources are mixed (DTRB's data flags).

    ``select_data``/``batch_ratio`` take DTRB's ``"MJ-ST"``/``"0.5-0.5"`` spellings or lists.
    """

    train_data: str = option("", help="training data: LMDB tree, datasets folders or Hub dataset id")
    valid_data: str = option("", help="validation data (every source under it is used)")
    select_data: str | list[str] = option("MJ-ST", help="training sources, '-'-separated path prefixes")
    batch_ratio: str | list[float] = option("0.5-0.5", help="share of each source in every batch")
    total_data_usage_ratio: float = option(1.0, help="fraction of each source used")
    data_filtering_off: bool = option(False, help="keep every sample (no length/charset filtering)")
    workers: int = option(4, help="data loading workers per process")
    augment: bool = option(False, help="text-safe augmentation of the training images (geometric and photometric)")
    augment_strength: float = option(0.5, help="largest augmentation magnitude, in (0, 1] (with --augment)")
    streaming: bool = option(False, help="stream --train_data (a Hub dataset, or a local folder of Parquet "
                                         "files) instead of reading it whole; filtered on the fly, exactly resumable")
    shuffle_block: int = option(DEFAULT_SHUFFLE_BLOCK,
                                help="with --streaming: consecutive samples shuffled together (one block)")
    synth: str = option("", help="options of the synthetic engine (the select_data token 'synth'): a YAML/JSON file "
                                 "or inline JSON, e.g. '{\"languages\": [\"en\", \"de\"]}'")
    synth_valid_samples: int = option(1000, help="without --valid_data: held-out synthetic samples to validate on "
                                                 "(the select_data token 'synth' needed)")

    def __post_init__(self) -> None:
        tokens = parse_select_data(self.select_data)
        synthetic = SYNTH_TOKEN in tokens
        if not self.train_data and not all(token == SYNTH_TOKEN for token in tokens):
            raise ValueError("--train_data is required: a folder of LMDBs or datasets folders, or a Hub dataset id "
                             "(only --select_data synth, the synthetic engine alone, needs none).")  # fmt: skip
        if not self.valid_data and not synthetic:
            raise ValueError("--valid_data is required: a folder of LMDBs or datasets folders, or a Hub dataset id "
                             "(with --select_data synth, held-out synthetic samples are the default).")  # fmt: skip
        parse_batch_ratio(self.batch_ratio, len(tokens))
        if self.synth and not synthetic:
            raise ValueError("--synth sets the synthetic engine's options, but --select_data has no 'synth' token: "
                             "add it (e.g. --select_data synth-MJ --batch_ratio 0.5-0.5) or leave --synth out.")
        if self.synth_valid_samples < 1:
            raise ValueError(f"--synth_valid_samples must be at least 1, got {self.synth_valid_samples}.")
        if self.synth_valid_samples != 1000 and (self.valid_data or not synthetic):
            raise ValueError("--synth_valid_samples sizes the held-out synthetic validation, which is used only "
                             "with --select_data synth and no --valid_data; leave it out.")  # fmt: skip
        if synthetic and self.streaming:
            raise ValueError("--streaming reads stored datasets; the synthetic source (select_data 'synth') is "
                             "rendered on the fly and is not streamed: leave out --streaming, or 'synth'.")  # fmt: skip
        self.total_data_usage_ratio = float(self.total_data_usage_ratio)
        if not 0 < self.total_data_usage_ratio <= 1:
            raise ValueError(f"total_data_usage_ratio must be in (0, 1], got {self.total_data_usage_ratio}.")
        if self.workers < 0:
            raise ValueError(f"workers must be 0 or more, got {self.workers}.")
        if not 0 < self.augment_strength <= 1:
            raise ValueError(f"augment_strength must be in (0, 1] (0.5 is a good start), got {self.augment_strength}.")
        if self.shuffle_block < 1:
            raise ValueError(f"shuffle_block must be at least 1 (1: the stream's own order), got {self.shuffle_block}.")
        if not self.streaming and self.shuffle_block != DEFAULT_SHUFFLE_BLOCK:
            raise ValueError("--shuffle_block only applies with --streaming (an LMDB or datasets folder is shuffled "
                             "whole, every epoch).")  # fmt: skip
        if self.streaming and self.total_data_usage_ratio != 1:
            raise ValueError("--total_data_usage_ratio needs each source's size, which a stream does not give: leave "
                             "it at 1 with --streaming, or cut the dataset before streaming it.")  # fmt: skip


@dataclass
class TrainConfig:
    """How to train: DTRB's optimisation flags plus checkpointing, logging and Hub options.

    ``batch_size`` and ``workers`` are per process (DTRB multiplied them by the GPU count).
    ``num_iter``, ``val_interval`` and ``checkpointing_steps`` count optimizer steps.
    """

    output_dir: str = option("saved_models", help="runs go to output_dir/exp_name")
    exp_name: str | None = option(None, help="run name (default {stages}-Seed{seed})")
    seed: int = option(1111, "--manualSeed", "--manual_seed", "--seed", help="random seed")
    batch_size: int = option(192, help="batch size per process")
    num_iter: int = option(300_000, help="optimizer steps")
    val_interval: int = option(2000, "--valInterval", "--val_interval", help="validate every N steps")
    saved_model: str = option("", help="start from a model folder, Hub id or DTRB .pth")
    ft: bool = option(False, "--FT", "--ft", help="fine-tune --saved_model (a new charset resizes the head)")
    adam: bool = option(False, help="Adam instead of Adadelta (DTRB's flag; the same as --optimizer adam)")
    optimizer: str | None = option(None, help="adadelta | adam | adamw (default adadelta, DTRB's)")
    weight_decay: float = option(0.0, help="weight decay (decoupled for adamw)")
    scheduler: str = option("constant", help="learning-rate schedule: constant | cosine | onecycle | linear")
    warmup_steps: int = option(0, help="steps of linear warm-up from 0 (onecycle: its rising phase)")
    label_smoothing: float = option(0.0, help="label smoothing of the attention loss (Attn only)")
    freeze: str | None = option(None, help="stages to freeze, '-'-separated, e.g. Transformation-FeatureExtraction")
    early_stopping_patience: int | None = option(
        None, help="stop after this many validations without a better accuracy"
    )
    ema_decay: float | None = option(
        None, help="keep an exponential moving average of the weights (e.g. 0.999): it is validated and saved"
    )
    lr: float = option(1.0, help="learning rate (1.0 for Adadelta; ~1e-3 with --adam)")
    beta1: float = option(0.9, help="Adam beta1")
    rho: float = option(0.95, help="Adadelta rho")
    eps: float = option(1e-8, help="Adadelta eps")
    grad_clip: float = option(5.0, help="gradient norm clipping")
    baidu_ctc: bool = option(False, "--baiduCTC", "--baidu_ctc", help="Baidu warp-ctc's loss (summed, / batch size)")
    gradient_accumulation_steps: int = option(1, help="batches per optimizer step")
    checkpointing_steps: int | None = option(
        None, help="save a resumable checkpoint every N steps (default: at every validation and at the end)"
    )
    checkpoints_total_limit: int | None = option(None, help="keep at most N checkpoints (default 2)")
    resume_from_checkpoint: str | None = option(None, help="a checkpoint folder or 'latest'")
    overwrite_output_dir: bool = option(
        False, help="start afresh in a run folder that already holds a run (its checkpoints and bests are deleted)"
    )
    allow_config_change: bool = option(
        False, help="resume although batch size, data, seed or model differ from the checkpoint's run (logged)"
    )
    max_skipped_steps: int = option(
        25, help="stop after this many optimizer steps in a row skipped (non-finite loss or gradient, no image)"
    )
    log_interval: int = option(100, help="log the training loss (and a progress line off a terminal) every N steps")
    report_to: str | None = option(None, help="tensorboard | none (default: tensorboard when installed)")
    push_to_hub: bool = option(False, help="push each new best-accuracy model to --hub_model_id")
    hub_model_id: str | None = option(None, help="Hub repo for --push_to_hub, e.g. user/my-model")
    hub_private_repo: bool = option(False, help="create the Hub repo as private")
    compile: bool = option(False, help="torch.compile the encoder (CNN + BiLSTM; the attention decoder stays eager); "
                                       "compilation takes the first steps' time and pays on long runs")

    def __post_init__(self) -> None:
        for name in ("batch_size", "num_iter", "val_interval", "gradient_accumulation_steps", "log_interval",
                     "max_skipped_steps"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}.")
        for name in ("checkpointing_steps", "checkpoints_total_limit"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1 (or unset), got {getattr(self, name)}.")
        for name in ("lr", "grad_clip", "weight_decay", "beta1", "rho", "eps", "label_smoothing"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}.")
        if self.lr <= 0 or self.grad_clip <= 0:
            raise ValueError(f"lr and grad_clip must be positive, got lr={self.lr}, grad_clip={self.grad_clip}.")
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("--push_to_hub needs --hub_model_id (e.g. user/my-model).")
        if self.ft and not self.saved_model:
            raise ValueError("--FT fine-tunes a model: give it with --saved_model.")
        if self.adam and self.optimizer not in (None, "adam"):
            raise ValueError(f"--adam means --optimizer adam, but --optimizer {self.optimizer} was given.")
        self.optimizer = self.optimizer or ("adam" if self.adam else "adadelta")
        self.adam = self.optimizer == "adam"
        choices = {"optimizer": OPTIMIZERS, "scheduler": SCHEDULERS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"Unknown {name} {getattr(self, name)!r}. Choose one of: {', '.join(allowed)}.")
        if self.weight_decay < 0 or self.warmup_steps < 0:
            raise ValueError(
                f"weight_decay and warmup_steps must be >= 0, got {self.weight_decay}, {self.warmup_steps}."
            )
        if self.warmup_steps >= self.num_iter and (self.scheduler != "constant" or self.warmup_steps):
            warnings.warn(
                f"warmup_steps ({self.warmup_steps}) is not below num_iter ({self.num_iter}): the whole run stays in "
                f"the warm-up (e.g. a recipe's warm-up with a short --num_iter).",
                stacklevel=2,
            )
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}.")
        if self.early_stopping_patience is not None and self.early_stopping_patience < 1:
            raise ValueError(f"early_stopping_patience must be at least 1, got {self.early_stopping_patience}.")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in (0, 1), e.g. 0.999, got {self.ema_decay}.")
        if self.freeze is not None:
            self.freeze = "-".join(parse_stage_names(self.freeze))
