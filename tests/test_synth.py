"""text_recognition.data.synth.SyntheticWords and scripts/synthesize.py."""

from __future__ import annotations

import importlib.util
import io
import pickle
from pathlib import Path

import datasets
import pytest
from conftest import REPO_ROOT
from PIL import Image

from text_recognition.cli import run
from text_recognition.config import CHARSET_36, CHARSET_94
from text_recognition.data.lmdb import LmdbReader
from text_recognition.data.synth import SyntheticWords

DEJAVU = Path("/usr/share/fonts/truetype/dejavu")


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest.fixture
def dejavu_dir() -> Path:
    if not (DEJAVU / "DejaVuSans.ttf").is_file():
        pytest.skip("DejaVu fonts are not installed")
    return DEJAVU


def load_script():
    spec = importlib.util.spec_from_file_location("synthesize", REPO_ROOT / "scripts" / "synthesize.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_deterministic_per_seed_and_index():
    synth = SyntheticWords(seed=7)
    assert synth.encoded(4) == SyntheticWords(seed=7).encoded(4)
    assert synth.encoded(4) != SyntheticWords(seed=8).encoded(4)
    assert synth.encoded(4) != synth.encoded(5)
    assert list(synth.generate(5, start=3)) == [synth.encoded(i) for i in range(3, 8)]
    with pytest.raises(ValueError, match="non-negative"):
        synth.generate(-1)
    with pytest.raises(ValueError, match="non-negative"):
        synth.render(-1)
    first = list(synth.generate(3))
    assert [next(iter(synth)) for _ in range(2)] == [first[0]] * 2  # every iteration starts at 0
    assert list(zip(range(3), synth)) == list(enumerate(first))
    # Rendering other samples first (or in another process) changes nothing.
    assert pickle.loads(pickle.dumps(synth)).encoded(4) == synth.encoded(4)


def test_default_images_and_labels():
    synth = SyntheticWords(min_length=2, max_length=6, seed=1)
    lengths = set()
    for data, label in synth.generate(40):
        image = decode(data)
        assert image.format == "PNG" and image.mode == "L" and image.height == 32 and image.width > 8
        assert 2 <= len(label) <= 6 and set(label) <= set(CHARSET_36)
        lengths.add(len(label))
    assert lengths == set(range(2, 7))
    image, label = synth.render(0)
    assert (image.tobytes(), label) == (decode(synth.encoded(0)[0]).tobytes(), synth.encoded(0)[1])


def test_options_change_the_image():
    image, _ = SyntheticWords(rgb=True, height=48).render(3)
    assert image.mode == "RGB" and image.height == 48
    data, _ = SyntheticWords(image_format="jpeg").encoded(3)
    assert decode(data).format == "JPEG" and decode(data).mode == "L"
    clean, label = SyntheticWords(rotation=0, blur=0, noise=0).render(3)
    assert SyntheticWords(rotation=0, blur=0, noise=0).render(3)[1] == label
    assert clean.tobytes() != SyntheticWords().render(3)[0].tobytes()


def test_contrast_is_kept():
    synth = SyntheticWords(min_contrast=120, rotation=0, blur=0, noise=0, seed=2)
    for index in range(10):
        extrema = synth.render(index)[0].getextrema()
        assert extrema[1] - extrema[0] >= 110  # antialiasing leaves the full contrast on the stroke cores


def test_word_list_and_case():
    words = ["Hello", "world", "A1"]
    labels = [label for _, label in SyntheticWords(charset=CHARSET_94, words=words).generate(30)]
    assert set(labels) == set(words)
    lower = [label for _, label in SyntheticWords(charset=CHARSET_94, words=words, case="lower").generate(30)]
    assert set(lower) == {"hello", "world", "a1"}
    upper = [label for _, label in SyntheticWords(charset=CHARSET_94, case="upper").generate(30)]
    assert all(label == label.upper() for label in upper) and any(c.isalpha() for c in "".join(upper))
    mixed = "".join(label for _, label in SyntheticWords(charset=CHARSET_94, words=words, case="mixed").generate(30))
    assert any(c.islower() for c in mixed) and any(c.isupper() for c in mixed)
    assert set(mixed.lower()) <= set("helloworlda1")
    # A letter only changes into a symbol of the charset: "lower" with 0-9a-z is a no-op.
    synth = SyntheticWords(case="lower")
    assert all(set(label) <= set(CHARSET_36) for _, label in synth.generate(10))


def test_fonts_from_a_folder_and_a_file(dejavu_dir):
    synth = SyntheticWords(fonts=[dejavu_dir], charset=CHARSET_94, rgb=True)
    assert len(synth.fonts) > 1 and all(p.suffix == ".ttf" for p in synth.fonts)
    for data, label in synth.generate(10):
        image = decode(data)
        assert image.mode == "RGB" and image.height == 32 and set(label) <= set(CHARSET_94)
    single = SyntheticWords(fonts=[dejavu_dir / "DejaVuSans.ttf"])
    assert single.fonts == [dejavu_dir / "DejaVuSans.ttf"]
    assert single.encoded(0) != SyntheticWords().encoded(0)  # not the default font


def test_write_lmdb_round_trip(tmp_path):
    synth = SyntheticWords(seed=3)
    assert synth.write_lmdb(tmp_path / "lmdb", 12, progress=False) == 12
    reader = LmdbReader(tmp_path / "lmdb")
    assert len(reader) == 12 and list(reader) == list(synth.generate(12))
    with pytest.raises(FileExistsError):
        synth.write_lmdb(tmp_path / "lmdb", 3, progress=False)


def test_save_dataset_round_trip(tmp_path):
    synth = SyntheticWords(seed=4, image_format="JPEG")
    synth.save_dataset(tmp_path / "ds", 6)
    dataset = datasets.load_from_disk(str(tmp_path / "ds"))
    assert dataset.features["image"] == datasets.Image() and dataset.features["label"] == datasets.Value("string")
    raw = dataset.cast_column("image", datasets.Image(decode=False))
    assert [(row["image"]["bytes"], row["label"]) for row in raw] == list(synth.generate(6))
    assert dataset[0]["image"].height == 32
    with pytest.raises(FileExistsError, match="not empty"):
        synth.save_dataset(tmp_path / "ds", 6)


def test_to_dataset_never_reuses_another_settings_cache():
    first = SyntheticWords(seed=10).to_dataset(4)
    second = SyntheticWords(seed=11).to_dataset(4)
    assert first["label"] == [label for _, label in SyntheticWords(seed=10).generate(4)]
    assert second["label"] == [label for _, label in SyntheticWords(seed=11).generate(4)]
    assert first["label"] != second["label"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"charset": ""}, "charset must be a non-empty string"),
        ({"charset": "abca"}, "duplicate symbols 'a'"),
        ({"min_length": 0}, "1 <= min_length <= max_length"),
        ({"min_length": 5, "max_length": 4}, "1 <= min_length <= max_length"),
        ({"words": []}, "words is empty"),
        ({"words": "hello"}, "not a single string"),
        ({"words": ["ok", " pad"]}, "whitespace-padded entries (the first is ' pad' at position 1)"),
        ({"words": ["ok", ""]}, "1 empty"),
        ({"words": ["ok", "Bad", "x-y", "fine"]}, "2 words have symbols outside the charset ('-B'): 'Bad', 'x-y'"),
        ({"words": [f"W{i}" for i in range(8)]}, "'W4' and 3 more"),
        ({"case": "title"}, "Unknown case 'title'. Choose one of: as_is, lower, upper, mixed"),
        ({"case": "upper"}, "case='upper' needs upper-case letters"),
        ({"case": "mixed"}, "case='mixed' needs both lower- and upper-case letters"),
        ({"image_format": "GIF"}, "Unknown image_format 'GIF'"),
        ({"height": 0}, "height must be positive"),
        ({"font_size": (30, 20)}, "font_size must be"),
        ({"font_size": (20.5, 30)}, "font_size must be"),
        ({"rotation": -1.0}, "rotation must be >= 0"),
        ({"min_contrast": 300}, "min_contrast must be in"),
        ({"fonts": []}, "fonts is empty"),
    ],
)
def test_validation_errors(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        SyntheticWords(**kwargs)


def test_font_errors(tmp_path):
    with pytest.raises(ValueError, match="Font not found: .*nope.ttf"):
        SyntheticWords(fonts=[tmp_path / "nope.ttf"])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no fonts here")
    with pytest.raises(ValueError, match="has no .ttf or .otf files"):
        SyntheticWords(fonts=[tmp_path / "empty"])
    broken = tmp_path / "broken" / "Broken.ttf"
    broken.parent.mkdir()
    broken.write_bytes(b"not a font")
    with pytest.raises(ValueError, match="Pillow cannot load the font .*Broken.ttf"):
        SyntheticWords(fonts=[broken.parent])
    if (DEJAVU / "DejaVuMathTeXGyre.ttf").is_file():  # Latin and Greek, no Cyrillic
        with pytest.raises(ValueError, match="The font .*DejaVuMathTeXGyre.ttf. has no glyph for 'ЖЯ'"):
            SyntheticWords(fonts=[DEJAVU / "DejaVuMathTeXGyre.ttf"], charset="abЖЯ")
    with pytest.raises(ValueError, match="Pillow's default font has no glyph for 'Ж'"):
        SyntheticWords(words=["aЖ"], charset="aЖ")


def test_script_end_to_end(tmp_path, capsys):
    synthesize = load_script()
    out = tmp_path / "lmdb"
    assert run(synthesize.main, ["--output", str(out), "--num_samples", "5", "--seed", "2", "--max_length", "4"]) == 0
    assert "wrote 5 synthetic word images" in capsys.readouterr().out
    assert list(LmdbReader(out)) == list(SyntheticWords(seed=2, max_length=4).generate(5))

    word_list = tmp_path / "words.txt"
    word_list.write_text("\ufeffAlpha\n\nbeta\r\n  Gamma  \n", encoding="utf-8")
    argv = ["--output", str(tmp_path / "ds"), "--num_samples", "6", "--format", "datasets", "--character", "94_full",
            "--word_list", str(word_list), "--case", "upper", "--rgb", "--image_format", "jpeg"]  # fmt: skip
    assert run(synthesize.main, argv) == 0
    assert "(datasets, JPEG)" in capsys.readouterr().out
    dataset = datasets.load_from_disk(str(tmp_path / "ds"))
    assert set(dataset["label"]) <= {"ALPHA", "BETA", "GAMMA"} and dataset[0]["image"].mode == "RGB"

    # Refuses to overwrite, and reports bad input without a traceback.
    assert run(synthesize.main, ["--output", str(out), "--num_samples", "5"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "already exists and is not empty" in err and "Traceback" not in err
    assert run(synthesize.main, ["--output", str(tmp_path / "x"), "--num_samples", "5", "--case", "upper"]) == 1
    assert "case='upper' needs upper-case letters" in capsys.readouterr().err
    assert run(synthesize.main, ["--output", str(tmp_path / "y"), "--num_samples", "5", "--fonts", "missing"]) == 1
    assert "Font not found: 'missing'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    with pytest.raises(SystemExit):
        synthesize.main(["--output", str(tmp_path / "z"), "--num_samples", "5", "--format", "tfrecord"])


def test_write_folder_is_create_lmdb_dataset_input(tmp_path):
    from text_recognition.data.datasets import read_gt_file

    synth = SyntheticWords(seed=3, image_format="JPEG")
    assert synth.write_folder(tmp_path / "raw", 4, progress=False) == 4
    entries = read_gt_file(tmp_path / "raw" / "gt.txt", tmp_path / "raw")
    assert [e.path.name for e in entries] == [f"word_{i:06d}.jpg" for i in range(1, 5)]
    for index, entry in enumerate(entries):
        assert (entry.path.read_bytes(), entry.label) == synth.encoded(index)
    with pytest.raises(FileExistsError, match="already exists"):
        synth.write_folder(tmp_path / "raw", 1)
