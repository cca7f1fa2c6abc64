#!/usr/bin/env python
"""DTRB's create_lmdb_dataset.py: images + a gt file to a DTRB-format LMDB and/or a Hugging Face datasets folder.

    python scripts/create_lmdb_dataset.py --inputPath data/ --gtFile data/gt.txt --outputPath result/train
    python scripts/create_lmdb_dataset.py --inputPath data/ --gtFile data/gt.txt --datasetPath hf/train

The gt file holds one ``<image path relative to inputPath>\\t<label>`` per line (TAB-separated, UTF-8). Missing and
(with --checkValid, the default) undecodable images are skipped and reported; nothing existing is overwritten.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from text_recognition.cli import run, str2bool
from text_recognition.data.datasets import FolderStats, image_folder_samples, read_gt_file, save_samples_as_dataset
from text_recognition.data.lmdb import is_lmdb, write_lmdb


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputPath", "--input_path", dest="input_path", required=True, help="image root folder")
    parser.add_argument("--gtFile", "--gt_file", dest="gt_file", required=True, help="TAB-separated gt file")
    parser.add_argument("--outputPath", "--output_path", dest="output_path", help="LMDB folder to create")
    parser.add_argument("--datasetPath", "--dataset_path", dest="dataset_path", help="datasets folder to create")
    parser.add_argument("--checkValid", "--check_valid", dest="check_valid", type=str2bool, nargs="?", const=True,
                        default=True, help="decode every image and skip undecodable ones (default True)")  # fmt: skip
    args = parser.parse_args(argv)
    if not args.output_path and not args.dataset_path:
        raise ValueError("Give --outputPath (an LMDB) and/or --datasetPath (a datasets folder).")
    for target in filter(None, (args.output_path, args.dataset_path)):
        path = Path(target)
        if is_lmdb(path) or (path.is_dir() and any(path.iterdir())):
            raise ValueError(f"{target!r} already exists and is not empty; choose another output or delete it.")
    if not Path(args.input_path).is_dir():
        raise FileNotFoundError(f"Image folder not found: {args.input_path!r}")

    entries = read_gt_file(args.gt_file, args.input_path)
    if not any(entry.path.is_file() for entry in entries):
        raise FileNotFoundError(f"None of the {len(entries)} image(s) of {args.gt_file!r} is under --inputPath "
                                f"{args.input_path!r} (e.g. {str(entries[0].path)!r}): the gt file's paths are "
                                f"relative to --inputPath. Nothing was written.")  # fmt: skip
    if args.output_path:
        stats, existed = FolderStats(), Path(args.output_path).is_dir()  # an empty folder, when it exists
        write_lmdb(image_folder_samples(entries, stats, args.check_valid), args.output_path)
        if not stats.accepted:  # every image undecodable: the LMDB just created holds nothing
            shutil.rmtree(args.output_path)
            if existed:
                Path(args.output_path).mkdir()
            raise ValueError(f"No image of {args.gt_file!r} could be decoded, so no LMDB was written: "
                             f"{stats.report().replace(chr(10), '; ')}")  # fmt: skip
        print(f"LMDB {args.output_path}: {stats.report()}")
        if stats.missing or stats.undecodable:
            log = Path(args.output_path) / "error_image_log.txt"
            log.write_text("".join(f"{e.line}\t{e.path}\n" for e in stats.missing + stats.undecodable))
    if args.dataset_path:
        stats = FolderStats()
        save_samples_as_dataset(image_folder_samples(entries, stats, args.check_valid), args.dataset_path)
        print(f"datasets folder {args.dataset_path}: {stats.report()}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
