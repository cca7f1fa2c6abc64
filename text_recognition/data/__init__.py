"""Data: DTRB LMDBs and image folders as Hugging Face datasets, DTRB's label filtering, exact batch mixing,
AlignCollate, streamed datasets, and synthetic word generators (a realistic engine that trains on the fly as the
``select_data`` token ``synth``)."""

from .collate import AlignCollate, SkipTracker, TextCollator
from .datasets import (
    convert_lmdb_tree,
    filter_labels,
    filter_labels_with_counts,
    lmdb_to_dataset,
    load_text_dataset,
    push_dataset_tree,
)
from .labels import LabelRules
from .lmdb import LmdbReader, find_sources, write_lmdb
from .loaders import TextData, build_eval_data, build_stream_train_data, build_train_data
from .streaming import StreamBatchSampler, stream_sources, write_parquet_repo
from .synth import RealisticWords, SyntheticWords
from .synth_source import SYNTH, SynthSource
from .mixing import BatchBalancedSampler, MixedSources, parse_batch_ratio, parse_select_data, source_batch_sizes

__all__ = [
    "AlignCollate",
    "BatchBalancedSampler",
    "LabelRules",
    "LmdbReader",
    "MixedSources",
    "SkipTracker",
    "StreamBatchSampler",
    "RealisticWords",
    "SYNTH",
    "SynthSource",
    "SyntheticWords",
    "TextCollator",
    "TextData",
    "build_eval_data",
    "build_stream_train_data",
    "build_train_data",
    "convert_lmdb_tree",
    "filter_labels",
    "filter_labels_with_counts",
    "find_sources",
    "lmdb_to_dataset",
    "load_text_dataset",
    "parse_batch_ratio",
    "parse_select_data",
    "push_dataset_tree",
    "source_batch_sizes",
    "stream_sources",
    "write_lmdb",
    "write_parquet_repo",
]
