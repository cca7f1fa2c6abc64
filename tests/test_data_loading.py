"""LMDB -> datasets conversion, loading from folders / LMDBs / trees / the Hub, and the full training data path."""

from __future__ import annotations

import shutil
from unittest import mock

import datasets
import pytest
import torch
from conftest import make_lmdb
from torch.utils.data import DataLoader

from text_recognition import ModelConfig
from text_recognition.data import (
    build_eval_data,
    build_train_data,
    convert_lmdb_tree,
    lmdb_to_dataset,
    load_text_dataset,
    push_dataset_tree,
)
from text_recognition.data.datasets import ConversionStats

CONFIG = ModelConfig("None", "VGG", "None", "CTC")


def test_lmdb_to_dataset_keeps_bytes_and_order(tmp_path):
    images = make_lmdb(tmp_path / "db", ["hello", "World", "x"], corrupt={2})
    stats = ConversionStats()
    dataset = lmdb_to_dataset(tmp_path / "db", stats=stats, cache_dir=tmp_path / "cache")
    assert dataset.features == datasets.Features({"image": datasets.Image(), "label": datasets.Value("string")})
    assert dataset["label"] == ["hello", "World", "x"]
    raw = dataset.cast_column("image", datasets.Image(decode=False))
    assert [row["bytes"] for row in raw["image"]] == images  # no re-encoding
    assert stats.samples == 3 and stats.undecodable == [3] and stats.image_bytes == sum(map(len, images))


def test_rewritten_lmdb_is_never_served_from_a_stale_cache(tmp_path):
    make_lmdb(tmp_path / "db", ["a"] * 5)
    assert len(load_text_dataset(tmp_path / "db")["db"]) == 5
    assert len(load_text_dataset(tmp_path / "db")["db"]) == 5  # cached
    shutil.rmtree(tmp_path / "db")
    make_lmdb(tmp_path / "db", ["b"] * 8)
    reloaded = load_text_dataset(tmp_path / "db")["db"]
    assert len(reloaded) == 8 and set(reloaded["label"]) == {"b"}


def test_convert_tree_keeps_relative_names_and_reports(tmp_path):
    root = tmp_path / "training"
    make_lmdb(root / "MJ" / "MJ_train", ["a", "b", "c"])
    make_lmdb(root / "MJ" / "MJ_valid", ["d"], corrupt={0})
    make_lmdb(root / "ST", ["e", "f"])
    summary = convert_lmdb_tree(root, tmp_path / "hf", progress=False)
    assert summary.samples == 6 and summary.undecodable == 1
    assert (
        "MJ/MJ_valid: 1 samples" in summary.report() and "undecodable images at LMDB indices [1]" in summary.report()
    )
    loaded = load_text_dataset(tmp_path / "hf")
    assert list(loaded) == ["MJ/MJ_train", "MJ/MJ_valid", "ST"]
    assert loaded["ST"]["label"] == ["e", "f"]
    assert list(load_text_dataset(tmp_path / "hf", select_data="MJ")) == ["MJ/MJ_train", "MJ/MJ_valid"]
    with pytest.raises(FileExistsError, match="--overwrite"):
        convert_lmdb_tree(root, tmp_path / "hf", progress=False)
    assert convert_lmdb_tree(root, tmp_path / "hf", progress=False, overwrite=True).samples == 6
    leftovers = [p.name for p in (tmp_path / "hf").rglob(".*")]
    assert leftovers == []  # no temporary folders left behind


def test_load_text_dataset_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="Data folder not found"):
        load_text_dataset(tmp_path / "missing")
    with mock.patch.object(datasets, "get_dataset_config_names", side_effect=ConnectionError("offline")):
        with pytest.raises(FileNotFoundError, match="neither a local folder nor a loadable Hub dataset"):
            load_text_dataset("user/missing")
    make_lmdb(tmp_path / "root" / "MJ", ["a"])
    with pytest.raises(FileNotFoundError, match=r"matching select_data 'ST'.*Found: \['MJ'\]"):
        load_text_dataset(tmp_path / "root", select_data="ST")


def test_hub_dataset_ids_map_configs_to_sources(tmp_path):
    fake = {
        "MJ--MJ_train": datasets.Dataset.from_dict({"label": ["a"]}),
        "ST": datasets.Dataset.from_dict({"label": ["b"]}),
    }
    with mock.patch.object(datasets, "get_dataset_config_names", return_value=list(fake)) as names, \
         mock.patch.object(datasets, "load_dataset", side_effect=lambda repo, config, split: fake[config]) as load:  # fmt: skip
        loaded = load_text_dataset("user/mjst", select_data="MJ")
    names.assert_called_once_with("user/mjst")
    load.assert_called_once_with("user/mjst", "MJ--MJ_train", split="train")
    assert list(loaded) == ["MJ/MJ_train"]

    make_lmdb(tmp_path / "tree" / "MJ" / "MJ_train", ["a"])
    convert_lmdb_tree(tmp_path / "tree", tmp_path / "hf", progress=False)
    with mock.patch.object(datasets.Dataset, "push_to_hub") as push:
        assert push_dataset_tree(tmp_path / "hf", "user/mjst", private=True) == ["MJ--MJ_train"]
    push.assert_called_once_with("user/mjst", config_name="MJ--MJ_train", split="train", private=True)


@pytest.fixture
def training_tree(tmp_path):
    root = tmp_path / "training"
    make_lmdb(root / "MJ" / "MJ_train", [f"mj{i}" for i in range(30)] + ["TOO-LONG" * 5, "a b"], corrupt={4}, seed=1)
    make_lmdb(root / "MJ" / "MJ_valid", [f"mv{i}" for i in range(10)], seed=2)
    make_lmdb(root / "ST", [f"st{i}" for i in range(12)], seed=3)
    return root


@pytest.mark.parametrize("workers", [0, 2])
def test_training_data_end_to_end(training_tree, workers):
    data = build_train_data(training_tree, CONFIG, select_data="MJ-ST", batch_ratio="0.75-0.25", batch_size=8, seed=5)
    assert data.batch_sizes == [6, 2]
    assert "Total_batch_size: 6+2 = 8" in data.log
    assert (
        "sub-directory:\t/MJ/MJ_train\t num samples: 30\t filtering: kept 30 of 32 (dropped: out_of_charset 1, too_long 1)"
        in data.log
    )
    assert data.counts["ST"]["kept"] == 12
    loader = DataLoader(data.dataset, batch_sampler=data.sampler, collate_fn=data.collator, num_workers=workers)
    skipped, batches = [], []
    for i, batch in enumerate(loader):
        batches.append(batch)
        skipped += batch["skipped"]
        if i == 19:
            break
    for batch in batches:
        sources = [label[:2] for label in batch["labels"]]
        mj = sum(s in ("mj", "mv") for s in sources)
        assert sources.count("st") == 2 and mj + sum(1 for s in batch["skipped"]) == 6
        assert batch["pixel_values"].shape == (len(batch["labels"]), 1, 32, 100)
    assert skipped and {(s.source, s.index) for s in skipped} == {("MJ/MJ_train", 4)}


def test_usage_ratio_takes_the_first_samples(training_tree):
    data = build_train_data(training_tree, CONFIG, select_data=["MJ"], batch_ratio=[1.0], batch_size=4,
                            total_data_usage_ratio=0.5)  # fmt: skip
    assert "num total samples of MJ: 40 x 0.5 (total_data_usage_ratio) = 20" in data.log
    rows = data.dataset.__getitems__(list(range(len(data.dataset))))
    assert [r["label"] for r in rows] == [f"mj{i}" for i in range(20)]


def test_training_data_errors(training_tree, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        build_train_data(tmp_path / "missing", CONFIG)
    with pytest.raises(FileNotFoundError, match=r"select_data token 'XX'"):
        build_train_data(training_tree, CONFIG, select_data="MJ-XX")
    with pytest.raises(ValueError, match=r"batch_ratio has 1 value"):
        build_train_data(training_tree, CONFIG, select_data="MJ-ST", batch_ratio="1.0")
    make_lmdb(tmp_path / "upper" / "UP", ["HELLO WORLD", "A" * 40])
    with pytest.raises(ValueError, match=r"No sample of 'UP' is left after filtering: kept 0 of 2 \(dropped: "
                                         r"out_of_charset 1, too_long 1\)"):  # fmt: skip
        build_train_data(tmp_path / "upper", CONFIG, select_data="UP", batch_ratio="1")


def test_eval_data_uses_every_source_in_order(training_tree):
    data = build_eval_data(training_tree, CONFIG)
    assert len(data.dataset) == 30 + 10 + 12
    batch = data.collator(data.dataset.__getitems__(list(range(len(data.dataset)))))
    assert batch["labels"][:2] == ["mj0", "mj1"] and len(batch["skipped"]) == 1
    assert isinstance(batch["pixel_values"], torch.Tensor)
