#!/usr/bin/env python
"""What is deployed, measured like the model (issue 20): english_g2 as PyTorch fp32 and bf16, ONNX fp32 and ONNX
int8, on the real words of ``../shared/data``: word accuracy side by side, images/s at batch 1 and 64, and a whole
``scripts/test.py`` process, each against the DTRB-style baseline in the same run.

    python benchmarks/deploy.py                          # everything (about 15 minutes on 2 cores)
    python benchmarks/deploy.py --skip_accuracy --repeats 5

1. Accuracy: ``evaluate`` (what ``scripts/test.py`` runs) on the three real splits under ``dtrb --sensitive
   --data_filtering_off`` (the data README's protocol), for each form. The int8 file is quantized here by
   ``scripts/export_onnx.py --quantize int8`` with ``--calibration_data synth`` (256 rendered words: no real word
   is seen by the calibration).
2. Throughput: in-memory real crops (the first 512 of IIIT5k_train_2000 for batch 64, 128 for batch 1), preprocessing
   included, decoded to text. Baseline ("DTRB demo.py style", ``benchmarks/inference.py``): per-image PIL resize and
   normalise, PyTorch fp32 in the contiguous layout, per-sample Python decoding. Each side one untimed warm-up, then
   ``--repeats`` interleaved runs; median and range of images/s, ratio of medians.
3. Whole process: the wall time of one fresh process from start to exit over the 6,725 real words: ``scripts/test.py
   --workers 0 --timing_samples 0`` with each form against a DTRB test.py-style process (imports, the .pth loaded
   into the model, DTRB's LmdbDataset + AlignCollate loader, forward, loss, Python decoding and nltk-style edit
   distance; ``benchmarks/inference.py``'s ``dtrb_style_evaluate``), interleaved, ``--repeats`` each.

Needs ``../shared/data`` (weights/english_g2.pth and real_train/).
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
WEIGHTS = SHARED / "weights" / "english_g2.pth"
REAL = SHARED / "real_train"
G2_CHARSET = "0123456789!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~ €ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
G2_FLAGS = ["--Transformation", "None", "--FeatureExtraction", "VGG", "--SequenceModeling", "BiLSTM",
            "--Prediction", "CTC", "--output_channel", "256", "--hidden_size", "256", "--input_channel", "1",
            "--imgH", "64", "--imgW", "256", "--PAD", "--character", G2_CHARSET]  # fmt: skip


sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark modules
import _timing as timing  # noqa: E402


def g2_config():
    from text_recognition import ModelConfig

    return ModelConfig("None", "VGG", "BiLSTM", "CTC", output_channel=256, hidden_size=256, input_channel=1,
                       img_h=64, img_w=256, pad=True, character=G2_CHARSET, sensitive=True)  # fmt: skip


def prepare(folder: Path) -> dict[str, Path]:
    """english_g2 as a model folder, an fp32 export and an int8 export (by the project's own scripts)."""
    python = sys.executable
    env = timing.child_env()
    forms = {"folder": folder / "g2", "fp32": folder / "g2.onnx", "int8": folder / "g2_int8.onnx"}
    steps = [
        ["scripts/convert_dtrb_checkpoint.py", "--saved_model", str(WEIGHTS), "--output_dir", str(forms["folder"]),
         *G2_FLAGS],
        ["scripts/export_onnx.py", "--saved_model", str(forms["folder"]), "--output", str(forms["fp32"])],
        ["scripts/export_onnx.py", "--saved_model", str(forms["folder"]), "--output", str(forms["int8"]),
         "--quantize", "int8", "--calibration_data", "synth"],
    ]  # fmt: skip
    for step in steps:
        result = subprocess.run([python, *step], cwd=ROOT, env=env, capture_output=True, text=True)
        if result.returncode:
            raise SystemExit(f"{' '.join(step[:1])} failed:\n{result.stdout}\n{result.stderr}")
        print(result.stdout.strip(), flush=True)
    return forms


def accuracy(forms: dict[str, Path]) -> None:
    from text_recognition import load_model
    from text_recognition.evaluation import evaluate

    rows = [("PyTorch", "fp32", forms["folder"], "fp32"), ("PyTorch", "bf16", forms["folder"], "bf16"),
            ("ONNX Runtime", "fp32", forms["fp32"], None), ("ONNX Runtime", "int8", forms["int8"], None)]  # fmt: skip
    print("\n## Word accuracy on the real splits (dtrb --sensitive --data_filtering_off)\n")
    print("| backend | precision | IIIT5k_train_2000 | SVT_train_257 | IC15_train_4468 | total (6,725) | vs PyTorch fp32 |")
    print("|---|---|---|---|---|---|---|")
    reference = None
    for backend, precision, path, asked in rows:
        report = evaluate(load_model(path), REAL, protocol="dtrb", sensitive=True, data_filtering_off=True,
                          timing_samples=0, precision=asked)  # fmt: skip
        by_name = {r.dataset: r.accuracy for r in report.results}
        total = report.total_accuracy
        reference = total if reference is None else reference
        print(f"| {backend} | {precision} | {by_name['IIIT5k_train_2000']:.3f} | {by_name['SVT_train_257']:.3f} | "
              f"{by_name['IC15_train_4468']:.3f} | {total:.3f} | {total - reference:+.3f} |", flush=True)  # fmt: skip


def real_crops(count: int, mode: str = "L") -> list[Image.Image]:
    """The first ``count`` crops of IIIT5k_train_2000, decoded to ``mode``."""
    from text_recognition.data.lmdb import LmdbReader

    with LmdbReader(REAL / "IIIT5k_train_2000") as reader:
        return [Image.open(io.BytesIO(reader.get(i)[0])).convert(mode) for i in range(1, count + 1)]


def throughput(forms: dict[str, Path], repeats: int) -> None:
    from text_recognition import load_model

    import inference
    model = load_model(forms["folder"])
    baseline_model = inference.dtrb_model(model)
    onnx_fp32, onnx_int8 = load_model(forms["fp32"]), load_model(forms["int8"])
    print("\n## Images/s on real crops (preprocessing and decoding included)\n")
    print("| batch | DTRB demo.py style (fp32) | PyTorch fp32 | PyTorch bf16 | ONNX Runtime fp32 | ONNX Runtime int8 |"
          " int8 / DTRB style |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for batch_size, count in ((64, 512), (1, 128)):
        images = real_crops(count)

        def rate(fn):
            start = time.perf_counter()
            fn(images)
            return len(images) / (time.perf_counter() - start)

        sides = {
            "dtrb": lambda: rate(lambda x: inference.dtrb_style_recognize(baseline_model, x, batch_size)),
            "fp32": lambda: rate(lambda x: model.recognize(x, batch_size)),
            "bf16": lambda: rate(lambda x: model.recognize(x, batch_size, precision="bf16")),
            "onnx": lambda: rate(lambda x: onnx_fp32.recognize(x, batch_size)),
            "int8": lambda: rate(lambda x: onnx_int8.recognize(x, batch_size)),
        }
        rates = timing.interleaved(sides, repeats, label=f"batch {batch_size}")
        print(f"| {batch_size} | " + " | ".join(timing.summary(rates[name]) + ("" if name == "dtrb" else
              f" ({timing.ratio(rates[name], rates['dtrb'])})") for name in sides)
              + f" | **{timing.ratio(rates['int8'], rates['dtrb'])}** |", flush=True)  # fmt: skip
        print(timing.raw(f"batch {batch_size} runs", rates), file=sys.stderr)


DTRB_PROCESS = """
import sys
sys.path.insert(0, {benchmarks!r})
import deploy, inference
from text_recognition import TextRecognitionModel
model = inference.dtrb_model(TextRecognitionModel.from_dtrb_checkpoint({weights!r}, deploy.g2_config()))
for name in ("IC15_train_4468", "IIIT5k_train_2000", "SVT_train_257"):
    print(name, inference.dtrb_style_evaluate(model, {real!r} + "/" + name, 192))
"""


def whole_process(forms: dict[str, Path], repeats: int) -> None:
    python, env = sys.executable, timing.child_env()
    benchmarks = Path(__file__).resolve().parent
    dtrb = DTRB_PROCESS.format(benchmarks=str(benchmarks), weights=str(WEIGHTS), real=str(REAL))
    result_dir = tempfile.mkdtemp(prefix="deploy_results_")

    def ours(path: Path) -> list[str]:
        return [python, "scripts/test.py", "--saved_model", str(path), "--eval_data", str(REAL), "--sensitive",
                "--data_filtering_off", "--workers", "0", "--timing_samples", "0", "--result_dir", result_dir]

    commands = {"dtrb": [python, "-c", dtrb], "fp32": ours(forms["folder"]), "onnx": ours(forms["fp32"]),
                "int8": ours(forms["int8"])}  # fmt: skip

    def run(command: list[str]) -> float:
        start = time.perf_counter()
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        if result.returncode:
            raise SystemExit(f"{command[1]} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
        return 6725 / (time.perf_counter() - start)

    rates = timing.interleaved({name: (lambda c=command: run(c)) for name, command in commands.items()}, repeats,
                               warmups={name: (lambda: None) for name in commands}, label="process")  # fmt: skip
    print("\n## A whole evaluation process over the 6,725 real words (images/s of wall time, start to exit)\n")
    print("| DTRB test.py style (fp32) | scripts/test.py PyTorch fp32 | ONNX Runtime fp32 | ONNX Runtime int8 |")
    print("|---|---|---|---|")
    print("| " + " | ".join(timing.summary(rates[name]) + ("" if name == "dtrb" else
          f" ({timing.ratio(rates[name], rates['dtrb'])})") for name in commands) + " |", flush=True)  # fmt: skip
    print(timing.raw("process runs", rates), file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side (default 3)")
    parser.add_argument("--skip_accuracy", action="store_true")
    parser.add_argument("--skip_throughput", action="store_true")
    parser.add_argument("--skip_process", action="store_true")
    args = parser.parse_args()
    if not (WEIGHTS.is_file() and REAL.is_dir()):
        raise SystemExit(f"needs {WEIGHTS} and {REAL}")
    start = timing.header(f"onnxruntime {__import__('onnxruntime').__version__}; cpu flags avx2/vnni: "
                          f"{timing.cpu_flags(('avx2', 'avx512_vnni', 'avx_vnni', 'amx_int8'))}")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="deploy_") as folder:
        forms = prepare(Path(folder))
        if not args.skip_accuracy:
            accuracy(forms)
        if not args.skip_throughput:
            throughput(forms, args.repeats)
        if not args.skip_process:
            whole_process(forms, args.repeats)
    timing.footer(start)


if __name__ == "__main__":
    main()
