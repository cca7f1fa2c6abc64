"""Reading folders of word images: file discovery as DTRB's demo.py did it, and batched, fault-tolerant recognition
with DataLoader workers."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch.utils.data import DataLoader

from .fastpath import inference_settings
from .transforms import align_batch, load_image

if TYPE_CHECKING:
    from .config import ModelConfig
    from .decoding import DecodingOptions
    from .model import Recognition, TextRecognitionModel

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def natural_key(text: str) -> list[int | str]:
    """Sort key that orders ``demo_2`` before ``demo_10``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def find_images(folder: str | os.PathLike) -> list[Path]:
    """Every .jpg/.jpeg/.png (any case) under ``folder``, recursively, in natural order, as DTRB's RawDataset. A
    dangling symbolic link is listed too, so that reading it reports it instead of leaving it out in silence."""
    folder = Path(folder)
    if folder.is_file():
        raise NotADirectoryError(f"{str(folder)!r} is a file, not a folder: give the folder that holds the images "
                                 f"({str(folder.parent)!r}).")  # fmt: skip
    if not folder.is_dir():
        raise NotADirectoryError(f"Image folder not found: {str(folder)!r}")
    paths = [p for p in folder.rglob("*") if (p.is_file() or (p.is_symlink() and not p.exists()))
             and p.suffix.lower() in IMAGE_EXTENSIONS]  # fmt: skip
    return sorted(paths, key=lambda p: natural_key(str(p)))


class FileResult(NamedTuple):
    path: Path
    recognition: Recognition | None
    error: str | None


class _LoadBatch:
    """Collate function run in DataLoader workers: decode + preprocess, keeping per-file errors."""

    def __init__(self, config: ModelConfig) -> None:
        self.config = config

    def __call__(self, paths: list[Path]) -> tuple[list[Path], torch.Tensor | None, list[str | None]]:
        images, errors = [], []
        config = self.config
        for path in paths:
            try:
                images.append(load_image(path, config.input_channel))
                errors.append(None)
            except (OSError, ValueError) as error:
                errors.append(str(error))
        batch = align_batch(images, config.img_h, config.img_w, config.pad, config.input_channel) if images else None
        return paths, batch, errors


def recognize_files(
    model: TextRecognitionModel,
    paths: list[Path],
    batch_size: int = 192,
    num_workers: int = 0,
    decoding: DecodingOptions | None = None,
    *,
    precision: str | None = None,
    compile: bool = False,
) -> Iterator[FileResult]:
    """Recognise image files, in the given order, decoded as ``decoding`` says (default greedy). A file that cannot
    be decoded yields a result with ``error`` set instead of stopping the run (DTRB silently substituted a black
    image). ``precision`` and ``compile`` are ``recognize``'s; ``model`` may be an ``OnnxModel``."""
    decoder = model.decoder(decoding)
    onnx = getattr(model, "backend", None) == "onnxruntime"
    if onnx:
        from .onnx_model import check_onnx_speed_options

        check_onnx_speed_options(model, precision, compile)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    if num_workers < 0:
        raise ValueError(f"workers must be 0 or more, got {num_workers}.")
    model.eval()
    device = model.device
    loader = DataLoader(paths, batch_size=batch_size, num_workers=num_workers, collate_fn=_LoadBatch(model.config))
    settings = contextlib.nullcontext if onnx else lambda: inference_settings(model, precision, compile)
    for batch_paths, tensors, errors in loader:
        with settings():
            recognitions = iter(model.recognize_batch(tensors.to(device), decoder) if tensors is not None else [])
        for path, error in zip(batch_paths, errors):
            yield FileResult(path, None if error else next(recognitions), error)
