"""Serving the app in a child process for the tests: a free loopback port, the server started and waited for, its
output kept for the failure message, and stopped (its process group) at the end."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

STARTUP_SECONDS = 240  # importing torch and gradio on a busy 2-core machine


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def app_env(base: dict[str, str], port: int, temp_dir: str | os.PathLike) -> dict[str, str]:
    """``base`` with Gradio kept on loopback and quiet: no usage reports, the port given, uploads under
    ``temp_dir``; torch on as many threads as the tests' (fewer ways to round otherwise)."""
    import torch

    return {**base, "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_SERVER_PORT": str(port),
            "GRADIO_TEMP_DIR": str(temp_dir), "NO_PROXY": "127.0.0.1,localhost",
            "OMP_NUM_THREADS": str(torch.get_num_threads())}  # fmt: skip


@contextlib.contextmanager
def served(argv: Sequence[str], env: dict[str, str], port: int, cwd: str | os.PathLike, log: Path) -> Iterator[str]:
    """Run ``argv`` (a Gradio app) until its page answers on ``http://127.0.0.1:port/``; yield that URL; stop it."""
    url = f"http://127.0.0.1:{port}/"
    with open(log, "w") as output:
        process = subprocess.Popen(list(argv), env=env, cwd=cwd, stdout=output,
                                   stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            if process.poll() is not None:
                raise AssertionError(f"the app exited ({process.returncode}) before serving:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(url, timeout=5) as answer:
                    if answer.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"the app did not serve {url} in {STARTUP_SECONDS} s:\n{log.read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
