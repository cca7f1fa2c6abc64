#!/usr/bin/env python
"""Any model folder as PyTorch fp32, ONNX fp32 and ONNX int8: images/s on real crops, and how often the exports
read as PyTorch does (issue 19: PARSeq and ViTSTR exports; english_g2's figures are benchmarks/deploy.py's).

    python benchmarks/export_speed.py --saved_model runs/pretrain_parseq/best_norm_ED
    python benchmarks/export_speed.py --saved_model parseq --batch_sizes 64 1 --repeats 5
    python benchmarks/export_speed.py --saved_model parseq --decode_ar false   # PARSeq all at once: no loop

The folder is exported with ``scripts/export_onnx.py`` (parity-checked) and quantized with ``--quantize int8
--calibration_data synth`` into a temporary folder. Throughput: the first ``--images`` crops of
``../shared/data/real_train/IIIT5k_train_2000`` in memory, ``recognize`` (preprocessing and greedy decoding
included) at each batch size; one untimed warm-up per side, then ``--repeats`` interleaved runs; median and range of
images/s, and the ratio of medians against PyTorch fp32. PyTorch's PARSeq stops decoding once every word of a batch
has ended; its export runs every step (``batch_max_length + 1``), so the ratio depends on how long the words are.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark modules
import _timing as timing  # noqa: E402
from deploy import REAL, real_crops  # noqa: E402


def export(saved_model: Path, folder: Path, mode: list[str]) -> dict[str, Path]:
    forms = {"fp32": folder / "model.onnx", "int8": folder / "model_int8.onnx"}
    script = str(ROOT / "scripts" / "export_onnx.py")
    for command in ([script, "--saved_model", str(saved_model), "--output", str(forms["fp32"]), *mode],
                    [script, "--saved_model", str(forms["fp32"]), "--output", str(forms["int8"]), "--quantize", "int8",
                     "--calibration_data", "synth"]):  # fmt: skip
        start = time.perf_counter()
        done = subprocess.run([sys.executable, *command], env=timing.child_env(), capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}")
        print(f"{Path(command[0]).name} -> {Path(command[4]).name} in {time.perf_counter() - start:.0f} s: "
              f"{done.stdout.strip().splitlines()[-1]}")  # fmt: skip
    return forms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--saved_model", type=Path, required=True, help="a model folder")
    parser.add_argument("--images", type=int, default=256, help="real crops to read (default 256)")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[64], help="default: 64")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side (default 3)")
    parser.add_argument("--decode_ar", choices=("true", "false"), help="PARSeq's decoding mode for all three")
    parser.add_argument("--refine_iters", type=int, help="PARSeq's refinement passes for all three")
    args = parser.parse_args()
    mode = [*(["--decode_ar", args.decode_ar] if args.decode_ar else []),
            *(["--refine_iters", str(args.refine_iters)] if args.refine_iters is not None else [])]  # fmt: skip
    if not (REAL / "IIIT5k_train_2000").is_dir():
        raise SystemExit(f"{REAL} is absent: this benchmark reads real crops from ../shared/data.")
    from text_recognition import load_model

    start = timing.header(f"model: {args.saved_model}")
    images = real_crops(args.images, "RGB")
    with tempfile.TemporaryDirectory(prefix="export_speed_") as tmp:
        forms = export(args.saved_model, Path(tmp), mode)
        models = {"pytorch": load_model(args.saved_model), **{name: load_model(path) for name, path in forms.items()}}
        models["pytorch"].set_decoding(None if args.decode_ar is None else args.decode_ar == "true", args.refine_iters)
        config = models["pytorch"].config
        print(f"\n{models['pytorch']!r}" + (f", decode_ar {config.decode_ar}, refine_iters {config.refine_iters}"
                                            if config.prediction == "PARSeq" else ""))  # fmt: skip
        if models["pytorch"].config.input_channel == 1:
            images = [image.convert("L") for image in images]
        readings = {name: [r.text for r in model.recognize(images, 64)] for name, model in models.items()}
        for name in forms:
            same = sum(a == b for a, b in zip(readings[name], readings["pytorch"], strict=True))
            print(f"ONNX {name} reads {same} of {len(images)} crops as PyTorch fp32 does")
        print("\n| batch | PyTorch fp32 | ONNX Runtime fp32 | ONNX Runtime int8 |\n|---|---|---|---|")
        for batch_size in args.batch_sizes:

            def rate(model, size=batch_size):
                begin = time.perf_counter()
                model.recognize(images, size)
                return len(images) / (time.perf_counter() - begin)

            rates = timing.interleaved({name: (lambda m=model: rate(m)) for name, model in models.items()},
                                       args.repeats, label=f"batch {batch_size}")  # fmt: skip
            cells = [timing.summary(rates["pytorch"])] + [
                f"{timing.summary(rates[name])} ({timing.ratio(rates[name], rates['pytorch'])})" for name in forms
            ]
            print(f"| {batch_size} | " + " | ".join(cells) + " |", flush=True)
            print(timing.raw(f"batch {batch_size} runs", rates), file=sys.stderr)
    timing.footer(start)


if __name__ == "__main__":
    main()
