from __future__ import annotations

import pickle

import lmdb
import pytest
from conftest import make_lmdb, png_bytes
from torch.utils.data import DataLoader

from text_recognition.data.lmdb import LmdbFormatError, LmdbReader, find_sources, select_sources, write_lmdb


def test_round_trip_with_dtrb_keys(tmp_path):
    images = make_lmdb(tmp_path / "db", ["hello", "wörld", ""])
    env = lmdb.open(str(tmp_path / "db"), readonly=True, lock=False)
    with env.begin() as txn:
        assert txn.get(b"num-samples") == b"3"
        assert txn.get(b"image-000000001") == images[0]  # 1-based, raw bytes kept as given
        assert txn.get(b"label-000000002") == "wörld".encode()
        assert txn.get(b"image-000000000") is None
    env.close()
    reader = LmdbReader(tmp_path / "db")
    assert len(reader) == 3
    assert reader.get(1) == (images[0], "hello")
    assert list(reader) == list(zip(images, ["hello", "wörld", ""]))
    assert list(reader.labels()) == ["hello", "wörld", ""]


def test_write_refuses_to_overwrite(tmp_path):
    make_lmdb(tmp_path / "db", ["a"])
    with pytest.raises(FileExistsError, match="already holds an LMDB"):
        write_lmdb([(png_bytes(), "b")], tmp_path / "db")


def test_write_grows_the_map_beyond_the_initial_size(tmp_path):
    big = bytes(3 << 20)  # 3 MiB per image, 400 images: more than the 1 GiB initial map
    count = write_lmdb(((big, str(i)) for i in range(400)), tmp_path / "db")
    assert count == 400 and len(LmdbReader(tmp_path / "db")) == 400


def test_missing_num_samples_and_missing_keys(tmp_path):
    env = lmdb.open(str(tmp_path / "bad"), map_size=1 << 20)
    with env.begin(write=True) as txn:
        txn.put(b"image-000000001", png_bytes())
    env.close()
    with pytest.raises(LmdbFormatError, match="has no 'num-samples' key"):
        LmdbReader(tmp_path / "bad")
    env = lmdb.open(str(tmp_path / "short"), map_size=1 << 20)
    with env.begin(write=True) as txn:
        txn.put(b"num-samples", b"2")
        txn.put(b"image-000000001", png_bytes())
        txn.put(b"label-000000001", b"a")
    env.close()
    reader = LmdbReader(tmp_path / "short")
    with pytest.raises(LmdbFormatError, match=r"has no image for sample 2 of 2 \(key image-000000002\)"):
        reader.get(2)
    with pytest.raises(FileNotFoundError, match="no data.mdb"):
        LmdbReader(tmp_path / "nothing")


def test_reader_opens_its_own_environment_in_each_worker(tmp_path):
    make_lmdb(tmp_path / "db", [f"w{i}" for i in range(20)])
    reader = LmdbReader(tmp_path / "db")
    reader.get(1)  # the parent's environment must not travel into the workers
    assert pickle.loads(pickle.dumps(reader))._env is None
    loader = DataLoader(
        range(1, 21), batch_size=5, num_workers=2, collate_fn=lambda idx: [reader.get(i)[1] for i in idx]
    )
    assert sorted(label for batch in loader for label in batch) == sorted(f"w{i}" for i in range(20))


def test_find_and_select_sources_in_a_nested_tree(tmp_path):
    root = tmp_path / "training"
    for name in ("MJ/MJ_train", "MJ/MJ_valid", "ST", "ST_spe", "other/deep/x"):
        make_lmdb(root / name, ["a"])
    sources = find_sources(root)
    assert list(sources) == ["MJ/MJ_train", "MJ/MJ_valid", "ST", "ST_spe", "other/deep/x"]
    assert list(select_sources(sources, "MJ")) == ["MJ/MJ_train", "MJ/MJ_valid"]
    assert list(select_sources(sources, "ST")) == ["ST", "ST_spe"]  # a prefix, as DTRB's tokens
    assert list(select_sources(sources, "/")) == list(sources)
    assert select_sources(sources, "training") == {}  # the root's own name does not select (DTRB's quirk)
    assert list(find_sources(root / "ST")) == ["ST"]  # an LMDB given directly is named after its folder
    with pytest.raises(FileNotFoundError, match="Data folder not found"):
        find_sources(tmp_path / "missing")
