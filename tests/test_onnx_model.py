"""Exported files as models (text_recognition/onnx_model.py, quantize.py; issue 20): an fp32 or int8 ``.onnx`` is
evaluated, read and calibrated by the same scripts as the PyTorch model it came from, and scores as it does.

The models are small and untrained, with their heads scaled so that no greedy step is a near-tie (checked): an
untrained model's texts are then a deterministic function of the image that float32 rounding cannot flip. Each
model's evaluation data is labelled with its own PyTorch predictions, so PyTorch scores 100 % and an export that
computes the same function must too.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import near_tie_rows
from test_scripts import load_script

from text_recognition import ModelConfig, OnnxModel, TextRecognitionModel, load_model
from text_recognition.cli import run
from text_recognition.data.lmdb import write_lmdb
from text_recognition.data.synth import SyntheticWords
from text_recognition.export import export_onnx
from text_recognition.fastpath import SlowPrecisionWarning, resolve_precision, slow_precision_message
from text_recognition.onnx_model import OnnxModelError, sidecar_path
from text_recognition.quantize import QuantizationError, load_calibration_images, quantize_onnx
from text_recognition.tokenizer import EOS_ID
from text_recognition.transforms import preprocess

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

NUM_WORDS = 40


def _encode_png(image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _scaled_model(head: str) -> TextRecognitionModel:
    torch.manual_seed(0)
    config = ModelConfig("None", "VGG", "BiLSTM", head, output_channel=32, hidden_size=32, batch_max_length=10)
    model = TextRecognitionModel(config)
    model.init_weights()
    linear = model.Prediction if head == "CTC" else model.Prediction.generator
    with torch.no_grad():  # wide margins between the top two logits: no near-tie for rounding to flip
        linear.weight.mul_(30.0)
        if head == "Attn":  # an untrained decoder never ends: [s] takes the place of 'g', frequent after step 1
            g = model.tokenizer.char_to_id["g"]
            linear.weight[EOS_ID], linear.bias[EOS_ID] = linear.weight[g], linear.bias[g] + 1.0
    return model.eval()


@pytest.fixture(scope="module", params=["CTC", "Attn"])
def exported(request, tmp_path_factory):
    """(folder, fp32 .onnx, eval data root, images) for a model labelled with its own PyTorch predictions."""
    head = request.param
    root = tmp_path_factory.mktemp(f"onnx_{head}")
    model = _scaled_model(head)
    synth = SyntheticWords(seed=3, max_length=8)
    images = [synth.render(i)[0] for i in range(NUM_WORDS)]
    pixel_values = preprocess(images, model.config)
    with torch.no_grad():
        logits = model(pixel_values)
    ties = near_tie_rows(logits, eos_id=None if head == "CTC" else 1)
    texts = [r.text for r in model.recognize(images)]
    kept = [(image, text) for image, text, tie in zip(images, texts, ties)  # no near-tie left, every label scored
            if text and not tie and len(text) <= model.config.batch_max_length]  # fmt: skip
    assert len(kept) >= NUM_WORDS // 2
    write_lmdb([(_encode_png(image), text) for image, text in kept], root / "data" / "words")
    model.save_pretrained(root / "model")
    path = export_onnx(model, root / "model.onnx")
    return root / "model", path, root / "data", [image for image, _ in kept]


def _evaluate(saved_model, data, tmp_path, *extra):
    test = load_script("test")
    out = tmp_path / f"{saved_model.name}.json"
    argv = ["--saved_model", str(saved_model), "--eval_data", str(data), "--workers", "0", "--timing_samples", "2",
            "--sensitive", "--data_filtering_off", "--protocol", "raw", "--result_dir", str(tmp_path / "result"),
            "--output_json", str(out), *extra]  # fmt: skip
    assert run(test.main, argv) == 0
    return json.loads(out.read_text())


def test_an_fp32_export_scores_as_the_pytorch_model(exported, tmp_path, capsys):
    folder, path, data, _ = exported
    pytorch, onnx = _evaluate(folder, data, tmp_path), _evaluate(path, data, tmp_path)
    assert pytorch["datasets"]["words"]["accuracy"] == 100.0
    for key in ("num_samples", "accuracy", "norm_ED", "cer"):
        assert onnx["datasets"]["words"][key] == pytorch["datasets"]["words"][key], key
    assert onnx["datasets"]["words"]["mean_confidence"] == pytest.approx(
        pytorch["datasets"]["words"]["mean_confidence"], rel=1e-4, abs=1e-30)
    assert (pytorch["run_by"], onnx["run_by"]) == ("PyTorch fp32", "onnxruntime fp32")
    assert onnx["num_params"] == pytorch["num_params"]
    out = capsys.readouterr().out
    assert "Run by: PyTorch fp32" in out and "Run by: onnxruntime fp32" in out


def test_recognize_and_demo_read_an_export_as_the_model(exported, tmp_path, monkeypatch):
    folder, path, _, images = exported
    model, onnx = TextRecognitionModel.from_pretrained(folder), load_model(path)
    assert isinstance(onnx, OnnxModel) and onnx.config == model.config
    expected, got = model.recognize(images), onnx.recognize(images, batch_size=7)
    assert [r.text for r in got] == [r.text for r in expected]
    assert [r.confidence for r in got] == pytest.approx([r.confidence for r in expected], rel=1e-4, abs=1e-30)
    folder_of_images = tmp_path / "images"
    folder_of_images.mkdir()
    for i, image in enumerate(images[:5]):
        image.save(folder_of_images / f"word_{i}.png")
    monkeypatch.chdir(tmp_path)
    demo = load_script("demo")
    assert run(demo.main, ["--image_folder", str(folder_of_images), "--saved_model", str(path), "--workers", "0",
                           "--output", "out.json"]) == 0  # fmt: skip
    assert [row["text"] for row in json.loads((tmp_path / "out.json").read_text())] == [r.text for r in expected[:5]]


def test_an_int8_export_is_evaluated_and_says_so(exported, tmp_path, capsys):
    """int8 of an untrained model cannot keep every text (its margins are not a trained model's); what it reads
    is scored like any model, and the table, JSON and sidecar say it is int8. english_g2's real-word figures are in
    test_real_data.py."""
    folder, path, data, images = exported
    export = load_script("export_onnx")
    out = tmp_path / "model_int8.onnx"
    assert run(export.main, ["--saved_model", str(folder), "--output", str(out), "--quantize", "int8",
                             "--calibration_data", "synth", "--num_calibration_images", "32"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "int8: " in printed and "static quantization calibrated on 32 images from synth" in printed
    meta = json.loads(sidecar_path(out).read_text())
    assert meta["precision"] == "int8" and meta["quantization"]["calibration"]["images"] == 32
    assert meta["quantization"]["fp32_ops"].keys() == {"LSTM"}
    kept = meta["quantization"]["fp32_nodes"]
    assert kept["first_convolution"] == ["/FeatureExtraction/ConvNet/ConvNet.0/Conv"]
    assert len(kept["classifier"]) == (1 if meta["prediction"] == "CTC" else 11)  # the generator at each step
    assert set(meta["quantization"]["fp32_nodes_why"]) == {"first_convolution", "classifier"}
    assert "kept in fp32: LSTM; first_convolution (1 node); classifier (" in printed
    int8 = load_model(out)
    assert int8.precision == "int8" and int8.quantization["method"] == "static"
    result = _evaluate(out, data, tmp_path)
    assert result["run_by"] == "onnxruntime int8" and result["precision"] == "int8"
    texts = [r.text for r in int8.recognize(images)]
    labels = [r.text for r in TextRecognitionModel.from_pretrained(folder).recognize(images)]
    assert result["datasets"]["words"]["accuracy"] == pytest.approx(
        100.0 * sum(t == label for t, label in zip(texts, labels)) / len(labels))
    assert result["datasets"]["words"]["norm_ED"] > 0.5  # mostly the same symbols as fp32
    assert "Run by: onnxruntime int8 (static quantization)" in capsys.readouterr().out


def test_calibrate_an_export_writes_its_sidecar(exported, tmp_path, capsys):
    _, path, _, images = exported
    copy = tmp_path / "copy.onnx"
    shutil.copyfile(path, copy)
    shutil.copyfile(sidecar_path(path), sidecar_path(copy))
    labels = [r.text for r in load_model(path).recognize(images)]
    labels = [text if i % 2 else text[::-1] + "x" for i, text in enumerate(labels)]  # half of them wrong
    write_lmdb([(_encode_png(image), text) for image, text in zip(images, labels)], tmp_path / "data" / "half")
    calibrate = load_script("calibrate")
    assert run(calibrate.main, ["--saved_model", str(copy), "--data", str(tmp_path / "data"), "--workers", "0",
                                "--output_json", str(tmp_path / "c.json")]) == 0  # fmt: skip
    fitted = json.loads((tmp_path / "c.json").read_text())["temperature"]
    assert json.loads(sidecar_path(copy).read_text())["temperature"] == pytest.approx(fitted)
    assert load_model(copy).config.temperature == pytest.approx(fitted) and fitted != 1.0
    assert f"temperature written to {sidecar_path(copy)}" in capsys.readouterr().out


# ---- bad input -----------------------------------------------------------------------------------------------------


def test_an_export_without_or_with_another_sidecar_is_refused(exported, tmp_path):
    _, path, _, _ = exported
    lone = tmp_path / "lone.onnx"
    shutil.copyfile(path, lone)
    with pytest.raises(OnnxModelError, match=r"has no sidecar 'lone\.onnx\.json' beside it"):
        load_model(lone)
    other = _scaled_model("CTC" if "CTC" in load_model(path).config.prediction else "Attn")
    with torch.no_grad():
        other.Prediction.weight.add_(1.0) if other.config.prediction == "CTC" else other.Prediction.generator.bias.add_(1.0)
    other_path = export_onnx(other, tmp_path / "other.onnx")
    shutil.copyfile(sidecar_path(other_path), sidecar_path(lone))  # same architecture, another file
    with pytest.raises(OnnxModelError, match="belongs to another file"):
        load_model(lone)
    meta = json.loads(sidecar_path(other_path).read_text())
    meta.pop("onnx_sha256")  # a version-1 sidecar has no checksum: the graph's shapes are checked instead
    meta["model_config"]["character"] = "0123456789"
    sidecar_path(lone).write_text(json.dumps(meta))
    with pytest.raises(OnnxModelError, match=r"describes another model .* classes"):
        load_model(lone)
    sidecar_path(lone).write_text("{not json")
    with pytest.raises(OnnxModelError, match="not valid JSON"):
        load_model(lone)


def test_what_an_export_cannot_do_is_refused(exported, tmp_path, capsys):
    folder, path, data, images = exported
    onnx = load_model(path)
    test = load_script("test")
    base = ["--saved_model", str(path), "--eval_data", str(data), "--workers", "0", "--timing_samples", "0",
            "--result_dir", str(tmp_path)]  # fmt: skip
    assert run(test.main, [*base, "--precision", "bf16"]) == 1
    assert "runs at the precision it was exported in (fp32)" in capsys.readouterr().err
    assert run(test.main, [*base, "--compile"]) == 1
    assert "onnxruntime optimises" in capsys.readouterr().err
    assert run(test.main, [*base, "--imgW", "128"]) == 1  # a model flag that disagrees with the export
    assert "--imgW 128 (the model has 100)" in capsys.readouterr().err
    if onnx.config.prediction == "Attn":
        with pytest.raises(OnnxModelError, match="needs its decoder step by step"):
            onnx.recognize(images[:1], beam_width=3)
        assert run(test.main, [*base, "--allowlist", "abc"]) == 1
        assert "constrained decoding (allowlist, blocklist, lexicon or pattern) with the Attn head" in \
            capsys.readouterr().err  # fmt: skip
    else:  # CTC beam search and constraints decode the graph's logits as PyTorch's
        model = TextRecognitionModel.from_pretrained(folder)
        options = {"beam_width": 3, "allowlist": "abcdefghij"}
        got, expected = onnx.recognize(images[:6], **options), model.recognize(images[:6], **options)
        assert [r.text for r in got] == [r.text for r in expected]
        assert [r.confidence for r in got] == pytest.approx([r.confidence for r in expected], rel=1e-4, abs=1e-30)
    assert run(test.main, [*base, "--precision", "int8"]) == 1
    assert "exported in (fp32)" in capsys.readouterr().err
    with pytest.raises(OnnxModelError, match="--refine_iters cannot apply to .* decodes as it was exported"):
        onnx.set_decoding(refine_iters=2)
    onnx.set_decoding()  # nothing asked: nothing to refuse


def test_bad_quantization_input(exported, tmp_path, capsys):
    folder, path, _, _ = exported
    export = load_script("export_onnx")
    base = ["--saved_model", str(folder), "--output", str(tmp_path / "q.onnx")]
    assert run(export.main, [*base, "--quantize", "int8"]) == 1
    assert "--quantize int8 needs --calibration_data" in capsys.readouterr().err
    assert run(export.main, [*base, "--calibration_data", "synth"]) == 1
    assert "used by --quantize int8 only" in capsys.readouterr().err
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.png").write_bytes(b"not an image")
    assert run(export.main, [*base, "--quantize", "int8", "--calibration_data", str(junk)]) == 1
    assert "could be decoded" in capsys.readouterr().err
    assert not (tmp_path / "q.onnx").exists()  # nothing written before the calibration data is read
    assert run(export.main, [*base, "--quantize", "int8", "--calibration_data", str(tmp_path / "missing")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert run(export.main, ["--saved_model", str(folder), "--output", str(tmp_path / "q.pt")]) == 1
    assert "--output must end with .onnx" in capsys.readouterr().err
    assert run(export.main, ["--saved_model", str(path), "--output", str(tmp_path / "q.onnx")]) == 1
    assert "already an ONNX export" in capsys.readouterr().err
    config = load_model(path).config
    with pytest.raises(QuantizationError, match="calibration images must be"):
        quantize_onnx(path, tmp_path / "q.onnx", torch.zeros(0, config.input_channel, config.img_h, config.img_w))


def test_an_fp32_export_file_can_be_quantized_directly(exported, tmp_path, capsys):
    _, path, _, _ = exported
    export = load_script("export_onnx")
    out = tmp_path / "direct_int8.onnx"
    assert run(export.main, ["--saved_model", str(path), "--output", str(out), "--quantize", "int8",
                             "--calibration_data", "synth", "--num_calibration_images", "16"]) == 0  # fmt: skip
    assert load_model(out).precision == "int8"
    assert json.loads(sidecar_path(out).read_text())["quantization"]["from"]["file"] == path.name
    with pytest.raises(QuantizationError, match="already int8"):
        quantize_onnx(out, tmp_path / "twice.onnx", load_calibration_images(load_model(path).config, "synth", 4))


# ---- precision that fits the machine -------------------------------------------------------------------------------


def _cpu_support(monkeypatch, *, avx512_bf16: bool, amx: bool) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_amx_fp16_supported", lambda: False)
    monkeypatch.setattr("text_recognition.fastpath._WARNED", set())


def test_bf16_on_a_cpu_without_native_bf16_warns_once(monkeypatch):
    _cpu_support(monkeypatch, avx512_bf16=False, amx=False)
    with pytest.warns(SlowPrecisionWarning, match=r"bf16 on this CPU \(no AVX512-BF16 or AMX\).*22x slower"):
        assert resolve_precision("bf16", "cpu") == "bf16"  # asked for explicitly: kept, with the warning
    with warnings_as_errors():
        assert resolve_precision("bf16", "cpu") == "bf16"  # once per process
    assert "AMX-FP16" in slow_precision_message("fp16", "cpu")
    _cpu_support(monkeypatch, avx512_bf16=True, amx=False)
    assert slow_precision_message("bf16", "cpu") is None


def test_auto_picks_fp32_without_native_bf16_and_bf16_with_amx(monkeypatch):
    ctc, attn = ModelConfig(prediction="CTC"), ModelConfig(prediction="Attn")
    _cpu_support(monkeypatch, avx512_bf16=False, amx=False)
    with warnings_as_errors():
        assert resolve_precision("auto", "cpu", ctc) == "fp32"
    _cpu_support(monkeypatch, avx512_bf16=True, amx=True)
    assert resolve_precision("auto", "cpu", ctc) == "bf16"
    assert resolve_precision("auto", "cpu", attn) == "fp32"  # bf16's accuracy is measured for CTC only
    _cpu_support(monkeypatch, avx512_bf16=True, amx=False)  # AVX512-BF16 alone: 1.8x fp32 (BENCHMARKS.md)
    assert resolve_precision("auto", "cpu", ctc) == "bf16"
    assert resolve_precision(None, "cpu", ctc) == "fp32"
    with pytest.raises(ValueError, match="int8 is the precision of an int8 export"):
        resolve_precision("int8", "cpu", ctc)


def test_recognize_with_auto_and_a_warning_script(monkeypatch, tmp_path, capsys):
    _cpu_support(monkeypatch, avx512_bf16=False, amx=False)
    model = _scaled_model("CTC")
    image = SyntheticWords(seed=1).render(0)[0]
    with warnings_as_errors():
        assert model.recognize(image, precision="auto") == model.recognize(image)
    with pytest.warns(SlowPrecisionWarning):
        model.recognize(image, precision="bf16")


class warnings_as_errors:
    """Within: any warning fails the test (``pytest.warns(None)`` is gone)."""

    def __enter__(self):
        import warnings

        self._context = warnings.catch_warnings()
        self._context.__enter__()
        warnings.simplefilter("error")
        return self

    def __exit__(self, *exc_info):
        return self._context.__exit__(*exc_info)


def test_training_in_bf16_on_a_cpu_without_it_warns(monkeypatch):
    from types import SimpleNamespace

    from text_recognition.training.optim import warn_slow_precision

    accelerator = SimpleNamespace(mixed_precision="bf16", device=torch.device("cpu"), is_main_process=True)
    _cpu_support(monkeypatch, avx512_bf16=False, amx=False)
    with pytest.warns(SlowPrecisionWarning, match="--mixed_precision no when training"):
        warn_slow_precision(accelerator)
    _cpu_support(monkeypatch, avx512_bf16=False, amx=False)
    with warnings_as_errors():  # only the main process says it
        warn_slow_precision(SimpleNamespace(**{**vars(accelerator), "is_main_process": False}))
    _cpu_support(monkeypatch, avx512_bf16=True, amx=True)
    with warnings_as_errors():
        warn_slow_precision(accelerator)


def test_an_exports_results_go_beside_the_models_on_its_card():
    """The card says what produced each result: an int8 file's results do not replace the PyTorch model's."""
    from huggingface_hub import ModelCard

    from text_recognition.hub import card_with_results

    result = {"dataset": "IIIT5k_3000", "num_samples": 3000, "accuracy": 87.45, "norm_ED": 0.96, "protocol": "dtrb"}
    card = card_with_results(ModelCard("---\nlicense: mit\n---\n# m\n"), [result], "m")
    card = card_with_results(card, [{**result, "accuracy": 87.1, "run_by": "onnxruntime int8"}], "m")
    configs = {r.metric_config: r.metric_value for r in card.data.eval_results}
    assert configs == {"dtrb": 87.45, "dtrb; onnxruntime int8": 87.1}
    assert "| IIIT5k_3000 | onnxruntime int8 | 3000 | 87.100 |" in card.text


# ---- PARSeq and ViTSTR (issue 19): strhub's ids in the graph and the sidecar ---------------------------------------


def _strhub_model(head: str) -> TextRecognitionModel:
    """A small ViT model; its head scaled (wide margins) and ``[E]`` given the row of 'g' with a higher bias, so
    that readings end."""
    torch.manual_seed(0)
    config = ModelConfig("None", "ViT", "None", head, img_w=64, embed_dim=32, encoder_depth=1, encoder_heads=2,
                         batch_max_length=10, **({"decoder_heads": 2} if head == "PARSeq" else {}))  # fmt: skip
    model = TextRecognitionModel(config)
    model.init_weights()
    linear = model.Prediction.head
    with torch.no_grad():
        linear.weight.mul_(30.0)
        g = model.tokenizer.char_to_id["g"]
        linear.weight[0], linear.bias[0] = linear.weight[g], linear.bias[g] + 2.0
    return model.eval()


@pytest.mark.parametrize("head", ["PARSeq", "ViTSTR"])
def test_parseq_and_vitstr_exports_are_models(head, tmp_path, capsys):
    """Exported, evaluated, read, searched (ViTSTR) and quantized like the DTRB heads; strhub's ids throughout."""
    model = _strhub_model(head)
    synth = SyntheticWords(seed=5, max_length=8)
    images = [synth.render(i)[0] for i in range(NUM_WORDS)]
    with torch.no_grad():
        logits = model(preprocess(images, model.config))
    readings = model.recognize(images)
    kept = [(image, r.text) for image, r, tie in zip(images, readings, near_tie_rows(logits, eos_id=0))
            if r.text and not tie and len(r.text) <= model.config.batch_max_length]  # fmt: skip
    assert len(kept) >= 5
    images = [image for image, _ in kept]
    write_lmdb([(_encode_png(image), text) for image, text in kept], tmp_path / "data" / "words")
    model.save_pretrained(tmp_path / "model")
    path = export_onnx(model, tmp_path / "model.onnx")
    meta = json.loads(sidecar_path(path).read_text())
    assert meta["special_tokens"] == {"[E]": 0} and meta["tokens"][:2] == ["[E]", "0"]
    assert "cut before the first [E] (id 0)" in meta["decoding"] and meta["sequence_length"] == 11

    reports = tmp_path / "reports"  # not beside the export: its report would be named as its sidecar
    reports.mkdir()
    pytorch, onnx = (_evaluate(saved, tmp_path / "data", reports) for saved in (tmp_path / "model", path))
    assert pytorch["datasets"]["words"]["accuracy"] == 100.0
    for key in ("num_samples", "accuracy", "norm_ED", "mean_confidence"):
        assert onnx["datasets"]["words"][key] == pytest.approx(pytorch["datasets"]["words"][key], rel=1e-5), key
    exported = load_model(path)
    got, expected = exported.recognize(images, batch_size=5), model.recognize(images)
    assert [r.text for r in got] == [r.text for r in expected]
    assert [r.confidence for r in got] == pytest.approx([r.confidence for r in expected], rel=1e-4)
    options = {"beam_width": 3, "allowlist": "abcdefghijklm"}
    if head == "ViTSTR":  # independent slots: the search runs on the graph's logits as on PyTorch's
        got, expected = exported.recognize(images, **options), model.recognize(images, **options)
        assert [r.text for r in got] == [r.text for r in expected]
    else:
        with pytest.raises(OnnxModelError, match="with the PARSeq head needs its decoder step by step"):
            exported.recognize(images, **options)

    int8 = tmp_path / "model_int8.onnx"
    quantize_onnx(path, int8, load_calibration_images(model.config, "synth", 16), calibration_source="synth")
    kept_fp32 = json.loads(sidecar_path(int8).read_text())["quantization"]["fp32_nodes"]
    assert kept_fp32["first_convolution"] == ["/FeatureExtraction/patch_embed/proj/Conv"]
    assert kept_fp32["classifier"][0] == "/Prediction/head/MatMul"
    result = _evaluate(int8, tmp_path / "data", reports)
    assert result["run_by"] == "onnxruntime int8" and result["datasets"]["words"]["num_samples"] == len(kept)
