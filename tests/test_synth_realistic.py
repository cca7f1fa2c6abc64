"""text_recognition.data.synth.RealisticWords: determinism across processes, glyph coverage, other languages, bad
input, options and writers. Fonts, words and textures come from the ``synth`` extra (no network)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import subprocess_env
from PIL import Image

from text_recognition.config import CHARSET_36, CHARSET_94
from text_recognition.data.lmdb import LmdbReader
from text_recognition.data.synth import DEFAULT_EFFECTS, RealisticWords, SyntheticWords, fonts

INDICES = [0, 1, 7, 123, 4567, 99_999]


def digest(synth: RealisticWords, index: int) -> str:
    image, label = synth.render(index)
    return hashlib.sha256(image.tobytes() + image.mode.encode() + label.encode()).hexdigest()


def cmap(path: str) -> set[int]:
    from fontTools.ttLib import TTFont

    with TTFont(path, lazy=True) as font:
        return set(font.getBestCmap())


@pytest.fixture(scope="module")
def english() -> RealisticWords:
    return RealisticWords(seed=5)


@pytest.fixture(scope="module")
def font_without_e(tmp_path_factory) -> Path:
    """A real font (PT Sans) with the glyphs of 'e' and 'E' removed: its character map no longer has them."""
    from fontTools import subset

    source = next(path for path, family, _ in fonts.packaged_fonts() if family == "PT Sans")
    target = tmp_path_factory.mktemp("fonts") / "PTSans-without-e.ttf"
    options = subset.Options()
    options.layout_features = ["*"]
    subsetter = subset.Subsetter(options)
    subsetter.populate(unicodes=[ord(c) for c in CHARSET_94 if c not in "eE"])
    with subset.load_font(source, options) as font:
        subsetter.subset(font)
        subset.save_font(font, str(target), options)
    return target


def test_defaults_render_grayscale_crops(english):
    labels = []
    for index in range(40):
        image, label = english.render(index)
        assert image.mode == "L" and image.height == 32 and image.width >= 4
        assert 0 < len(label) <= 25 and set(label) <= set(CHARSET_36)
        assert np.asarray(image).std() > 3  # never a blank image
        labels.append(label)
    assert len(set(labels)) > 30
    families = {english.describe(i)["family"] for i in range(200)}
    assert len(families) >= 30  # families are drawn evenly, not files


def test_same_seed_and_index_give_the_same_pixels_in_any_process_and_order(english):
    expected = {index: digest(english, index) for index in INDICES}
    # Another order, after other samples have filled this process's caches, and after a pickle round trip.
    for index in reversed(INDICES):
        assert digest(english, index) == expected[index]
    clone = pickle.loads(pickle.dumps(english))
    assert [digest(clone, i) for i in INDICES] == [expected[i] for i in INDICES]
    assert len(pickle.dumps(english)) < 3_000_000
    # A fresh interpreter, with another hash seed, built from the options alone, in reverse order.
    code = (
        "import hashlib, json, sys\n"
        "from text_recognition.data.synth import RealisticWords\n"
        "synth = RealisticWords(**json.loads(sys.argv[1]))\n"
        "out = {}\n"
        f"for i in {list(reversed(INDICES))}:\n"
        "    image, label = synth.render(i)\n"
        "    out[i] = hashlib.sha256(image.tobytes() + image.mode.encode() + label.encode()).hexdigest()\n"
        "print(json.dumps(out))\n"
    )
    result = subprocess.run([sys.executable, "-c", code, json.dumps(english.options)], capture_output=True, text=True,
                            env=subprocess_env(PYTHONHASHSEED="12345"), timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert {int(k): v for k, v in json.loads(result.stdout).items()} == expected
    assert digest(RealisticWords(seed=6), 0) != expected[0]


def test_options_round_trip_as_json(english):
    options = json.loads(json.dumps(english.options))
    assert options["seed"] == 5 and options["fonts"] == ["packaged"] and options["effects"] == DEFAULT_EFFECTS
    again = RealisticWords(**options)
    assert digest(again, 3) == digest(english, 3)
    assert "RealisticWords(" in repr(english)


def test_a_font_is_never_used_for_a_word_it_lacks_a_glyph_for(font_without_e):
    full = next(path for path, family, _ in fonts.packaged_fonts() if family == "Roboto Mono")
    words = ["tree", "sky", "moon", "Eagle", "up", "dog"]
    synth = RealisticWords(fonts=[full, font_without_e], words=words, charset=CHARSET_94,
                           text_mix={"word": 1.0}, seed=1)  # fmt: skip
    lacking = 0
    for index in range(150):
        choice = synth.describe(index)
        if choice["font"] == str(font_without_e):
            lacking += 1
            assert not set(choice["text"]) & set("eE"), choice
    assert lacking > 10  # it is still used for the words it can draw
    assert ord("e") not in cmap(str(font_without_e))  # the fixture really lacks the glyph


def test_charset_no_font_covers_is_refused(font_without_e):
    with pytest.raises(ValueError, match=r"^charset: no font has a glyph for '字'; add fonts") as error:
        RealisticWords(charset=CHARSET_36 + "字", words=["abc"])
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="charset: no font has a glyph for 'eE'"):
        RealisticWords(fonts=[font_without_e], charset="abcdeE", words=["bad"])


def test_unicase_fonts_never_draw_lower_case_labels():
    """Bebas Neue draws 'a' as 'A': with a case-sensitive charset it is only used for texts without lower case."""
    bebas = [path for path, family, _ in fonts.packaged_fonts() if family == "Bebas Neue"]
    roboto = [path for path, family, _ in fonts.packaged_fonts() if family == "Roboto"]
    synth = RealisticWords(fonts=bebas + roboto, charset=CHARSET_94, words=["Hello", "WORLD"], seed=2)
    chosen = [synth.describe(i) for i in range(60)]
    bebas_texts = [c["text"] for c in chosen if c["family"] == "Bebas Neue"]
    assert bebas_texts and all(not any(s.islower() for s in text) for text in bebas_texts)
    # With a case-insensitive charset, the label is lower case whatever the font draws.
    lower = RealisticWords(fonts=bebas, charset=CHARSET_36, words=["hello"], seed=2)
    assert {lower.describe(i)["label"] for i in range(20) if lower.describe(i)["text"].isalpha()} <= {"hello"}


@pytest.mark.parametrize("language, extra", [("de", "äöüß"), ("vi", None)])
def test_other_languages_render_with_fonts_that_cover_them(language, extra):
    import wordfreq

    if extra is None:  # Vietnamese: every letter of its 300 most frequent words
        words = [w for w in wordfreq.top_n_list(language, 300) if w.isalpha()]
        extra = "".join(sorted(set("".join(words)) - set(CHARSET_36)))
    charset = CHARSET_36 + extra
    synth = RealisticWords(languages=language, charset=charset, text_mix={"word": 1.0}, seed=3)
    accented = 0
    for index in range(60):
        choice = synth.describe(index)
        assert set(choice["label"]) <= set(charset)
        assert {ord(s) for s in choice["text"]} <= cmap(choice["font"]), choice
        accented += bool(set(choice["label"]) & set(extra))
    assert accented >= 5
    image, label = synth.render(
        int(np.argmax([bool(set(synth.describe(i)["label"]) & set(extra)) for i in range(60)]))
    )
    assert image.height == 32 and set(label) & set(extra)


def test_rgb_height_and_procedural_backgrounds_only(tmp_path):
    synth = RealisticWords(rgb=True, height=48, textures=[], words=["Hello", "Shop"], text_mix={"word": 1}, seed=4)
    image, label = synth.render(0)
    assert image.mode == "RGB" and image.height == 48 and label in {"hello", "shop"}
    texture = tmp_path / "wall.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(texture)
    natural = RealisticWords(textures=[tmp_path], height=None, words=["wall"], effects={"loose_crop": 1.0}, seed=1)
    assert natural.render(1)[0].height > 8


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"colour": True}, "Unknown synth option 'colour': options are charset,"),
        ({"lexicon_sise": 10}, "Unknown synth option 'lexicon_sise': did you mean 'lexicon_size'?"),
        ({"effects": {"blurr": 0.5}}, "Unknown effect 'blurr' in effects: did you mean 'blur'?"),
        ({"effects": {"blur": 2}}, r"effects\['blur'\] is a probability in \[0, 1\]"),
        ({"text_mix": {"words": 1}}, "Unknown text_mix key 'words'"),
        ({"languages": "xx"}, "languages: wordfreq has no language 'xx'; choose from"),
        ({"words": ["Привет", "мир"]}, "words: no word of words .2 words. fits the charset"),
        ({"max_length": 0}, "max_length must be an integer >= 1"),
        ({"charset": "aa"}, "charset has duplicate symbols 'a'"),
        ({"textures": ["/no/such/folder"]}, "textures: '/no/such/folder' is not an image file or folder"),
        ({"fonts": ["/no/such/font.ttf"]}, "fonts: '/no/such/font.ttf' is not a font file or folder"),
    ],
)
def test_bad_input_is_one_line_naming_the_option_and_the_fix(kwargs, message):
    with pytest.raises(ValueError, match=message) as error:
        RealisticWords(**kwargs)
    assert "\n" not in str(error.value)


def test_font_folders_without_a_usable_font(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no fonts")
    with pytest.raises(ValueError, match="fonts: the folder .*empty' has no .ttf or .otf files; give a folder"):
        RealisticWords(fonts=[tmp_path / "empty"], words=["abc"])
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "Broken.ttf").write_bytes(b"<html>not a font</html>")
    with pytest.raises(ValueError, match=r"fonts: none of the 1 font files in .* is a readable font") as error:
        RealisticWords(fonts=[tmp_path / "broken"], words=["abc"])
    assert "\n" not in str(error.value)


def test_word_list_file_and_writers(tmp_path):
    word_list = tmp_path / "words.txt"
    word_list.write_text("\ufeffStore\t10\nopen\n\nsale\t1\n", encoding="utf-8")
    synth = RealisticWords(words=word_list, text_mix={"word": 1.0}, image_format="JPEG", seed=8)
    assert {synth.describe(i)["label"] for i in range(40)} <= {"store", "open", "sale"}
    assert synth.write_lmdb(tmp_path / "lmdb", 5, progress=False) == 5
    assert list(LmdbReader(tmp_path / "lmdb")) == list(synth.generate(5))
    data, _ = synth.encoded(0)
    assert Image.open(io.BytesIO(data)).format == "JPEG"
    repo = synth.write_parquet(tmp_path / "repo", 4)
    assert (repo / "README.md").is_file() and list((repo / "synth").glob("*.parquet"))


def test_simple_generator_is_unchanged_and_both_are_importable():
    import text_recognition.data as data

    assert data.SyntheticWords is SyntheticWords
    image, label = SyntheticWords(max_length=8, seed=0).render(0)
    assert image.mode == "L" and image.height == 32 and 3 <= len(label) <= 8


def test_script_writes_the_realistic_engine(tmp_path, capsys):
    import datasets
    from test_synth import load_script

    from text_recognition.cli import run

    synthesize = load_script()
    options = tmp_path / "synth.json"
    options.write_text(json.dumps({"rgb": True, "languages": ["en"], "seed": 9}), encoding="utf-8")
    out = tmp_path / "repo"
    argv = ["--engine", "realistic", "--options", str(options), "--seed", "3", "--output", str(out), "--num_samples",
            "4", "--format", "parquet", "--image_format", "jpeg"]  # fmt: skip
    assert run(synthesize.main, argv) == 0
    printed = capsys.readouterr().out
    assert "wrote 4 synthetic word images" in printed and "(parquet, JPEG)" in printed
    rows = datasets.load_dataset("parquet", data_files=str(out / "synth" / "*.parquet"), split="train")
    rows = rows.cast_column("image", datasets.Image(decode=False))
    expected = RealisticWords(rgb=True, languages=["en"], seed=3, image_format="JPEG")  # the flag wins over the file
    assert [(r["image"]["bytes"], r["label"]) for r in rows] == list(expected.generate(4))

    lmdb = tmp_path / "lmdb"
    assert run(synthesize.main, ["--engine", "realistic", "--output", str(lmdb), "--num_samples", "3"]) == 0
    assert list(LmdbReader(lmdb)) == list(RealisticWords().generate(3))

    assert run(synthesize.main, ["--engine", "realistic", "--rotation", "3", "--output", str(tmp_path / "x"),
                                 "--num_samples", "2"]) == 1  # fmt: skip
    assert "--rotation only apply to --engine simple" in capsys.readouterr().err
    assert run(synthesize.main, ["--languages", "de", "--output", str(tmp_path / "y"), "--num_samples", "2"]) == 1
    assert "--languages only apply to --engine realistic" in capsys.readouterr().err
    assert run(synthesize.main, ["--engine", "realistic", "--effects", "{bad", "--output", str(tmp_path / "z"),
                                 "--num_samples", "2"]) == 1  # fmt: skip
    assert "--effects is not JSON" in capsys.readouterr().err


def test_font_coverage_is_cached_on_disk_and_read_again_when_the_file_changes(tmp_path, monkeypatch):
    """Each process that builds the engine reads what 197 font files cover; a disk cache spares it the second time
    (the same faces, so the same pixels), and an edited font or a damaged entry is read from the font again."""
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    source = next(path for path, family, _ in fonts.packaged_fonts() if family == "PT Sans")
    font = tmp_path / "PTSans.ttf"
    font.write_bytes(Path(source).read_bytes())
    stat = font.stat()
    fresh = fonts._read_font(str(font))
    fonts._cached_font.cache_clear()
    assert fonts._cached_font(str(font), stat.st_size, stat.st_mtime_ns) == fresh  # read, then written
    (entry,) = (tmp_path / "cache" / "text_recognition" / "fonts").iterdir()
    fonts._cached_font.cache_clear()
    assert fonts._cached_font(str(font), stat.st_size, stat.st_mtime_ns) == fresh  # from the entry
    entry.write_text("{damaged")
    fonts._cached_font.cache_clear()
    assert fonts._cached_font(str(font), stat.st_size, stat.st_mtime_ns) == fresh
    assert json.loads(entry.read_text())["name"] == fresh[0]  # rewritten
    os.utime(font, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # an edited file: another key
    fonts._cached_font.cache_clear()
    assert fonts._cached_font(str(font), stat.st_size, stat.st_mtime_ns + 1_000_000_000) == fresh
    assert len(list(entry.parent.iterdir())) == 2
    (tmp_path / "not_a_font.ttf").write_bytes(b"garbage")
    assert fonts._cached_font(str(tmp_path / "not_a_font.ttf"), 7, 1) is None
    fonts._cached_font.cache_clear()
    assert fonts._cached_font(str(tmp_path / "not_a_font.ttf"), 7, 1) is None  # cached as not a font
    fonts._cached_font.cache_clear()
