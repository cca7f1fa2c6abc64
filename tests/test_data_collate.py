"""AlignCollate against values worked out from DTRB's rules; the training collator and corrupt images."""

from __future__ import annotations

import io
import logging
import math

import numpy as np
import pytest
import torch
from PIL import Image

from text_recognition import ModelConfig
from text_recognition.data import AlignCollate, SkipTracker, TextCollator


def random_image(width, height, mode="L", seed=0):
    rng = np.random.default_rng(seed)
    shape = (height, width) if mode == "L" else (height, width, 3)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


def dtrb_tensor(image: Image.Image, img_h: int, img_w: int, pad: bool) -> torch.Tensor:
    """DTRB's rules written out: bicubic on uint8, ToTensor = uint8 / 255, (x - 0.5) / 0.5, last-column padding."""
    if pad:
        width = min(math.ceil(img_h * image.size[0] / image.size[1]), img_w)
        image = image.resize((width, img_h), Image.Resampling.BICUBIC)
    else:
        image = image.resize((img_w, img_h), Image.Resampling.BICUBIC)
    array = np.array(image, dtype=np.float32) / np.float32(255)
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    tensor = (torch.from_numpy(array) - 0.5) / 0.5
    if pad and tensor.shape[2] < img_w:
        tensor = torch.cat([tensor, tensor[:, :, -1:].expand(-1, -1, img_w - tensor.shape[2])], dim=2)
    return tensor


@pytest.mark.parametrize("pad", [False, True])
@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_align_collate_is_tensor_equal_to_dtrb(pad, mode):
    images = [random_image(w, h, mode, seed=w) for w, h in ((20, 32), (250, 40), (64, 64), (100, 32), (7, 30))]
    collate = AlignCollate(32, 100, keep_ratio_with_pad=pad, input_channel=3 if mode == "RGB" else 1)
    pixel_values, labels = collate([{"image": image, "label": f"w{i}"} for i, image in enumerate(images)])
    assert pixel_values.shape == (5, 3 if mode == "RGB" else 1, 32, 100) and pixel_values.dtype == torch.float32
    assert labels == [f"w{i}" for i in range(5)]
    for i, image in enumerate(images):
        assert torch.equal(pixel_values[i], dtrb_tensor(image, 32, 100, pad)), i


def test_align_collate_converts_modes_and_accepts_pairs():
    rgb = random_image(50, 32, "RGB")
    pixel_values, labels = AlignCollate(32, 100)([(rgb, "a"), None])  # DTRB dropped None items
    assert labels == ["a"] and torch.equal(pixel_values[0], dtrb_tensor(rgb.convert("L"), 32, 100, False))
    empty, none = AlignCollate(32, 100)([])
    assert empty.shape == (0, 1, 32, 100) and none == []


def encoded(image: Image.Image, fmt="PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def test_text_collator_decodes_cleans_and_skips_corrupt_images(caplog):
    config = ModelConfig("None", "VGG", "None", "CTC", img_w=64)
    collator = TextCollator(config)
    good = random_image(40, 32)
    rows = [
        {"image": {"bytes": encoded(good), "path": None}, "label": "HeLLo!", "source": "MJ", "index": 0},
        {"image": {"bytes": b"broken", "path": None}, "label": "x", "source": "MJ", "index": 5},
        {"image": encoded(good.convert("RGB"), "JPEG"), "label": "abc", "source": "ST", "index": 2},
    ]
    batch = collator(rows)
    assert batch["pixel_values"].shape == (2, 1, 32, 64)
    assert torch.equal(batch["pixel_values"][0], dtrb_tensor(good, 32, 64, False))
    assert batch["labels"] == ["hello", "abc"]  # lowercased, "!" removed
    assert [(s.source, s.index) for s in batch["skipped"]] == [("MJ", 5)]

    tracker = SkipTracker()
    with caplog.at_level(logging.WARNING):
        tracker.update(batch["skipped"])
        tracker.update(batch["skipped"])
    assert tracker.counts == {"MJ": 2}
    warnings = [r.getMessage() for r in caplog.records if "Corrupt image" in r.getMessage()]
    assert warnings == [warnings[0]] and "MJ at row 5 (0-based, dataset[5])" in warnings[0]  # once per source


def test_text_collator_sensitive_keeps_case():
    collator = TextCollator(ModelConfig("None", "VGG", "None", "CTC", sensitive=True))
    batch = collator([{"image": encoded(random_image(30, 32)), "label": "HeLLo!", "source": "s", "index": 0}])
    assert batch["labels"] == ["HeLLo!"]
