"""scripts/create_lmdb_dataset.py and scripts/convert_lmdb.py."""

from __future__ import annotations

import re

import datasets
import pytest
from conftest import make_lmdb, png_bytes
from test_scripts import load_script

from text_recognition.cli import run
from text_recognition.data import LmdbReader, load_text_dataset


@pytest.fixture
def image_folder(tmp_path):
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    for name, seed in (("a.png", 1), ("sub/b.png", 2), ("c.png", 3)):
        (folder / name).write_bytes(png_bytes(50, 32, seed))
    (folder / "broken.png").write_bytes(b"not an image")
    return folder


def write_gt(path, lines, newline="\n"):
    path.write_bytes(newline.join(lines).encode("utf-8") + newline.encode())
    return path


def test_create_lmdb_dataset_skips_and_reports(tmp_path, image_folder, capsys):
    gt = write_gt(tmp_path / "gt.txt", ["a.png\tHello", "sub/b.png\twörld", "missing.png\tx", "broken.png\ty",
                                        "c.png\tlast"], newline="\r\n")  # fmt: skip
    script = load_script("create_lmdb_dataset")
    argv = ["--inputPath", str(image_folder), "--gtFile", str(gt), "--outputPath", str(tmp_path / "lmdb"),
            "--datasetPath", str(tmp_path / "hf")]  # fmt: skip
    assert run(script.main, argv) == 0
    out = capsys.readouterr().out
    assert "3 samples written" in out and "skipped 1 missing image files" in out and "skipped 1 undecodable" in out
    reader = LmdbReader(tmp_path / "lmdb")
    assert list(reader.labels()) == ["Hello", "wörld", "last"]  # CRLF does not leave "\r" in labels
    assert reader.get(1)[0] == (image_folder / "a.png").read_bytes()
    assert (tmp_path / "lmdb" / "error_image_log.txt").read_text().count("\n") == 2
    dataset = datasets.load_from_disk(str(tmp_path / "hf"))
    assert dataset["label"] == ["Hello", "wörld", "last"]
    # The same input, straight to datasets, gives the same bytes.
    raw = dataset.cast_column("image", datasets.Image(decode=False))
    assert raw[2]["image"]["bytes"] == (image_folder / "c.png").read_bytes()


def test_check_valid_false_keeps_undecodable_images(tmp_path, image_folder):
    gt = write_gt(tmp_path / "gt.txt", ["broken.png\ty", "a.png\tz"])
    script = load_script("create_lmdb_dataset")
    argv = ["--inputPath", str(image_folder), "--gtFile", str(gt), "--outputPath", str(tmp_path / "db"),
            "--checkValid=False"]  # fmt: skip
    assert run(script.main, argv) == 0
    assert list(LmdbReader(tmp_path / "db").labels()) == ["y", "z"]


def test_create_lmdb_dataset_errors(tmp_path, image_folder, capsys):
    script = load_script("create_lmdb_dataset")
    spaces = write_gt(tmp_path / "gt.txt", ["a.png Hello", "c.png\tok"])
    base = ["--inputPath", str(image_folder), "--gtFile", str(spaces)]
    assert run(script.main, [*base, "--outputPath", str(tmp_path / "db")]) == 1
    err = capsys.readouterr().err
    assert "line 1: 'a.png Hello'" in err and "tab, not a space" in err
    assert not (tmp_path / "db").exists()  # checked before anything is written
    assert run(script.main, base) == 1
    assert "Give --outputPath" in capsys.readouterr().err
    make_lmdb(tmp_path / "existing", ["a"])
    good = write_gt(tmp_path / "good.txt", ["a.png\tok"])
    assert run(script.main, ["--inputPath", str(image_folder), "--gtFile", str(good), "--outputPath",
                             str(tmp_path / "existing")]) == 1  # fmt: skip
    assert "already exists" in capsys.readouterr().err
    assert run(script.main, ["--inputPath", str(image_folder), "--gtFile", str(tmp_path / "nope.txt"),
                             "--outputPath", str(tmp_path / "x")]) == 1  # fmt: skip
    assert "gt file not found" in capsys.readouterr().err


def test_convert_lmdb_script(tmp_path, capsys):
    root = tmp_path / "evaluation"
    make_lmdb(root / "IIIT5k_3000", ["a", "b"])
    make_lmdb(root / "SVT", ["c"], corrupt={0})
    script = load_script("convert_lmdb")
    assert run(script.main, ["--lmdb", str(root), "--output_dir", str(tmp_path / "hf"), "--no_progress"]) == 0
    out = capsys.readouterr().out
    assert "total: 3 samples" in out and "1 undecodable" in out and "samples/s" in out
    assert list(load_text_dataset(tmp_path / "hf")) == ["IIIT5k_3000", "SVT"]
    assert run(script.main, ["--lmdb", str(tmp_path / "empty"), "--output_dir", str(tmp_path / "o")]) == 1
    assert "error:" in capsys.readouterr().err


def break_lmdb(path, how):
    """An LMDB of two samples broken ``how``: num-samples too large, a missing key, a non-UTF-8 label, or empty."""
    import lmdb

    make_lmdb(path, [] if how == "empty" else ["ab", "cd"])
    env = lmdb.open(str(path))
    with env.begin(write=True) as txn:
        if how == "num_samples_too_large":
            txn.put(b"num-samples", b"5")
        elif how == "missing_key":
            txn.delete(b"image-000000002")
        elif how == "non_utf8_label":
            txn.put(b"label-000000002", b"\xff\xfe")
    env.close()


@pytest.mark.parametrize("parquet", [False, True], ids=["arrow", "parquet"])
@pytest.mark.parametrize(
    ("how", "message"),
    [("num_samples_too_large", "has no image for sample 3 of 5"), ("missing_key", "has no image for sample 2 of 2"),
     ("non_utf8_label", "has a label that is not UTF-8 at key label-000000002"),
     ("empty", r"holds no sample \(num-samples 0\)")],
)  # fmt: skip
def test_convert_lmdb_on_a_broken_lmdb_prints_the_projects_one_line_error(tmp_path, capsys, how, message, parquet):
    break_lmdb(tmp_path / "data" / "SVT", how)
    script = load_script("convert_lmdb")
    args = ["--lmdb", str(tmp_path / "data"), "--output_dir", str(tmp_path / "out"), "--no_progress"]
    assert run(script.main, args + (["--parquet"] if parquet else [])) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and error.count("\n") == 0 and re.search(message, error), error
    assert "DatasetGenerationError" not in error and "SVT" in error


@pytest.mark.parametrize(
    ("gt", "message"),
    [(b"a.png\tHello\nc.png\tcaf\xe9\n", r"gt\.txt' is not UTF-8: line 2, byte 10"),
     (b"", r"gt\.txt' holds no '<image path>\\t<label>' line"),
     (b"\n\n", r"gt\.txt' holds no '<image path>\\t<label>' line"),
     (b"nope1.png\tab\nnope2.png\tcd\n", r"None of the 2 image\(s\) of .*gt\.txt' is under --inputPath"),
     (b"broken.png\tab\n", r"No image of .*gt\.txt' could be decoded, so no LMDB was written")],
    ids=["latin1", "empty", "blank_lines", "all_missing", "all_undecodable"],
)  # fmt: skip
def test_create_lmdb_dataset_on_a_bad_gt_file_is_a_one_line_error_and_writes_no_lmdb(
    tmp_path, image_folder, capsys, gt, message
):
    (tmp_path / "gt.txt").write_bytes(gt)
    script = load_script("create_lmdb_dataset")
    code = run(script.main, ["--inputPath", str(image_folder), "--gtFile", str(tmp_path / "gt.txt"), "--outputPath",
                             str(tmp_path / "lmdb")])  # fmt: skip
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 1 and re.search(message, error), error
    assert not (tmp_path / "lmdb").exists()
