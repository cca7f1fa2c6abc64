"""A Hugging Face Space for a model: a folder with ``app.py`` (this project's page, loading the model by its Hub id),
``requirements.txt`` (this project, pinned) and the Space card (``README.md``: Gradio SDK, the model it uses), pushed
as a Space repo; and the model card's link to it."""

from __future__ import annotations

import os
import re
from pathlib import Path

from huggingface_hub import SpaceCardData

from .. import __version__

#: Markers around the model card's link to its Space, so that a new push replaces it.
SPACE_START = "<!-- text_recognition:space -->"
SPACE_END = "<!-- /text_recognition:space -->"
#: The Gradio version the Space runs when no Gradio is installed here to take it from.
DEFAULT_GRADIO = "6.0.0"

APP_TEMPLATE = '''"""Hugging Face Space: text_recognition's page for the model {model_id}.

The same page as `python scripts/app.py --saved_model {model_id}` in a checkout of text_recognition.
"""

from text_recognition.app import launch, load_app_model

MODEL_ID = "{model_id}"

if __name__ == "__main__":
    # Host and port from the Space's GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (Gradio's defaults elsewhere).
    launch(load_app_model(MODEL_ID), host=None)
'''


def gradio_version() -> str:
    """The installed Gradio's version (the Space runs the version the page was tested with), else a default."""
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("gradio")
    except PackageNotFoundError:
        return DEFAULT_GRADIO


def project_requirement() -> str:
    """This project, pinned to the running version, with the app's extra."""
    return f"text_recognition[app]=={__version__}"


def space_card(model_id: str, title: str | None = None) -> str:
    """The Space's ``README.md``: its metadata (Gradio SDK and version, ``app.py``, the model it uses, so that the
    model's page lists the Space) and a short description."""
    from huggingface_hub import constants

    title = title or f"Read words with {model_id.split('/')[-1]}"
    data = SpaceCardData(
        title=title[:60], sdk="gradio", sdk_version=gradio_version(), app_file="app.py", license="apache-2.0",
        models=[model_id], tags=["text_recognition", "scene-text-recognition", "ocr"], emoji="🔤",
        colorFrom="blue", colorTo="gray", pinned=False,
        short_description=f"Scene-text recognition with {model_id.split('/')[-1]}"[:60],
    )  # fmt: skip
    return (f"---\n{data.to_yaml()}\n---\n\n# {title}\n\nUpload cropped word images, or crop a word from a photo, "
            f"and see what the scene-text-recognition model [{model_id}]({constants.ENDPOINT}/{model_id}) reads, "
            f"how sure it is, and what it saw. Built with "
            f"[text_recognition](https://github.com/text-recognition/text_recognition): the same page runs locally "
            f"with `python scripts/app.py --saved_model {model_id}`.\n")  # fmt: skip


def write_space(folder: str | os.PathLike, model_id: str, *, title: str | None = None,
                requirement: str | None = None) -> Path:  # fmt: skip
    """Write the Space folder of the Hub model ``model_id``: ``app.py``, ``requirements.txt``, ``README.md``.

    Args:
        folder: where to write (created; existing files of these names are replaced).
        model_id: the Hub id of the model the Space loads.
        title: the Space's title (default: "Read words with <name>").
        requirement: the ``requirements.txt`` line of this project (default ``text_recognition[app]==<version>``;
            give a ``git+https://...`` URL where the version is not on PyPI).

    Raises:
        ValueError: ``model_id`` is not a Hub repo id.
    """
    from ..hub import is_repo_id

    if "/" not in model_id or not is_repo_id(model_id):
        raise ValueError(f"{model_id!r} is not a Hub model id (user/name): the Space loads the model from the Hub.")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "app.py").write_text(APP_TEMPLATE.format(model_id=model_id), encoding="utf-8")
    (folder / "requirements.txt").write_text(f"{requirement or project_requirement()}\n", encoding="utf-8")
    (folder / "README.md").write_text(space_card(model_id, title), encoding="utf-8")
    return folder


def push_space(
    folder: str | os.PathLike, space_id: str, *, private: bool | None = None, token: str | None = None
) -> str:
    """Create (if needed) the Gradio Space ``space_id`` and upload ``folder`` to it in one commit. Returns the
    commit URL.

    Raises:
        PermissionError: the Hub refused (no or bad token, no write access), with the Hub's message.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    from ..hub import _refused

    api = HfApi(token=token)
    try:
        space_id = api.create_repo(space_id, repo_type="space", space_sdk="gradio", private=private,
                                   exist_ok=True).repo_id  # fmt: skip
        commit = api.upload_folder(repo_id=space_id, repo_type="space", folder_path=folder,
                                   commit_message="Write the text_recognition Space")  # fmt: skip
    except HfHubHTTPError as error:
        raise _refused(error, space_id) from None
    return commit.commit_url if hasattr(commit, "commit_url") else str(commit)


def space_url(space_id: str) -> str:
    from huggingface_hub import constants

    return f"{constants.ENDPOINT}/spaces/{space_id}"


def card_with_space(card_text: str, space_id: str) -> str:
    """The model card ``card_text`` with a link to the Space ``space_id`` before its first ``##`` section (or in
    place of the link a previous push wrote)."""
    section = (f"{SPACE_START}\nTry it in the browser: the Space [{space_id}]({space_url(space_id)}) reads your word "
               f"images with this model.\n{SPACE_END}")  # fmt: skip
    start, end = card_text.find(SPACE_START), card_text.find(SPACE_END)
    if start != -1 and end > start:
        return card_text[:start] + section + card_text[end + len(SPACE_END) :]
    heading = re.search(r"^## ", card_text, flags=re.M)
    if heading is None:
        return card_text.rstrip() + f"\n\n{section}\n"
    return card_text[: heading.start()] + section + "\n\n" + card_text[heading.start() :]
