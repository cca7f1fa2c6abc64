"""The dataset audit's counts on a small LMDB built with every problem it looks for."""

from __future__ import annotations

import json

import pytest
from conftest import png_bytes
from test_scripts import load_script

from text_recognition import ModelConfig
from text_recognition.audit import audit
from text_recognition.cli import run
from text_recognition.data.lmdb import write_lmdb


@pytest.fixture
def problem_lmdb(tmp_path):
    a, b = png_bytes(40, 20, seed=1), png_bytes(90, 30, seed=2)
    samples = [
        (a, "hello"),  # 1
        (a, "hello"),  # 2: exact duplicate of 1, same label
        (b, "world"),  # 3
        (b, "wor1d"),  # 4: the same image as 3 with another label
        (png_bytes(30, 32, seed=3), "caf\u00e9"),  # 5: é outside the 36-symbol charset
        (png_bytes(30, 32, seed=4), "x" * 30),  # 6: longer than batch_max_length 25
        (b"not an image", "broken"),  # 7: undecodable
        (png_bytes(64, 32, seed=5), "A-B"),  # 8: '-' outside; 'A' is lowercased (not --sensitive)
        (png_bytes(64, 32, seed=6), "ok"),  # 9
    ]
    write_lmdb(samples, tmp_path / "data" / "train")
    return tmp_path / "data"


def test_audit_counts_every_problem(problem_lmdb):
    report = audit(problem_lmdb, ModelConfig(), images=True, show_progress=False)
    [source] = report.sources
    assert source.name == "train" and source.samples == 9
    assert dict(source.out_of_charset) == {"é": 1, "-": 1}
    assert source.out_of_charset_examples["é"] == [(5, "café")]
    assert source.too_long == 1 and source.lengths[30] == 1 and source.lengths[5] == 4
    assert source.filter_reasons == {"kept": 6, "too_long": 1, "out_of_charset": 2}
    assert source.corrupt == 1 and source.corrupt_indices == [7]
    images = report.images
    assert images["decoded"] == 8 and images["corrupt"] == 1
    assert images["duplicate_groups"] == 2 and images["duplicate_samples"] == 2
    assert images["conflicting_groups"] == 1
    [group] = images["conflicting_examples"]
    assert [(g["index"], g["label"]) for g in group] == [(3, "world"), (4, "wor1d")]
    assert images["width"]["max"] == 90 and images["height"]["min"] == 20


def test_audit_filter_follows_the_flags(problem_lmdb):
    sensitive = audit(problem_lmdb, ModelConfig(sensitive=True), show_progress=False)
    assert sensitive.sources[0].filter_reasons["out_of_charset"] == 1  # '-' is in the 94 symbols; é is not
    unfiltered = audit(problem_lmdb, ModelConfig(), data_filtering_off=True, show_progress=False)
    assert unfiltered.sources[0].filter_reasons["kept"] == 8  # only the 30-character label cannot be learned
    assert unfiltered.images is None  # labels only unless asked


def test_audit_script_writes_json_table_and_plots(problem_lmdb, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    script = load_script("audit_dataset")
    out = tmp_path / "audit"
    assert run(script.main, ["--data", str(problem_lmdb), "--images", "--plots", "--output_dir", str(out),
                             "--batch_max_length", "20"]) == 0
    printed = capsys.readouterr().out
    assert "| train | 9 | 6 | 2 | 1 | 1 | 30 |" in printed and "same image with different labels: 1" in printed
    values = json.loads((out / "audit.json").read_text())
    assert values["sources"]["train"]["out_of_charset"]["é"]["count"] == 1
    assert values["rules"]["batch_max_length"] == 20
    assert sorted(p.name for p in out.glob("*.png")) == ["aspect_ratios.png", "heights.png", "label_lengths.png",
                                                         "symbols.png"]  # fmt: skip


def test_audit_of_a_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        audit(tmp_path / "nothing", ModelConfig(), show_progress=False)
