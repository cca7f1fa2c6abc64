"""The app's logic, importable without Gradio: the one function that turns ``--saved_model`` into the model the page
shows (``load_app_model``), the model card's facts, the page's decoding options, and reading uploaded images into
``Reading``s (text, confidence, abstention, and the pictures of what the model saw)."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from ..decoding import DecodingOptions
from ..fastpath import PRECISIONS, check_precision
from ..hub import charset_description, is_repo_id
from ..loading import load_model
from ..model import TextRecognitionModel
from ..onnx_model import check_onnx_speed_options
from ..transforms import ImageInput, load_image
from .pictures import seen_picture, steps_picture

#: The word images shipped with the app as examples (rendered by the realistic synthetic engine; see README.md there).
EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
#: The larger example photo for the crop tool.
CROP_EXAMPLE = EXAMPLES_DIR / "photo" / "signs.jpg"


class AppError(ValueError):
    """Something given to the page (a file, an option) that cannot be used: the page shows its message."""


@dataclass
class AppModel:
    """The model the page shows, where it came from, and its card's facts as ``(name, value)`` rows."""

    model: TextRecognitionModel
    source: str
    facts: list[tuple[str, str]]

    @property
    def backend(self) -> str:
        """What computes the readings, named with each of them (so what is shown is what was run)."""
        return "PyTorch" if isinstance(self.model, TextRecognitionModel) else self.model.description

    @property
    def precisions(self) -> tuple[str, ...]:
        """The precisions the page offers: autocast's for a PyTorch model, an exported file's own for an export."""
        return PRECISIONS if isinstance(self.model, TextRecognitionModel) else (self.model.precision,)


@dataclass
class Reading:
    """One image read by the page: its ``text``, ``confidence`` and ``abstained`` as ``model.recognize`` returns
    them, or ``error`` when the image could not be read; ``seen`` is the model's input as a picture, ``steps`` the
    per-frame (CTC) or per-step (attention) picture, and ``seen_caption`` says how the input was made."""

    name: str
    text: str = ""
    confidence: float | None = None
    abstained: bool = False
    error: str | None = None
    seen: Image.Image | None = field(default=None, repr=False)
    seen_caption: str = ""
    steps: Image.Image | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        if self.error is not None:
            return {"name": self.name, "error": self.error}
        return {"name": self.name, "text": self.text, "confidence": self.confidence, "abstained": self.abstained}


def load_app_model(saved_model: str | os.PathLike, map_location: str = "cpu") -> AppModel:
    """The one place where the app turns ``--saved_model`` into a model: a model folder, a Hub id, or an exported
    ``.onnx`` (fp32 or int8, with its sidecar; run by onnxruntime, as ``scripts/test.py`` scores it).

    Raises:
        FileNotFoundError, ValueError: nothing loadable there, with the reason (``load_model``'s), or another file
            (a DTRB ``.pth`` must be converted first).
    """
    name = os.fspath(saved_model)
    path = Path(name)
    if path.suffix.lower() == ".onnx":
        model = load_model(name)
        return AppModel(model, name, model_facts(model, name, None))
    if path.is_file():
        raise ValueError(f"{name!r} is a file: the app reads a model folder (config.json + model.safetensors) or a "
                         f"Hub id. Convert a DTRB .pth with scripts/convert_dtrb_checkpoint.py first.")  # fmt: skip
    if not path.exists() and not is_repo_id(name):
        raise FileNotFoundError(f"{name!r} does not exist: give a model folder (config.json + model.safetensors, e.g. "
                                f"a training run's best_accuracy) or a Hub id (user/repo).")  # fmt: skip
    model = load_model(name, map_location=map_location)
    return AppModel(model, name, model_facts(model, name, read_card(name)))


def read_card(source: str) -> Any | None:
    """The model card (``huggingface_hub.ModelCard``) of a model folder or Hub id, or None where it has none."""
    from huggingface_hub import ModelCard, hf_hub_download

    try:
        if Path(source).is_dir():
            card_path = Path(source) / "README.md"
            return ModelCard.load(card_path) if card_path.is_file() else None
        if is_repo_id(source):  # the model itself came from there just now
            return ModelCard.load(hf_hub_download(source, "README.md"))
    except Exception:  # no card, or one that does not parse: the page shows the model's own facts only
        return None
    return None


def model_facts(model: TextRecognitionModel, source: str, card: Any | None = None) -> list[tuple[str, str]]:
    """What the page shows beside the readings: the architecture and input from ``config.json``, and the
    evaluated accuracies from the model ``card``'s ``model-index``, each with its dataset, split and protocol."""
    config = model.config
    charset = charset_description(config.character)
    if "case-" not in charset:
        charset += f", case-{'sensitive' if config.sensitive else 'insensitive'}"
    facts = [
        ("Model", source),
        ("Architecture", f"{config.stage_string}, {model.num_parameters:,} parameters"),
        ("Input", f"{'RGB' if config.input_channel == 3 else 'grayscale'}, {config.img_h} x {config.img_w} pixels, "
                  f"{'aspect ratio kept and right-padded' if config.pad else 'stretched to that size'}"),
        ("Charset", f"{charset}: {config.character}"),
        ("Longest text", f"{config.batch_max_length} characters"),
        ("Confidence", f"temperature {config.temperature:.4g}"
                       + (" (calibrated)" if config.temperature != 1.0 else " (not calibrated)")),
    ]  # fmt: skip
    results = (getattr(card.data, "eval_results", None) or []) if card is not None else []
    for result in results:
        value = result.metric_value
        shown = f"{value:.2f} %" if isinstance(value, (int, float)) else str(value)
        facts.append(("Evaluated", f"{shown} {result.metric_type} on {result.dataset_name} "
                                   f"({result.dataset_split or 'unknown'} split, protocol "
                                   f"{result.metric_config or 'dtrb'})"))  # fmt: skip
    if not isinstance(model, TextRecognitionModel):
        facts.insert(2, ("Run by", model.description))
        facts.append(("Evaluated", "an exported file has no card: score it with scripts/test.py --saved_model "
                                   f"{source}"))  # fmt: skip
    elif card is None:
        facts.append(("Evaluated", "no model card"))
    elif not results:
        facts.append(("Evaluated", "no evaluation results in the model card"))
    return facts


def read_lexicon_upload(path: str | os.PathLike) -> tuple[str, ...]:
    """The words of an uploaded lexicon file: UTF-8 (a BOM is ignored), one word per line, blank lines skipped.

    Raises:
        AppError: a file that is not UTF-8 text, or has no words.
    """
    name = Path(path).name
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise AppError(f"The lexicon {name!r} is not UTF-8 text (byte 0x{data[error.start]:02x} at position "
                       f"{error.start}): save it as UTF-8, one word per line.") from None  # fmt: skip
    words = tuple(dict.fromkeys(line.strip() for line in text.splitlines() if line.strip()))
    if not words:
        raise AppError(f"The lexicon {name!r} has no words: put one word per line.")
    return words


def decoding_options(
    beam_width: float = 1,
    allowlist: str | None = None,
    blocklist: str | None = None,
    lexicon_file: str | os.PathLike | None = None,
    pattern: str | None = None,
    min_confidence: float | None = None,
) -> DecodingOptions:
    """The page's decoding controls as ``DecodingOptions``: empty fields are no constraint, a minimum confidence of 0
    never abstains.

    Raises:
        AppError: a bad value or an unreadable lexicon, with the reason.
    """
    lexicon = read_lexicon_upload(lexicon_file) if lexicon_file else None
    if beam_width is None or float(beam_width) != int(beam_width):
        raise AppError(f"The beam width must be a whole number of at least 1, got {beam_width!r}.")
    try:
        return DecodingOptions(int(beam_width), allowlist or None, blocklist or None, lexicon, pattern or None,
                               float(min_confidence) if min_confidence else None)  # fmt: skip
    except ValueError as error:
        raise AppError(str(error)) from None


def open_upload(name: str, source: ImageInput, input_channel: int) -> Image.Image:
    """An uploaded file (a path), or an image a Gradio component gives (PIL, array), as the model reads it.

    Raises:
        AppError: an empty file, a file that is not an image, or an image without pixels, naming ``name``.
    """
    if isinstance(source, (str, os.PathLike)):
        data = Path(source).read_bytes()
        if not data:
            raise AppError(f"{name} is empty (0 bytes): it holds no image.")
        try:
            with Image.open(io.BytesIO(data)) as opened:
                opened.load()
        except UnidentifiedImageError:
            raise AppError(f"{name} is not an image: no PNG, JPEG, BMP, GIF, TIFF or WebP picture with pixels could "
                           f"be read from it.") from None  # fmt: skip
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            raise AppError(f"{name} is a damaged or unsupported image: {error}") from None
        source = data
    try:
        return load_image(source, input_channel)
    except (ValueError, TypeError) as error:
        raise AppError(f"{name}: {error}") from None


def read_images(
    app_model: AppModel,
    images: Sequence[tuple[str, ImageInput]],
    options: DecodingOptions | None = None,
    precision: str = "fp32",
) -> list[Reading]:
    """Read ``(name, image)`` pairs with ``model.recognize`` under ``options``, and draw what the model saw.

    An image that cannot be opened gets a ``Reading`` with ``error`` set; the others are read all together.

    Raises:
        AppError: no image, an unknown precision, or constraints the model cannot satisfy (an allowlist symbol
            outside its charset, a lexicon none of whose words it can read ...).
    """
    if not images:
        raise AppError("No image to read: upload word images, pick an example, or crop a photo.")
    options = options or DecodingOptions()
    try:
        if isinstance(app_model.model, TextRecognitionModel):
            precision = check_precision(precision)
        else:  # an export runs at its own precision
            check_onnx_speed_options(app_model.model, precision, False)
        app_model.model.decoder(options)  # impossible constraints fail here, before any image is read
    except ValueError as error:
        raise AppError(str(error)) from None
    model = app_model.model
    readings, opened = [], []
    for name, source in images:
        reading = Reading(name)
        readings.append(reading)
        try:
            opened.append((reading, open_upload(name, source, model.config.input_channel)))
        except (AppError, OSError) as error:
            reading.error = str(error)
    if opened:
        results = model.recognize([image for _, image in opened], beam_width=options.beam_width,
                                  allowlist=options.allowlist, blocklist=options.blocklist, lexicon=options.lexicon,
                                  pattern=options.pattern, min_confidence=options.min_confidence,
                                  precision=precision)  # fmt: skip
        for (reading, image), result in zip(opened, results, strict=True):
            reading.text, reading.confidence, reading.abstained = result.text, result.confidence, result.abstained
            reading.seen, reading.seen_caption = seen_picture(image, model.config)
            reading.steps = steps_picture(model, image, result.text, precision)
    return readings


def box_from_corners(first: Sequence[int], second: Sequence[int], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The box ``(left, top, right, bottom)`` (``PIL.Image.crop``'s) whose opposite corner pixels are ``first`` and
    ``second`` (``(x, y)`` clicks, in either order), both included, kept within an image of ``size``."""
    width, height = size
    (x0, y0), (x1, y1) = first, second
    left, right = sorted((min(max(int(x0), 0), width - 1), min(max(int(x1), 0), width - 1)))
    top, bottom = sorted((min(max(int(y0), 0), height - 1), min(max(int(y1), 0), height - 1)))
    return left, top, right + 1, bottom + 1


def crop_photo(photo: Image.Image | None, box: tuple[int, int, int, int]) -> Image.Image:
    """The crop tool's word: ``box`` of ``photo``, on white where the photo is transparent.

    Raises:
        AppError: no photo.
    """
    if photo is None:
        raise AppError("No photo: upload one (or pick the example), then click two opposite corners of a word.")
    word = photo.crop(box)
    if word.mode in ("RGBA", "LA", "P", "PA"):
        word = word.convert("RGBA")
        word = Image.alpha_composite(Image.new("RGBA", word.size, (255, 255, 255, 255)), word).convert("RGB")
    return word


def example_images() -> list[Path]:
    """The bundled example word images, in name order."""
    return sorted(EXAMPLES_DIR.glob("*.png"))
