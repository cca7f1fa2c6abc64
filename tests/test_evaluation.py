"""scripts/test.py: DTRB's test.py scores on folders named as DTRB's benchmarks, checked by hand."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, near_tie_rows
from fake_hub import FakeHub, run_client
from PIL import Image
from test_scripts import load_script

from text_recognition import ModelConfig, TextRecognitionModel
from text_recognition.cli import run
from text_recognition.data import write_lmdb
from text_recognition.evaluation import BENCHMARK_DATASETS, PAPER_DATASETS, dtrb_exp_name
from text_recognition.transforms import preprocess

SIZES = {name: 3 + k % 4 for k, name in enumerate(BENCHMARK_DATASETS)}  # unequal: weighted != plain mean


def png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (32, 40 + seed % 50), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def hand_norm_ed(pred: str, gt: str) -> float:
    if not pred or not gt:
        return 0.0
    rows = list(range(len(gt) + 1))  # textbook Levenshtein, written out
    for i, p in enumerate(pred, 1):
        previous, rows[0] = rows[0], i
        for j, g in enumerate(gt, 1):
            previous, rows[j] = rows[j], min(rows[j] + 1, rows[j - 1] + 1, previous + (p != g))
    return 1 - rows[-1] / max(len(pred), len(gt))


def clear_images(model: TextRecognitionModel, seeds, count: int) -> list[bytes]:
    """The first ``count`` of ``png(seed)`` that the untrained ``model`` reads without a near-tie at any frame.

    The tests evaluate them in batches of 3 and in one batch per set: matrices of other shapes, which round
    otherwise (and differently from one CPU to another); only a near-tie can read differently for that.
    """
    chosen = []
    for seed in seeds:
        image = png(seed)
        with torch.no_grad():
            logits = model(preprocess([Image.open(io.BytesIO(image))], model.config))  # [1, T, C]
        if not near_tie_rows(logits)[0]:
            chosen.append(image)
        if len(chosen) == count:
            return chosen
    raise AssertionError(f"fewer than {count} of the images are clear of near-ties")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny CTC model and DTRB-named folders whose labels are its own predictions for even samples, a wrong one
    for odd samples, plus one sample per set that filtering drops (a '!' is outside the charset)."""
    root = tmp_path_factory.mktemp("evaluation")
    torch.manual_seed(3)
    model = TextRecognitionModel(ModelConfig("None", "VGG", "BiLSTM", "CTC", output_channel=32, hidden_size=16))
    model.init_weights()
    model.eval().save_pretrained(root / "model")
    expected = {}
    for k, name in enumerate(BENCHMARK_DATASETS):
        size = SIZES[name]
        images = clear_images(model, range(100 * k, 100 * k + 100), size)
        recognized = model.recognize([Image.open(io.BytesIO(b)) for b in images])
        labels = [r.text if i % 2 == 0 else (r.text[:-1] + "q" if r.text else "q") for i, r in enumerate(recognized)]
        write_lmdb(list(zip(images, labels)) + [(png(999), "dropped!")], root / "eval" / name)
        expected[name] = {
            "num_samples": size,
            "correct": sum(r.text == label for r, label in zip(recognized, labels)),
            "accuracy": 100 * sum(r.text == label for r, label in zip(recognized, labels)) / size,
            "norm_ED": sum(hand_norm_ed(r.text, label) for r, label in zip(recognized, labels)) / size,
            "mean_confidence": sum(r.confidence for r in recognized) / size,
        }
    return root, expected


def test_benchmark_all_eval_matches_hand_computed_numbers(setup, tmp_path, monkeypatch, capsys):
    root, expected = setup
    monkeypatch.chdir(tmp_path)
    evaluate = load_script("test")
    argv = ["--eval_data", str(root / "eval"), "--benchmark_all_eval", "--saved_model", str(root / "model"),
            "--batch_size", "3", "--workers", "0", "--output_json", "out.json", "--timing_samples", "5"]  # fmt: skip
    assert run(evaluate.main, argv) == 0
    out = capsys.readouterr().out
    results = json.loads((tmp_path / "out.json").read_text())
    assert list(results["datasets"]) == list(BENCHMARK_DATASETS)
    for name, numbers in expected.items():
        got = results["datasets"][name]
        assert got["num_samples"] == numbers["num_samples"]  # the '!' sample was filtered out, as DTRB
        assert got["accuracy"] == pytest.approx(numbers["accuracy"])
        assert got["norm_ED"] == pytest.approx(numbers["norm_ED"])
        assert got["mean_confidence"] == pytest.approx(numbers["mean_confidence"], rel=1e-4)
        assert got["ms_per_image"] > 0
    # DTRB's totals count samples: correct over all samples, not the mean of the per-set accuracies
    total = 100 * sum(e["correct"] for e in expected.values()) / sum(SIZES.values())
    paper = 100 * sum(expected[n]["correct"] for n in PAPER_DATASETS) / sum(SIZES[n] for n in PAPER_DATASETS)
    assert total != pytest.approx(sum(e["accuracy"] for e in expected.values()) / len(expected))
    assert results["total_accuracy"] == pytest.approx(total)
    assert results["total_accuracy_paper"] == pytest.approx(paper)
    assert results["num_params"] == TextRecognitionModel.from_pretrained(root / "model").num_parameters
    assert results["ms_per_image_batch1"] > 0
    assert f"| total, the paper's 7 sets | {sum(SIZES[n] for n in PAPER_DATASETS)} |" in out and "Latency at batch 1" in out

    result_dir = tmp_path / "result" / dtrb_exp_name(str(root / "model"))
    log = (result_dir / "log_all_evaluation.txt").read_text()
    assert f"total_accuracy: {total:0.3f}" in log and "# parameters:" in log
    # DTRB's averaged_infer_time: the forward time over every image of every set, not the first set's
    infer = sum(r["ms_per_image"] * r["num_samples"] for r in results["datasets"].values()) / sum(SIZES.values())
    assert f"averaged_infer_time: {infer:0.3f}" in log
    failures = (result_dir / "failure_cases" / "SVT.tsv").read_text().splitlines()
    assert failures[0] == "index\tground_truth\tprediction\tconfidence"
    assert len(failures) - 1 == SIZES["SVT"] - expected["SVT"]["correct"]
    assert all(int(line.split("\t")[0]) % 2 == 1 for line in failures[1:])  # the odd samples are the wrong ones


def test_dtrb_exp_name():
    assert dtrb_exp_name("saved_models/X/best_accuracy.pth") == "X_best_accuracy.pth"
    assert dtrb_exp_name("user/repo") == "repo"


def test_missing_benchmark_folder_is_named(setup, tmp_path, capsys):
    root, _ = setup
    evaluate = load_script("test")
    argv = ["--eval_data", str(root / "eval"), "--benchmark_all_eval", "--datasets", "CTW", "--saved_model",
            str(root / "model"), "--workers", "0", "--result_dir", str(tmp_path)]  # fmt: skip
    assert run(evaluate.main, argv) == 1
    assert "has no dataset named ['CTW']" in capsys.readouterr().err


def test_case_insensitive_alphanumeric_rule_with_sensitive_and_filtering_off(tmp_path, monkeypatch):
    torch.manual_seed(5)
    model = TextRecognitionModel(ModelConfig("None", "VGG", "None", "CTC", output_channel=32, sensitive=True))
    model.init_weights()
    model.eval().save_pretrained(tmp_path / "model")
    images = [png(i) for i in range(4)]
    recognized = model.recognize([Image.open(io.BytesIO(b)) for b in images])
    # Ground truth = prediction with its case swapped and punctuation added: correct only under DTRB's rule.
    labels = [r.text.swapcase() + "!?" for r in recognized]
    write_lmdb(list(zip(images, labels)), tmp_path / "eval" / "cased")
    monkeypatch.chdir(tmp_path)
    evaluate = load_script("test")
    base = ["--eval_data", str(tmp_path / "eval"), "--saved_model", str(tmp_path / "model"), "--workers", "0",
            "--timing_samples", "0"]  # fmt: skip
    # --sensitive is DTRB's evaluation flag: the model's config.json does not stand in for it
    assert run(evaluate.main, [*base, "--sensitive", "--data_filtering_off", "--output_json", "a.json"]) == 0
    rule = json.loads((tmp_path / "a.json").read_text())["datasets"]["cased"]
    assert rule["accuracy"] == pytest.approx(100.0) and rule["protocol"] == "dtrb --sensitive --data_filtering_off"
    assert run(evaluate.main, [*base, "--data_filtering_off", "--output_json", "c.json"]) == 0
    lowered = json.loads((tmp_path / "c.json").read_text())["datasets"]["cased"]
    assert lowered["accuracy"] == 0.0  # without --sensitive DTRB lowercases the labels and compares exactly
    assert run(evaluate.main, [*base, "--output_json", "b.json"]) == 0
    strict = json.loads((tmp_path / "b.json").read_text())["datasets"]["cased"]
    assert strict["accuracy"] == 0.0 and strict["num_samples"] == 4  # "!?" never matches under exact comparison
    assert run(evaluate.main, [*base, "--protocol", "alnum36", "--output_json", "d.json"]) == 0
    alnum = json.loads((tmp_path / "d.json").read_text())["datasets"]["cased"]
    assert alnum["accuracy"] == pytest.approx(100.0) and alnum["protocol"] == "alnum36"


def test_empty_attention_predictions(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = TextRecognitionModel(ModelConfig("None", "VGG", "None", "Attn", output_channel=32, hidden_size=16))
    with torch.no_grad():
        model.Prediction.generator.bias[1] = 100.0  # [s] at the first step: every prediction is empty
    model.eval().save_pretrained(tmp_path / "model")
    write_lmdb([(png(1), ""), (png(2), "ab")], tmp_path / "eval" / "empty")
    monkeypatch.chdir(tmp_path)
    evaluate = load_script("test")
    assert run(evaluate.main, ["--eval_data", str(tmp_path / "eval"), "--saved_model", str(tmp_path / "model"),
                               "--workers", "0", "--output_json", "e.json", "--timing_samples", "0"]) == 0  # fmt: skip
    got = json.loads((tmp_path / "e.json").read_text())["datasets"]["empty"]
    # "" == "" counts as correct; norm_ED is 0 for both (an empty string scores 0, as DTRB); confidence 0.
    assert (got["num_samples"], got["accuracy"], got["norm_ED"], got["mean_confidence"]) == (2, 50.0, 0.0, 0.0)


def test_push_results_to_hub_updates_the_card(setup, tmp_path):
    root, expected = setup
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for file in (root / "model").iterdir():
        (model_dir / file.name).write_bytes(file.read_bytes())
    script = REPO_ROOT / "scripts" / "test.py"
    with FakeHub() as hub:
        hub.create_repo("acme/crnn", files={p.name: p.read_bytes() for p in model_dir.iterdir()})
        code = (f"import runpy, sys; sys.argv = ['test.py', '--eval_data', {str(root / 'eval')!r}, "
                f"'--benchmark_all_eval', '--saved_model', {str(model_dir)!r}, '--workers', '0', '--timing_samples', "
                f"'0', '--result_dir', {str(tmp_path / 'r')!r}, '--push_results_to_hub', 'acme/crnn']; "
                f"runpy.run_path({str(script)!r}, run_name='__main__')")  # fmt: skip
        result = run_client(hub, code, tmp_path / "home", extra_env={"HF_TOKEN": "hf_fake"})
        card = hub.repos["acme/crnn"]["README.md"].decode()
    assert result.returncode == 0, result.stderr
    assert card == (model_dir / "README.md").read_text()  # the local card is updated too
    assert "model-index" in card and "IIIT5k_3000" in card and "CUTE80" in card
    assert f"| SVT | {SIZES['SVT']} | {expected['SVT']['accuracy']:.3f} |" in card
    assert "## Usage" in card and "## Citation" in card  # the rest of the card is kept
    assert "No evaluation results yet" not in card


# ---- model flags with a saved model: applied or refused, never ignored ------------------------------------------


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--character", "abc"], r"--character 'abc' \(the model has '0123456789abcdefghijklmnopqrstuvwxyz'\)"),
        (["--PAD"], r"--PAD True \(the model has False\)"),
        (["--imgH", "64"], r"--imgH 64 \(the model has 32\)"),
        (["--imgW", "200"], r"--imgW 200 \(the model has 100\)"),
        (["--Prediction", "Attn", "--Transformation", "None", "--FeatureExtraction", "VGG", "--SequenceModeling",
          "BiLSTM"], r"--Prediction 'Attn' \(the model has 'CTC'\)"),  # fmt: skip
        (["--protocol", "alnum99"], None),
    ],
    ids=["character", "PAD", "imgH", "imgW", "stages", "protocol"],
)
def test_model_flags_that_disagree_with_a_model_folder_are_errors(setup, tmp_path, capsys, flags, message):
    root, _ = setup
    test = load_script("test")
    argv = ["--eval_data", str(root / "eval"), "--saved_model", str(root / "model"), "--workers", "0",
            "--timing_samples", "0", "--result_dir", str(tmp_path), *flags]  # fmt: skip
    if message is None:  # an unknown protocol: argparse names the choices
        with pytest.raises(SystemExit):
            test.main(argv)
        assert "alnum36" in capsys.readouterr().err
        return
    assert run(test.main, argv) == 1
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert "records its own configuration" in err and "--FT" in err


def test_model_flags_that_agree_with_a_model_folder_and_sensitive_apply(setup, tmp_path, monkeypatch):
    root, expected = setup
    monkeypatch.chdir(tmp_path)
    test = load_script("test")
    base = ["--eval_data", str(root / "eval"), "--saved_model", str(root / "model"), "--workers", "0",
            "--timing_samples", "0", "--datasets", "SVT"]  # fmt: skip
    assert run(test.main, [*base, "--imgH", "32", "--imgW", "100", "--output_json", "same.json"]) == 0
    same = json.loads((tmp_path / "same.json").read_text())["datasets"]["SVT"]
    assert same["accuracy"] == pytest.approx(expected["SVT"]["accuracy"])
    # --sensitive is an evaluation flag: it applies (the protocol says so), it does not have to match config.json
    assert run(test.main, [*base, "--sensitive", "--output_json", "s.json"]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["protocol"] == "dtrb --sensitive"
