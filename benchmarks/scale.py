#!/usr/bin/env python
"""Training start-up at scale: ours against a DTRB-style pipeline on LMDBs of N tiny images (N = 100k, 1M, 2M).

For each N, one LMDB tree ``MJ`` + ``ST`` (N / 2 samples each, a 12x8 PNG per sample, alphanumeric words of 3-10
symbols, 1 % with a ``!`` that DTRB's default filter drops). Each pipeline runs in a fresh child process, with a
fresh ``HF_DATASETS_CACHE`` and ``TMPDIR`` (so nothing is served from an earlier run's cache):

- ours: ``build_train_data`` (``select_data MJ-ST``, ``batch_ratio 0.5-0.5``; LMDBs read in place: a label pass,
  cached, then images per batch) -> one DataLoader with ``--workers`` workers;
- DTRB style (benchmarks/data.py's faithful DtrbLmdbDataset: a Python list of filtered indices built by a regex
  pass over every label; one DataLoader per source with ``shuffle=True`` and ``--workers`` workers each, as DTRB's
  Batch_Balanced_Dataset; DTRB's AlignCollate).

Both then take the same training steps: a forward and backward pass of the same small CTC model (VGG, 32
channels) on the batch's images, with Adam. Reported per N and pipeline:

- seconds from starting the child process to the end of the first training step;
- peak RSS of the process tree (main + DataLoader workers, summed at each 50 ms sample) and the peak RSS of the
  main process and of the largest worker, and the largest worker's peak private dirty memory (RSS counts the pages
  a forked worker shares with the main process, and the clean pages of the LMDB's memory map it has read), over
  the first step and ``--steps`` more;
- extra disk written: growth of the data tree, the datasets cache and the temporary folder.

    python benchmarks/scale.py                          # N = 100k, 1M, 2M; 2 workers; batch 32
    python benchmarks/scale.py --sizes 100000 1000000   # what fits on a loaded machine
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

HERE = Path(__file__).resolve().parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_pngs(count: int = 16) -> list[bytes]:
    from PIL import Image

    rng = np.random.default_rng(0)
    images = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (8, 12), dtype=np.uint8)).save(buffer, format="PNG")
        images.append(buffer.getvalue())
    return images


def make_tree(root: Path, num_samples: int) -> None:
    """``root/MJ`` and ``root/ST``, ``num_samples // 2`` each (the rest in ST)."""
    from text_recognition.data.lmdb import write_lmdb

    images = tiny_pngs()
    alphabet = np.array(list("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"))
    rng = np.random.default_rng(1)
    pool = ["".join(rng.choice(alphabet, rng.integers(3, 11))) for _ in range(50_000)]
    pool = [word + "!" if i % 100 == 0 else word for i, word in enumerate(pool)]
    half = num_samples // 2
    for name, count, seed in (("MJ", half, 2), ("ST", num_samples - half, 3)):
        picks = np.random.default_rng(seed).integers(0, len(pool), count)
        samples = ((images[i % len(images)], pool[p]) for i, p in enumerate(picks.tolist()))
        write_lmdb(samples, root / name, map_size=max(1 << 28, count * 400))


def private_dirty(pid: int) -> int:
    """Bytes of the process's private dirty pages (anonymous memory it allocated or copied on write; not the clean
    file-backed pages of an LMDB's memory map, which the kernel reclaims at will), from /proc/PID/smaps_rollup."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as rollup:
            for line in rollup:
                if line.startswith("Private_Dirty:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def folder_bytes(path: Path) -> int:
    total = 0
    for dirpath, _, filenames in os.walk(path):
        for filename in filenames:
            try:
                total += os.lstat(os.path.join(dirpath, filename)).st_blocks * 512  # allocated, not sparse size
            except OSError:
                pass
    return total


# ---------------------------------------------------------------------------------------------------------- child
def child(pipeline: str, root: Path, workers: int, batch_size: int, steps: int) -> None:
    import torch
    from torch.utils.data import DataLoader

    from text_recognition import ModelConfig, TextRecognitionModel

    torch.set_num_threads(1)
    config = ModelConfig("None", "VGG", "None", "CTC", output_channel=32, hidden_size=32)
    print("IMPORTED", flush=True)
    if pipeline == "ours":
        from text_recognition.data import build_train_data

        data = build_train_data(root, config, select_data="MJ-ST", batch_ratio="0.5-0.5", batch_size=batch_size)
        loader = DataLoader(data.dataset, batch_sampler=data.sampler, collate_fn=data.collator, num_workers=workers,
                            persistent_workers=workers > 0)  # fmt: skip
        batches = (batch["pixel_values"] for batch in loader)
    else:
        baseline = _load("data")
        loaders = []
        for name in ("MJ", "ST"):
            dataset = baseline.DtrbLmdbDataset(str(root / name), config.character, config.batch_max_length, False,
                                               False)  # fmt: skip
            loaders.append(iter(DataLoader(dataset, batch_size=max(round(batch_size * 0.5), 1), shuffle=True,
                                           num_workers=workers, collate_fn=baseline.DtrbAlignCollate(32, 100))))

        def balanced():
            while True:
                yield torch.cat([next(loader)[0] for loader in loaders], 0)

        batches = balanced()
    print("DATA_READY", flush=True)
    model = TextRecognitionModel(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(pixel_values: torch.Tensor) -> None:
        optimizer.zero_grad()
        model(pixel_values).float().logsumexp(-1).mean().backward()
        optimizer.step()

    first = next(batches)
    print("FIRST_BATCH", flush=True)
    step(first)
    print("FIRST_STEP", flush=True)
    for _ in range(steps):
        step(next(batches))
    print("DONE", flush=True)


# --------------------------------------------------------------------------------------------------------- parent
def run_child(pipeline: str, root: Path, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="scale_cache_", dir=args.scratch) as scratch:
        cache, tmp = Path(scratch) / "datasets", Path(scratch) / "tmp"
        cache.mkdir()
        tmp.mkdir()
        env = dict(os.environ, HF_DATASETS_CACHE=str(cache), TMPDIR=str(tmp), HF_DATASETS_OFFLINE="1",
                   PYTHONPATH=os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")])))
        data_before = folder_bytes(root)
        start = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, __file__, "--child", pipeline, "--data", str(root), "--workers", str(args.workers),
             "--batch_size", str(args.batch_size), "--steps", str(args.steps)],
            stdout=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        marks: dict[str, float] = {}

        def read() -> None:
            for line in process.stdout:
                marks.setdefault(line.strip(), time.perf_counter() - start)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        parent = psutil.Process(process.pid)
        peak_tree = peak_main = peak_worker = peak_worker_uss = 0
        workers_seen: set[int] = set()
        while process.poll() is None:
            try:
                main_rss = parent.memory_info().rss
                children = parent.children(recursive=True)
            except psutil.NoSuchProcess:
                break
            worker_rss, worker_uss = [], []
            for proc in children:
                try:
                    worker_rss.append(proc.memory_info().rss)
                    worker_uss.append(private_dirty(proc.pid))
                    workers_seen.add(proc.pid)
                except psutil.NoSuchProcess:
                    pass
            peak_main = max(peak_main, main_rss)
            peak_worker = max([peak_worker, *worker_rss])
            peak_worker_uss = max([peak_worker_uss, *worker_uss])
            peak_tree = max(peak_tree, main_rss + sum(worker_rss))
            time.sleep(0.05)
        process.wait()
        reader.join(timeout=5)
        if process.returncode:
            raise RuntimeError(f"{pipeline} child failed with exit code {process.returncode}")
        extra = folder_bytes(root) - data_before + folder_bytes(cache) + folder_bytes(tmp)
    phases = ", ".join(f"{mark.lower()} {seconds:.1f}" for mark, seconds in marks.items())
    return {"phases": phases, "first_step_s": marks.get("FIRST_STEP", float("nan")),
            "peak_tree_mib": peak_tree / 2**20,
            "peak_main_mib": peak_main / 2**20, "peak_worker_mib": peak_worker / 2**20,
            "peak_worker_uss_mib": peak_worker_uss / 2**20,
            "worker_processes": len(workers_seen), "extra_disk_mib": extra / 2**20}  # fmt: skip


def label_pass(root: Path) -> str:
    """Our label pass alone on each LMDB, cold (a fresh cache folder): labels/s."""
    from text_recognition import ModelConfig
    from text_recognition.data.lmdb import LmdbReader, find_sources
    from text_recognition.data.lmdb_index import scan_labels
    from text_recognition.data.labels import LabelRules

    config = ModelConfig()
    rules = LabelRules(config.character, config.batch_max_length)
    parts = []
    for name, path in find_sources(root).items():
        with LmdbReader(path) as reader:
            result = scan_labels(reader, rules)
        parts.append(f"{name} {result.num_samples / result.seconds:,.0f} labels/s")
    return ", ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 2_000_000])
    parser.add_argument("--workers", type=int, default=2, help="ours: workers; DTRB style: workers per source")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=30, help="training steps after the first")
    parser.add_argument("--scratch", default=None, help="where the LMDBs and caches go (default: the temp folder)")
    parser.add_argument("--label_pass", nargs="*", default=None, metavar="ROOT",
                        help="only time our label pass over the LMDBs under each ROOT")  # fmt: skip
    parser.add_argument("--child", choices=["ours", "dtrb"], help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, Path(args.data), args.workers, args.batch_size, args.steps)
        return
    timing = _load("_timing")
    start_time = timing.header(f"workers {args.workers}, batch {args.batch_size}, {args.steps} steps after the first")
    if args.label_pass is not None:
        for root in args.label_pass:
            print(f"label pass under {root}: {label_pass(Path(root))}", flush=True)
        timing.footer(start_time)
        return
    print("| N | pipeline | first step (s) | peak RSS tree (MiB) | peak RSS main (MiB) | peak RSS per worker (MiB) "
          "| peak private dirty per worker (MiB) | worker processes | extra disk (MiB) | LMDB (MiB) "
          "| load (1 min) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    for size in args.sizes:
        with tempfile.TemporaryDirectory(prefix="scale_lmdb_", dir=args.scratch) as tmp:
            root = Path(tmp) / "data"
            made = time.perf_counter()
            make_tree(root, size)
            lmdb_mib = folder_bytes(root) / 2**20
            print(f"<!-- made {size:,} samples ({lmdb_mib:.0f} MiB) in {time.perf_counter() - made:.0f} s; "
                  f"label pass: {label_pass(root)} -->", flush=True)  # fmt: skip
            for pipeline in ("ours", "dtrb"):
                r = run_child(pipeline, root, args)
                print(f"| {size:,} | {'ours' if pipeline == 'ours' else 'DTRB style'} | {r['first_step_s']:.1f} | "
                      f"{r['peak_tree_mib']:.0f} | {r['peak_main_mib']:.0f} | {r['peak_worker_mib']:.0f} | "
                      f"{r['peak_worker_uss_mib']:.0f} | "
                      f"{r['worker_processes']} | {r['extra_disk_mib']:.2f} | {lmdb_mib:.0f} | "
                      f"{os.getloadavg()[0]:.1f} |", flush=True)  # fmt: skip
                print(f"<!-- {pipeline} at {size:,}, seconds since start: {r['phases']} -->", flush=True)
    timing.footer(start_time)


if __name__ == "__main__":
    main()
