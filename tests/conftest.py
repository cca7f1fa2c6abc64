"""Test set-up: everything Hugging Face reads at import time points into a throw-away folder, fully offline."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

# Before any huggingface_hub / datasets / evaluate import: these are read into constants at import time.
_HF_ROOT = Path(tempfile.mkdtemp(prefix="text_recognition_tests_hf_"))
os.environ["HF_HOME"] = str(_HF_ROOT / "home")
os.environ["HF_HUB_CACHE"] = str(_HF_ROOT / "hub")
os.environ["HF_DATASETS_CACHE"] = str(_HF_ROOT / "datasets")
for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
    os.environ[_var] = "1"
os.environ.pop("HF_ENDPOINT", None)
os.environ.pop("HF_TOKEN", None)

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
sys.path.insert(0, str(TESTS_DIR))  # helpers: dtrb_reference, fake_hub

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def hf_hub_cache() -> Path:
    """The HF_HUB_CACHE every test process uses (set above, before huggingface_hub was imported)."""
    return Path(os.environ["HF_HUB_CACHE"])


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for a child process: this one's, the repository importable, plus ``extra``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
    env.update(extra)
    return env


def png_bytes(width: int = 60, height: int = 32, seed: int = 0, mode: str = "L") -> bytes:
    """A small random image, PNG-encoded."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    shape = (height, width) if mode == "L" else (height, width, 3)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def make_lmdb(path: Path, labels: list[str], corrupt: set[int] = frozenset(), seed: int = 0) -> list[bytes]:
    """A DTRB LMDB with one random PNG per label; 0-based positions in ``corrupt`` get undecodable bytes."""
    from text_recognition.data.lmdb import write_lmdb

    images = [b"corrupt image" if i in corrupt else png_bytes(30 + 7 * (i % 9), 32, seed * 1000 + i)
              for i in range(len(labels))]  # fmt: skip
    write_lmdb(zip(images, labels), path)
    return images


# ---- greedy decoding under rounding ----------------------------------------------------------------------------
# Kernels round differently from one CPU to another (AVX2, AVX-512, AMX: vector widths, blockings, bf16 units) and
# with the batch size. An untrained model has near-ties, steps whose two top logits are closer than that rounding,
# where two correct computations may pick different symbols (and, for attention, decode different paths from there
# on). Tests that compare greedy ids or texts of two computations accept a difference only at such a near-tie.
# Tolerances are relative to the largest |logit| of the reference (``scale``).

NEAR_TIE = 2e-4  # 2 x a float32 logit tolerance of 1e-4 * scale; float32 rounding moves these logits by ~1e-6 * scale


def logit_scale(logits: torch.Tensor) -> float:
    """The magnitude differences are measured against: the largest |logit| (at least a tiny positive number)."""
    return max(float(logits.detach().abs().max()), 1e-12)


def near_tie_rows(logits: torch.Tensor, tolerance: float = NEAR_TIE, eos_id: int | None = None) -> list[bool]:
    """For greedy logits [B, T, C]: whether each row's text could change under rounding, i.e. some step its text
    depends on has its two top logits within ``tolerance * scale``. CTC (``eos_id=None``): every frame. Attention:
    the steps up to and including the first ``eos_id`` (the text ends there)."""
    top2 = logits.detach().float().topk(2, dim=-1).values  # [B, T, 2]
    close = (top2[..., 0] - top2[..., 1]) <= tolerance * logit_scale(logits)  # [B, T]
    if eos_id is not None:
        ended = (logits.argmax(-1) == eos_id).int().cumsum(1)  # [B, T]: >= 1 from the first [s] on
        decisive = (ended == 0) | ((ended == 1) & (logits.argmax(-1) == eos_id))  # up to and including it
        close &= decisive
    return close.any(dim=1).tolist()


def assert_branches_at_near_ties(reference: torch.Tensor, ids: torch.Tensor, tolerance: float, what: str) -> None:
    """Greedy ids [B, T] of another computation against the reference's greedy logits [B, T, C]: in each row, at
    the first step where ``ids`` differ from the reference's argmax, the reference's logit for its own symbol may
    lead its logit for the other symbol by at most ``tolerance * scale`` (a near-tie rounding may flip). Later
    steps are not compared: for attention they follow another path."""
    ours = reference.argmax(-1)
    assert ids.shape == ours.shape, f"{what}: greedy ids {tuple(ids.shape)} against {tuple(ours.shape)}"
    limit = tolerance * logit_scale(reference)
    for row in (ids != ours).any(dim=1).nonzero().flatten().tolist():
        step = int((ids[row] != ours[row]).int().argmax())
        mine, theirs = int(ours[row, step]), int(ids[row, step])
        margin = float(reference[row, step, mine] - reference[row, step, theirs])
        assert margin <= limit, (
            f"{what}: image {row} decodes differently from step {step} on (class {theirs} instead of {mine}), "
            f"where the reference leads by {margin:.3g}, more than the rounding allows ({limit:.3g})"
        )


def assert_same_texts_but_near_ties(
    actual, expected, reference: torch.Tensor, what: str, eos_id: int | None = None, rel: float = 1e-4,
    abs: float = 1e-12,
) -> int:  # fmt: skip
    """``Recognition``s (text, confidence) of another computation against the reference's, whose greedy logits
    [B, T, C] are ``reference``: every image without a near-tie on the reference's path (``near_tie_rows``) has the
    same text and a confidence within ``rel``/``abs``; images at a near-tie may read otherwise. Returns how many
    images were compared."""
    assert len(actual) == len(expected) == reference.size(0), f"{what}: {len(actual)} results for {len(expected)}"
    ties = near_tie_rows(reference, NEAR_TIE, eos_id)
    compared = [i for i, tie in enumerate(ties) if not tie]
    assert compared, f"{what}: every image is at a near-tie, nothing is compared (take other images)"
    assert [actual[i][0] for i in compared] == [expected[i][0] for i in compared], f"{what}: a clear text changed"
    assert [actual[i][1] for i in compared] == pytest.approx([expected[i][1] for i in compared], rel=rel, abs=abs)
    return len(compared)
