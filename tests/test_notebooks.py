"""The Colab notebooks in notebooks/: stored without outputs, and run end to end with small settings.

Each notebook keeps its heavy settings as plain assignments in the one code cell tagged ``parameters`` (papermill's
convention). The tests insert a cell right after it that overrides them with small values and a temporary work
dir, and execute the notebook with nbclient in the repository root, offline and without a Hub token.
"""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import nbformat
import pytest
from conftest import REPO_ROOT

NOTEBOOKS = REPO_ROOT / "notebooks"
QUICK_START = NOTEBOOKS / "quick_start.ipynb"
FINE_TUNE = NOTEBOOKS / "fine_tune_your_data.ipynb"

SMALL = {"NUM_ITER": 10, "VAL_INTERVAL": 5, "BATCH_SIZE": 16, "WORKERS": 0, "NUM_SHOW": 4,
         "ACCELERATE_CONFIG": "accelerate_configs/cpu.yaml", "MIXED_PRECISION": None}  # fmt: skip
QUICK_START_SETTINGS = {**SMALL, "NUM_TRAIN": 200, "NUM_VALID": 20, "NUM_TEST": 20}
FINE_TUNE_SETTINGS = {**SMALL, "PRETRAINED_MODEL": "", "NUM_EXAMPLES": 200, "BASE_NUM_TRAIN": 200,
                      "BASE_NUM_VALID": 20, "BASE_NUM_ITER": 10, "BASE_VAL_INTERVAL": 5}  # fmt: skip
SETTINGS = {QUICK_START: QUICK_START_SETTINGS, FINE_TUNE: FINE_TUNE_SETTINGS}
PUSH_SKIPPED = "Skipping the push to the Hub: no Hugging Face token"


def parameters_index(nb) -> int:
    indices = [i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", [])]
    assert len(indices) == 1, f"expected one cell tagged 'parameters', found {len(indices)}"
    return indices[0]


def settings_of(nb) -> dict:
    """The values the ``parameters`` cell assigns (it must hold only ``NAME = <literal>`` statements)."""
    values = {}
    for statement in ast.parse(nb.cells[parameters_index(nb)].source).body:
        assert isinstance(statement, ast.Assign) and len(statement.targets) == 1, ast.unparse(statement)
        assert isinstance(statement.targets[0], ast.Name), ast.unparse(statement)
        values[statement.targets[0].id] = ast.literal_eval(statement.value)
    return values


def cell(nb, cell_id):
    (found,) = [c for c in nb.cells if c.get("id") == cell_id]
    return found


def stream_text(nb, cell_id) -> str:
    return "".join(out.get("text", "") for out in cell(nb, cell_id).outputs if out.output_type == "stream")


def execute(path: Path, work_dir: Path, **overrides):
    """Run the notebook in the repository root with the small settings; return the executed notebook."""
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    settings = {**SETTINGS[path], "WORK_DIR": str(work_dir), **overrides}
    injected = nbformat.v4.new_code_cell("\n".join(f"{name} = {value!r}" for name, value in settings.items()))
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(parameters_index(nb) + 1, injected)

    env = dict(os.environ)  # conftest.py already points HF_HOME & co. at a throw-away folder
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH"):
        env.pop(name, None)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
    client = NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(REPO_ROOT)}})
    try:
        client.execute(env=env)  # raises CellExecutionError, with the cell and its traceback, on the first error
    finally:
        nbformat.write(nb, work_dir / f"executed_{path.name}")  # for a look after a failure
    for code_cell in nb.cells:
        assert not [out for out in code_cell.get("outputs", []) if out.output_type == "error"], code_cell.source
    return nb


# ---- as stored in git -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [QUICK_START, FINE_TUNE], ids=lambda p: p.stem)
def test_notebook_is_valid_and_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
    assert nb.nbformat == 4
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    for code_cell in (c for c in nb.cells if c.cell_type == "code"):
        assert code_cell.outputs == [] and code_cell.execution_count is None, f"outputs not stripped: {code_cell.id}"
    ids = [c.id for c in nb.cells]
    assert len(ids) == len(set(ids))
    # the tests' overrides must name real settings, or they would silently change nothing
    assert set(SETTINGS[path]) | {"WORK_DIR"} <= set(settings_of(nb))


def test_notebook_defaults_are_the_make_demo_recipe():
    quick = settings_of(nbformat.read(QUICK_START, as_version=4))
    assert (quick["NUM_TRAIN"], quick["NUM_VALID"], quick["NUM_TEST"], quick["NUM_ITER"]) == (30_000, 500, 500, 6_000)
    makefile = (REPO_ROOT / "Makefile").read_text()
    for name, value in (("DEMO_TRAIN", 30_000), ("DEMO_EVAL", 500), ("DEMO_ITERS", 6_000)):
        assert f"{name} ?= {value}\n" in makefile, name
    assert "--engine realistic" in makefile and "--scheduler onecycle" in makefile
    code = "\n".join(c.source for c in nbformat.read(QUICK_START, as_version=4).cells if c.cell_type == "code")
    assert '"--engine", "realistic"' in code and '"--scheduler", "onecycle"' in code
    assert (quick["BATCH_SIZE"], quick["LR"], quick["OUTPUT_CHANNEL"], quick["HIDDEN_SIZE"]) == (32, 1e-3, 64, 64)
    fine = settings_of(nbformat.read(FINE_TUNE, as_version=4))
    assert fine["PRETRAINED_MODEL"] == "" and fine["DATA_DIR"] is None
    assert "-" in fine["NEW_CHARACTER"] and fine["NEW_CHARACTER"].endswith("-")


# ---- executed -------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_quick_start_notebook_runs_end_to_end(tmp_path):
    nb = execute(QUICK_START, tmp_path)
    best = tmp_path / "runs" / "crnn-synth" / "best_accuracy"
    assert sorted(p.name for p in best.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert json.loads((best / "config.json").read_text())["feature_extraction"] == "VGG"
    assert "end the training" in stream_text(nb, "train")
    results = json.loads((tmp_path / "test_results.json").read_text())
    assert results["datasets"]["synth"]["num_samples"] == 20
    assert "held-out word accuracy" in stream_text(nb, "evaluate")
    assert list((tmp_path / "result").rglob("log_evaluation.txt")), "scripts/test.py's ./result/ belongs in WORK_DIR"
    html = [out.data["text/html"] for out in cell(nb, "predict").outputs if "text/html" in out.get("data", {})]
    assert len(html) == 1 and html[0].count('<img src="data:image/png;base64,') == 4
    assert PUSH_SKIPPED in stream_text(nb, "push")


@pytest.mark.slow
def test_fine_tune_notebook_trains_a_base_model_then_fine_tunes_on_a_new_charset(tmp_path):
    nb = execute(FINE_TUNE, tmp_path)
    new_charset = settings_of(nb)["NEW_CHARACTER"]
    base = json.loads((tmp_path / "base" / "runs" / "base" / "best_accuracy" / "config.json").read_text())
    assert base["character"] == "0123456789abcdefghijklmnopqrstuvwxyz"
    best = tmp_path / "runs" / "crnn-finetuned" / "best_accuracy"
    assert sorted(p.name for p in best.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    fine_tuned = json.loads((best / "config.json").read_text())
    assert fine_tuned["character"] == new_charset
    assert {k: fine_tuned[k] for k in ("feature_extraction", "output_channel", "pad")} == {
        k: base[k] for k in ("feature_extraction", "output_channel", "pad")
    }  # the architecture came from the pretrained model
    assert "--FT: charset resized, kept 36 symbols, added 1 ('-')" in stream_text(nb, "finetune")
    assert "augment: True" in (tmp_path / "runs" / "crnn-finetuned" / "opt.txt").read_text()  # the recipe
    assert ["-"] == [s for s in new_charset if s not in base["character"]]
    assert "symbols the pretrained model cannot read: ['-']" in stream_text(nb, "pretrained")
    for split, count in (("train", 160), ("valid", 20), ("test", 20)):
        assert len((tmp_path / "splits" / f"gt_{split}.txt").read_text().splitlines()) == count
    results = json.loads((tmp_path / "test_results.json").read_text())
    assert results["datasets"]["mydata"]["num_samples"] == 20
    assert "test words with new symbols" in stream_text(nb, "predict")
    assert PUSH_SKIPPED in stream_text(nb, "push")
