"""LMDBs trained in place: the cached label pass, ``LmdbSource``, bit-identical batches with the Arrow path, flat
(numpy) indices, and one-line errors for broken LMDBs, BOMs and symlinked sources."""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path

import datasets
import lmdb
import numpy as np
import pytest
from conftest import make_lmdb, png_bytes

from text_recognition import ModelConfig
from text_recognition.data import LmdbReader, build_eval_data, build_train_data, convert_lmdb_tree
from text_recognition.data import filter_labels_with_counts
from text_recognition.data.datasets import read_gt_file
from text_recognition.data.lmdb import LmdbFormatError, find_sources
from text_recognition.data.lmdb_index import LmdbSource, cached_scan, default_cache_dir
from text_recognition.data.labels import LabelRules

CONFIG = ModelConfig("None", "VGG", "None", "CTC", output_channel=32, hidden_size=32)


def _tree(root: Path) -> Path:
    make_lmdb(root / "MJ" / "MJ_train", [f"mj{i}" for i in range(30)] + ["TOO-LONG" * 5, "a b", "Mx9"], seed=1)
    make_lmdb(root / "MJ" / "MJ_valid", [f"mv{i}" for i in range(10)], seed=2)
    make_lmdb(root / "ST", [f"st{i}" for i in range(12)] + ["b!"], seed=3)
    return root


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_lmdb_tree_trains_in_place_without_arrow_copy_or_writing_into_the_data_folder(tmp_path):
    root = _tree(tmp_path / "data")
    before = _files(root)
    cache = Path(datasets.config.HF_DATASETS_CACHE)
    arrow_before = set(cache.rglob("*.arrow")) if cache.exists() else set()
    data = build_train_data(root, CONFIG, select_data="MJ-ST", batch_ratio="0.5-0.5", batch_size=8, seed=3)
    assert _files(root) == before  # nothing written beside the user's data
    assert set(cache.rglob("*.arrow")) == arrow_before  # no Arrow copy
    assert all(isinstance(source, LmdbSource) for source in data.dataset.datasets)
    assert list(default_cache_dir().glob("*.json"))  # the label pass is cached in the datasets cache
    kept = data.dataset.original_rows[0]
    assert isinstance(kept, np.ndarray) and kept.dtype == np.uint32 and list(kept) == [*range(30), 32]


def test_in_place_batches_are_bit_identical_to_the_arrow_path(tmp_path):
    root = _tree(tmp_path / "data")
    convert_lmdb_tree(root, tmp_path / "arrow", progress=False)
    kwargs = dict(select_data="MJ-ST", batch_ratio="0.75-0.25", batch_size=8, seed=7, total_data_usage_ratio=0.9)
    ours = build_train_data(root, CONFIG, **kwargs)
    arrow = build_train_data(tmp_path / "arrow", CONFIG, **kwargs)
    assert ours.log.replace(str(root), "R") == arrow.log.replace(str(tmp_path / "arrow"), "R")
    for iteration in (0, 1, 5, 17):
        indices = ours.sampler.batch(iteration)
        assert indices == arrow.sampler.batch(iteration)
        a, b = ours.dataset.__getitems__(indices), arrow.dataset.__getitems__(indices)
        assert [(r["source"], r["index"], r["label"], r["image"]["bytes"]) for r in a] == [
            (r["source"], r["index"], r["label"], r["image"]["bytes"]) for r in b
        ]
    valid_ours, valid_arrow = build_eval_data(root, CONFIG), build_eval_data(tmp_path / "arrow", CONFIG)
    everything = list(range(len(valid_ours.dataset)))
    assert [r["label"] for r in valid_ours.dataset.__getitems__(everything)] == [
        r["label"] for r in valid_arrow.dataset.__getitems__(everything)
    ]


def test_label_pass_is_cached_by_fingerprint_and_redone_when_the_lmdb_changes(tmp_path):
    make_lmdb(tmp_path / "db", ["ab", "a b", "cd"])
    rules = LabelRules(CONFIG.character, 25)
    first = cached_scan(LmdbReader(tmp_path / "db"), rules, cache_dir=tmp_path / "cache")
    again = cached_scan(LmdbReader(tmp_path / "db"), rules, cache_dir=tmp_path / "cache")
    assert not first.cached or first.kept is not None  # served memory-mapped from the file just written
    assert again.cached and list(again.kept) == [0, 2] and again.counts == first.counts
    assert isinstance(again.kept, np.memmap)
    other_rules = cached_scan(LmdbReader(tmp_path / "db"), LabelRules(CONFIG.character, 25, True, True),
                              cache_dir=tmp_path / "cache")  # fmt: skip
    assert other_rules.kept is None  # data_filtering_off: a different cache entry
    for path in (tmp_path / "db").iterdir():
        path.unlink()
    make_lmdb(tmp_path / "db", ["a b", "xy", "zz", "q"])
    changed = cached_scan(LmdbReader(tmp_path / "db"), rules, cache_dir=tmp_path / "cache")
    assert list(changed.kept) == [1, 2, 3]


def test_lmdb_source_pickles_its_memory_mapped_rows_by_file(tmp_path):
    make_lmdb(tmp_path / "db", ["ab", "a b", "cd", "ef"])
    scan = cached_scan(LmdbReader(tmp_path / "db"), LabelRules(CONFIG.character, 25), cache_dir=tmp_path / "c")
    source = LmdbSource(tmp_path / "db", scan.kept)
    payload = pickle.dumps(source)
    assert len(payload) < 2000  # the rows travel as a file name, not as data
    clone = pickle.loads(payload)
    assert isinstance(clone.rows, np.memmap) and clone[[0, 2]]["label"] == ["ab", "ef"]
    assert source[1]["label"] == "cd" and source["label"] == ["ab", "cd", "ef"] and len(source) == 3
    with pytest.raises(IndexError):
        source[3]


def test_readers_of_one_lmdb_share_an_environment_in_a_process(tmp_path):
    make_lmdb(tmp_path / "db", ["ab", "cd"])
    source = LmdbSource(tmp_path / "db")
    assert source[0]["label"] == "ab"  # its environment is open
    with LmdbReader(tmp_path / "db") as reader:  # py-lmdb alone refuses a second open of the path
        assert [label for _, label in reader] == ["ab", "cd"]
    assert source[1]["label"] == "cd"  # still open after the other reader closed


def test_filter_kept_rows_are_numpy_not_lists():
    dataset = datasets.Dataset.from_dict({"label": ["ab", "a b", "cd"]})
    result = filter_labels_with_counts(dataset, CONFIG)
    assert isinstance(result.kept, np.ndarray) and list(result.kept) == [0, 2]
    assert result.dataset["label"] == ["ab", "cd"]


def _raw_lmdb(path: Path, entries: dict[bytes, bytes]) -> Path:
    path.mkdir(parents=True)
    env = lmdb.open(os.fspath(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for key, value in entries.items():
            txn.put(key, value)
    env.close()
    return path


def _sample(index: int, label: bytes = b"ok") -> dict[bytes, bytes]:
    return {b"image-%09d" % index: png_bytes(20, 10, index), b"label-%09d" % index: label}


@pytest.mark.parametrize(
    ("case", "entries", "message"),
    [
        ("num_samples_larger_than_entries", {**_sample(1), **_sample(2), b"num-samples": b"3"},
         r"num-samples=3 but has no key label-000000003"),
        ("missing_label_key", {**_sample(1), b"image-000000002": png_bytes(), **_sample(3), b"num-samples": b"3"},
         r"no key label-000000002"),
        ("missing_image_key", {**_sample(1), b"label-000000002": b"x", **_sample(3), b"num-samples": b"3"},
         r"no key image-000000002 \(the image of sample 2 of 3\)"),
        ("non_utf8_label", {**_sample(1), **_sample(2, b"caf\xe9"), b"num-samples": b"2"},
         r"not UTF-8 at key label-000000002"),
        ("negative_num_samples", {**_sample(1), b"num-samples": b"-5"}, r"negative 'num-samples' \(-5\)"),
    ],
)  # fmt: skip
def test_broken_lmdb_gives_one_line_error_naming_path_key_and_fix(tmp_path, case, entries, message):
    root = tmp_path / "data"
    path = _raw_lmdb(root / "BAD", entries)
    with pytest.raises(LmdbFormatError, match=message) as error:
        build_train_data(root, CONFIG, select_data="BAD", batch_ratio="1", batch_size=2)
    text = str(error.value)
    assert "\n" not in text and str(path) in text
    assert "create_lmdb_dataset.py" in text  # how to fix
    assert isinstance(error.value, ValueError)  # the CLIs print ValueErrors as one line


def test_gt_file_with_utf8_bom_keeps_the_first_image(tmp_path):
    (tmp_path / "a.png").write_bytes(png_bytes())
    (tmp_path / "gt.txt").write_bytes("\ufeffa.png\thello\nb.png\tworld\n".encode())
    entries = read_gt_file(tmp_path / "gt.txt", tmp_path)
    assert entries[0].path == tmp_path / "a.png" and entries[0].path.is_file() and entries[0].label == "hello"


def test_symlinked_source_folder_under_train_data_is_found(tmp_path):
    make_lmdb(tmp_path / "elsewhere" / "ST_real", ["st0", "st1"])
    make_lmdb(tmp_path / "data" / "MJ", ["mj0"])
    (tmp_path / "data" / "ST").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "data" / "loop").symlink_to(tmp_path / "data", target_is_directory=True)  # must not loop
    assert list(find_sources(tmp_path / "data")) == ["MJ", "ST/ST_real"]
    data = build_train_data(tmp_path / "data", CONFIG, select_data="MJ-ST", batch_ratio="0.5-0.5", batch_size=2)
    assert [r["label"] for r in data.dataset.__getitems__([0, 1, 2])] == ["mj0", "st0", "st1"]


def test_custom_charset_with_dash_bracket_caret_backslash_warns_once_per_source(tmp_path, caplog):
    charset = "abc-]^\\"
    make_lmdb(tmp_path / "data" / "S1", ["a-c", "b", "]^\\", "d", "a c", "B"])
    make_lmdb(tmp_path / "data" / "S2", ["abc", "ab"])
    config = ModelConfig("None", "VGG", "None", "CTC", character=charset)
    with caplog.at_level(logging.WARNING, logger="text_recognition.data.loaders"):
        data = build_train_data(tmp_path / "data", config, select_data="S", batch_ratio="1", batch_size=2)
    rows = data.dataset.__getitems__(list(range(len(data.dataset))))
    assert [r["label"] for r in rows] == ["a-c", "b", "]^\\", "B", "abc", "ab"]  # escaped: each symbol is itself
    assert [data.collator.rules.clean(r["label"]) for r in rows] == ["a-c", "b", "]^\\", "b", "abc", "ab"]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and warnings[0].startswith("S1:")  # S2 dropped nothing
    assert "drops 2 of 6 samples (out_of_charset 2)" in warnings[0] and "'d'" in warnings[0]
    assert "DTRB's unescaped regex would have decided otherwise" in warnings[0]


def test_data_filtering_off_label_changes_are_warned_not_silent(tmp_path, caplog):
    make_lmdb(tmp_path / "data" / "S", ["ab", "a b!", "cd"])
    with caplog.at_level(logging.WARNING, logger="text_recognition.data.loaders"):
        build_train_data(tmp_path / "data", CONFIG, select_data="S", batch_ratio="1", batch_size=2,
                         data_filtering_off=True)  # fmt: skip
    assert any("keeps 1 sample(s)" in r.getMessage() and "'a b!' -> 'ab'" in r.getMessage() for r in caplog.records)


def test_unwritable_label_cache_only_warns_and_scans_from_memory(tmp_path, caplog):
    make_lmdb(tmp_path / "db", ["ab", "a b"])
    (tmp_path / "not_a_folder").write_text("a file where the cache folder would go")
    with caplog.at_level(logging.WARNING, logger="text_recognition.data.lmdb_index"):
        result = cached_scan(LmdbReader(tmp_path / "db"), LabelRules(CONFIG.character, 25),
                             cache_dir=tmp_path / "not_a_folder" / "cache")  # fmt: skip
    assert list(result.kept) == [0] and not result.cached
    assert any("Could not cache the label pass" in r.getMessage() for r in caplog.records)
