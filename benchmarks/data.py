#!/usr/bin/env python
"""Training data path throughput: ours against a plain DTRB-style pipeline, same LMDBs, same machine.

Ours: LMDB tree -> datasets (converted once, timed separately) -> label filtering -> BatchBalancedSampler ->
MixedSources batch fetch -> TextCollator (decode + clean + batched AlignCollate) in DataLoader workers.

Baseline, written here from reference/dtrb.md 2.2, 2.5 and 2.6: DTRB's LmdbDataset (regex filtering pass over every
label, a read transaction + PIL decode + lowercase + regex cleaning per sample), one DataLoader per source with
shuffle (Batch_Balanced_Dataset, ``workers`` each, as DTRB), and DTRB's AlignCollate (per-image resize, ToTensor,
normalise, then ``torch.cat``).

    python benchmarks/data.py                      # 6,000 MJSynth-like JPEG words in 2 LMDBs, batch 192
    python benchmarks/data.py --num_samples 20000 --batches 60

Compares the two pipelines end to end, at the same ``--workers`` setting (DTRB starts ``workers`` DataLoader
processes per source, so 2 sources at ``--workers 2`` are 4 worker processes; ours starts 2; at ``--workers 0``
both load in the main process), and at an equal total number of worker processes (``--equal_processes N``: ours
with N workers against DTRB style with N / 2 workers per source). Each configuration: one untimed warm-up run of
each side, then ``--repeats`` (default 3) timed runs per side, interleaved (ours, baseline, ...); the median and
range (min-max) of images/s, and the ratio of the medians. The LMDB -> datasets conversion is timed the same way
(warm-up + ``--repeats`` runs), in samples/s.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
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

_spec = importlib.util.spec_from_file_location("benchmark_timing", Path(__file__).resolve().parent / "_timing.py")
timing = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(timing)


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
    parser.add_argument("--batches", type=int, default=20, help="timed batches per run")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="same --workers setting on both sides")
    parser.add_argument(
        "--equal_processes",
        type=int,
        nargs="*",
        default=[2],
        help="even N: ours with N workers against DTRB style with N/2 per source (N processes each)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side, interleaved with the other side")
    args = parser.parse_args()
    if any(n < 2 or n % 2 for n in args.equal_processes):
        parser.error("--equal_processes takes even numbers >= 2 (DTRB style starts N/2 workers for each of 2 sources)")
    torch.set_num_threads(1)  # the data path is CPU-bound Python/PIL; keep torch from competing with workers
    start_time = timing.header(f"{args.repeats} timed runs per side, interleaved (ours, baseline, ...) after warm-up")
    config = ModelConfig("None", "VGG", "BiLSTM", "CTC")
    raw_lines = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "lmdb"
        start = time.perf_counter()
        make_data(root, args.num_samples)
        print(f"made {args.num_samples} JPEG word images in 2 LMDBs in {time.perf_counter() - start:.1f} s")

        conversions = []

        def convert() -> float:
            start = time.perf_counter()
            summary = convert_lmdb_tree(root, Path(tmp) / f"hf{len(conversions)}", progress=False)
            rate = summary.samples / (time.perf_counter() - start)
            conversions.append(summary)
            return rate

        rates = timing.interleaved({"conversion": convert}, args.repeats, label="conversion")
        raw_lines.append(timing.raw("conversion (samples/s)", rates, 0))
        summary = conversions[-1]
        print(f"conversion LMDB -> datasets (convert_lmdb_tree): {summary.samples} samples "
              f"({summary.image_bytes / 1e6:.1f} MB, no re-encoding), samples/s median (min-max) of {args.repeats} "
              f"runs: {timing.summary(rates['conversion'], 0)}", flush=True)  # fmt: skip

        print(f"\ntraining data path, batch {args.batch_size} (MJ 0.5 + ST 0.5), {args.batches} timed batches per "
              f"run after 2 warm-up batches, images/s, median (min-max) of {args.repeats} runs per side:")  # fmt: skip
        print("| comparison | ours: workers (worker processes) | DTRB style: workers per source (worker processes) "
              "| ours median (range) | DTRB style median (range) | ratio of medians |")  # fmt: skip
        print("|---|---|---|---|---|---|", flush=True)
        rows = [("same --workers", w, w) for w in args.workers]
        rows += [("equal worker processes", n, n // 2) for n in args.equal_processes]
        for comparison, ours_workers, dtrb_workers in rows:
            label = f"{comparison}: ours {ours_workers}, DTRB {dtrb_workers} per source"
            rates = timing.interleaved(
                {
                    "ours": lambda w=ours_workers: ours(root, config, args.batch_size, w, args.batches),
                    "dtrb": lambda w=dtrb_workers: dtrb_style(root, config, args.batch_size, w, args.batches),
                },
                args.repeats,
                label=label,
            )
            raw_lines.append(timing.raw(label, rates, 0))
            print(f"| {comparison} | {ours_workers} ({_processes(ours_workers)}) | "
                  f"{dtrb_workers} ({_processes(2 * dtrb_workers)}) | {timing.summary(rates['ours'], 0)} | "
                  f"{timing.summary(rates['dtrb'], 0)} | {timing.ratio(rates['ours'], rates['dtrb'])} |",
                  flush=True)  # fmt: skip
    print("\nper-run rates, in run order:")
    print("\n".join(raw_lines))
    timing.footer(start_time)


def _processes(count: int) -> str:
    return f"{count} worker processes" if count else "main process only"


if __name__ == "__main__":
    main()
