"""The app's logic without a browser: loading (``load_app_model``), reading images as ``model.recognize`` does, the
pictures of what the model saw, the decoding options of the page, its errors, and the Space folder and card link.
The page in a real browser: tests/test_app_browser.py."""

from __future__ import annotations

import importlib.util
import math
import re

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO_ROOT
from PIL import Image

from text_recognition import ModelConfig, TextRecognitionModel, __version__
from text_recognition.app import (
    AppError,
    card_with_space,
    decoding_options,
    load_app_model,
    read_images,
    readings_html,
    write_space,
)
from text_recognition.app.page import facts_markdown, read_page
from text_recognition.app.pictures import CELL, OTHER, SCALE, box_picture, head_steps, seen_picture
from text_recognition.app.reading import box_from_corners, crop_photo, example_images, model_facts, read_card
from text_recognition.cli import run
from text_recognition.data import SyntheticWords
from text_recognition.hub import card_with_results
from text_recognition.transforms import align_image

# beam width, allowlist, blocklist, lexicon file, pattern, minimum confidence, precision
NO_OPTIONS = (1, "", "", None, "", 0, "fp32")


def tiny(prediction: str, seed: int = 0, **overrides) -> TextRecognitionModel:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = TextRecognitionModel(ModelConfig("None", "VGG", "BiLSTM", prediction, output_channel=32,
                                                 hidden_size=32, batch_max_length=10, **overrides))  # fmt: skip
        model.init_weights()
    return model.eval()


@pytest.fixture(scope="module", params=["CTC", "Attn"])
def saved(request, tmp_path_factory):
    """A saved tiny model (temperature 0.01, so that its random readings have confidences far from 0) and words."""
    folder = tmp_path_factory.mktemp("app") / request.param
    model = tiny(request.param, pad=request.param == "Attn", temperature=0.01)
    model.save_pretrained(folder)
    words = SyntheticWords(seed=5)
    paths = []
    for i in range(4):
        image, label = words.render(i)
        paths.append(folder.parent / f"{request.param}_{i}_{label}.png")
        image.save(paths[-1])
    return folder, paths


def test_load_app_model_reads_the_folder_and_its_card(saved):
    folder, _ = saved
    app_model = load_app_model(folder)
    reference = TextRecognitionModel.from_pretrained(folder)
    assert app_model.model.config == reference.config and app_model.source == str(folder)
    ours, theirs = app_model.model.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[key], theirs[key]) for key in ours)
    facts = dict(app_model.facts)
    assert facts["Architecture"] == f"{reference.config.stage_string}, {reference.num_parameters:,} parameters"
    assert facts["Charset"].endswith(reference.config.character) and "case-insensitive" in facts["Charset"]
    assert facts["Evaluated"] == "no evaluation results in the model card"


def test_the_facts_show_the_cards_evaluated_accuracy_with_its_protocol(saved):
    folder, _ = saved
    card = card_with_results(read_card(str(folder)), [{"dataset": "IIIT5k_3000", "accuracy": 81.234,
                                                       "protocol": "alnum36", "num_samples": 3000}], "m")  # fmt: skip
    facts = model_facts(load_app_model(folder).model, str(folder), card)
    assert ("Evaluated", "81.23 % accuracy on IIIT5k_3000 (test split, protocol alnum36)") in facts
    shown = facts_markdown(load_app_model(folder))
    assert "- **Architecture**: None\\-VGG\\-BiLSTM" in shown  # Markdown-escaped, shown literally


@pytest.mark.parametrize(("saved_model", "error", "match"), [
    ("no/such/folder", FileNotFoundError, "does not exist: give a model folder"),
    ("missing.onnx", FileNotFoundError, "No ONNX file at 'missing.onnx'"),
    ("model.onnx", ValueError, "has no sidecar 'model.onnx.json' beside it"),
    ("weights.pth", ValueError, "convert_dtrb_checkpoint"),
])  # fmt: skip
def test_load_app_model_errors(tmp_path, monkeypatch, saved_model, error, match):
    pytest.importorskip("onnxruntime")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights.pth").write_bytes(b"not a checkpoint")
    (tmp_path / "model.onnx").write_bytes(b"not a graph")
    with pytest.raises(error, match=match):
        load_app_model(saved_model)


def test_the_script_does_not_start_on_a_model_that_does_not_load(tmp_path, capsys):
    (tmp_path / "run" / "best_accuracy").mkdir(parents=True)
    (tmp_path / "run" / "best_accuracy" / "config.json").write_text("{}")
    spec = importlib.util.spec_from_file_location("app_script", REPO_ROOT / "scripts" / "app.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    for argv, message in [
        (["--saved_model", str(tmp_path / "run")], "is a training run's folder, not a model folder: give"),
        (["--saved_model", str(tmp_path / "model.onnx")], "No ONNX file at"),
        (["--saved_model", str(tmp_path / "run" / "best_accuracy"), "--port", "0"], "--port must be within 1-65535"),
    ]:
        assert run(script.main, argv) == 1
        captured = capsys.readouterr()
        assert captured.err.startswith("error: ") and message in captured.err and "Running on" not in captured.out


def test_readings_are_what_recognize_returns_under_the_decoding_options(saved):
    folder, paths = saved
    paths = paths[:3]
    app_model = load_app_model(folder)
    model = TextRecognitionModel.from_pretrained(folder)
    plain = model.recognize(paths)
    assert any(r.text for r in plain) and min(r.confidence for r in plain) > 1e-3, "the test needs real readings"
    lexicon = [r.text[:8] for r in plain[:2] if r.text] + ["zzz"]  # words it can read (attention's never ended)
    threshold = sorted(r.confidence for r in plain)[1]
    named = [(p.name, str(p)) for p in paths]
    for options in (dict(beam_width=3, allowlist="abcde0123"), dict(lexicon=lexicon, beam_width=2),
                    dict(pattern="[a-m]+", min_confidence=threshold), dict(precision="bf16")):  # fmt: skip
        options = dict(options)
        precision = options.pop("precision", "fp32")
        expected = model.recognize(paths, **options, precision=precision)
        lexicon_file = None
        if "lexicon" in options:
            lexicon_file = folder.parent / "lexicon.txt"
            lexicon_file.write_text("\n".join(options.pop("lexicon")) + "\n", encoding="utf-8")
        readings = read_images(app_model, named, decoding_options(**options, lexicon_file=lexicon_file), precision)
        assert [(r.text, r.confidence, r.abstained) for r in readings] == [
            (e.text, e.confidence, e.abstained) for e in expected], options  # fmt: skip
        assert [r.name for r in readings] == [p.name for p in paths] and not any(r.error for r in readings)
    abstaining = read_images(app_model, named, decoding_options(min_confidence=threshold))
    assert [r.abstained for r in abstaining] == [r.confidence < threshold for r in plain] and any(
        r.abstained for r in abstaining)  # fmt: skip


def test_the_pictures_show_what_the_model_saw_and_read(saved):
    """The input picture is the model's input, enlarged; the per-frame (CTC) or per-step (attention) symbols and
    probabilities give back the greedy text and its confidence."""
    folder, paths = saved
    app_model = load_app_model(folder)
    model, config = app_model.model, app_model.model.config
    image = Image.open(paths[0]).convert("L")
    seen, caption = seen_picture(image, config)
    assert seen.size == (config.img_w * SCALE, config.img_h * SCALE)
    expected = align_image(image, config.img_h, config.img_w, config.pad, 1)[0].mul(0.5).add(0.5).mul(255).round()
    assert np.array_equal(np.asarray(seen.convert("L"))[::SCALE, ::SCALE], expected.numpy().astype(np.uint8))
    assert caption.startswith(f"{image.width} x {image.height} -> 100 x 32 grayscale")
    assert ("right-padded" in caption) == (config.pad and image.width / image.height * 32 < 100)
    reading = model.recognize(image)[0]
    steps = head_steps(model, image, reading.text)
    if config.prediction == "CTC":
        assert len(steps) == 24  # VGG: 100 / 4 - 1 frames
        symbols = [s for s, _ in steps]
        collapsed = "".join(s for i, s in enumerate(symbols) if s != "[CTCblank]" and (i == 0 or s != symbols[i - 1]))
        assert collapsed == reading.text
        assert math.prod(p for _, p in steps) == pytest.approx(reading.confidence, rel=1e-4)
    else:  # teacher-forced along the greedy reading: the model's own choices, then [s] unless it ran out of steps
        ended = len(reading.text) <= config.batch_max_length
        assert [s for s, *_ in steps] == list(reading.text) + ["[s]"] * ended
        assert all(symbol == best for symbol, _, best, _ in steps)
        assert math.prod(p for _, p, *_ in steps[: len(reading.text)]) == pytest.approx(reading.confidence, rel=1e-4)
    readings = read_images(app_model, [("word.png", str(paths[0]))])
    assert readings[0].seen.size == seen.size
    if config.prediction == "CTC":  # each frame under the input columns it reads
        assert readings[0].steps.width == seen.width
    else:
        assert readings[0].steps.width >= len(steps) * CELL


def test_attention_steps_follow_a_constrained_reading():
    model = tiny("Attn", temperature=0.01)
    image = SyntheticWords(seed=6).render(0)[0]
    reading = model.recognize(image, allowlist="xyz", beam_width=2)[0]
    steps = head_steps(model, image, reading.text)
    ended = len(reading.text) <= model.config.batch_max_length
    assert [s for s, *_ in steps] == list(reading.text) + ["[s]"] * ended and set(reading.text) <= set("xyz")


def test_bad_files_are_errors_of_their_own_reading(saved, tmp_path):
    folder, paths = saved
    app_model = load_app_model(folder)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "cut.png").write_bytes(paths[0].read_bytes()[:60])
    images = [("notes.txt", str(tmp_path / "notes.txt")), (paths[0].name, str(paths[0])),
              ("empty.png", str(tmp_path / "empty.png")), ("cut.png", str(tmp_path / "cut.png")),
              ("zero.png", np.zeros((0, 7), dtype=np.uint8))]  # fmt: skip
    readings = read_images(app_model, images)
    assert [r.error is None for r in readings] == [False, True, False, False, False]
    assert readings[0].error.startswith("notes.txt is not an image")
    assert readings[2].error == "empty.png is empty (0 bytes): it holds no image."
    assert readings[3].error.startswith("cut.png is a damaged or unsupported image")
    assert readings[4].error == "zero.png: The image array has no pixels (shape (0, 7))."
    assert readings[1].text == app_model.model.recognize(paths[0])[0].text
    page, status, as_json = read_page(app_model, images, *NO_OPTIONS)
    assert page.count('class="tr-error"') == 4
    assert status.startswith("Read 1 image (PyTorch, fp32). **4 could not be read:** notes.txt is not an image")
    assert as_json[0] == {"name": "notes.txt", "error": readings[0].error} and set(as_json[1]) == {
        "name", "text", "confidence", "abstained"}  # fmt: skip


def test_bad_options_are_errors_on_the_page(saved, tmp_path):
    folder, paths = saved
    app_model = load_app_model(folder)
    images = [(paths[0].name, str(paths[0]))]
    latin1 = tmp_path / "words.txt"
    latin1.write_bytes("café\nthé\n".encode("latin-1"))
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n", encoding="utf-8")
    bom = tmp_path / "bom.txt"
    bom.write_bytes("\ufeffab\ncd\n\nab\n".encode())
    assert decoding_options(lexicon_file=bom).lexicon == ("ab", "cd")
    cases = [
        ((1, "", "", str(latin1), "", 0, "fp32"), "lexicon 'words.txt' is not UTF-8 text (byte 0xe9 at position 3)"),
        ((1, "", "", str(blank), "", 0, "fp32"), "The lexicon 'blank.txt' has no words"),
        ((1, "AB", "", None, "", 0, "fp32"), "allowlist has symbols outside the model's charset: 'AB'"),
        ((1, "", "", None, "(", 0, "fp32"), "Cannot use the pattern '('"),
        ((1, "", "", None, "", 0, "fp64"), "precision must be one of fp32, bf16, fp16"),
        ((2.5, "", "", None, "", 0, "fp32"), "beam width must be a whole number"),
    ]
    for values, message in cases:
        page, status, as_json = read_page(app_model, images, *values)
        assert (page, as_json) == ("", []) and status.startswith("**Error:** ") and message in status, status
        with pytest.raises(AppError, match=re.escape(message)):
            read_images(app_model, images, decoding_options(*values[:6]), values[6])
    page, status, _ = read_page(app_model, [], *NO_OPTIONS)
    assert status == "**Error:** No image to read: upload word images, pick an example, or crop a photo."


def test_the_readings_html_escapes_and_formats(saved):
    folder, paths = saved
    app_model = load_app_model(folder)
    readings = read_images(app_model, [("<b>.png", str(paths[0])), ("bad <i>", b"\x00")])
    shown = readings_html(readings)
    assert "&lt;b&gt;.png" in shown and "<b>.png" not in shown and "bad &lt;i&gt;" in shown
    assert f'<span class="tr-confidence" data-value="{readings[0].confidence!r}">{readings[0].confidence:.4f}</span>' \
        in shown  # fmt: skip
    assert shown.count("data:image/png;base64,") == 2  # the input and the steps picture


def test_the_crop_tool_reads_the_box_of_two_clicks(saved):
    folder, paths = saved
    app_model = load_app_model(folder)
    word = Image.open(paths[0]).convert("RGBA")
    photo = Image.new("RGBA", (300, 200), (0, 0, 0, 0))  # transparent around the word: read on white
    photo.paste(word, (40, 50))
    box = box_from_corners((40 + word.width - 1, 50 + word.height - 1), (40, 50), photo.size)  # either order
    assert box == (40, 50, 40 + word.width, 50 + word.height)
    assert box_from_corners((-5, 400), (10, 10), photo.size) == (0, 10, 11, 200)  # kept within the photo
    cropped = crop_photo(photo, box)
    assert cropped.mode == "RGB" and cropped.size == word.size
    reading = read_images(app_model, [("box", cropped)])[0]
    assert reading.text == app_model.model.recognize(Image.open(paths[0]))[0].text
    with pytest.raises(AppError, match="No photo"):
        crop_photo(None, box)
    drawn = box_picture(photo, [], box)
    assert drawn.size == photo.size and drawn.getpixel((40, 60)) == OTHER and drawn.getpixel((45, 60)) != OTHER


def test_the_bundled_examples_are_small_word_images():
    examples = example_images()
    assert len(examples) >= 5
    for path in examples:
        with Image.open(path) as image:
            assert image.format == "PNG" and 20 <= image.height <= 64 and path.stat().st_size < 20_000


def test_the_space_folder_and_the_card_link(tmp_path, saved):
    folder, _ = saved
    space = write_space(tmp_path / "space", "acme/tiny-crnn")
    app = (space / "app.py").read_text()
    compile(app, "app.py", "exec")
    assert 'MODEL_ID = "acme/tiny-crnn"' in app and "launch(load_app_model(MODEL_ID), host=None)" in app
    assert (space / "requirements.txt").read_text() == f"text_recognition[app]=={__version__}\n"
    front = yaml.safe_load((space / "README.md").read_text().split("---")[1])
    assert front["sdk"] == "gradio" and front["app_file"] == "app.py" and front["models"] == ["acme/tiny-crnn"]
    assert front["sdk_version"] and front["license"] == "apache-2.0"
    custom = write_space(tmp_path / "other", "acme/x", requirement="text_recognition[app] @ git+https://e.org/t.git")
    assert (custom / "requirements.txt").read_text().startswith("text_recognition[app] @ git+")
    with pytest.raises(ValueError, match="not a Hub model id"):
        write_space(tmp_path / "bad", "no-namespace")
    card = (folder / "README.md").read_text()
    linked = card_with_space(card, "acme/demo")
    assert linked.count("/spaces/acme/demo") == 1 and linked.index("/spaces/acme/demo") < linked.index("## ")
    again = card_with_space(linked, "acme/demo2")
    assert "/spaces/acme/demo2" in again and "/spaces/acme/demo)" not in again
    assert again.replace("acme/demo2", "acme/demo") == linked


def test_an_exported_file_is_read_as_scripts_read_it(saved, tmp_path):
    """An .onnx (with its sidecar) is a model for the app too: the readings are onnxruntime's, the page says so,
    and a precision other than the file's own is an error on the page."""
    pytest.importorskip("onnxruntime")
    from text_recognition.export import export_onnx
    from text_recognition.onnx_model import OnnxModel

    folder, paths = saved
    path = export_onnx(TextRecognitionModel.from_pretrained(folder), tmp_path / "model.onnx")
    app_model = load_app_model(path)
    assert isinstance(app_model.model, OnnxModel) and app_model.precisions == ("fp32",)
    assert app_model.backend == "onnxruntime fp32" and dict(app_model.facts)["Run by"] == "onnxruntime fp32"
    readings = read_images(app_model, [(p.name, str(p)) for p in paths], precision="fp32")
    expected = app_model.model.recognize([str(p) for p in paths])
    assert [(r.text, r.confidence) for r in readings] == [(e.text, e.confidence) for e in expected]
    assert all(r.steps is not None and r.seen is not None for r in readings)
    _, status, _ = read_page(app_model, [(paths[0].name, str(paths[0]))], *NO_OPTIONS[:-1], "fp32")
    assert "(onnxruntime fp32, fp32)" in status
    with pytest.raises(AppError, match="runs at the precision it was exported in"):
        read_images(app_model, [(paths[0].name, str(paths[0]))], precision="bf16")


@pytest.mark.parametrize("prediction", ["PARSeq", "ViTSTR"])
def test_parseq_and_vitstr_steps_end_at_strhubs_end(prediction, tmp_path):
    """strhub's heads: the steps give back the reading and strhub's confidence ([E] included), greedy or searched
    (PARSeq's autoregressive decoder along a constrained reading), from the model folder and from its export."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = TextRecognitionModel(ModelConfig("None", "ViT", "None", prediction, img_w=64, embed_dim=32,
                                                 encoder_depth=1, encoder_heads=2, batch_max_length=6,
                                                 temperature=0.05))  # fmt: skip
        model.init_weights()
    model.eval()
    image = SyntheticWords(seed=6).render(0)[0].convert("L")
    for options in ({}, {"allowlist": "xyz", "beam_width": 2}):
        reading = model.recognize(image, **options)[0]
        steps = head_steps(model, image, reading.text)
        ended = len(reading.text) <= model.config.batch_max_length
        assert [s for s, *_ in steps] == list(reading.text) + ["[E]"] * ended
        assert math.prod(p for _, p, *_ in steps) == pytest.approx(reading.confidence, rel=1e-4)
    model.save_pretrained(tmp_path / "model")
    pytest.importorskip("onnxruntime")
    from text_recognition.export import export_onnx

    exported = load_app_model(export_onnx(model, tmp_path / "model.onnx")).model
    reading = exported.recognize(image)[0]
    assert [s for s, *_ in head_steps(exported, image, reading.text)][: len(reading.text)] == list(reading.text)
    [shown] = read_images(load_app_model(tmp_path / "model"), [("word.png", image)])
    assert shown.text == reading.text and shown.steps.width >= CELL
