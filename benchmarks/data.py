#!/usr/bin/env python
"""Training data path throughput: ours against a plain DTRB-style pipeline, same LMDBs, same machine, one run.

Ours: LMDB tree -> datasets (converted once, timed separately) -> label filtering -> BatchBalancedSampler ->
MixedSources batch fetch -> TextCollator (decode + clean + batched AlignCollate) in DataLoader workers.

Baseline, written here from reference/dtrb.md 2.2, 2.5 and 2.6: DTRB's LmdbDataset (regex filtering pass over every
label, a read transaction + PIL decode + lowercase + regex cleaning per sample), one DataLoader per source with
shuffle (Batch_Balanced_Dataset, ``workers`` each, as DTRB), and DTRB's AlignCollate (per-image resize, ToTensor,
normalise, then ``torch.cat``).

    python benchmarks/data.py                      # 6,000 MJSynth-like JPEG words in 2 LMDBs, batch 192
    python benchmarks/data.py --num_samples 20000 --batches 60

Reports images/s for 0 and 2 workers, and per worker process (DTRB runs ``workers`` per source, so 2 sources at
``--workers 2`` are 4 processes; ours uses 2). Conversion is reported in samples/s.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import string
import tempfile
import time
from pathlib import Path

import lmdb
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from text_recognition import ModelConfig
from text_recognition.data import build_train_data, convert_lmdb_tree
from text_recognition.data.synth import SyntheticWords


class DtrbLmdbDataset(Dataset):
    """DTRB's LmdbDataset as reference/dtrb.md 2.2 describes it (environment opened lazily so workers can fork)."""

    def __init__(self, root: str, character: str, batch_max_length: int, sensitive: bool, rgb: bool) -> None:
        self.root, self.character, self.sensitive, self.rgb = root, character, sensitive, rgb
        self.env = None
        env = lmdb.open(root, max_readers=32, readonly=True, lock=False, readahead=False, meminit=False)
        with env.begin(write=False) as txn:
            num_samples = int(txn.get(b"num-samples"))
            self.filtered_index_list = []
            for index in range(num_samples):
                index += 1
                label = txn.get(b"label-%09d" % index).decode("utf-8")
                if len(label) > batch_max_length:
                    continue
                if re.search(f"[^{character}]", label.lower()):
                    continue
                self.filtered_index_list.append(index)
        env.close()

    def __len__(self) -> int:
        return len(self.filtered_index_list)

    def __getitem__(self, index: int):
        if self.env is None:
            self.env = lmdb.open(self.root, max_readers=32, readonly=True, lock=False, readahead=False, meminit=False)
        index = self.filtered_index_list[index]
        with self.env.begin(write=False) as txn:
            label = txn.get(b"label-%09d" % index).decode("utf-8")
            buf = io.BytesIO(txn.get(b"image-%09d" % index))
            img = Image.open(buf).convert("RGB" if self.rgb else "L")
        if not self.sensitive:
            label = label.lower()
        label = re.sub(f"[^{self.character}]", "", label)
        return img, label


class DtrbResizeNormalize:
    def __init__(self, size):
        self.size = size

    def __call__(self, img):
        img = img.resize(self.size, Image.BICUBIC)
        array = np.array(img, dtype=np.uint8)  # torchvision ToTensor
        tensor = torch.from_numpy(array).view(array.shape[0], array.shape[1], -1).permute(2, 0, 1).contiguous()
        tensor = tensor.to(dtype=torch.float32).div(255)
        tensor.sub_(0.5).div_(0.5)
        return tensor


class DtrbAlignCollate:
    def __init__(self, img_h: int, img_w: int) -> None:
        self.transform = DtrbResizeNormalize((img_w, img_h))

    def __call__(self, batch):
        batch = filter(lambda x: x is not None, batch)
        images, labels = zip(*batch)
        image_tensors = torch.cat([self.transform(image).unsqueeze(0) for image in images], 0)
        return image_tensors, labels


def make_data(root: Path, num_samples: int) -> None:
    """MJSynth-like: JPEG words of 3-12 mixed-case letters and digits (lowercased by the default filter)."""
    half = num_samples // 2
    for name, seed, count in (("MJ", 0, half), ("ST", 1, num_samples - half)):
        synth = SyntheticWords(charset=string.digits + string.ascii_letters, image_format="JPEG", min_length=3,
                               max_length=12, seed=seed)  # fmt: skip
        synth.write_lmdb(root / name, count, progress=False)


def time_batches(iterator, batches: int, warmup: int = 2) -> float:
    """Images per second over ``batches`` batches after ``warmup`` (worker start-up excluded)."""
    for _ in range(warmup):
        next(iterator)
    images, start = 0, time.perf_counter()
    for _ in range(batches):
        batch = next(iterator)
        images += len(batch["labels"] if isinstance(batch, dict) else batch[1])
    return images / (time.perf_counter() - start)


def ours(root: Path, config: ModelConfig, batch_size: int, workers: int, batches: int) -> float:
    data = build_train_data(root, config, select_data="MJ-ST", batch_ratio="0.5-0.5", batch_size=batch_size)
    loader = DataLoader(data.dataset, batch_sampler=data.sampler, collate_fn=data.collator, num_workers=workers,
                        persistent_workers=workers > 0)  # fmt: skip
    return time_batches(iter(loader), batches)


def dtrb_style(root: Path, config: ModelConfig, batch_size: int, workers: int, batches: int) -> float:
    loaders = []
    for name in ("MJ", "ST"):
        dataset = DtrbLmdbDataset(str(root / name), config.character, config.batch_max_length, False, False)
        loaders.append(iter(DataLoader(dataset, batch_size=max(round(batch_size * 0.5), 1), shuffle=True,
                                       num_workers=workers, collate_fn=DtrbAlignCollate(config.img_h, config.img_w),
                                       pin_memory=False)))  # fmt: skip

    def balanced():
        while True:
            images, labels = [], []
            for loader in loaders:
                image, label = next(loader)
                images.append(image)
                labels += label
            yield torch.cat(images, 0), labels

    return time_batches(balanced(), batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_samples", type=int, default=6000)
    parser.add_argument("--batch_size", type=int, default=192)
    parser.add_argument("--batches", type=int, default=20, help="timed batches per configuration")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = parser.parse_args()
    torch.set_num_threads(1)  # the data path is CPU-bound Python/PIL; keep torch from competing with workers
    config = ModelConfig("None", "VGG", "BiLSTM", "CTC")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "lmdb"
        start = time.perf_counter()
        make_data(root, args.num_samples)
        print(f"made {args.num_samples} JPEG word images in 2 LMDBs in {time.perf_counter() - start:.1f} s")

        start = time.perf_counter()
        summary = convert_lmdb_tree(root, Path(tmp) / "hf", progress=False)
        seconds = time.perf_counter() - start
        print(f"conversion LMDB -> datasets: {summary.samples} samples in {seconds:.2f} s = "
              f"{summary.samples / seconds:,.0f} samples/s ({summary.image_bytes / 1e6:.1f} MB, no re-encoding)")  # fmt: skip

        print(f"\ntraining data path, batch {args.batch_size} (MJ 0.5 + ST 0.5), images/s; cpu count {os.cpu_count()}")
        print("| workers | ours (img/s) | DTRB style (img/s) | ratio | ours per process | DTRB per process | ratio |")
        print("|---|---|---|---|---|---|---|")
        for workers in args.workers:
            ours_rate = ours(root, config, args.batch_size, workers, args.batches)
            dtrb_rate = dtrb_style(root, config, args.batch_size, workers, args.batches)
            ours_procs, dtrb_procs = max(workers, 1), max(2 * workers, 1)
            print(f"| {workers} | {ours_rate:,.0f} | {dtrb_rate:,.0f} | {ours_rate / dtrb_rate:.2f}x | "
                  f"{ours_rate / ours_procs:,.0f} | {dtrb_rate / dtrb_procs:,.0f} | "
                  f"{(ours_rate / ours_procs) / (dtrb_rate / dtrb_procs):.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
