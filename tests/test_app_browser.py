"""The app in a real browser: ``scripts/app.py`` serves a saved model on 127.0.0.1 and headless Chromium (Debian's
``chromium`` with ``chromium-driver``, driven by selenium) uploads word images; the page shows the text and
confidence ``model.recognize`` gives, and bad files (not an image, a lexicon that is not UTF-8) as errors on the
page, not tracebacks. Skips, naming what is missing, where no browser or driver is installed (.ci/run installs
them)."""

from __future__ import annotations

import importlib.util
import shutil
import sys

import pytest
import torch
from app_server import app_env, free_port, served
from conftest import REPO_ROOT, assert_same_texts_but_near_ties, subprocess_env

from text_recognition import ModelConfig, TextRecognitionModel
from text_recognition.data import SyntheticWords
from text_recognition.transforms import preprocess

CHROMIUM = next((path for name in ("chromium", "chromium-browser") if (path := shutil.which(name))), None)
CHROMEDRIVER = shutil.which("chromedriver")
MISSING = [what for what, found in [
    ("selenium (pip install selenium)", importlib.util.find_spec("selenium")),
    ("gradio (pip install 'text_recognition[app]')", importlib.util.find_spec("gradio")),
    ("chromium (apt-get install chromium)", CHROMIUM),
    ("chromedriver (apt-get install chromium-driver)", CHROMEDRIVER),
] if not found]  # fmt: skip
pytestmark = [pytest.mark.slow, pytest.mark.skipif(bool(MISSING), reason=f"needs {', '.join(MISSING)}")]
WAIT = 120  # seconds for a reading to show, on a busy machine


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    """A saved tiny CTC model; temperature 0.01 gives its random readings confidences far from 0."""
    folder = tmp_path_factory.mktemp("browser") / "model"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = TextRecognitionModel(ModelConfig("None", "VGG", "BiLSTM", "CTC", output_channel=32, hidden_size=32,
                                                 temperature=0.01))  # fmt: skip
        model.init_weights()
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def page_url(model_folder, tmp_path_factory):
    scratch = tmp_path_factory.mktemp("app_server")
    port = free_port()
    argv = [sys.executable, str(REPO_ROOT / "scripts" / "app.py"), "--saved_model", str(model_folder), "--port",
            str(port)]  # fmt: skip
    with served(argv, app_env(subprocess_env(), port, scratch / "gradio"), port, scratch, scratch / "app.log") as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,1000", "--disable-background-networking", "--no-first-run",
                     "--disable-extensions", "--disable-component-update"):  # fmt: skip
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def recognize_with_logits(model_folder, images) -> tuple[list, torch.Tensor]:
    """``model.recognize``'s readings of ``images``, and the greedy logits [B, T, C] behind them: the page's process
    may round differently, so a text may differ at a near-tie only (``assert_same_texts_but_near_ties``)."""
    model = TextRecognitionModel.from_pretrained(model_folder)
    with torch.inference_mode():
        logits = model(preprocess(images, model.config))
    return model.recognize(images), logits


def open_page(browser, url):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url)
    WebDriverWait(browser, WAIT).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#upload input[type=file]"))


def upload(browser, selector: str, paths) -> None:
    from selenium.webdriver.common.by import By

    browser.find_element(By.CSS_SELECTOR, f"{selector} input[type=file]").send_keys("\n".join(map(str, paths)))


def wait_for_status(browser) -> str:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, WAIT).until(lambda b: b.find_element(By.ID, "status").text.strip())
    return browser.find_element(By.ID, "status").text


def test_the_page_shows_what_recognize_reads(page_url, browser, model_folder, tmp_path):
    from selenium.webdriver.common.by import By

    words = SyntheticWords(seed=7)
    paths = []
    for i in range(2):
        image, label = words.render(i)
        paths.append(tmp_path / f"word_{i}_{label}.png")
        image.save(paths[-1])
    expected, logits = recognize_with_logits(model_folder, paths)
    assert all(r.text for r in expected) and min(r.confidence for r in expected) > 1e-3, "the test needs readings"

    open_page(browser, page_url)
    upload(browser, "#upload", paths)
    assert wait_for_status(browser) == "Read 2 images (PyTorch, fp32)."
    names = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#readings .tr-name")]
    texts = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#readings .tr-text")]
    confidences = browser.find_elements(By.CSS_SELECTOR, "#readings .tr-confidence")
    assert names == [p.name for p in paths]
    shown = [(text, float(e.get_attribute("data-value"))) for text, e in zip(texts, confidences, strict=True)]
    assert assert_same_texts_but_near_ties(shown, expected, logits, "the page", rel=1e-5) == 2
    assert [e.text for e in confidences] == [f"{confidence:.4f}" for _, confidence in shown]
    pictures = browser.find_elements(By.CSS_SELECTOR, "#readings img.tr-seen, #readings img.tr-steps")
    assert len(pictures) == 4 and all(browser.execute_script("return arguments[0].naturalWidth", p) > 0
                                      for p in pictures)  # fmt: skip
    facts = browser.find_element(By.ID, "facts").text
    assert "None-VGG-BiLSTM-CTC" in facts and "temperature 0.01 (calibrated)" in facts


def test_a_file_that_is_no_image_is_an_error_on_the_page(page_url, browser, tmp_path):
    from selenium.webdriver.common.by import By

    notes = tmp_path / "notes.txt"
    notes.write_text("a shopping list, not a picture")
    open_page(browser, page_url)
    upload(browser, "#upload", [notes])
    status = wait_for_status(browser)
    assert status.startswith("Read 0 images (PyTorch, fp32). 1 could not be read: notes.txt is not an image"), status
    errors = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#readings .tr-error")]
    assert len(errors) == 1 and errors[0].startswith("notes.txt is not an image")
    assert "Traceback" not in browser.page_source


def test_a_lexicon_that_is_not_utf8_is_an_error_on_the_page(page_url, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    lexicon = tmp_path / "words.txt"
    lexicon.write_bytes("café\nthé\n".encode("latin-1"))
    image = tmp_path / "word.png"
    SyntheticWords(seed=8).render(0)[0].save(image)
    open_page(browser, page_url)
    browser.find_element(By.CSS_SELECTOR, "#options button").click()  # open the accordion: its fields render then
    WebDriverWait(browser, WAIT).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#lexicon input[type=file]"))
    upload(browser, "#lexicon", [lexicon])
    upload(browser, "#upload", [image])
    status = wait_for_status(browser)
    assert status.startswith("Error: The lexicon 'words.txt' is not UTF-8 text (byte 0xe9 at position 3"), status
    assert browser.find_elements(By.CSS_SELECTOR, "#readings .tr-reading") == []


def test_the_crop_tool_reads_the_box_of_two_clicks(page_url, browser, model_folder, tmp_path):
    """Two clicks on a larger photo draw a box; the page reads that box of the photo."""
    import re

    from PIL import Image
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    word = SyntheticWords(seed=9).render(0)[0].convert("RGB")
    photo = Image.new("RGB", (360, 240), (30, 60, 90))
    photo.paste(word, (50, 80))
    photo.save(tmp_path / "photo.png")
    open_page(browser, page_url)
    tabs = browser.find_elements(By.XPATH, "//button[contains(., 'Crop a photo')]")
    next(tab for tab in tabs if tab.is_displayed()).click()
    WebDriverWait(browser, WAIT).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#photo input[type=file]"))
    upload(browser, "#photo", [tmp_path / "photo.png"])
    WebDriverWait(browser, WAIT).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#photo img"))
    image = browser.find_element(By.CSS_SELECTOR, "#photo img")
    WebDriverWait(browser, WAIT).until(lambda b: b.execute_script("return arguments[0].naturalWidth", image) == 360)
    shown = image.size

    def click(x: int, y: int) -> None:  # a pixel of the photo; selenium's offsets are from the element's centre
        dx = (x + 0.5) * shown["width"] / 360 - shown["width"] / 2
        dy = (y + 0.5) * shown["height"] / 240 - shown["height"] / 2
        ActionChains(browser).move_to_element_with_offset(image, round(dx), round(dy)).click().perform()

    click(50 + word.width - 1, 80 + word.height - 1)
    WebDriverWait(browser, WAIT).until(lambda b: "First corner" in b.find_element(By.ID, "status").text)
    click(50, 80)
    WebDriverWait(browser, WAIT).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#readings .tr-name"))
    name = browser.find_element(By.CSS_SELECTOR, "#readings .tr-name").text
    box = tuple(int(v) for v in re.fullmatch(r"box \((\d+), (\d+), (\d+), (\d+)\)", name).groups())
    assert box == pytest.approx((50, 80, 50 + word.width, 80 + word.height), abs=2)  # a click lands within a pixel
    expected, logits = recognize_with_logits(model_folder, [photo.crop(box)])
    text = browser.find_element(By.CSS_SELECTOR, "#readings .tr-text").text
    confidence = browser.find_element(By.CSS_SELECTOR, "#readings .tr-confidence").get_attribute("data-value")
    assert_same_texts_but_near_ties([(text, float(confidence))], expected, logits, "the crop", rel=1e-5)
    assert browser.find_elements(By.CSS_SELECTOR, "#boxed img")  # the photo with the box drawn
