"""The app: a Gradio page to look at a model (``scripts/app.py``), and a Hugging Face Space that runs it.

- ``reading``: the logic, importable without Gradio: ``load_app_model`` (the one function that loads the page's
  model), the decoding options of the page, reading images into ``Reading``s;
- ``pictures``: the input as the model sees it and the per-frame / per-step picture of its head;
- ``page``: the Gradio page (``build_page``, ``launch``); Gradio is the optional extra ``text_recognition[app]``;
- ``space``: the Space folder of a Hub model (``write_space``, ``push_space``) and the model card's link to it.
"""

from .page import build_page, launch, readings_html
from .reading import AppError, AppModel, Reading, decoding_options, load_app_model, read_images
from .space import card_with_space, push_space, write_space

__all__ = [
    "AppError",
    "AppModel",
    "Reading",
    "build_page",
    "card_with_space",
    "decoding_options",
    "launch",
    "load_app_model",
    "push_space",
    "read_images",
    "readings_html",
    "write_space",
]
