"""Every command and Python snippet of README.md and docs/*.md runs, so the docs cannot rot.

One test per page. The ```bash blocks are split into commands (``\\`` continuations joined, comments dropped) and the
```python blocks run whole, in page order, in a folder of their own per page. That folder links the sandbox built
once per module: every path the pages name (tiny synthetic LMDB trees named as DTRB's release, image folders with
their gt.txt, a full-size DTRB TPS-ResNet-BiLSTM-Attn .pth, a narrow TPS-ResNet-BiLSTM-Attn model folder ``trba``,
a small CRNN model folder), so pages do not depend on each other. A few substitutions make the commands fit a CPU
test (SUBSTITUTIONS and EXTRA_ARGS); Hub ids go to a loopback fake Hub, and a command that pushes must have pushed.

A block that cannot run here (a GPU, the real Hub) is marked in its page by an HTML comment on the line above its
fence, with the reason: ``<!-- not run: needs a GPU -->``. Every other command runs, or is listed in
COVERED_ELSEWHERE with the test that runs it. tests/test_docs.py checks the marks, links and inline commands.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, subprocess_env
from dtrb_reference import dtrb_manifest, random_dtrb_state_dict
from fake_hub import SCRUBBED_ENV, FakeHub

from text_recognition import ModelConfig, TextRecognitionModel
from text_recognition.data import SyntheticWords
from text_recognition.evaluation import BENCHMARK_DATASETS

PAGES = ["README.md", *sorted(path.relative_to(REPO_ROOT).as_posix() for path in (REPO_ROOT / "docs").glob("*.md"))]
BIN = Path(sys.executable).parent
FONTS = "/usr/share/fonts/truetype/dejavu"
RUN_LANGUAGES = ("bash", "python")

# A fenced block, with the HTML comment on the line above it if there is one. Fences may be indented (in a list).
FENCE = re.compile(
    r"(?:^[ \t]*<!--(?P<note>(?:(?!-->).)*)-->[ \t]*\n)?^(?P<indent>[ \t]*)```(?P<lang>[^\s`]*)[ \t]*\n"
    r"(?P<body>.*?)^[ \t]*```[ \t]*$",
    re.M | re.S,
)
NOT_RUN = re.compile(r"\s*not run:\s*(?P<reason>\S.*?)\s*$", re.S)


@dataclass(frozen=True)
class Block:
    page: str
    line: int
    language: str
    body: str
    note: str | None  # the HTML comment above the fence, if any

    @property
    def not_run_reason(self) -> str | None:
        match = NOT_RUN.fullmatch(self.note) if self.note is not None else None
        return match["reason"] if match else None

    @property
    def runs(self) -> bool:
        """A bash or python block runs unless marked: any other comment above it does not stop it."""
        return self.language in RUN_LANGUAGES and self.not_run_reason is None

    def commands(self) -> list[str]:
        """The block's shell commands, one per line, continuations joined and whitespace collapsed."""
        commands = []
        for line in self.body.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                commands.append(re.sub(r"\s+", " ", line))
        return commands


def page_text(page: str) -> str:
    return (REPO_ROOT / page).read_text(encoding="utf-8")


def page_blocks(page: str) -> list[Block]:
    text = page_text(page)
    return [
        Block(page, text.count("\n", 0, match.start("lang")) + 1, match["lang"], textwrap.dedent(match["body"]),
              match["note"])
        for match in FENCE.finditer(text)
    ]  # fmt: skip


def page_commands(page: str, *, runs: bool | None = None) -> list[str]:
    """The page's bash commands: all of them, or only those of run (True) or marked (False) blocks."""
    return [command for block in page_blocks(page) if block.language == "bash" and runs in (None, block.runs)
            for command in block.commands()]  # fmt: skip


# Commands run by other tests, not here.
COVERED_ELSEWHERE = {
    "make demo": "tests/test_demo.py",
    "make test": "the test suite itself (.ci/run)",
    "make test-fast": "the test suite itself",
}
# The real-data commands (../shared/data/) are run by tests/test_real_data.py, which skips where that folder is absent.
REAL_DATA_COMMAND = re.compile(
    r"^python scripts/\S+ --saved_model \.\./shared/data/.*$|^python scripts/\S+ .*--eval_data \.\./shared/data/.*$"
)
COVERED_ELSEWHERE.update({command: "tests/test_real_data.py" for page in PAGES for command in page_commands(page)
                          if REAL_DATA_COMMAND.match(command)})  # fmt: skip
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
# Files some commands of a page must have made (beyond their exit code).
EXPECTED_FILES = {
    "README.md": ["saved_models/my_model/best_accuracy/config.json", "results.json"],
    "docs/coming_from_dtrb.md": ["trba/model.safetensors", "trba_from_python/config.json"],
    "docs/data.md": ["lmdb/train/data.mdb", "hf/train", "hf/training/MJ", "synth/words/gt.txt", "audit/audit.json"],
    "docs/training.md": ["saved_models/TPS-ResNet-BiLSTM-Attn-Seed1111/best_accuracy/config.json", "grid.png",
                         "saved_models/trba-finetuned/best_accuracy/config.json"],
    "docs/evaluation.md": ["results.json"],
    "docs/export.md": ["trba.onnx", "trba.onnx.json", "crnn.onnx.json", "crnn_int8.onnx", "crnn_int8.onnx.json"],
    "docs/hub.md": ["my_model/README.md"],
}  # fmt: skip
# Hub repos a page reads before it pushes them (README: the one-liner comes before "Share on the Hub").
HUB_SEED = ("user/repo",)


def prepared(command: str) -> str:
    for pattern, replacement in SUBSTITUTIONS:
        command = re.sub(pattern, replacement, command)
    if not Path(FONTS).is_dir():
        command = re.sub(r"--fonts \S+", "", command)  # Pillow's built-in font instead
    for script, extra in EXTRA_ARGS.items():
        if f"{script} " in command or command.endswith(script):
            command += f" {extra}"
    synthetic_only = "--select_data synth " in command or re.search(r"recipes/pretrain_(synth|parseq)\.yaml", command)
    if "scripts/train.py" in command and synthetic_only and "--valid_data" not in command:
        command += " --synth_valid_samples 16"  # it validates on 1,000 rendered words; a handful shows the same path
    return command


def push_targets(code: str) -> set[str]:
    """The Hub repos a command or snippet pushes to."""
    targets = set(re.findall(r"--hub_model_id[ =](\S+)", code))
    targets |= set(re.findall(r"\.push_to_hub\(\s*[\"']([^\"']+)[\"']", code))
    for match in re.finditer(r"--push_results_to_hub(?:[ =](?!-)(\S+))?", code):
        targets.add(match[1] or re.search(r"--saved_model[ =](\S+)", code)[1])  # no REPO: the --saved_model Hub id
    return targets


def model_copy(source: Path, target: Path) -> None:
    """A model folder whose small files are copies (cards and config.json get rewritten) and weights a link."""
    target.mkdir(parents=True)
    for file in source.iterdir():
        if file.name == "model.safetensors":
            (target / file.name).symlink_to(file)
        else:
            shutil.copy(file, target / file.name)


def make_sandbox(root: Path) -> None:
    """Every input the pages name: a checkout (the commands run from the repository root), data and models."""
    for name in ("scripts", "accelerate_configs", "recipes", "benchmarks"):
        (root / name).symlink_to(REPO_ROOT / name)
    release = root / "data_lmdb_release"
    SyntheticWords(max_length=8, seed=0).write_lmdb(release / "training" / "MJ", 24, progress=False)
    SyntheticWords(max_length=8, seed=1).write_lmdb(release / "training" / "ST", 24, progress=False)
    SyntheticWords(max_length=8, seed=2).write_lmdb(release / "validation" / "synth", 8, progress=False)
    for k, name in enumerate(BENCHMARK_DATASETS):
        SyntheticWords(max_length=8, seed=10 + k).write_lmdb(release / "evaluation" / name, 3, progress=False)
    for seed, split in enumerate(("train", "valid", "test"), start=3):
        SyntheticWords(max_length=8, seed=seed).write_folder(root / "images" / split, 6, progress=False)
    (root / "demo_image").mkdir()
    for image in sorted((root / "images" / "test" / "images").iterdir())[:3]:
        shutil.copy(image, root / "demo_image" / image.name)
    shutil.copy(root / "images" / "test" / "images" / "word_000001.png", root / "word_1.png")
    shutil.copy(root / "images" / "test" / "images" / "word_000002.png", root / "word.png")
    SyntheticWords(seed=6, image_format="JPEG").render(0)[0].save(root / "word_2.jpg")
    state = random_dtrb_state_dict(dtrb_manifest("TPS", "ResNet", "BiLSTM", "Attn", num_class=38), seed=0)
    torch.save({"module." + key: value for key, value in state.items()}, root / "TPS-ResNet-BiLSTM-Attn.pth")
    (root / "models").mkdir()
    # `trba` is narrow, so that the pages that read with it run in seconds (coming_from_dtrb.md converts the full one),
    # and has DTRB-like random weights, as the full one.
    narrow = {"output_channel": 64, "hidden_size": 64}
    state = random_dtrb_state_dict(dtrb_manifest("TPS", "ResNet", "BiLSTM", "Attn", num_class=38, **narrow), seed=1)
    torch.save(state, root / "models" / "trba.pth")
    trba_config = ModelConfig("TPS", "ResNet", "BiLSTM", "Attn", **narrow)
    trba = TextRecognitionModel.from_dtrb_checkpoint(root / "models" / "trba.pth", trba_config)
    trba.save_pretrained(root / "models" / "trba")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        crnn = TextRecognitionModel(ModelConfig("None", "VGG", "BiLSTM", "CTC", pad=True, **narrow))
        crnn.init_weights()
    crnn.save_pretrained(root / "models" / "crnn")


# Paths of a page's folder -> what they are in the sandbox (model folders are copied, see model_copy).
MODEL_PATHS = {
    "trba": "models/trba",
    "path/to/model_folder": "models/trba",
    "demo_output/runs/crnn-synth/best_accuracy": "models/crnn",
}
OUTPUT_FLAGS = re.compile(r"--(?:output_dir|output|outputPath|datasetPath)[ =](\S+)")


def make_page_folder(sandbox: Path, page: str, folder: Path) -> None:
    """The sandbox's inputs linked into ``folder``, leaving out those the page's own commands write."""
    written = {Path(path).parts[0] for command in page_commands(page) for path in OUTPUT_FLAGS.findall(command)}
    for entry in sandbox.iterdir():
        if entry.name not in ("models", ".hf") and entry.name not in written:
            (folder / entry.name).symlink_to(entry)
    for path, model in MODEL_PATHS.items():
        if Path(path).parts[0] not in written:
            model_copy(sandbox / model, folder / path)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("docs_sandbox")
    make_sandbox(root)
    return root


@pytest.fixture(scope="module")
def hub(sandbox):
    with FakeHub() as hub:
        for repo in HUB_SEED:
            hub.create_repo(repo, {file.name: file.read_bytes() for file in (sandbox / "models" / "crnn").iterdir()})
        yield hub


def head(hub: FakeHub, repo: str) -> str | None:
    try:
        return hub.head(repo)
    except Exception:  # no such repo
        return None


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES)
def test_page_runs(page, sandbox, hub, tmp_path):
    blocks = page_blocks(page)
    make_page_folder(sandbox, page, tmp_path)
    env = {key: value for key, value in subprocess_env().items() if key not in SCRUBBED_ENV}
    env.update(HF_ENDPOINT=hub.endpoint, HF_TOKEN="hf_fake", HF_HOME=str(sandbox / ".hf"))

    def run(what: str, argv: list[str] | str, code: str) -> None:
        before = {repo: head(hub, repo) for repo in push_targets(code)}
        shell = isinstance(argv, str)  # a command, run by bash as the ```bash fence says; else a python argv
        result = subprocess.run(argv, shell=shell, executable="/bin/bash" if shell else None, cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=600)  # fmt: skip
        assert result.returncode == 0, (
            f"{page}: {what} failed:\n{textwrap.indent(code, '  ')}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
        )
        for repo, old_head in before.items():
            assert head(hub, repo) not in (None, old_head), f"{page}: {what} did not push to {repo}:\n{code}"

    ran, covered = [], []
    for block in blocks:
        if not block.runs:
            continue
        if block.language == "python":
            run(f"the snippet of line {block.line}", [sys.executable, "-c", block.body], block.body)
            ran.append(block.body)
            continue
        for command in block.commands():
            if command in COVERED_ELSEWHERE:
                covered.append(command)
                continue
            run("a command", prepared(command), command)
            ran.append(command)
    runnable = [block for block in blocks if block.runs]
    expected = sum(len(b.commands()) if b.language == "bash" else 1 for b in runnable)
    assert len(ran) + len(covered) == expected, f"{page}: not every unmarked command ran"
    assert ran or covered or not runnable
    for path in EXPECTED_FILES.get(page, []):
        assert (tmp_path / path).exists(), f"{page}: its commands did not make {path}"


def test_the_pushes_are_found():
    """The push check above is not vacuous: the pages' pushes are recognised."""
    runs = {page: [b.body for b in page_blocks(page) if b.runs] for page in PAGES}
    assert set().union(*map(push_targets, runs["README.md"])) == {"user/repo"}
    assert set().union(*map(push_targets, runs["docs/hub.md"])) == {"user/my-model"}
    assert push_targets("python scripts/test.py --saved_model user/a --push_results_to_hub") == {"user/a"}


def test_every_page_is_tested():
    """The pages the test runs are README.md and every docs page; the expectations name only pages that exist."""
    assert PAGES[0] == "README.md" and len(PAGES) > 1
    assert set(EXPECTED_FILES) <= set(PAGES)
