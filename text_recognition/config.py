"""Model configuration: the one object written to ``config.json`` and read back by ``from_pretrained``.

``ModelConfig`` is flat and JSON-native on purpose: ``PyTorchModelHubMixin`` rebuilds it from ``config.json`` with
plain keyword arguments, and it must rebuild exactly what was saved.
"""

from __future__ import annotations

import string
from collections import Counter
from dataclasses import asdict, dataclass, fields
from typing import Any

from .registry import canonical_stage_name

#: DTRB's default charset: case-insensitive alphanumerics (36 symbols).
CHARSET_36 = "0123456789abcdefghijklmnopqrstuvwxyz"
#: DTRB's ``--sensitive`` charset: ``string.printable[:-6]`` (digits, lower, upper, 32 punctuation; 94 symbols).
CHARSET_94 = string.printable[:-6]
#: Named presets accepted for ``character`` (neither name is itself a valid charset: both repeat a symbol).
CHARSET_PRESETS = {"36_lowercase": CHARSET_36, "94_full": CHARSET_94}

# Stage name -> the divisor ``output_channel`` must be a multiple of (inner widths are fractions of it).
_CHANNEL_DIVISORS = {"VGG": 8, "RCNN": 8, "ResNet": 16}


@dataclass
class ModelConfig:
    """The architecture of a DTRB four-stage model, as in ``clovaai/deep-text-recognition-benchmark``.

    Args:
        transformation: ``"None"`` or ``"TPS"`` (``--Transformation``).
        feature_extraction: ``"VGG"``, ``"RCNN"`` or ``"ResNet"`` (``--FeatureExtraction``).
        sequence_modeling: ``"None"`` or ``"BiLSTM"`` (``--SequenceModeling``).
        prediction: ``"CTC"`` or ``"Attn"`` (``--Prediction``). Stage names are case-insensitive.
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
        config_version: format version of this config, for future migrations.

    Raises:
        ValueError: for an unknown stage name (with the choices and a close match), an odd or too small
            ``num_fiducial``, an empty charset or one with duplicate symbols, a non-positive size, an
            ``input_channel`` other than 1 or 3, or an ``output_channel`` the feature extractor cannot divide.
    """

    transformation: str = "TPS"
    feature_extraction: str = "ResNet"
    sequence_modeling: str = "BiLSTM"
    prediction: str = "Attn"
    num_fiducial: int = 20
    input_channel: int = 1
    output_channel: int = 512
    hidden_size: int = 256
    img_h: int = 32
    img_w: int = 100
    pad: bool = False
    character: str | None = None
    sensitive: bool = False
    batch_max_length: int = 25
    config_version: int = 1

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
        if self.img_h < 32:
            raise ValueError(
                f"img_h must be at least 32: the CNNs downsample the height by 16 and need 2 rows left, got "
                f"{self.img_h}."
            )
        if self.img_w < 16:
            raise ValueError(f"img_w must be at least 16 for the CNNs to produce any column, got {self.img_w}.")
        divisor = _CHANNEL_DIVISORS[self.feature_extraction]
        if self.output_channel % divisor:
            raise ValueError(
                f"output_channel must be a multiple of {divisor} for {self.feature_extraction} (its inner widths "
                f"are output_channel/{divisor}, ...), got {self.output_channel}."
            )
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
    def num_class(self) -> int:
        """Output classes: the charset plus the CTC blank, or plus ``[GO]`` and ``[s]`` for attention."""
        return len(self.character) + (1 if self.prediction == "CTC" else 2)

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


@dataclass
class DataConfig:
    """Where the training and validation data come from and how sources are mixed (DTRB's data flags).

    ``select_data``/``batch_ratio`` take DTRB's ``"MJ-ST"``/``"0.5-0.5"`` spellings or lists.
    """

    train_data: str = ""
    valid_data: str = ""
    select_data: str | list[str] = "MJ-ST"
    batch_ratio: str | list[float] = "0.5-0.5"
    total_data_usage_ratio: float = 1.0
    data_filtering_off: bool = False
    workers: int = 4

    def __post_init__(self) -> None:
        from .data.mixing import parse_batch_ratio, parse_select_data

        if not self.train_data:
            raise ValueError("--train_data is required: a folder of LMDBs or datasets folders, or a Hub dataset id.")
        if not self.valid_data:
            raise ValueError("--valid_data is required: a folder of LMDBs or datasets folders, or a Hub dataset id.")
        parse_batch_ratio(self.batch_ratio, len(parse_select_data(self.select_data)))
        self.total_data_usage_ratio = float(self.total_data_usage_ratio)
        if not 0 < self.total_data_usage_ratio <= 1:
            raise ValueError(f"total_data_usage_ratio must be in (0, 1], got {self.total_data_usage_ratio}.")
        if self.workers < 0:
            raise ValueError(f"workers must be 0 or more, got {self.workers}.")


@dataclass
class TrainConfig:
    """How to train: DTRB's optimisation flags plus checkpointing, logging and Hub options.

    ``batch_size`` and ``workers`` are per process (DTRB multiplied them by the GPU count).
    ``num_iter``, ``val_interval`` and ``checkpointing_steps`` count optimizer steps.
    """

    output_dir: str = "saved_models"
    exp_name: str | None = None
    seed: int = 1111
    batch_size: int = 192
    num_iter: int = 300_000
    val_interval: int = 2000
    saved_model: str = ""
    ft: bool = False
    adam: bool = False
    lr: float = 1.0
    beta1: float = 0.9
    rho: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 5.0
    baidu_ctc: bool = False
    gradient_accumulation_steps: int = 1
    checkpointing_steps: int | None = None
    checkpoints_total_limit: int | None = None
    resume_from_checkpoint: str | None = None
    log_interval: int = 100
    report_to: str | None = None
    push_to_hub: bool = False
    hub_model_id: str | None = None
    hub_private_repo: bool = False

    def __post_init__(self) -> None:
        for name in ("batch_size", "num_iter", "val_interval", "gradient_accumulation_steps", "log_interval"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}.")
        for name in ("checkpointing_steps", "checkpoints_total_limit"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1 (or unset), got {getattr(self, name)}.")
        if self.lr <= 0 or self.grad_clip <= 0:
            raise ValueError(f"lr and grad_clip must be positive, got lr={self.lr}, grad_clip={self.grad_clip}.")
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("--push_to_hub needs --hub_model_id (e.g. user/my-model).")
        if self.ft and not self.saved_model:
            raise ValueError("--FT fine-tunes a model: give it with --saved_model.")
