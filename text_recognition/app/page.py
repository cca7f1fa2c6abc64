"""The Gradio page: word images in (uploads, examples, a crop of a larger photo), readings out, decoding options and
the model card's facts beside them. Gradio is an optional extra (``pip install "text_recognition[app]"``) imported
only when the page is built; the HTML of the readings is built here without it."""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from ..fastpath import check_precision
from .pictures import box_picture
from .reading import (
    CROP_EXAMPLE,
    EXAMPLES_DIR,
    AppError,
    AppModel,
    Reading,
    box_from_corners,
    crop_photo,
    decoding_options,
    example_images,
    read_images,
)

INSTALL_HINT = 'The app needs Gradio: pip install "text_recognition[app]" (or pip install gradio).'
TITLE = "text_recognition: read a word"
CSS = """
.tr-reading { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; border-bottom: 1px solid #e5e5e5;
              padding: 8px 0; }
.tr-reading img { image-rendering: pixelated; max-width: 100%; }
.tr-text { font-size: 1.6em; font-family: monospace; }
.tr-error { color: #b91c1c; }
.tr-abstained { color: #b45309; }
.tr-caption { color: #737373; font-size: 0.85em; }
"""


def require_gradio():
    """``gradio``, imported with its usage reports off (no network call the user did not ask for), or an
    ImportError that says how to install it."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    return gradio


def png_data_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def readings_html(readings: Sequence[Reading]) -> str:
    """One block per image: its name, text, confidence and abstention (or its error), the input as the model saw it
    and the per-frame / per-step picture. Class names (``tr-text``, ``tr-confidence`` ...) are what tests read."""
    blocks = []
    for reading in readings:
        name = html.escape(reading.name)
        if reading.error is not None:
            blocks.append(f'<div class="tr-reading"><div><b class="tr-name">{name}</b><br>'
                          f'<span class="tr-error">{html.escape(reading.error)}</span></div></div>')  # fmt: skip
            continue
        shown = html.escape(reading.text) if reading.text else "<i>(nothing read)</i>"
        abstained = ('<span class="tr-abstained">abstained</span>' if reading.abstained
                     else '<span class="tr-answered">not abstained</span>')  # fmt: skip
        pictures = ""  # the input as the model saw it, and under it (aligned for CTC) what it read of it
        if reading.seen is not None:
            pictures += f'<img class="tr-seen" src="{png_data_uri(reading.seen)}" alt="the model\'s input"><br>'
        if reading.steps is not None:
            pictures += f'<img class="tr-steps" src="{png_data_uri(reading.steps)}" alt="what it read"><br>'
        pictures = f'<div>{pictures}<span class="tr-caption">{html.escape(reading.seen_caption)}</span></div>'
        blocks.append(
            f'<div class="tr-reading"><div style="min-width: 14em"><b class="tr-name">{name}</b><br>'
            f'<span class="tr-text">{shown}</span><br>confidence <span class="tr-confidence" '
            f'data-value="{reading.confidence!r}">{reading.confidence:.4f}</span>, {abstained}</div>{pictures}</div>'
        )
    return "\n".join(blocks)


def facts_markdown(app_model: AppModel) -> str:
    rows = "\n".join(f"- **{name}**: {_markdown_escape(value)}" for name, value in app_model.facts)
    return f"### The model\n\n{rows}"


def _markdown_escape(text: str) -> str:
    """``text`` shown literally in Markdown (a charset holds ``*``, ``_``, ``[`` ...)."""
    return "".join(f"\\{c}" if c in "\\`*_{}[]()<>#+-.!|~" else c for c in text)


def status_markdown(readings: Sequence[Reading], backend: str = "PyTorch", precision: str = "fp32") -> str:
    """How many images were read, by what (backend and precision), and why the others could not be."""
    failed = [r for r in readings if r.error is not None]
    read = len(readings) - len(failed)
    text = f"Read {read} image{'s' if read != 1 else ''} ({backend}, {precision})."
    if failed:
        text += f" **{len(failed)} could not be read:** " + "; ".join(r.error for r in failed)
    return text


def read_page(app_model: AppModel, images: list[tuple[str, Any]], beam_width, allowlist, blocklist, lexicon_file,
              pattern, min_confidence, precision) -> tuple[str, str, list[dict[str, Any]]]:  # fmt: skip
    """The page's one action: ``(readings HTML, status Markdown, readings as JSON)``; a bad option or file is
    reported in the status, never as a traceback."""
    try:
        options = decoding_options(beam_width, allowlist, blocklist, _path(lexicon_file), pattern, min_confidence)
        readings = read_images(app_model, images, options, precision)
    except AppError as error:
        return "", f"**Error:** {error}", []
    shown = check_precision(precision) if len(app_model.precisions) > 1 else app_model.precisions[0]
    status = status_markdown(readings, app_model.backend, shown)
    return readings_html(readings), status, [r.to_json() for r in readings]


def _path(value: Any) -> str | None:
    """A Gradio file value (a path, or an object with ``.name`` / ``.path``) as a path."""
    if value is None or isinstance(value, (str, os.PathLike)):
        return value
    return getattr(value, "path", None) or getattr(value, "name", None)


def build_page(app_model: AppModel):
    """The Gradio ``Blocks`` of the app for ``app_model``."""
    gr = require_gradio()
    examples = [str(path) for path in example_images()]
    with gr.Blocks(title=TITLE, analytics_enabled=False) as page:
        gr.Markdown(f"# {TITLE}\nUpload cropped word images (or pick an example, or crop a word from a photo): the "
                    f"page shows what the model reads, how sure it is, and what it saw.")  # fmt: skip
        with gr.Row():
            with gr.Column(scale=3):
                with gr.Tab("Word images"):
                    upload = gr.File(label="Word images (one or many)", file_count="multiple", elem_id="upload")
                    gr.Examples([[[path]] for path in examples] + [[examples]], inputs=upload,
                                example_labels=[Path(p).stem.split("_", 1)[-1] for p in examples] + ["all"],
                                label="Examples")  # fmt: skip
                    read_button = gr.Button("Read", variant="primary", elem_id="read")
                with gr.Tab("Crop a photo"):
                    with gr.Row():
                        photo = gr.Image(label="A photo: click two opposite corners of a word", type="pil",
                                         sources=("upload", "clipboard"), elem_id="photo")  # fmt: skip
                        boxed = gr.Image(label="The box read", type="pil", interactive=False, elem_id="boxed")
                    gr.Examples([[str(CROP_EXAMPLE)]], inputs=photo, label="Example photo")
                    corners = gr.State([])  # the first corner, until the second click
                with gr.Accordion("Decoding options", open=False, elem_id="options"):
                    with gr.Row():
                        beam_width = gr.Slider(1, 20, value=1, step=1, label="Beam width (1: greedy)")
                        min_confidence = gr.Slider(0, 1, value=0, step=0.01,
                                                   label="Minimum confidence (below it: abstain; 0: never)")
                        precision = gr.Radio(list(app_model.precisions), value=app_model.precisions[0],
                                             label="Precision (autocast)" if len(app_model.precisions) > 1
                                             else "Precision (the exported file's own)")  # fmt: skip
                    with gr.Row():
                        allowlist = gr.Textbox(label="Allowlist: the only symbols the text may hold", max_lines=1)
                        blocklist = gr.Textbox(label="Blocklist: symbols the text may not hold", max_lines=1)
                        pattern = gr.Textbox(label="Pattern: a regular expression the whole text matches",
                                             max_lines=1)  # fmt: skip
                    lexicon = gr.File(label="Lexicon: a UTF-8 word list, one word per line; the text is one of them",
                                      file_count="single", type="filepath", elem_id="lexicon")  # fmt: skip
                status = gr.Markdown(elem_id="status")
                readings = gr.HTML(elem_id="readings")
                with gr.Accordion("Readings as JSON", open=False):
                    as_json = gr.JSON(label="readings")
            with gr.Column(scale=1):
                gr.Markdown(facts_markdown(app_model), elem_id="facts")
        options = [beam_width, allowlist, blocklist, lexicon, pattern, min_confidence, precision]
        outputs = [readings, status, as_json]

        def read_uploads(files, *values):
            paths = [_path(file) for file in files or []]
            return read_page(app_model, [(Path(p).name, p) for p in paths], *values)

        def read_changed(files, *values):  # an upload or an example; a cleared list reads nothing
            return read_uploads(files, *values) if files else ("", "", [])

        def select_corner(image, clicked, beam_width, allowlist, blocklist, lexicon_file, pattern, min_confidence,
                          precision, evt):  # fmt: skip
            """A click on the photo: the first corner is kept; the second closes the box, which is read."""
            if image is None:
                return [], None, "", "**Error:** No photo: upload one (or pick the example) first.", []
            corner = (int(evt.index[0]), int(evt.index[1]))
            if not clicked:
                status = f"First corner at {corner}: now click the opposite corner of the word."
                return [corner], box_picture(image, [corner]), "", status, []
            box = box_from_corners(clicked[0], corner, image.size)
            values = (beam_width, allowlist, blocklist, lexicon_file, pattern, min_confidence, precision)
            html, status, as_json = read_page(app_model, [(f"box {box}", crop_photo(image, box))], *values)
            return [], box_picture(image, [], box), html, status, as_json

        select_corner.__annotations__ = {"evt": gr.SelectData}  # Gradio passes the click's (x, y) by this type

        upload.change(read_changed, [upload, *options], outputs, api_name=False)
        read_button.click(read_uploads, [upload, *options], outputs, api_name="read")
        photo.change(lambda image: ([], None), photo, [corners, boxed], api_name=False)  # a new photo: a new box
        photo.select(select_corner, [photo, corners, *options], [corners, boxed, *outputs], api_name=False)
    return page


def launch(app_model: AppModel, host: str | None = "127.0.0.1", port: int | None = None, share: bool = False,
           **kwargs: Any) -> None:  # fmt: skip
    """Serve the page of ``app_model`` until interrupted. ``host`` None and ``port`` None take Gradio's defaults
    (``GRADIO_SERVER_NAME``, ``GRADIO_SERVER_PORT``, else 127.0.0.1:7860); no public share link unless ``share``."""
    page = build_page(app_model)
    page.queue(default_concurrency_limit=1)  # one reading at a time: the model is not copied per request
    page.launch(server_name=host, server_port=port, share=share, css=CSS, allowed_paths=[str(EXAMPLES_DIR)],
                **kwargs)  # fmt: skip
