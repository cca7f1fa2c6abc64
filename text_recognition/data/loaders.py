"""From ``--train_data`` / ``--valid_data`` to what a DataLoader needs: DTRB's source selection, filtering, usage
ratio and exact batch mixing, with DTRB's ``log_dataset.txt`` lines and per-reason filtering counts."""

from __future__ import annotations

import contextlib
import logging
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np

from ..config import DEFAULT_SHUFFLE_BLOCK, ModelConfig
from ..augment import TextAugment
from .collate import TextCollator
from .datasets import filter_dataset, label_rules, load_text_dataset, local_sources
from .labels import KEPT, LabelRules
from .lmdb import LmdbReader, is_lmdb
from .lmdb_index import LabelScan, LmdbSource, cached_scan
from .mixing import BatchBalancedSampler, MixedSources, parse_batch_ratio, parse_select_data, source_batch_sizes
from .streaming import StreamBatchSampler, StreamRows, TokenStream, stream_sources
from .synth_source import ENDLESS, SYNTH, VALID_SEED_OFFSET, SynthSource, engine_options

logger = logging.getLogger(__name__)

DASHED = "-" * 80


@dataclass
class TextData:
    """A filtered, mixed data source ready for a DataLoader (``batch_sampler=sampler, collate_fn=collator``)."""

    dataset: MixedSources | StreamRows
    collator: TextCollator
    log: str
    counts: dict[str, Counter] = field(default_factory=dict)  # source -> reason -> samples
    sampler: BatchBalancedSampler | StreamBatchSampler | None = None
    batch_sizes: list[int] = field(default_factory=list)  # per selected group, in select_data order


@contextlib.contextmanager
def _naming_the_token(select: str) -> Iterator[None]:
    """A source lookup's ``FileNotFoundError`` names the ``select_data`` token it was for (not ``/``: all)."""
    try:
        yield
    except FileNotFoundError as error:
        if select == "/":
            raise
        raise FileNotFoundError(f"{error} (select_data token {select!r})") from None


def filtered_sources(
    data: str | os.PathLike, select: str, config: ModelConfig, data_filtering_off: bool
) -> list[tuple[str, LmdbSource | datasets.Dataset, Counter, np.ndarray | None]]:
    """``[(name, filtered source with undecoded image bytes, counts per reason, kept rows or None)]`` of the
    sources under ``data`` whose name starts with ``select``.

    An LMDB is read in place (``LmdbSource``): its labels are scanned once (cached by the LMDB's fingerprint in the
    datasets cache), its images fetched per batch; no Arrow copy is made. ``datasets`` folders and Hub datasets are
    filtered on their ``label`` column. The kept rows are numpy arrays (memory-mapped for LMDBs). For a charset that
    is not one of DTRB's two, or with ``data_filtering_off``, what was dropped or changed is warned once per source.
    """
    rules = label_rules(config, data_filtering_off)
    path = Path(data)
    result = []
    if path.exists():
        with _naming_the_token(select):
            sources = local_sources(path, select)
        for name, folder in sources.items():
            if is_lmdb(folder):
                with LmdbReader(folder) as reader:
                    scanned = cached_scan(reader, rules)
                source = LmdbSource(folder, scanned.kept)
            else:
                dataset = datasets.load_from_disk(os.fspath(folder)).cast_column("image", datasets.Image(decode=False))
                source, scanned = filter_dataset(dataset, rules)
            _warn_label_changes(name, scanned, rules)
            result.append((name, source, scanned.counts, scanned.kept))
        return result
    with _naming_the_token(select):
        loaded = load_text_dataset(data, select)
    for name, dataset in loaded.items():
        filtered, scanned = filter_dataset(dataset.cast_column("image", datasets.Image(decode=False)), rules)
        _warn_label_changes(name, scanned, rules)
        result.append((name, filtered, scanned.counts, scanned.kept))
    return result


def _warn_label_changes(name: str, scanned: LabelScan, rules: LabelRules) -> None:
    """Once per source: for a custom charset, what the filter dropped (and where DTRB's unescaped regex would have
    decided otherwise); with ``data_filtering_off``, the labels that cleaning changes."""
    if not rules.dtrb_charset and not rules.data_filtering_off:
        dropped = {reason: n for reason, n in scanned.counts.items() if reason != KEPT and n}
        if dropped or scanned.dtrb_differs:
            shown = "; ".join(f"{reason}: " + ", ".join(repr(label) for _, label in examples)
                              for reason, examples in scanned.examples.items())  # fmt: skip
            differs = dict(scanned.dtrb_differs)
            logger.warning(
                "%s: the charset %r (escaped: each symbol means itself) drops %s of %d samples (%s)%s%s. Labels are "
                "never changed beyond lowercasing%s.",
                name, rules.character, sum(dropped.values()), scanned.num_samples,
                ", ".join(f"{reason} {n}" for reason, n in sorted(dropped.items())),
                f"; e.g. {shown}" if shown else "",
                f"; DTRB's unescaped regex would have decided otherwise for {differs}" if differs else "",
                "" if rules.sensitive else " (not --sensitive)",
            )  # fmt: skip
    if scanned.changed:
        shown = ", ".join(f"{stored!r} -> {trained!r}" for _, stored, trained in scanned.changed_examples)
        logger.warning(
            "%s: --data_filtering_off keeps %d sample(s) whose label has symbols outside the charset; they are "
            "trained with those symbols removed, as DTRB does (e.g. %s). Leave --data_filtering_off out to drop "
            "them instead, or add the symbols to --character.",
            name, scanned.changed, shown,
        )  # fmt: skip


def _counts_text(counts: Counter) -> str:
    dropped = ", ".join(f"{reason} {n}" for reason, n in sorted(counts.items()) if reason != KEPT and n)
    return f"kept {counts[KEPT]} of {sum(counts.values())}" + (f" (dropped: {dropped})" if dropped else "")


def _empty_error(name: str, counts: Counter, config: ModelConfig) -> ValueError:
    return ValueError(
        f"No sample of {name!r} is left after filtering: {_counts_text(counts)}. 'too_long' means longer than "
        f"batch_max_length={config.batch_max_length}; 'out_of_charset' means a symbol outside --character "
        f"({len(config.character)} symbols{', case-sensitive' if config.sensitive else ''}). Adjust "
        f"--character/--sensitive/--batch_max_length, or pass --data_filtering_off."
    )


def build_train_data(
    train_data: str | os.PathLike,
    config: ModelConfig,
    *,
    select_data: str | Sequence[str] = "MJ-ST",
    batch_ratio: str | Sequence[float] = "0.5-0.5",
    total_data_usage_ratio: float = 1.0,
    batch_size: int = 192,
    data_filtering_off: bool = False,
    seed: int = 1111,
    rank: int = 0,
    world_size: int = 1,
    start_iteration: int = 0,
    augment: TextAugment | None = None,
    synth: dict | None = None,
) -> TextData:
    """DTRB's Batch_Balanced_Dataset: for each ``select_data`` token, the sources whose name starts with it, filtered
    and concatenated, of which the first ``int(total * total_data_usage_ratio)`` samples are used; each batch holds
    ``max(round(batch_size * ratio), 1)`` samples of each. The token ``synth`` is the synthetic engine (options
    ``synth``, seeded by ``seed``), rendered on the fly, endless and read in order (``data/synth_source.py``).

    Raises:
        FileNotFoundError: ``train_data`` missing, or a token matching no source (the error lists what exists).
        ValueError: mismatched ``select_data``/``batch_ratio``, or a token with no sample left after filtering.
    """
    tokens = parse_select_data(select_data)
    ratios = parse_batch_ratio(batch_ratio, len(tokens))
    if not 0 < float(total_data_usage_ratio) <= 1:
        raise ValueError(f"total_data_usage_ratio must be in (0, 1], got {total_data_usage_ratio}.")
    counts_per_batch = source_batch_sizes(batch_size, ratios)

    log = [DASHED, f"dataset_root: {train_data}", f"opt.select_data: {tokens}", f"opt.batch_ratio: {ratios}", DASHED]
    members, group_sizes, all_counts = [], [], {}
    engine = [token == SYNTH and not _stored_synth(train_data, bool(synth)) for token in tokens]
    for token, ratio, per_batch, rendered in zip(tokens, ratios, counts_per_batch, engine):
        if rendered:
            group = _synth_group(config, synth or {}, seed)
        else:
            group = _source_group(train_data, token, config, data_filtering_off, float(total_data_usage_ratio))
        members += group.members
        group_sizes.append(group.used)
        all_counts.update(group.counts)
        log += group.log
        log.append(f"num samples of {token} per batch: {batch_size} x {ratio} (batch_ratio) = {per_batch}")
        log.append(DASHED)
    total_batch = sum(counts_per_batch)
    log.append(f"Total_batch_size: {'+'.join(map(str, counts_per_batch))} = {total_batch}")
    log.append(DASHED)

    sampler = BatchBalancedSampler(group_sizes, counts_per_batch, seed=seed, rank=rank, world_size=world_size,
                                   start_iteration=start_iteration, tag_draws=augment is not None,
                                   in_order=engine)  # fmt: skip
    return TextData(
        dataset=MixedSources(members),
        collator=TextCollator(config, data_filtering_off, augment),
        log="\n".join(log) + "\n",
        counts=all_counts,
        sampler=sampler,
        batch_sizes=counts_per_batch,
    )



def build_stream_train_data(
    train_data: str | os.PathLike,
    config: ModelConfig,
    *,
    select_data: str | Sequence[str] = "MJ-ST",
    batch_ratio: str | Sequence[float] = "0.5-0.5",
    batch_size: int = 192,
    data_filtering_off: bool = False,
    seed: int = 1111,
    rank: int = 0,
    world_size: int = 1,
    shuffle_block: int = DEFAULT_SHUFFLE_BLOCK,
    augment: TextAugment | None = None,
) -> TextData:
    """``build_train_data`` for ``--streaming``: a ``TextData`` whose sampler is a ``StreamBatchSampler``.

    Raises:
        FileNotFoundError: nothing to stream, or a token matching no source.
        ValueError: mismatched ``select_data``/``batch_ratio``, LMDBs, a bad ``shuffle_block``.
    """
    if shuffle_block < 1:
        raise ValueError(f"shuffle_block must be at least 1 (1: the stream's own order), got {shuffle_block}.")
    tokens = parse_select_data(select_data)
    ratios = parse_batch_ratio(batch_ratio, len(tokens))
    counts = source_batch_sizes(batch_size, ratios)
    rules = LabelRules(config.character, config.batch_max_length, config.sensitive, data_filtering_off)
    log = [DASHED, f"dataset_root: {train_data} (streamed)", f"opt.select_data: {tokens}",
           f"opt.batch_ratio: {ratios}", DASHED]  # fmt: skip
    streams = []
    for number, (token, ratio, per_batch) in enumerate(zip(tokens, ratios, counts)):
        with _naming_the_token(token):
            sources = stream_sources(train_data, token)
        streams.append(TokenStream(token, number, sources, rules, seed, shuffle_block, rank, world_size))
        log.append(f"dataset_root:    {train_data}\t dataset: {token}")
        log += [f"sub-directory:\t/{name}\t streamed, filtered on the fly" for name in sources]
        log.append(f"num samples of {token} per batch: {batch_size} x {ratio} (batch_ratio) = {per_batch}")
        log.append(DASHED)
    log.append(f"Total_batch_size: {'+'.join(map(str, counts))} = {sum(counts)}")
    log.append(DASHED)
    return TextData(dataset=StreamRows(), collator=TextCollator(config, data_filtering_off, augment),
                    log="\n".join(log) + "\n", sampler=StreamBatchSampler(streams, counts),
                    batch_sizes=counts)  # fmt: skip



@dataclass
class _SourceGroup:
    """The sources one ``select_data`` token selects, cut to ``total_data_usage_ratio``."""

    members: list[tuple[str, LmdbSource | datasets.Dataset, int, np.ndarray | None]]
    used: int
    counts: dict[str, Counter]
    log: list[str]


def _source_group(
    train_data: str | os.PathLike, token: str, config: ModelConfig, data_filtering_off: bool, usage: float
) -> _SourceGroup:
    """The filtered sources of ``token``, of which the first ``int(total * usage)`` samples are used (DTRB's
    ``total_data_usage_ratio``), with their ``log_dataset.txt`` lines."""
    sources = filtered_sources(train_data, token, config, data_filtering_off)
    log = [f"dataset_root:    {train_data}\t dataset: {token}"]
    counts, total = {}, 0
    for name, dataset, source_counts, _ in sources:
        counts[name] = source_counts
        total += len(dataset)
        log.append(f"sub-directory:\t/{name}\t num samples: {len(dataset)}\t filtering: {_counts_text(source_counts)}")
    if total == 0:
        raise _empty_error(token, sum((c for _, _, c, _ in sources), Counter()), config)
    used = int(total * usage)
    if used == 0:
        raise ValueError(f"total_data_usage_ratio={usage} leaves no sample of {token!r} ({total} samples).")
    members, remaining = [], used
    for name, dataset, _, kept in sources:
        take = min(len(dataset), remaining)
        if take:
            members.append((name, dataset, take, kept))
        remaining -= take
    log.append(f"num total samples of {token}: {total} x {usage} (total_data_usage_ratio) = {used}")
    return _SourceGroup(members, used, counts, log)


def _stored_synth(train_data: str | os.PathLike, options_given: bool) -> bool:
    """Whether the token ``synth`` selects stored sources under ``train_data`` (a folder holding sources named
    ``synth...``, as trees made before the engine existed do): they keep being trained on, and a warning says that
    the engine is not used; ``--synth`` options are then an error, not ignored."""
    path = Path(train_data) if train_data else None
    if path is None or not path.exists():
        return False
    try:
        found = local_sources(path, SYNTH)
    except FileNotFoundError:
        return False
    if options_given:
        raise ValueError(f"--synth sets the synthetic engine's options, but the select_data token {SYNTH!r} selects "
                         f"the stored source(s) {sorted(found)} under {os.fspath(train_data)!r}: rename them to train "
                         f"on the engine, or leave --synth out.")  # fmt: skip
    logger.warning("select_data %r: %s holds stored source(s) %s named so; they are trained on, not the synthetic "
                   "engine (rename them to use the engine).", SYNTH, os.fspath(train_data), sorted(found))  # fmt: skip
    return True


def _synth_group(config: ModelConfig, options: dict, seed: int) -> _SourceGroup:
    """The synthetic engine as one endless source."""
    source = SynthSource(engine_options(options, config, seed))
    log = [f"dataset: {SYNTH}\t rendered on the fly, endless, in order (no filtering: labels fit by construction)",
           f"synthetic engine options: {source.describe()}", source.engine.font_coverage()]  # fmt: skip
    return _SourceGroup([(SYNTH, source, ENDLESS, None)], ENDLESS, {}, log)


def build_synth_eval_data(config: ModelConfig, synth: dict | None, seed: int, num_samples: int) -> TextData:
    """Held-out synthetic validation: ``num_samples`` samples of the engine seeded ``seed + VALID_SEED_OFFSET`` (never
    a training sample's seed stream), rendered anew at each validation."""
    options = engine_options(synth or {}, config, seed + VALID_SEED_OFFSET)
    source = SynthSource(options, num_samples)
    log = (f"dataset: {SYNTH} (held out)\t {num_samples} samples rendered with seed {options['seed']}\n"
           f"synthetic engine options: {source.describe()}\n")  # fmt: skip
    return TextData(dataset=MixedSources([(SYNTH, source, num_samples, None)]), collator=TextCollator(config),
                    log=log, counts={})  # fmt: skip


def build_eval_data(
    data: str | os.PathLike, config: ModelConfig, *, select_data: str = "/", data_filtering_off: bool = False
) -> TextData:
    """All sources under ``data`` (DTRB's ``hierarchical_dataset(select_data='/')``), filtered, in name order, for
    sequential evaluation.

    Raises:
        FileNotFoundError: ``data`` missing or holding no source.
        ValueError: no sample left after filtering.
    """
    sources = filtered_sources(data, select_data, config, data_filtering_off)
    log = [f"dataset_root:    {data}\t dataset: {select_data}"]
    for name, dataset, counts, _ in sources:
        log.append(f"sub-directory:\t/{name}\t num samples: {len(dataset)}\t filtering: {_counts_text(counts)}")
    if sum(len(dataset) for _, dataset, _, _ in sources) == 0:
        raise _empty_error(os.fspath(data), sum((c for _, _, c, _ in sources), Counter()), config)
    members = [(name, dataset, len(dataset), kept) for name, dataset, _, kept in sources if len(dataset)]
    return TextData(
        dataset=MixedSources(members),
        collator=TextCollator(config, data_filtering_off),
        log="\n".join(log) + "\n",
        counts={name: counts for name, _, counts, _ in sources},
    )


def check_decodable(data: TextData, name: str) -> None:
    """At least one image of ``data`` decodes: images are read until the first that does (one, for a sound set), so
    that a run never validates on nothing, logging a score of 0 and keeping an untrained model as its best.

    Raises:
        ValueError: every image is undecodable.
    """
    for index in range(len(data.dataset)):
        if data.collator([data.dataset[index]])["labels"]:
            return
    raise ValueError(
        f"No image of --valid_data {os.fspath(name)!r} can be decoded (all {len(data.dataset):,} samples are "
        f"corrupt): validation would score nothing. Check the data (scripts/audit_dataset.py --images lists the "
        f"corrupt images) or give another --valid_data."
    )
