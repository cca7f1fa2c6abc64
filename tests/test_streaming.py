"""--streaming: a local folder laid out as a Hub dataset repo (Parquet files, configs in README.md), read by the
same ``datasets.load_dataset(..., streaming=True)`` call as the Hub (no network): exact mixing, filtering on the
fly, disjoint ranks, workers that never read twice, exact resume, short and empty streams, and training."""

from __future__ import annotations

import json
from collections import Counter

import datasets
import pytest
import torch
from conftest import REPO_ROOT
from safetensors.torch import load_file
from test_training import TINY_CTC, data, launch, run_files  # noqa: F401
from torch.utils.data import DataLoader

from text_recognition import ModelConfig
from text_recognition.data import SyntheticWords, build_train_data, convert_lmdb_tree
from text_recognition.data.datasets import FEATURES
from text_recognition.data.loaders import build_stream_train_data
from text_recognition.data.streaming import stream_sources, write_parquet_repo

CONFIG = ModelConfig("None", "VGG", "None", "CTC", output_channel=32, hidden_size=32)
REAL_TRAIN = REPO_ROOT.parent / "shared" / "data" / "real_train"
BAD = {3, 10, 17}  # rows of MJ/MJ_train whose label has a symbol outside the charset


def _with_labels(dataset: datasets.Dataset, labels: list[str]) -> datasets.Dataset:
    return datasets.Dataset.from_dict({"image": dataset["image"], "label": labels}, features=FEATURES)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """MJ/MJ_train: 40 words in 3 Parquet files, 3 of them out of charset; MJ/MJ_extra: 6 words; ST: 7 words."""
    root = tmp_path_factory.mktemp("stream")
    mj = SyntheticWords(min_length=2, max_length=6, seed=0).to_dataset(40, cache_dir=root / "cache")
    labels = [f"{label}!" if k in BAD else label for k, label in enumerate(mj["label"])]
    sources = {
        "MJ/MJ_train": _with_labels(mj, labels),
        "MJ/MJ_extra": SyntheticWords(min_length=2, max_length=6, seed=1).to_dataset(6, cache_dir=root / "cache"),
        "ST": SyntheticWords(min_length=2, max_length=6, seed=2).to_dataset(7, cache_dir=root / "cache"),
    }
    write_parquet_repo(sources, root / "repo", rows_per_file=14)
    return root / "repo", sources


def stream(repo_dir, *, batch_size=10, ratio="0.5-0.5", block=8, rank=0, world_size=1, seed=3, **kwargs):
    return build_stream_train_data(repo_dir, CONFIG, select_data="MJ-ST", batch_ratio=ratio, batch_size=batch_size,
                                   seed=seed, shuffle_block=block, rank=rank, world_size=world_size, **kwargs)


def labels_of(batch):
    return [(row["source"], row["label"]) for row in batch]


def test_the_folder_is_read_as_a_hub_dataset_with_a_source_per_config(repo):
    repo_dir, sources = repo
    streams = stream_sources(repo_dir, "MJ")
    assert sorted(streams) == ["MJ/MJ_extra", "MJ/MJ_train"]
    assert isinstance(streams["MJ/MJ_train"], datasets.IterableDataset)
    assert streams["MJ/MJ_train"].num_shards == 3  # 40 rows, 14 per file
    assert [row["label"] for row in stream_sources(repo_dir, "ST")["ST"]] == sources["ST"]["label"]


def test_every_batch_mixes_exactly_and_the_filter_drops_out_of_charset_labels(repo):
    repo_dir, sources = repo
    streamed = stream(repo_dir, batch_size=10, ratio="0.7-0.3")
    assert streamed.batch_sizes == [7, 3]
    batches = iter(streamed.sampler)
    seen = Counter()
    for _ in range(20):  # 140 MJ samples: more than three epochs of its 43 kept (6 + 37)
        batch = next(batches)
        assert [source.startswith("MJ") for source, _ in labels_of(batch)] == [True] * 7 + [False] * 3
        seen.update(labels_of(batch))
    kept_mj = [label for k, label in enumerate(sources["MJ/MJ_train"]["label"]) if k not in BAD]
    assert {label for source, label in seen if source == "MJ/MJ_train"} == set(kept_mj)
    assert not any(label.endswith("!") for _, label in seen)
    assert streamed.sampler.filtering_counts()["MJ/MJ_train"]["out_of_charset"] >= 9  # 3 epochs read, at least
    assert "MJ/MJ_train" in streamed.log and "streamed" in streamed.log


def test_a_stream_shorter_than_one_batch_repeats_within_the_batch(repo):
    repo_dir, sources = repo
    streamed = stream(repo_dir, batch_size=24, ratio="0.5-0.5")  # 12 ST samples per batch, ST has 7
    batch = next(iter(streamed.sampler))
    st = [label for source, label in labels_of(batch) if source == "ST"]
    assert len(st) == 12 and set(st) == set(sources["ST"]["label"])


def test_ranks_read_disjoint_samples_and_together_all_of_them(repo):
    repo_dir, sources = repo

    def first_epoch(rank):
        streamed = build_stream_train_data(repo_dir, CONFIG, select_data="MJ/MJ_train", batch_ratio="1", batch_size=1,
                                       rank=rank, world_size=2, shuffle_block=50)  # fmt: skip
        token, labels = streamed.sampler.streams[0], []
        while True:
            (row,) = token.take(1)
            if token.epoch:
                return labels
            labels.append(row["label"])

    # 3 files (14, 14, 12 rows) do not split into 2 equal sets of shards: each rank keeps every 2nd sample
    rank0, rank1 = first_epoch(0), first_epoch(1)
    kept = [label for k, label in enumerate(sources["MJ/MJ_train"]["label"]) if k not in BAD]
    assert not set(rank0) & set(rank1)
    assert sorted(rank0 + rank1) == sorted(kept)


def test_workers_decode_what_the_sampler_read_once_and_in_order(repo):
    repo_dir, _ = repo
    reference = stream(repo_dir)
    expected = [labels_of(batch) for _, batch in zip(range(6), iter(reference.sampler))]
    streamed = stream(repo_dir)
    loader = DataLoader(streamed.dataset, batch_sampler=streamed.sampler, collate_fn=streamed.collator, num_workers=2)
    got = []
    for _, batch in zip(range(6), loader):
        assert batch["pixel_values"].shape == (10, 1, 32, 100)
        got.append(list(zip([source for source, _ in batch["ids"]], batch["stored_labels"])))
        assert batch["draw"] == len(got) - 1
    assert got == expected


@pytest.mark.parametrize("consumed", [0, 1, 4, 9])
def test_resume_continues_the_stream_exactly(repo, consumed):
    repo_dir, _ = repo
    streamed = stream(repo_dir, block=6)
    batches = iter(streamed.sampler)
    straight = [labels_of(next(batches)) for _ in range(14)]
    resumed = stream(repo_dir, block=6)
    if consumed:
        streamed.sampler.consumed(consumed - 1)  # batches 0 .. consumed-1 were trained on; more were read ahead
        resumed.sampler.load_state_dict(json.loads(json.dumps(streamed.sampler.state_dict())))  # via a JSON file
    again = iter(resumed.sampler)
    assert [labels_of(next(again)) for _ in range(14 - consumed)] == straight[consumed:]
    # the block a resumed stream reads again is not counted twice
    assert resumed.sampler.filtering_counts() == streamed.sampler.filtering_counts()


def test_the_seed_and_the_block_shuffle(repo):
    repo_dir, sources = repo

    def first(**kwargs):
        return [labels_of(batch) for _, batch in zip(range(3), iter(stream(repo_dir, **kwargs).sampler))]

    assert first(seed=1) == first(seed=1)
    assert first(seed=1) != first(seed=2)
    st = [label for batch in first(block=1) for source, label in batch if source == "ST"]
    assert st[:7] == sources["ST"]["label"]  # a block of 1: the stream's own order


def test_bad_streams_are_clear_errors(repo, tmp_path):
    repo_dir, sources = repo
    with pytest.raises(FileNotFoundError, match="no config matching select_data 'XX'"):
        build_stream_train_data(repo_dir, CONFIG, select_data="XX", batch_ratio="1")
    bad = write_parquet_repo({"MJ": _with_labels(sources["ST"], ["@@"] * 7)}, tmp_path / "bad")
    streamed = build_stream_train_data(bad, CONFIG, select_data="MJ", batch_ratio="1", batch_size=4)
    with pytest.raises(ValueError, match=r"No sample of 'MJ' \(MJ\) is left after filtering: 7 read"):
        next(iter(streamed.sampler))
    SyntheticWords(seed=0).write_lmdb(tmp_path / "lmdb" / "MJ", 3, progress=False)
    with pytest.raises(ValueError, match="read in place, without --streaming"):
        build_stream_train_data(tmp_path / "lmdb", CONFIG, select_data="MJ", batch_ratio="1")
    other = datasets.Dataset.from_dict({"picture": [b"x"], "text": ["a"]})
    other.to_parquet(str(tmp_path / "cols" / "MJ" / "train.parquet"))
    with pytest.raises(ValueError, match="has columns .*expected 'image' and 'label'"):
        build_stream_train_data(tmp_path / "cols", CONFIG, select_data="MJ", batch_ratio="1")
    with pytest.raises(ValueError, match="shuffle_block must be at least 1"):
        build_stream_train_data(repo_dir, CONFIG, select_data="MJ", batch_ratio="1", shuffle_block=0)


def test_flags_that_do_not_apply_are_errors():
    from text_recognition.config import DataConfig

    with pytest.raises(ValueError, match="--shuffle_block only applies with --streaming"):
        DataConfig(train_data="a", valid_data="b", shuffle_block=10)
    with pytest.raises(ValueError, match="--total_data_usage_ratio needs each source's size"):
        DataConfig(train_data="a", valid_data="b", streaming=True, total_data_usage_ratio=0.5)


def test_real_lmdbs_converted_to_parquet_stream_the_samples_the_lmdbs_keep(tmp_path):
    """The three real training splits of ../shared/data: convert_lmdb_tree(parquet=True), then one epoch of the
    stream holds exactly the samples that the in-place LMDB path keeps (DTRB's filter, 36-symbol charset)."""
    if not REAL_TRAIN.is_dir():
        pytest.skip(f"real data not found: {REAL_TRAIN} is absent")
    summary = convert_lmdb_tree(REAL_TRAIN, tmp_path / "parquet", progress=False, parquet=True)
    assert summary.samples == 4468 + 2000 + 257
    assert sorted(p.name for p in (tmp_path / "parquet").iterdir()) == ["IC15_train_4468", "IIIT5k_train_2000",
                                                                         "README.md", "SVT_train_257"]  # fmt: skip
    in_place = build_train_data(REAL_TRAIN, CONFIG, select_data="/", batch_ratio="1", batch_size=8)
    expected = Counter(row["label"] for row in in_place.dataset.__getitems__(list(range(len(in_place.dataset)))))
    streamed = build_stream_train_data(tmp_path / "parquet", CONFIG, select_data="/", batch_ratio="1",
                                       batch_size=1, shuffle_block=500)  # fmt: skip
    token, epoch = streamed.sampler.streams[0], Counter()
    while True:
        (row,) = token.take(1)
        if token.epoch:
            break
        epoch[row["label"]] += 1
    assert epoch == expected
    counts = streamed.sampler.filtering_counts()  # IC15 also has the first block of the next epoch read
    assert {name: sum(c.values()) for name, c in counts.items()} == {"IC15_train_4468": 4468 + 500,
                                                                     "IIIT5k_train_2000": 2000, "SVT_train_257": 257}
    assert counts["SVT_train_257"] == dict(in_place.counts["SVT_train_257"])


def _train_args(repo_dir, valid, run_dir, *extra):
    return ["--train_data", str(repo_dir), "--valid_data", str(valid), "--streaming", "--select_data", "MJ-ST",
            "--batch_ratio", "0.5-0.5", "--batch_size", "8", "--output_dir", str(run_dir), "--exp_name", "run",
            "--report_to", "none", *TINY_CTC, "--valInterval", "4", "--shuffle_block", "16", "--adam", "--lr",
            "1e-3", *extra]  # fmt: skip


@pytest.mark.slow
def test_streamed_training_resumes_to_the_weights_of_an_uninterrupted_run(repo, data, tmp_path):  # noqa: F811
    repo_dir, _ = repo
    valid = data / "valid"
    straight = launch(_train_args(repo_dir, valid, tmp_path / "a", "--num_iter", "12", "--workers", "2"), tmp_path)
    assert straight.returncode == 0, straight.stdout + straight.stderr
    first = launch(_train_args(repo_dir, valid, tmp_path / "b", "--num_iter", "6", "--workers", "2"), tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    state = json.loads((tmp_path / "b" / "run" / "checkpoints" / "checkpoint-6" / "stream_state.json").read_text())
    assert state["num_processes"] == 1 and state["states"][0]["iteration"] == 6
    resumed = launch(_train_args(repo_dir, valid, tmp_path / "b", "--num_iter", "12", "--workers", "2",
                                 "--resume_from_checkpoint", "latest"), tmp_path)  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    a, b = (load_file(tmp_path / r / "run" / "checkpoints" / "checkpoint-12" / "model.safetensors") for r in "ab")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    results = run_files(tmp_path / "a")
    assert results["stream_filtering"]["MJ/MJ_train"]["out_of_charset"] >= 3
    assert "streamed" in (tmp_path / "a" / "run" / "log_dataset.txt").read_text()


@pytest.mark.slow
def test_streamed_training_on_two_processes(repo, data, tmp_path):  # noqa: F811
    repo_dir, _ = repo
    result = launch(_train_args(repo_dir, data / "valid", tmp_path, "--num_iter", "4", "--workers", "0"), tmp_path,
                    config="cpu_ddp.yaml", env_extra={"ACCELERATE_USE_CPU": "1"})  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "processes: 2" in result.stdout and "Training samples: streamed" in result.stdout
    state = json.loads((tmp_path / "run" / "checkpoints" / "checkpoint-4" / "stream_state.json").read_text())
    assert state["num_processes"] == 2 and len(state["states"]) == 2
    results = run_files(tmp_path)
    assert results["iterations"] == 4
    read = sum(sum(reasons.values()) for reasons in results["stream_filtering"].values())
    assert read >= 2 * 4 * 8  # both processes' samples are counted
