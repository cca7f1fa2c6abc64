"""The one image pipeline shared by training (AlignCollate) and inference: DTRB's ResizeNormalize and NormalizePAD.

Both give the same float32 tensors as DTRB for the same PIL image: PIL bicubic resize on the uint8 image (which
antialiases when downscaling, unlike torch or OpenCV), ``ToTensor`` scaling to [0, 1], then ``(x - 0.5) / 0.5``.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

if TYPE_CHECKING:
    from .config import ModelConfig

ImageInput = Image.Image | str | os.PathLike | bytes | np.ndarray | torch.Tensor

BICUBIC = Image.Resampling.BICUBIC


def to_tensor(image: Image.Image) -> torch.Tensor:
    """``torchvision.transforms.ToTensor`` for 8-bit L/RGB images: [C, H, W] float32 in [0, 1]."""
    array = np.array(image, dtype=np.uint8)  # a writable copy
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array).permute(2, 0, 1).float().div(255)


class ResizeNormalize:
    """Stretch to ``size`` = (width, height) with PIL bicubic, then scale to [-1, 1]."""

    def __init__(self, size: tuple[int, int], interpolation: Image.Resampling = BICUBIC) -> None:
        self.size = size
        self.interpolation = interpolation

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return to_tensor(image.resize(self.size, self.interpolation)).sub_(0.5).div_(0.5)


class NormalizePAD:
    """Scale an already resized image to [-1, 1] and right-pad it to ``max_size`` = (C, H, W) by repeating its last
    column (border replication, not zeros)."""

    def __init__(self, max_size: tuple[int, int, int]) -> None:
        self.max_size = max_size

    def __call__(self, image: Image.Image) -> torch.Tensor:
        tensor = to_tensor(image).sub_(0.5).div_(0.5)
        channels, height, width = tensor.shape
        padded = torch.zeros(self.max_size)
        padded[:, :, :width] = tensor
        if width != self.max_size[2]:
            padded[:, :, width:] = tensor[:, :, width - 1 : width].expand(channels, height, self.max_size[2] - width)
        return padded


def keep_ratio_width(width: int, height: int, img_h: int, img_w: int) -> int:
    """DTRB's PAD width: ``ceil(img_h * w / h)``, capped at ``img_w``."""
    return min(math.ceil(img_h * width / float(height)), img_w)


def align_batch(images: Sequence[Image.Image], img_h: int, img_w: int, pad: bool, channels: int) -> torch.Tensor:
    """PIL images (already in mode L or RGB) -> [B, channels, img_h, img_w] in [-1, 1], tensor-equal to DTRB's
    AlignCollate (``pad`` = ``--PAD``).

    The resized uint8 pixels (and, with ``pad``, the repeated last column) are written into one uint8 batch that is
    normalised once: the same float32 operations per element as DTRB's per-image ToTensor, sub and div, without the
    per-image tensor overhead.
    """
    batch = np.empty((len(images), img_h, img_w, channels), dtype=np.uint8)
    for i, image in enumerate(images):
        if pad:
            width = keep_ratio_width(*image.size, img_h, img_w)
            resized = np.asarray(image.resize((width, img_h), BICUBIC)).reshape(img_h, width, channels)
            batch[i, :, :width] = resized
            batch[i, :, width:] = resized[:, width - 1 : width]
        else:
            batch[i] = np.asarray(image.resize((img_w, img_h), BICUBIC)).reshape(img_h, img_w, channels)
    tensor = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div_(255)
    return tensor.sub_(0.5).div_(0.5).contiguous()


def align_image(image: Image.Image, img_h: int, img_w: int, pad: bool, channels: int) -> torch.Tensor:
    """One image to [channels, img_h, img_w] in [-1, 1], as DTRB's AlignCollate does (``pad`` = ``--PAD``)."""
    return align_batch([image], img_h, img_w, pad, channels)[0]


def load_image(image: ImageInput, input_channel: int) -> Image.Image:
    """A PIL image in mode ``"L"`` (1 channel) or ``"RGB"`` (3) from a PIL image, a path, encoded image bytes (PNG,
    JPEG ...), an array [H, W] or [H, W, C], or a tensor [C, H, W] / [H, W]: uint8, uint16 (scaled to 8 bits),
    integers in [0, 255], or floats in [0, 1]; anything else is refused, never clipped.

    Raises:
        ValueError: an image without pixels (0 x N), values out of range, undecodable bytes or files.
    """
    mode = "RGB" if input_channel == 3 else "L"
    if isinstance(image, (bytes, bytearray, memoryview)):
        try:
            with Image.open(io.BytesIO(bytes(image))) as opened:
                pil = to_mode(opened, mode)
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            raise ValueError(f"Cannot decode {len(image)} bytes as an image (PNG, JPEG ...): {error}") from None
    elif isinstance(image, Image.Image):
        pil = image
    elif isinstance(image, (str, os.PathLike)):
        try:
            with Image.open(image) as opened:
                pil = to_mode(opened, mode)
        except FileNotFoundError:
            raise FileNotFoundError(f"Image file not found: {os.fspath(image)!r}") from None
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            raise ValueError(f"Cannot decode image {os.fspath(image)!r}: {error}") from None
    elif isinstance(image, (np.ndarray, torch.Tensor)):
        pil = _array_to_pil(image)
    else:
        raise TypeError(f"Expected a PIL image, a path, image bytes, a numpy array or a tensor, got "
                        f"{type(image).__name__}.")  # fmt: skip
    if 0 in pil.size:
        raise ValueError(f"The image has no pixels (width x height {pil.size[0]} x {pil.size[1]}).")
    return to_mode(pil, mode)


#: PIL modes of more than 8 bits per pixel (16-bit PNG and TIFF, 32-bit integer and float TIFF), which PIL's own
#: ``convert("L")`` clips to 255 instead of scaling: a 16-bit PNG would read as a white image.
HIGH_DEPTH_MODES = ("I", "F")


def to_mode(image: Image.Image, mode: str) -> Image.Image:
    """``image`` (decoded now) in ``mode`` (``"L"`` or ``"RGB"``): the one conversion of files, bytes, PIL images
    and arrays in training, evaluation and inference. 16-bit, 32-bit and float pixels (modes ``I;16``, ``I``,
    ``F``) are scaled as arrays of their type are (uint16: 65535 -> 255; integers in [0, 255] and floats in [0, 1]
    as they are; anything else is an error), never clipped."""
    image.load()
    if image.mode == mode:
        return image
    if image.mode.startswith(HIGH_DEPTH_MODES):
        image = Image.fromarray(_to_uint8(np.asarray(image)))
        if image.mode == mode:
            return image
    return image.convert(mode)


def _array_to_pil(image: np.ndarray | torch.Tensor) -> Image.Image:
    if isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        if tensor.ndim == 3:
            tensor = tensor.permute(1, 2, 0)  # [C, H, W] -> [H, W, C]
        array = tensor.numpy()
    else:
        array = image
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ValueError(f"Expected an image array of shape [H, W], [H, W, 3|4] or [C, H, W], got {array.shape}.")
    if 0 in array.shape:
        raise ValueError(f"The image array has no pixels (shape {tuple(array.shape)}).")
    return Image.fromarray(_to_uint8(array))


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """8-bit pixels: uint16 scaled (65535 -> 255), floats in [0, 1] and integers in [0, 255] as they are; values
    out of range are an error (never clipped in silence)."""
    if array.dtype.byteorder not in ("=", "|"):  # big-endian 16-bit pixels (PIL mode I;16B)
        array = array.astype(array.dtype.newbyteorder("="))
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype == np.uint16:
        return np.round(array / 257.0).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        low, high = float(np.min(array)), float(np.max(array))
        if not (np.isfinite(low) and np.isfinite(high)) or low < 0 or high > 1:
            raise ValueError(f"A float image must hold values in [0, 1], got values in [{low!r}, {high!r}] "
                             f"({array.dtype}): divide 0-255 pixels by 255, or pass a uint8 array.")  # fmt: skip
        return np.round(array * 255.0).astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        low, high = int(np.min(array)), int(np.max(array))
        if low < 0 or high > 255:
            raise ValueError(f"An integer image must hold values in [0, 255], got [{low}, {high}] ({array.dtype}): "
                             f"scale it to 8 bits, or pass uint16 (scaled as 16-bit pixels).")  # fmt: skip
        return array.astype(np.uint8)
    raise ValueError(f"Unsupported image dtype {array.dtype}: pass uint8, uint16, integers or floats in [0, 1].")


def as_image_list(images: ImageInput | Sequence[ImageInput]) -> list[ImageInput]:
    """``recognize``'s ``images`` as a list: one image (a path, encoded bytes, an array or tensor, a PIL image) or a
    sequence of them. Bytes are one encoded image, not a sequence of ints."""
    single = (str, os.PathLike, bytes, bytearray, memoryview)
    if isinstance(images, single) or not isinstance(images, Iterable) or hasattr(images, "shape"):
        return [images]
    return list(images)


def preprocess(images: Sequence[ImageInput], config: ModelConfig) -> torch.Tensor:
    """Images of any sizes -> a batch [B, C, img_h, img_w] in [-1, 1] for ``config``."""
    channels = config.input_channel
    pils = [load_image(image, channels) for image in images]
    return align_batch(pils, config.img_h, config.img_w, config.pad, channels)


def preprocessed_batches(images: ImageInput | Sequence[ImageInput], batch_size: int, config: ModelConfig
                         ) -> Iterator[torch.Tensor]:  # fmt: skip
    """``recognize``'s ``images`` (one or a sequence, ``as_image_list``) as ``preprocess``ed batches of at most
    ``batch_size``, made one at a time as they are iterated.

    Raises:
        ValueError: ``batch_size`` below 1 (at the call, before any image is read).
    """
    images = as_image_list(images)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    return (preprocess(images[start : start + batch_size], config) for start in range(0, len(images), batch_size))
