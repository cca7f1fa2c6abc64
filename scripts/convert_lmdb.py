#!/usr/bin/env python
"""Convert a DTRB LMDB, or a whole tree of them, to Hugging Face datasets folders with the same relative names.

    python scripts/convert_lmdb.py --lmdb data_lmdb_release/training --output_dir data_hf/training
    python scripts/convert_lmdb.py --lmdb data_lmdb_release/training --output_dir data_hf/training \\
        --push_to_hub user/mjst
    python scripts/convert_lmdb.py --lmdb data_lmdb_release/training --output_dir mjst_parquet --parquet

With --parquet the output is laid out as a Hub dataset repo (Parquet files in one folder per source, the configs in
its README.md): train.py --streaming reads it as it is, or once uploaded (huggingface-cli upload --repo-type dataset).

Image bytes are kept as they are (no re-encoding). The summary lists samples, bytes and the images PIL cannot read
(they stay in the data; training skips them). Training reads LMDBs in place: convert to publish, to stream, or
for Arrow.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from text_recognition.cli import run
from text_recognition.data.datasets import convert_lmdb_tree, push_dataset_tree


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lmdb", "--input", dest="lmdb", required=True, help="an LMDB folder or a tree of them")
    parser.add_argument("--output_dir", required=True, help="where the datasets folders go")
    parser.add_argument("--select_data", default="/", help="only sources whose path starts with this (default all)")
    parser.add_argument("--full_decode", action="store_true", help="fully decode every image to find corrupt ones")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output folders")
    parser.add_argument("--parquet", action="store_true",
                        help="write Parquet files laid out as a Hub dataset repo (what --streaming reads)")
    parser.add_argument("--push_to_hub", metavar="REPO", help="also push the converted sources to this dataset repo")
    parser.add_argument("--private", action="store_true", help="create the Hub repo as private")
    parser.add_argument("--no_progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.push_to_hub and args.parquet:
        parser.error("--push_to_hub pushes datasets folders; upload a --parquet folder with huggingface-cli upload")

    summary = convert_lmdb_tree(
        args.lmdb, args.output_dir, select_data=args.select_data, full_decode=args.full_decode,
        progress=not args.no_progress, overwrite=args.overwrite, parquet=args.parquet,
    )  # fmt: skip
    print(f"converted {args.lmdb} -> {args.output_dir}\n{summary.report()}")
    if args.push_to_hub:
        configs = push_dataset_tree(args.output_dir, args.push_to_hub, private=args.private or None)
        print(f"pushed {len(configs)} source(s) to the Hub dataset {args.push_to_hub}: {', '.join(configs)}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
