"""The docs pages hold together: marks on blocks that do not run, links, inline commands, the real-data wiring.

tests/test_readme.py runs every command of README.md and docs/*.md; these checks are fast and keep that test honest.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from conftest import REPO_ROOT
from test_readme import COVERED_ELSEWHERE, FENCE, PAGES, REAL_DATA_COMMAND, RUN_LANGUAGES, page_blocks, page_text

# Fences that would hide commands from the test: spell them ```bash / ```python.
REFUSED_LANGUAGES = {"", "sh", "shell", "console", "zsh", "py", "python3", "pycon", "ipython"}
# Inline code that is a command (a program the docs run, with its arguments) rather than a name or a flag.
INLINE_COMMAND = re.compile(r"^(?:python|accelerate|make|bash|hf|huggingface-cli|pip|\.venv/bin/\S+)\s")


def prose(page: str) -> str:
    """The page without its fenced blocks and without multi-backtick code spans (``` ```bash ``` ``` in text)."""
    text = FENCE.sub("", page_text(page))
    return re.sub(r"(`{2,})(?:(?!\1).)+?\1", "", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*_]{1,2}(?=\S)|(?<=\S)[`*_]{1,2}", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: str) -> set[str]:
    return {slug(m[1]) for m in re.finditer(r"^#{1,6}\s+(.*?)\s*#*$", FENCE.sub("", page_text(page)), re.M)}


@pytest.mark.parametrize("page", PAGES)
def test_blocks_are_marked_with_a_reason_and_spelled_so_the_test_finds_them(page):
    blocks = page_blocks(page)
    for block in blocks:
        where = f"{page}, line {block.line}"
        assert block.language not in REFUSED_LANGUAGES, f"{where}: ```{block.language}; use ```bash or ```python"
        if block.note is not None:
            assert block.not_run_reason, (
                f"{where}: the comment above the fence must be '<!-- not run: <the reason> -->', got {block.note!r}"
            )
            assert block.language in RUN_LANGUAGES, f"{where}: only bash and python blocks run; no mark needed"
    # Every fence was parsed: an unbalanced or unusual fence would leave commands out of the test.
    fence_lines = re.findall(r"^[ \t]*```[^`\n]*$", page_text(page), re.M)
    assert len(fence_lines) == 2 * len(blocks), f"{page}: unbalanced fences"


def test_marks_are_few_and_every_other_command_runs_somewhere():
    """What the test skips is marked in the page or listed in COVERED_ELSEWHERE, nothing else."""
    marked = [(b.page, b.line, b.not_run_reason) for page in PAGES for b in page_blocks(page) if b.not_run_reason]
    assert all(reason for _, _, reason in marked)
    commands = [c for page in PAGES for b in page_blocks(page) if b.runs and b.language == "bash"
                for c in b.commands()]  # fmt: skip
    assert set(COVERED_ELSEWHERE) <= set(commands), set(COVERED_ELSEWHERE) - set(commands)
    assert any("scripts/train.py" in c for c in commands) and any("scripts/test.py" in c for c in commands)


@pytest.mark.parametrize("page", PAGES)
def test_inline_commands_are_shown_in_a_block(page):
    """A command written in the text (`python scripts/...`) is also in a block of some page, so it is run or marked."""
    in_blocks = [c for p in PAGES for b in page_blocks(p) if b.language == "bash" for c in b.commands()]
    for span in re.findall(r"`([^`\n]+)`", prose(page)):
        command = re.sub(r"\s+", " ", span.strip())
        if INLINE_COMMAND.match(command) and "..." not in command:
            assert any(c == command or c.startswith(command + " ") for c in in_blocks), (
                f"{page}: the inline command `{command}` is in no ```bash block of the docs"
            )


@pytest.mark.parametrize("page", PAGES)
def test_relative_links_resolve(page):
    for target in re.findall(r"\]\(([^)\s]+)\)", prose(page)):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (REPO_ROOT / page).parent / path if path else REPO_ROOT / page
        assert file.exists(), f"{page}: the link {target!r} points to nothing"
        if anchor and file.suffix == ".md":
            assert anchor in anchors(file.relative_to(REPO_ROOT).as_posix()), f"{page}: no heading for {target!r}"


def test_the_readme_links_every_docs_page():
    linked = set(re.findall(r"\]\((docs/[^)#\s]+\.md)", page_text("README.md")))
    assert {page for page in PAGES if page.startswith("docs/")} <= linked


# The real-data commands of the docs are the ones tests/test_real_data.py runs (it calls the scripts in-process).
def real_data_argv() -> dict[str, list[str]]:
    """script name -> argv of the docs' real-data commands, as bash parses them."""
    commands = [c for page in PAGES for c in (c for b in page_blocks(page) for c in b.commands())
                if REAL_DATA_COMMAND.match(c)]  # fmt: skip
    argv = {}
    for command in commands:
        printer = f"{sys.executable} -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "
        shown = command.replace("python ", printer, 1)
        result = subprocess.run(["bash", "-c", shown], capture_output=True, text=True, check=True)
        args = json.loads(result.stdout)
        argv[args[0]] = args[1:]
    return argv


def test_real_data_commands_are_those_test_real_data_runs():
    from test_real_data import G2_FLAGS

    argv = real_data_argv()
    assert set(argv) == {"scripts/convert_dtrb_checkpoint.py", "scripts/test.py"}, argv
    convert = argv["scripts/convert_dtrb_checkpoint.py"]
    assert convert[:4] == ["--saved_model", "../shared/data/weights/english_g2.pth", "--output_dir", "g2"]
    assert convert[4:] == G2_FLAGS  # the charset too, with bash's quoting
    test = argv["scripts/test.py"]
    assert test == ["--saved_model", "g2", "--eval_data", "../shared/data/real_train", "--sensitive",
                    "--data_filtering_off"]  # fmt: skip


def test_real_data_table_is_dtrb_reference():
    """The figures the docs state for english_g2 are DTRB's own test.py figures (which test_real_data reproduces)."""
    from test_real_data import REFERENCE

    if not REFERENCE.is_file():
        pytest.skip(f"real data not found: {REFERENCE}")
    reference = json.loads(REFERENCE.read_text())["datasets"]
    rows = {m[1]: m for m in re.finditer(r"^\| (\w+) \| ([\d,]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$",
                                          page_text("docs/coming_from_dtrb.md"), re.M)}  # fmt: skip
    assert set(rows) == set(reference)
    for name, expected in reference.items():
        row = rows[name]
        assert int(row[2].replace(",", "")) == expected["num_samples"]
        assert row[3] == f"{expected['accuracy']:.3f}" and row[4] == f"{expected['norm_ED']:.4f}", name
