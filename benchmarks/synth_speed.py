#!/usr/bin/env python
"""Synthetic word images per second per worker (one process, one thread): ``RealisticWords`` at its default settings
(32-pixel-high grayscale crops) against trdg (TextRecognitionDataGenerator 1.8.0) on the same fonts and the same
words, median and range of ``--repeats`` interleaved runs.

trdg is not a dependency of the project: install it and what its ``GeneratorFromStrings`` imports into a throw-away
folder, without its pinned dependencies (they would downgrade Pillow and NumPy), and point ``--trdg_path`` at it:

    pip install --no-deps --target /tmp/trdg trdg opencv-python-headless arabic-reshaper python-bidi wikipedia \\
        beautifulsoup4 soupsieve
    python benchmarks/synth_speed.py --trdg_path /tmp/trdg

trdg 1.8.0 calls ``FreeTypeFont.getsize``, which Pillow removed in 10.0, so as released it fails on the Pillow this
project needs; the benchmark prints that error, then times trdg with ``getsize`` restored in this process only, as
``getbbox(text)[2:]`` (what Pillow 9 returned). Nothing of trdg is changed on disk.

Our engine keeps a per-process cache of rendered glyphs: the first samples of a fresh worker are slower than the
steady state, so both are reported (``cold``: the first ``--cold`` samples of a new engine in this process).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import footer, header, interleaved, ratio, raw, summary  # noqa: E402

from text_recognition.data.synth import RealisticWords  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=400, help="images per timed run and side (default 400)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side (default 3)")
    parser.add_argument("--warmup", type=int, default=4000, help="samples our engine renders before timing")
    parser.add_argument("--cold", type=int, default=500, help="samples timed on a fresh engine (default 500)")
    parser.add_argument("--trdg_path", default=os.environ.get("TRDG_PATH"),
                        help="folder(s), os.pathsep-separated, holding trdg and its imports")  # fmt: skip
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    start = header("one process, one thread: images/s of one DataLoader worker")

    construct = time.perf_counter()
    engine = RealisticWords()
    construct = time.perf_counter() - construct
    families = len({face.family for face in engine._faces})
    print(f"RealisticWords(): built in {construct:.2f} s; {len(engine._faces)} font files of {families} families, "
          f"{len(engine._text.words):,} words, {len(engine._texture_files)} texture images")  # fmt: skip
    begin = time.perf_counter()
    for index in range(args.cold):
        engine.render(index)
    cold = args.cold / (time.perf_counter() - begin)
    print(f"ours, cold (the first {args.cold} samples of a fresh process): {cold:,.1f} images/s")
    for index in range(args.cold, args.warmup):
        engine.render(index)
    # trdg draws the same texts as our timed runs (cased as our engine draws them), cycling through our font files.
    count = args.images * (args.repeats + 1)
    texts = [engine.describe(index)["text"] for index in range(args.warmup, args.warmup + count)]
    font_files = [face.path for face in engine._faces]
    position = {"ours": args.warmup, "trdg": 0}
    cpu: dict[str, list[float]] = {}

    def timed(name: str, images: int, work) -> float:
        """Run ``work``; record images per CPU-second of this process, return images per wall-clock second."""
        wall, used = time.perf_counter(), time.process_time()
        work()
        wall, used = time.perf_counter() - wall, time.process_time() - used
        cpu.setdefault(name, []).append(images / max(used, 1e-9))
        return images / wall

    def ours() -> float:
        indices = range(position["ours"], position["ours"] + args.images)
        position["ours"] += args.images
        return timed("ours", args.images, lambda: [engine.render(index) for index in indices])

    sides = {"ours": ours}
    generator_class = load_trdg(args.trdg_path)
    if generator_class is not None:
        images_dir = str(Path(sys.modules[generator_class.__module__].__file__).parents[1] / "images")

        def trdg(name: str, **settings) -> float:
            first = position["trdg"] % count
            position["trdg"] += args.images
            chunk = (texts[first:] + texts[:first])[: args.images]
            generator = generator_class(chunk, count=len(chunk), fonts=font_files, size=32, image_mode="L", **settings)

            def work() -> None:
                with contextlib.redirect_stdout(io.StringIO()):  # trdg prints debugging lines for image backgrounds
                    for _image, _label in generator:
                        pass

            return timed(name, len(chunk), work)

        plain, busy = "trdg (defaults)", "trdg (skew, blur, distortion, image backgrounds)"
        sides[plain] = lambda: trdg(plain)
        # trdg's default image_dir points at a folder that does not exist; its own images are one level up.
        sides[busy] = lambda: trdg(busy, skewing_angle=5, random_skew=True, blur=1, random_blur=True,
                                   distorsion_type=3, background_type=3, image_dir=images_dir)  # fmt: skip
    cpu.clear()
    rates = interleaved(sides, args.repeats, label="synth")
    for name in cpu:
        cpu[name] = cpu[name][-args.repeats :]  # the timed runs, not the warm-up
    print(f"\nimages/s per worker, median (range) of {args.repeats} runs of {args.images} images:")
    print(f"  {'':52s} {'wall clock':>24s} {'per CPU-second':>24s}")
    for name, values in rates.items():
        print(f"  {name:52s} {summary(values):>24s} {summary(cpu[name]):>24s}")
    for name in sides:
        if name != "ours":
            print(f"  ours / {name}: {ratio(rates['ours'], rates[name])} (wall), "
                  f"{ratio(cpu['ours'], cpu[name])} (CPU)")  # fmt: skip
    print(raw("per run, wall", rates))
    print(raw("per run, CPU", cpu))
    footer(start)
    return 0


def load_trdg(path: str | None):
    """trdg's GeneratorFromStrings, or None (with the reason printed)."""
    if path:
        sys.path[:0] = path.split(os.pathsep)
    try:
        from trdg.generators import GeneratorFromStrings
    except ImportError as error:  # not installed, or one of its imports missing
        print(f"trdg: not timed, it cannot be imported ({error}); see this script's docstring to install it.")
        return None
    from PIL import ImageFont

    try:
        list(GeneratorFromStrings(["probe"], count=1, size=32))
        print("trdg: runs as released")
    except AttributeError as error:
        print(f"trdg: fails as released on Pillow {__import__('PIL').__version__}: AttributeError: {error}")
        ImageFont.FreeTypeFont.getsize = lambda self, text, *args, **kwargs: self.getbbox(text, *args, **kwargs)[2:]
        print(
            "trdg: timed with FreeTypeFont.getsize restored in this process as getbbox(text)[2:] (Pillow 9's result)"
        )
    return GeneratorFromStrings


if __name__ == "__main__":
    sys.exit(main())
