from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from text_recognition import ModelConfig
from text_recognition.transforms import NormalizePAD, ResizeNormalize, align_image, load_image, preprocess


def _random_image(width: int, height: int, mode: str = "L", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    shape = (height, width) if mode == "L" else (height, width, 3)
    return Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8), mode)


def _dtrb_normalize(array: np.ndarray) -> torch.Tensor:
    # ToTensor (uint8 / 255 in float32), then (x - 0.5) / 0.5, written out independently.
    x = torch.tensor(array, dtype=torch.float32) / 255.0
    if x.ndim == 2:
        x = x[None]
    else:
        x = x.permute(2, 0, 1)
    return (x - 0.5) / 0.5


def test_resize_normalize_values_at_native_size():
    image = _random_image(100, 32)
    tensor = ResizeNormalize((100, 32))(image)
    assert tensor.shape == (1, 32, 100) and tensor.dtype == torch.float32
    assert torch.equal(tensor, _dtrb_normalize(np.array(image)))
    assert tensor.min() >= -1 and tensor.max() <= 1
    # 0 -> -1, 255 -> 1, 51 -> 51/255*2-1
    flat = Image.fromarray(np.array([[0, 255, 51]], dtype=np.uint8))
    assert ResizeNormalize((3, 1))(flat).flatten().tolist() == pytest.approx([-1.0, 1.0, 51 / 255 * 2 - 1])


def test_resize_normalize_uses_pil_bicubic_on_uint8():
    image = _random_image(173, 57, seed=1)
    expected = _dtrb_normalize(np.array(image.resize((100, 32), Image.Resampling.BICUBIC)))
    assert torch.equal(ResizeNormalize((100, 32))(image), expected)


def test_rgb_has_three_channels():
    image = _random_image(120, 40, mode="RGB")
    tensor = align_image(image, 32, 100, pad=False, channels=3)
    expected = _dtrb_normalize(np.array(image.resize((100, 32), Image.Resampling.BICUBIC)))
    assert tensor.shape == (3, 32, 100) and torch.equal(tensor, expected)


def test_normalize_pad_repeats_last_column():
    image = _random_image(40, 32)
    tensor = NormalizePAD((1, 32, 100))(image)
    original = _dtrb_normalize(np.array(image))
    assert torch.equal(tensor[:, :, :40], original)
    for column in range(40, 100):
        assert torch.equal(tensor[:, :, column], original[:, :, 39])


@pytest.mark.parametrize(("size", "resized_w"), [((10, 20), 16), ((33, 31), 35), ((50, 10), 100), ((300, 32), 100)])
def test_pad_mode_width_rule(size, resized_w):
    # new width = ceil(img_h * w / h), capped at img_w; then bicubic to (new width, img_h) and right padding.
    image = _random_image(*size, seed=2)
    assert resized_w == min(math.ceil(32 * size[0] / size[1]), 100)
    tensor = align_image(image, 32, 100, pad=True, channels=1)
    resized = _dtrb_normalize(np.array(image.resize((resized_w, 32), Image.Resampling.BICUBIC)))
    assert tensor.shape == (1, 32, 100)
    assert torch.equal(tensor[:, :, :resized_w], resized)
    assert torch.equal(tensor[:, :, resized_w:], resized[:, :, -1:].expand(1, 32, 100 - resized_w))


def test_load_image_accepts_paths_arrays_and_tensors(tmp_path):
    image = _random_image(60, 30, mode="RGB")
    path = tmp_path / "word.png"
    image.save(path)
    gray = np.array(image.convert("L"))
    assert np.array_equal(np.array(load_image(path, 1)), gray)
    assert np.array_equal(np.array(load_image(str(path), 1)), gray)
    assert np.array_equal(np.array(load_image(np.array(image), 3)), np.array(image))
    assert np.array_equal(np.array(load_image(gray, 1)), gray)
    chw = torch.from_numpy(np.array(image)).permute(2, 0, 1)
    assert np.array_equal(np.array(load_image(chw, 3)), np.array(image))
    assert np.array_equal(np.array(load_image(chw.float() / 255, 3)), np.array(image))


def test_load_image_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="Image file not found"):
        load_image(tmp_path / "missing.png", 1)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match="Cannot decode image"):
        load_image(corrupt, 1)
    with pytest.raises(TypeError, match="Expected a PIL image"):
        load_image(42, 1)
    with pytest.raises(ValueError, match="Expected an image array"):
        load_image(np.zeros((2, 3, 4, 5), dtype=np.uint8), 1)


def test_preprocess_batches_images_of_any_size():
    config = ModelConfig("None", "VGG", "None", "CTC")
    images = [_random_image(w, h, seed=w) for w, h in ((20, 32), (300, 64), (100, 32))]
    batch = preprocess(images, config)
    assert batch.shape == (3, 1, 32, 100)
    assert torch.equal(batch[2], ResizeNormalize((100, 32))(images[2]))
