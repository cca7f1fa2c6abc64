"""``load_model``: ``--saved_model`` as every script takes it (a model folder, a Hub id, a DTRB ``.pth``, a strhub
checkpoint, or an exported ``.onnx``), turned into a ``TextRecognitionModel`` or an ``OnnxModel``."""

from __future__ import annotations

import json
import os
from pathlib import Path

from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

from .checkpoints import is_strhub_checkpoint
from .config import ModelConfig
from .hub import is_repo_id
from .model import TextRecognitionModel
from .onnx_model import OnnxModel


def _check_config_file(path: Path) -> None:
    """A model folder's ``config.json`` must be a JSON object (what ``save_pretrained`` writes)."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{str(path)!r} is not valid JSON ({error}): save the model again.") from None
    if not isinstance(value, dict):
        raise ValueError(f"{str(path)!r} holds a JSON {type(value).__name__}, not an object of model settings "
                         f"(as save_pretrained writes): save the model again.")  # fmt: skip
    try:
        ModelConfig.from_dict(value)
    except (TypeError, ValueError) as error:  # an unknown key, a value of the wrong type: name the file, not a flag
        raise ValueError(f"{str(path)!r}: {str(error).rstrip('.')}. Fix it there, or save the model again.") from None


def is_dtrb_checkpoint(saved_model: str | os.PathLike) -> bool:
    """Whether ``--saved_model`` names a DTRB checkpoint file (which does not record its configuration), rather than
    a model folder, a Hub id or an exported ``.onnx`` (which do: model flags given with them must agree)."""
    path = Path(saved_model)
    return path.is_file() and path.suffix.lower() != ".onnx"


def load_model(
    saved_model: str | os.PathLike, config: ModelConfig | None = None, map_location: str = "cpu"
) -> TextRecognitionModel | OnnxModel:
    """Load ``--saved_model`` as every script accepts it: a model folder, a Hub repo id, a DTRB ``.pth``, or an
    exported ``.onnx`` file (with its sidecar), run by onnxruntime as an ``OnnxModel``.

    Args:
        saved_model: a folder written by ``save_pretrained``, a Hub id (``"user/repo"``), a DTRB checkpoint, a
            strhub PARSeq / ViTSTR checkpoint (read with ``from_strhub_checkpoint``'s defaults when no ``config``), or
            an ``.onnx`` file written by ``scripts/export_onnx.py`` (fp32 or int8).
        config: the architecture of a DTRB ``.pth`` (which does not record it); ignored for folders, Hub ids and
            ``.onnx`` files.

    Raises:
        FileNotFoundError: nothing found at that path or Hub id.
        ValueError: a ``.pth`` without ``config``, weights that do not fit (``CheckpointMismatchError``), or an
            ``.onnx`` without its sidecar or with another file's (``OnnxModelError``).
    """
    path = Path(saved_model)
    if path.suffix.lower() == ".onnx":
        return OnnxModel(path)
    if path.is_file() and path.suffix == ".safetensors":
        folder = path.parent
        if (folder / "config.json").is_file():
            raise ValueError(f"{str(path)!r} is the weights file of a model folder: give the folder, {str(folder)!r}.")
        raise ValueError(f"{str(path)!r} is a bare safetensors file: a model is a folder with its config.json beside "
                         f"model.safetensors (as save_pretrained writes); give that folder.")  # fmt: skip
    if path.is_file():
        if config is None and is_strhub_checkpoint(path):
            return TextRecognitionModel.from_strhub_checkpoint(path, map_location=map_location)
        if config is None:
            raise ValueError(
                f"{str(path)!r} is a file, read as a DTRB checkpoint, which does not record its architecture: "
                f"give the model flags (--Transformation --FeatureExtraction --SequenceModeling --Prediction, and "
                f"--character/--sensitive/--rgb/--imgH/--imgW as trained)."
            )
        return TextRecognitionModel.from_dtrb_checkpoint(path, config, map_location=map_location)
    if path.is_dir():
        if not (path / "config.json").is_file():
            bests = [repr(str(path / name)) for name in ("best_accuracy", "best_norm_ED")
                     if (path / name / "config.json").is_file()]  # fmt: skip
            if bests:
                raise FileNotFoundError(f"{str(path)!r} is a training run's folder, not a model folder: give "
                                        f"{' (or '.join(bests)}{')' * (len(bests) - 1)}.")  # fmt: skip
            raise FileNotFoundError(f"{str(path)!r} is not a model folder: it has no config.json.")
        _check_config_file(path / "config.json")  # every key and value checked there, naming the file
        return TextRecognitionModel.from_pretrained(path, map_location=map_location)
    name = os.fspath(saved_model)
    if not is_repo_id(name):
        raise FileNotFoundError(f"{name!r} does not exist (expected a model folder, a Hub id or a DTRB .pth).")
    try:
        return TextRecognitionModel.from_pretrained(name, map_location=map_location)
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as error:
        if isinstance(error, FileNotFoundError) and "has no model.safetensors" in str(error):
            raise
        raise FileNotFoundError(
            f"Cannot load {name!r}: no such local folder, and the Hub (or its local cache when offline) has no such "
            f"model ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})."
        ) from None
