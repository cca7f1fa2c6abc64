"""Every command and Python snippet of the README runs, so the docs cannot rot.

Commands run in a sandbox that holds every path the README names (tiny synthetic LMDB trees named as DTRB's release,
an image folder with its gt.txt, a full-size DTRB TPS-ResNet-BiLSTM-Attn .pth), in README order, with a few
substitutions a CPU test needs (listed in SUBSTITUTIONS and EXTRA_ARGS); Hub ids go to the loopback fake Hub.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, subprocess_env
from dtrb_reference import dtrb_manifest, random_dtrb_state_dict
from fake_hub import SCRUBBED_ENV, FakeHub

from text_recognition.data import SyntheticWords
from text_recognition.evaluation import BENCHMARK_DATASETS

README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
BIN = Path(sys.executable).parent
FONTS = "/usr/share/fonts/truetype/dejavu"

# Commands run by other tests, not here.
COVERED_ELSEWHERE = {"make demo": "tests/test_demo.py", "make test": "the test suite itself (.ci/run)"}
# The real-data commands (../shared/data/) are run by tests/test_real_data.py, which skips where that folder is absent.
COVERED_ELSEWHERE.update({command: "tests/test_real_data.py" for command in re.findall(
    r"^python scripts/\S+ --saved_model \.\./shared/data/.*$|^python scripts/\S+ .*--eval_data \.\./shared/data/.*$",
    (REPO_ROOT / "README.md").read_text(encoding="utf-8"), re.M)})  # fmt: skip
# (pattern, replacement) applied to every command: a CPU accelerate config, the venv's executables, small sizes.
SUBSTITUTIONS = [
    (r"accelerate_configs/(single_gpu|multi_gpu|multi_node)\.yaml", "accelerate_configs/cpu.yaml"),
    (r"^python ", f"{sys.executable} "),
    (r"^accelerate ", f"{BIN / 'accelerate'} "),
    (r"--num_samples 20000", "--num_samples 24"),
    (r"<exp_name>", "TPS-ResNet-BiLSTM-Attn-Seed1111"),
]
# Extra arguments per script, appended to keep the run small.
EXTRA_ARGS = {
    "scripts/train.py": "--num_iter 2 --valInterval 1 --batch_size 4 --workers 0 --report_to none",
    "scripts/test.py": "--workers 0 --batch_size 16 --timing_samples 2",
    "scripts/demo.py": "--workers 0",
    "scripts/calibrate.py": "--workers 0 --batch_size 16",
}


def readme_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, re.S)


def readme_commands() -> list[str]:
    commands = []
    for block in readme_blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                commands.append(re.sub(r"\s+", " ", line))
    return commands


def prepared(command: str) -> str:
    for pattern, replacement in SUBSTITUTIONS:
        command = re.sub(pattern, replacement, command)
    if not Path(FONTS).is_dir():
        command = re.sub(r"--fonts \S+", "", command)  # Pillow's built-in font instead
    for script, extra in EXTRA_ARGS.items():
        if f"{script} " in command or command.endswith(script):
            command += f" {extra}"
    return command


def make_sandbox(root: Path) -> None:
    """A checkout (scripts and accelerate configs: the README's commands run from the repository root) plus every
    data path the README names."""
    for name in ("scripts", "accelerate_configs", "recipes"):
        (root / name).symlink_to(REPO_ROOT / name)
    release = root / "data_lmdb_release"
    SyntheticWords(max_length=8, seed=0).write_lmdb(release / "training" / "MJ", 24, progress=False)
    SyntheticWords(max_length=8, seed=1).write_lmdb(release / "training" / "ST", 24, progress=False)
    SyntheticWords(max_length=8, seed=2).write_lmdb(release / "validation" / "synth", 8, progress=False)
    for k, name in enumerate(BENCHMARK_DATASETS):
        SyntheticWords(max_length=8, seed=10 + k).write_lmdb(release / "evaluation" / name, 3, progress=False)
    SyntheticWords(seed=3).write_folder(root / "data", 6, progress=False)
    (root / "demo_image").mkdir()
    for image in sorted((root / "data" / "images").iterdir())[:3]:
        shutil.copy(image, root / "demo_image" / image.name)
    shutil.copy(root / "data" / "images" / "word_000001.png", root / "word_1.png")
    shutil.copy(root / "data" / "images" / "word_000002.png", root / "word.png")
    SyntheticWords(seed=4, image_format="JPEG").render(0)[0].save(root / "word_2.jpg")
    state = random_dtrb_state_dict(dtrb_manifest("TPS", "ResNet", "BiLSTM", "Attn", num_class=38), seed=0)
    torch.save({"module." + key: value for key, value in state.items()}, root / "TPS-ResNet-BiLSTM-Attn.pth")


PYTHON_PRELUDE = {
    # snippet heading words -> code run before it
    "model = TextRecognitionModel(config)": "import torch\npixel_values = torch.rand(2, 1, 32, 100) * 2 - 1\n",
    'model.save_pretrained("my_model"': "from text_recognition import TextRecognitionModel\n"
    'model = TextRecognitionModel.from_pretrained("trba")\n',
}


@pytest.mark.slow
def test_every_readme_command_and_snippet_runs(tmp_path):
    commands = readme_commands()
    assert commands, "no commands found in the README"
    make_sandbox(tmp_path)
    with FakeHub() as hub:
        env = {key: value for key, value in subprocess_env().items() if key not in SCRUBBED_ENV}
        env.update(HF_ENDPOINT=hub.endpoint, HF_TOKEN="hf_fake", HF_HOME=str(tmp_path / ".hf"))
        ran = []
        for command in commands:
            if command in COVERED_ELSEWHERE:
                continue
            result = subprocess.run(prepared(command), shell=True, cwd=tmp_path, env=env, capture_output=True,
                                    text=True, timeout=600)  # fmt: skip
            assert result.returncode == 0, (
                f"README command failed: {command}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
            )
            ran.append(command)
        for snippet in readme_blocks("python"):
            prelude = next((code for key, code in PYTHON_PRELUDE.items() if key in snippet), "")
            code = prelude + snippet.replace('"path/to/model_folder"', '"trba"')
            result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                                    text=True, timeout=600)  # fmt: skip
            assert result.returncode == 0, (
                f"README snippet failed:\n{textwrap.indent(snippet, '  ')}\n{result.stderr[-3000:]}"
            )
        pushed = set(hub.repos)
    assert len(ran) + len([c for c in commands if c in COVERED_ELSEWHERE]) == len(commands)
    assert {"user/repo", "user/my-model"} <= pushed
    assert (tmp_path / "saved_models" / "TPS-ResNet-BiLSTM-Attn-Seed1111" / "best_accuracy" / "config.json").is_file()
    assert os.path.isfile(tmp_path / "results.json")
