"""Text-safe augmentation: every operation keeps the word legible and in the crop, and the randomness is a pure
function of (seed, draw, sample), so resumed runs and any number of workers see the same images."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from text_recognition.augment import GEOMETRIC, OPERATIONS, PHOTOMETRIC, TextAugment


def word(mode: str = "L") -> Image.Image:
    image = Image.new(mode, (90, 32), "white")
    ImageDraw.Draw(image).text((8, 8), "Hello42", fill="black")
    return image


@pytest.mark.parametrize("name", list(OPERATIONS))
@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_every_operation_keeps_mode_and_text(name, mode):
    image = word(mode)
    out = OPERATIONS[name](image, 1.0, np.random.default_rng(0))
    assert out.mode == mode and out.width > 0 and out.height > 0
    assert 0.5 < out.width / image.width < 1.8 and 0.5 < out.height / image.height < 1.8
    ink = np.asarray(out.convert("L"), dtype=np.float32)
    assert ink.std() > 10, f"{name} washed the word out"  # the strokes are still there


def test_geometric_and_photometric_families():
    assert set(GEOMETRIC) == {"rotate", "shear", "perspective", "curve", "crop_pad"}
    assert set(PHOTOMETRIC) == {"contrast", "brightness", "gamma", "blur", "noise", "jpeg", "invert"}
    assert "flip" not in " ".join(OPERATIONS)  # text-safe: nothing mirrors a word


def test_same_seed_draw_and_sample_give_the_same_image():
    image = word()
    a = TextAugment(0.8, seed=3)(image, 12, 7, 5)
    b = TextAugment(0.8, seed=3)(image, 12, 7, 5)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    others = [TextAugment(0.8, seed=3)(image, 13, 7, 5), TextAugment(0.8, seed=4)(image, 12, 7, 5)]
    assert any(o.size != a.size or not np.array_equal(np.asarray(o), np.asarray(a)) for o in others)


def test_at_most_one_geometric_operation_per_image():
    augment = TextAugment(1.0, num_ops=4, seed=0)
    for draw in range(200):
        chosen = [name for name, _ in augment.choose(augment.rng(draw, 0))]
        assert len(chosen) == len(set(chosen)) <= 4
        assert sum(name in GEOMETRIC for name in chosen) <= 1
        assert all(0 <= magnitude <= 1.0 for _, magnitude in augment.choose(augment.rng(draw, 1)))


@pytest.mark.parametrize("strength", [0, -0.1, 1.5, float("nan")])
def test_strength_out_of_range_is_an_error(strength):
    with pytest.raises(ValueError, match=r"augment_strength must be in \(0, 1\]"):
        TextAugment(strength)


def test_augment_strength_is_checked_with_the_data_flags():
    from text_recognition.config import DataConfig

    with pytest.raises(ValueError, match=r"augment_strength must be in \(0, 1\]"):
        DataConfig("t", "v", augment=True, augment_strength=2.0)


def test_preview_script_writes_a_grid(tmp_path, capsys):
    from conftest import make_lmdb
    from test_scripts import load_script

    from text_recognition.cli import run

    make_lmdb(tmp_path / "data" / "words", ["abc", "hello", "x1"])
    preview = load_script("preview_augment")
    argv = ["--data", str(tmp_path / "data"), "--output", str(tmp_path / "grid.png"), "--num_draws", "3"]
    assert run(preview.main, argv) == 0
    grid = Image.open(tmp_path / "grid.png")
    assert grid.height == 3 * (48 + 14 + 4) + 4 and grid.width > 4 * 40  # 3 rows: every sample, original + 3 draws
    assert "3 samples x 3 draws" in capsys.readouterr().out
    assert run(preview.main, [*argv[:3], str(tmp_path / "grid.jpg")]) == 1
