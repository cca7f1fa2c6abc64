"""Exact per-batch mixing: composition, determinism, disjoint processes, resume."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from text_recognition.data import BatchBalancedSampler, parse_batch_ratio, parse_select_data, source_batch_sizes


def test_dtrb_spellings_and_batch_sizes():
    assert parse_select_data("MJ-ST") == ["MJ", "ST"]
    assert parse_select_data(["MJ", "ST-extra"]) == ["MJ", "ST-extra"]
    assert parse_batch_ratio("0.5-0.5", 2) == [0.5, 0.5]
    assert parse_batch_ratio([0.25, "0.75"], 2) == [0.25, 0.75]
    assert source_batch_sizes(192, [0.5, 0.5]) == [96, 96]
    assert source_batch_sizes(5, [0.5, 0.5]) == [2, 2]  # Python's round: half to even, as DTRB
    assert source_batch_sizes(7, [0.1, 0.9]) == [1, 6]
    assert source_batch_sizes(10, [0.01, 0.99]) == [1, 10]  # at least 1


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: parse_batch_ratio("0.5-0.5", 3), r"batch_ratio has 2 value\(s\) .* select_data names 3 source"),
        (lambda: parse_batch_ratio("0.5-x", 2), r"batch_ratio must be numbers"),
        (lambda: parse_batch_ratio("0.5-0", 2), r"must be positive"),
        (lambda: parse_select_data("MJ--ST"), r"select_data must name at least one source"),
        (lambda: source_batch_sizes(0, [1.0]), r"batch_size must be at least 1"),
        (lambda: BatchBalancedSampler([10, 0], [1, 1]), r"Source\(s\) \[1\] have no samples"),
        (lambda: BatchBalancedSampler([10], [1], rank=2, world_size=2), r"rank must be in"),
    ],
)
def test_bad_mixing_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def source_of(index: int, sizes: list[int]) -> int:
    return int(np.searchsorted(np.cumsum(sizes), index, side="right"))


def test_every_batch_has_the_exact_composition_over_many_batches_and_two_processes():
    sizes, counts = [37, 11, 5], [5, 2, 1]  # sources smaller than many batches: they wrap around repeatedly
    samplers = [BatchBalancedSampler(sizes, counts, seed=3, rank=r, world_size=2, num_batches=200) for r in (0, 1)]
    streams = [list(s) for s in samplers]
    assert all(len(stream) == 200 for stream in streams)
    checked = 0
    for it in range(200):
        both = streams[0][it] + streams[1][it]
        for batch in (streams[0][it], streams[1][it]):
            assert Counter(source_of(i, sizes) for i in batch) == {0: 5, 1: 2, 2: 1}
        assert all(0 <= i < sum(sizes) for i in both)
        # Within one epoch of every source, the two processes never share a sample.
        positions = [(it * 2 * c, it * 2 * c + 2 * c - 1) for c in counts]
        if all(start // n == end // n for (start, end), n in zip(positions, sizes)):
            assert len(set(both)) == len(both), it
            checked += 1
    assert checked > 20


def test_each_epoch_of_each_source_is_a_permutation_split_across_processes():
    sizes, counts = [40, 12], [4, 3]  # 40 / (2 * 4) = 5 iterations per epoch of source 0; 12 / 6 = 2 of source 1
    samplers = [BatchBalancedSampler(sizes, counts, seed=0, rank=r, world_size=2) for r in (0, 1)]
    source0, source1 = [], []
    for it in range(10):
        for sampler in samplers:
            batch = sampler.batch(it)
            source0 += batch[:4]
            source1 += batch[4:]
    assert sorted(source0[:40]) == list(range(40)) and sorted(source0[40:80]) == list(range(40))
    assert source0[:40] != source0[40:80]  # reshuffled for the next epoch
    for epoch in range(5):
        assert sorted(source1[12 * epoch : 12 * epoch + 12]) == list(range(40, 52))


def test_deterministic_for_a_seed():
    a = BatchBalancedSampler([100, 50], [6, 2], seed=1111, num_batches=30)
    b = BatchBalancedSampler([100, 50], [6, 2], seed=1111, num_batches=30)
    c = BatchBalancedSampler([100, 50], [6, 2], seed=1112, num_batches=30)
    assert list(a) == list(b) != list(c)


def test_resume_at_iteration_k_gives_the_same_next_batches():
    full = list(BatchBalancedSampler([23, 9], [4, 3], seed=7, rank=1, world_size=2, num_batches=50))
    for k in (0, 1, 17, 49):
        resumed = BatchBalancedSampler([23, 9], [4, 3], seed=7, rank=1, world_size=2, start_iteration=k,
                                       num_batches=50)  # fmt: skip
        assert list(resumed) == full[k:]
    running = BatchBalancedSampler([23, 9], [4, 3], seed=7, rank=1, world_size=2, num_batches=50)
    iterator = iter(running)
    [next(iterator) for _ in range(12)]
    state = running.state_dict()
    restored = BatchBalancedSampler([23, 9], [4, 3], seed=0, rank=1, world_size=2, num_batches=50)
    restored.load_state_dict(state)
    assert list(restored) == full[12:]


def test_endless_sampler_has_no_length():
    sampler = BatchBalancedSampler([5], [2])
    with pytest.raises(TypeError, match="endless"):
        len(sampler)
    assert len(BatchBalancedSampler([5], [2], num_batches=3)) == 3
