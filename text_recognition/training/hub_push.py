"""``--push_to_hub`` during training: best models uploaded in the background, one at a time, never failing the run."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from accelerate.logging import get_logger

logger = get_logger(__name__)  # main process only, unless a call says main_process_only=False


class HubPusher:
    """Pushes best-accuracy model folders to the Hub in the background; failures are logged, never raised.

    One upload at a time, from one temporary copy (the folder is replaced by the next best while uploading), removed
    as soon as its upload ends. A best that comes while an upload runs waits as the one pending push; a newer best
    replaces it (the stale one is skipped, never uploaded), so at most one copy exists and the last best is always
    pushed."""

    def __init__(self, repo_id: str, private: bool, api: Any = None) -> None:
        if api is None:
            from huggingface_hub import HfApi

            api = HfApi()
        self.api = api
        self.current: tuple[Any, Path, str] | None = None  # (future, temporary copy, message) of the upload in flight
        self.pending: tuple[Path, str] | None = None  # (folder, message) of the next one
        self.errors: list[str] = []
        self.pushed: list[str] = []  # commit messages of the uploads that succeeded
        self.skipped_stale = 0
        try:
            self.repo_id = self.api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        except Exception as error:  # token, permission, network: training goes on without pushing
            self.errors.append(f"cannot create or reach {repo_id!r}: " + (str(error).splitlines()[0] if str(error)
                               else type(error).__name__))  # fmt: skip
            logger.error("Cannot create or reach the Hub repo %r (%s): training continues without --push_to_hub.",
                         repo_id, str(error).splitlines()[0] if str(error) else type(error).__name__)  # fmt: skip
            self.repo_id = None

    def push(self, folder: Path, message: str) -> None:
        """Upload ``folder`` now, or once the upload in flight ends (replacing a best still waiting)."""
        if self.repo_id is None:
            return
        self.poll()
        if self.current is None:
            self._start(folder, message)
            return
        if self.pending is not None:
            self.skipped_stale += 1
            logger.info("Hub push skipped (a newer best replaced it): %s", self.pending[1])
        self.pending = (folder, message)

    def poll(self) -> None:
        """Collect an upload that ended (its copy removed, an error logged), and start the pending one."""
        if self.current is not None and self.current[0].done():
            self._collect()
        if self.current is None and self.pending is not None:
            folder, message = self.pending
            self.pending = None
            self._start(folder, message)

    def _start(self, folder: Path, message: str) -> None:
        snapshot = Path(tempfile.mkdtemp(prefix="push_"))
        try:
            shutil.copytree(folder, snapshot, dirs_exist_ok=True)  # the folder may be replaced while uploading
            future = self.api.upload_folder(repo_id=self.repo_id, folder_path=snapshot, commit_message=message,
                                            run_as_future=True)  # fmt: skip
        except Exception as error:  # a full /tmp, a refused request
            shutil.rmtree(snapshot, ignore_errors=True)
            self._failed(message, error)
            return
        self.current = (future, snapshot, message)

    def _collect(self) -> None:
        future, snapshot, message = self.current
        self.current = None
        try:
            future.result()
            self.pushed.append(message)
        except Exception as error:  # report every failed push, keep the run's results
            self._failed(message, error)
        finally:
            shutil.rmtree(snapshot, ignore_errors=True)

    def _failed(self, message: str, error: Exception) -> None:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        self.errors.append(reason)
        logger.error("A push to the Hub failed (%s): %s", message, reason)

    def wait(self) -> list[str]:
        """Wait for the upload in flight and the pending one; return the errors (creating the repo included)."""
        while self.current is not None or self.pending is not None:
            if self.current is not None:
                try:
                    self.current[0].exception()  # blocks until it ends
                except Exception:  # cancelled: collected as an error below
                    pass
            self.poll()
        return list(self.errors)
