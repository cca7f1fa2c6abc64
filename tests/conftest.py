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
