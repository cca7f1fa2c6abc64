"""ONNX export (text_recognition/export.py and scripts/export_onnx.py): onnxruntime against PyTorch."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dtrb_reference import dtrb_manifest, random_dtrb_state_dict
from PIL import Image
from test_scripts import CRNN_FLAGS, load_script

from text_recognition import ModelConfig, TextRecognitionModel
from text_recognition.cli import run
from text_recognition.data.synth import SyntheticWords
from text_recognition.decoding import DecodingOptions
from text_recognition.export import (
    NearTie,
    OnnxExportError,
    OnnxMismatchError,
    OnnxUnavailableError,
    compare_logits,
    describe_difference,
    export_onnx,
    load_check_images,
    sidecar_path,
    verify_onnx,
)
from text_recognition.stages.feature_extraction import VGG_FeatureExtractor
from text_recognition.stages.transformation import TPS_SpatialTransformerNetwork
from text_recognition.transforms import preprocess

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

ATOL = 1e-4


def make_model(stages: str, seed: int = 0, **overrides) -> TextRecognitionModel:
    """A small model with DTRB's initialisation; TPS's fiducial regressor gets noise so the warp is input-dependent."""
    torch.manual_seed(seed)
    sizes = {"output_channel": 32, "hidden_size": 32, "num_fiducial": 6, **overrides}
    if "ViT" in stages:
        sizes = {k: v for k, v in sizes.items() if k not in ("output_channel", "hidden_size", "num_fiducial")}
    model = TextRecognitionModel(ModelConfig.from_stage_string(stages, **sizes))
    model.init_weights()
    if model.config.transformation == "TPS":
        with torch.no_grad():
            model.Transformation.LocalizationNetwork.localization_fc2.weight.normal_(0.0, 0.01)
    return model.eval()


@pytest.fixture(scope="module")
def word_images() -> list[Image.Image]:
    synth = SyntheticWords(seed=0)
    return [synth.render(i)[0] for i in range(3)]


def run_onnxruntime(path, pixel_values: torch.Tensor) -> torch.Tensor:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(["logits"], {"pixel_values": pixel_values.numpy()})[0])


def perturb_when_exporting(monkeypatch, stage_class: type, delta: float = 0.05) -> None:
    """Simulate an op that exports wrongly: the stage's output is shifted inside ONNX graphs only."""
    original = stage_class.forward

    def forward(self, x):
        out = original(self, x)
        return out + delta if torch.onnx.is_in_onnx_export() else out

    monkeypatch.setattr(stage_class, "forward", forward)


def logit_tolerance(logits: torch.Tensor) -> float:
    """ATOL relative to the logits' size (at least 1), as verify_onnx's stage check measures rounding.

    TPS's grid differs from PyTorch's by a few ulps, and RCNN without a BiLSTM after it amplifies that to up to 2e-4
    on logits as large as 30 (measured over seeds 0-9 with AVX2 and AVX-512 kernels): rounding that grows with the
    values, under 2.5e-5 of their size everywhere, and below ATOL itself for the other models.
    """
    return ATOL * max(1.0, float(logits.abs().max()))


# Seed 0 for every model: the check must hold for any initialisation on any CPU (AVX2, AVX-512, AMX kernels round
# differently), not for a seed picked to pass on one. Greedy attention decoding that takes another branch at a
# near-tie is compared on onnxruntime's own path (export_parity); the images where it did may read differently.
#: A small ViT (64x32, 4x8 patches, one block) for the heads beyond DTRB's grid.
SMALL_VIT = {"img_w": 64, "embed_dim": 32, "encoder_depth": 1, "encoder_heads": 2, "batch_max_length": 8}


@pytest.mark.parametrize(
    "stages",
    [
        "None-VGG-BiLSTM-CTC",
        pytest.param("TPS-ResNet-BiLSTM-Attn", marks=pytest.mark.slow),
        pytest.param("TPS-RCNN-None-CTC", marks=pytest.mark.slow),
        "None-VGG-None-Attn",
        "None-ViT-None-PARSeq",  # autoregressive, one refinement pass (strhub's default)
        "None-ViT-None-ViTSTR",
    ],
)
def test_onnx_round_trip(tmp_path, word_images, stages):
    model = make_model(stages, **(SMALL_VIT if "ViT" in stages else {}))
    if model.config.prediction == "PARSeq":
        with torch.no_grad():  # an untrained head's nearly flat logits: wider margins keep its loop off near-ties
            model.Prediction.head.weight.mul_(20)
    path = export_onnx(model, tmp_path / f"{stages}.onnx")
    assert path == tmp_path / f"{stages}.onnx" and sidecar_path(path).is_file()
    graph = onnx.load(str(path))
    assert [i.name for i in graph.graph.input] == ["pixel_values"]
    assert [o.name for o in graph.graph.output] == ["logits"]
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert max(entry.version for entry in graph.opset_import if entry.domain in ("", "ai.onnx")) == 17

    pixel_values = preprocess(word_images, model.config)
    with torch.no_grad():
        atol = logit_tolerance(model(pixel_values))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (pixel_values[:1], pixel_values):  # one graph, batch 1 and 3
        onnx_logits = session.run(["logits"], {"pixel_values": batch.numpy()})[0]
        parity = compare_logits(model, batch, onnx_logits, atol)
        where = describe_difference(parity, model.tokenizer.tokens, model.config.prediction)
        assert parity.max_abs_diff <= atol, where
    assert all(tie.margin <= 2 * atol for tie in parity.near_ties)

    # Texts agree but where greedy decoding branched at a near-tie; each confidence is a product of at most T
    # softmax maxima, each of which a logit error of at most atol moves by a factor of at most exp(2 * atol).
    decoded = model.tokenizer.decode_with_confidence(torch.from_numpy(onnx_logits))
    expected = model.recognize(word_images)
    tied = {tie.image for tie in parity.near_ties}
    steps = onnx_logits.shape[1]
    for image, ((text, confidence), reading) in enumerate(zip(decoded, expected, strict=True)):
        if image not in tied:
            assert text == reading.text
            assert confidence == pytest.approx(reading.confidence, rel=math.expm1(2 * steps * atol))

    report = verify_onnx(model, path, pixel_values, atol=atol)
    assert report["max_abs_diff"] <= atol and report["num_images"] == 3
    ties = [NearTie(**tie) for tie in report["near_ties"]]
    assert [(t.image, t.step, t.onnx_id) for t in ties] == [(t.image, t.step, t.onnx_id) for t in parity.near_ties]
    assert report["texts_match"] or report["near_ties"]
    assert report["output_shape"] == list(onnx_logits.shape)


def test_sidecar_describes_decoding(tmp_path):
    model = make_model("None-VGG-None-Attn", character="abc01", batch_max_length=7, pad=True)
    path = export_onnx(model, tmp_path / "nested" / "attn.onnx")
    meta = json.loads((tmp_path / "nested" / "attn.onnx.json").read_text())
    assert meta["stage_string"] == "None-VGG-None-Attn"
    assert meta["prediction"] == "Attn"
    assert meta["character"] == "abc01"
    assert meta["special_tokens"] == {"[GO]": 0, "[s]": 1}
    assert meta["tokens"] == ["[GO]", "[s]", "a", "b", "c", "0", "1"] == model.tokenizer.tokens
    assert meta["num_class"] == 7
    assert (meta["img_h"], meta["img_w"], meta["input_channel"], meta["pad"]) == (32, 100, 1, True)
    assert (meta["batch_max_length"], meta["sequence_length"]) == (7, 8)
    assert (meta["input_name"], meta["output_name"], meta["opset"]) == ("pixel_values", "logits", 17)
    assert ModelConfig.from_dict(meta["model_config"]) == model.config
    assert run_onnxruntime(path, torch.zeros(2, 1, 32, 100)).shape == (2, 8, 7)

    ctc = make_model("None-VGG-None-CTC")
    meta = json.loads(sidecar_path(export_onnx(ctc, tmp_path / "ctc.onnx")).read_text())
    assert meta["special_tokens"] == {"[CTCblank]": 0} and meta["tokens"][:2] == ["[CTCblank]", "0"]
    assert (meta["prediction"], meta["sequence_length"], meta["num_class"]) == ("CTC", 24, 37)
    assert meta["temperature"] == 1.0 and meta["decoding_options"]["beam_width"] == 1


def test_sidecar_records_decoding_options_and_temperature(tmp_path):
    model = make_model("None-VGG-None-CTC")
    model.config.temperature = 1.7
    path = export_onnx(model, tmp_path / "c.onnx",
                       decoding=DecodingOptions(beam_width=5, allowlist="0123", lexicon=("12", "3"), pattern=r"\d+"))
    meta = json.loads(sidecar_path(path).read_text())
    assert meta["temperature"] == 1.7 and "softmax(logits / temperature)" in meta["confidence"]
    assert meta["decoding_options"] == {"beam_width": 5, "allowlist": "0123", "blocklist": None,
                                        "lexicon": ["12", "3"], "pattern": r"\d+", "min_confidence": None}
    with pytest.raises(ValueError, match="outside the model's charset"):
        export_onnx(model, tmp_path / "d.onnx", decoding=DecodingOptions(allowlist="€"))
    assert not (tmp_path / "d.onnx").exists()


def test_fixed_batch_and_model_left_unchanged(tmp_path):
    model = make_model("None-VGG-BiLSTM-CTC").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    path = export_onnx(model, tmp_path / "fixed.onnx", batch_size_dynamic=False)
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    dim = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_value == 1 and not dim.dim_param
    assert json.loads(sidecar_path(path).read_text())["batch_size_dynamic"] is False
    assert verify_onnx(model, path, torch.rand(1, 1, 32, 100) * 2 - 1)["max_abs_diff"] <= ATOL


def test_mismatch_names_the_feature_extraction(tmp_path, monkeypatch):
    model = make_model("None-VGG-BiLSTM-CTC")
    perturb_when_exporting(monkeypatch, VGG_FeatureExtractor)
    path = export_onnx(model, tmp_path / "broken.onnx")
    with pytest.raises(OnnxMismatchError, match=r"first in stage FeatureExtraction \(VGG\)") as info:
        verify_onnx(model, path, load_check_images(model.config, count=2))
    message = str(info.value)
    assert message.startswith(f"ONNX output of {str(path)!r} differs from PyTorch by ")
    assert "(tolerance 1e-4), first at image " in message and ", column 0, class " in message
    assert "differs by 5e-2" in message and "near-tie" not in message
    assert info.value.stage == "FeatureExtraction" and info.value.max_abs_diff > ATOL
    assert isinstance(info.value, ValueError)


def test_mismatch_in_an_attention_model_is_not_taken_for_a_near_tie(tmp_path, monkeypatch):
    model = make_model("None-VGG-None-Attn")
    perturb_when_exporting(monkeypatch, VGG_FeatureExtractor)
    path = export_onnx(model, tmp_path / "broken.onnx")
    with pytest.raises(OnnxMismatchError, match=r"first in stage FeatureExtraction \(VGG\)") as info:
        verify_onnx(model, path, load_check_images(model.config, count=2))
    assert ", decoding step 0, class " in str(info.value) and "near-tie" not in str(info.value)
    assert info.value.stage == "FeatureExtraction"


TIE = 3e-5  # how far PyTorch's top logit leads its twin: well inside ATOL, far above float32 rounding (~1e-7)


class NudgedGenerator(nn.Linear):
    """The attention generator with one class's logit raised by ``nudge`` inside ONNX graphs only."""

    def __init__(self, generator: nn.Linear, class_id: int, nudge: float) -> None:
        super().__init__(generator.in_features, generator.out_features)
        self.load_state_dict(generator.state_dict())
        self.class_id, self.nudge = class_id, nudge

    def forward(self, x):
        out = super().forward(x)
        if torch.onnx.is_in_onnx_export():
            out = out + self.nudge * F.one_hot(torch.tensor(self.class_id), self.out_features).to(out.dtype)
        return out


#: The decoders that feed their argmax back: DTRB's attention, and PARSeq decoding autoregressively without
#: refinement (its output steps are then the path the loop fed itself).
FEEDBACK_DECODERS = [("None-VGG-None-Attn", {}), ("None-ViT-None-PARSeq", {**SMALL_VIT, "refine_iters": 0})]


def near_tie_model(nudge: float, stages: str = "None-VGG-None-Attn", **overrides
                   ) -> tuple[TextRecognitionModel, torch.Tensor, int, int]:  # fmt: skip
    """A model whose step 0 on image 0 is a near-tie that its ONNX export resolves the other way.

    Class ``twin`` gets the classifier row of PyTorch's choice ``top`` there (the attention generator, PARSeq's
    head), with a bias lower by TIE: wherever ``top`` wins in PyTorch, ``twin`` is TIE behind, and the graph, which
    adds ``nudge`` > TIE to ``twin``'s logit, picks ``twin`` instead and feeds it to the next step. Returns (model,
    images, top, twin).
    """
    model = make_model(stages, **overrides)
    name = "generator" if model.config.prediction == "Attn" else "head"
    images = load_check_images(model.config, count=2)
    with torch.no_grad():
        classifier = getattr(model.Prediction, name)
        if name == "head":
            classifier.weight.mul_(20)  # PARSeq's nearly uniform start: wide margins, so only the planted tie is near
        top = int(model(images)[0, 0].argmax())
        twin = 2 if top != 2 else 3
        classifier.weight[twin] = classifier.weight[top]
        classifier.bias[twin] = classifier.bias[top] - TIE
    setattr(model.Prediction, name, NudgedGenerator(classifier, twin, nudge))
    return model, images, top, twin


@pytest.mark.parametrize(("stages", "overrides"), FEEDBACK_DECODERS)
def test_a_greedy_branch_at_a_near_tie_is_accepted(tmp_path, stages, overrides):
    model, images, top, twin = near_tie_model(2 * TIE, stages, **overrides)
    path = export_onnx(model, tmp_path / "tie.onnx")
    onnx_logits = run_onnxruntime(path, images)
    with torch.no_grad():
        greedy_diff = float((onnx_logits - model(images)).abs().max())
    assert greedy_diff > 100 * ATOL  # greedy against greedy: the paths part after step 0

    report = verify_onnx(model, path, images, atol=ATOL)
    rounding = 1e-6 if stages.endswith("Attn") else 5e-6  # PARSeq's head is scaled up: larger logits, larger ulps
    assert report["max_abs_diff"] <= 2 * TIE + rounding  # the nudge itself, plus rounding
    ties = [NearTie(**tie) for tie in report["near_ties"]]
    assert (ties[0].image, ties[0].step) == (0, 0) and not report["texts_match"]
    assert all((t.pytorch_id, t.onnx_id) == (top, twin) and t.margin == pytest.approx(TIE, abs=1e-6) for t in ties)


@pytest.mark.parametrize(("stages", "overrides"), FEEDBACK_DECODERS)
def test_a_greedy_branch_beyond_rounding_is_rejected(tmp_path, stages, overrides):
    model, images, top, twin = near_tie_model(100 * TIE, stages, **overrides)  # 3e-3: an export error, if a small one
    path = export_onnx(model, tmp_path / "wrong.onnx")
    head = model.config.prediction
    with pytest.raises(OnnxMismatchError, match=rf"first in stage Prediction \({head}\)") as info:
        verify_onnx(model, path, images, atol=ATOL)
    message = str(info.value)
    token = model.tokenizer.tokens[twin]
    assert f", decoding step 0, class {token!r} (id {twin}): onnxruntime " in message and "near-tie" not in message
    assert info.value.max_abs_diff == pytest.approx(100 * TIE, rel=0.01)


def test_compare_logits_tells_a_ctc_near_tie_from_a_real_difference():
    model = make_model("None-VGG-None-CTC")
    images = load_check_images(model.config, count=2)
    with torch.no_grad():
        top = int(model(images)[1, 5].argmax())
        twin = 2 if top != 2 else 3
        head = model.Prediction  # a near-tie of top and twin wherever top wins, as in near_tie_model
        head.weight[twin], head.bias[twin] = head.weight[top], head.bias[top] - TIE
        onnx_logits = model(images)
    onnx_logits[1, 5, twin] += 2 * TIE  # within ATOL: column 5 of image 1 now reads twin
    onnx_logits[0, 3, 7] += 100 * TIE  # beyond it
    parity = compare_logits(model, images, onnx_logits.numpy(), ATOL)
    assert parity.max_abs_diff == pytest.approx(100 * TIE, rel=1e-3)
    first = parity.first_difference
    assert (first.image, first.step, first.class_id) == (0, 3, 7)
    assert [(t.image, t.step, t.pytorch_id, t.onnx_id) for t in parity.near_ties] == [(1, 5, top, twin)]
    assert parity.near_ties[0].margin == pytest.approx(TIE, abs=1e-6)
    assert describe_difference(parity, model.tokenizer.tokens, "CTC").startswith(
        f"first at image 0, column 3, class {model.tokenizer.tokens[7]!r} (id 7): onnxruntime "
    )


@pytest.mark.slow
def test_mismatch_names_tps(tmp_path, monkeypatch):
    model = make_model("TPS-VGG-None-CTC")
    perturb_when_exporting(monkeypatch, TPS_SpatialTransformerNetwork)
    path = export_onnx(model, tmp_path / "broken.onnx")
    with pytest.raises(OnnxMismatchError, match=r"first in stage Transformation \(TPS\): .*Suspect TPS's grid_sample"):
        verify_onnx(model, path, load_check_images(model.config, count=2))


def test_mismatch_from_other_weights(tmp_path):
    path = export_onnx(make_model("None-VGG-None-CTC", seed=1), tmp_path / "other.onnx")
    model = make_model("None-VGG-None-CTC", seed=2)
    with pytest.raises(OnnxMismatchError, match="exported from another model or other weights") as info:
        verify_onnx(model, path, load_check_images(model.config, count=2))
    assert info.value.stage is None


def test_export_failure_names_the_stage(tmp_path, monkeypatch):
    model = make_model("None-VGG-None-Attn")
    prediction = type(model.Prediction)

    def forward(self, *args, **kwargs):
        raise RuntimeError("unsupported op in the decoder")

    monkeypatch.setattr(prediction, "forward", forward)
    with pytest.raises(OnnxExportError, match=r"failed in stage Prediction \(Attn\): RuntimeError: unsupported op"):
        export_onnx(model, tmp_path / "x.onnx")


def test_bad_arguments(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="TPS models need ONNX opset >= 16"):
        export_onnx(make_model("TPS-VGG-None-CTC"), tmp_path / "x.onnx", opset=15)
    model = make_model("None-VGG-None-CTC")
    path = export_onnx(model, tmp_path / "ok.onnx", opset=13)
    assert verify_onnx(model, path, torch.zeros(1, 1, 32, 100))["max_abs_diff"] <= ATOL
    with pytest.raises(ValueError, match=r"needs preprocessed images \[B, 1, 32, 100\]"):
        verify_onnx(model, path, torch.zeros(1, 3, 32, 100))
    with pytest.raises(FileNotFoundError, match="No ONNX file"):
        verify_onnx(model, tmp_path / "missing.onnx", torch.zeros(1, 1, 32, 100))
    (tmp_path / "garbage.onnx").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="onnxruntime cannot run"):
        verify_onnx(model, tmp_path / "garbage.onnx", torch.zeros(1, 1, 32, 100))

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    with pytest.raises(OnnxUnavailableError, match=r"pip install 'text_recognition\[onnx\]'") as info:
        verify_onnx(model, path, torch.zeros(1, 1, 32, 100))
    assert isinstance(info.value, ImportError) and isinstance(info.value, ValueError)
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(OnnxUnavailableError, match="needs the onnx package"):
        export_onnx(model, tmp_path / "y.onnx")


# ---- scripts/export_onnx.py ---------------------------------------------------------------------------------


def test_script_on_a_model_folder(tmp_path, capsys):
    make_model("None-VGG-None-Attn").save_pretrained(tmp_path / "model")
    script = load_script("export_onnx")
    out = tmp_path / "out" / "model.onnx"
    argv = ["--saved_model", str(tmp_path / "model"), "--output", str(out), "--num_check_images", "2"]
    assert run(script.main, argv) == 0
    stdout = capsys.readouterr().out
    assert f"to {out}" in stdout and "on 2 images: max abs diff" in stdout and "greedy texts identical" in stdout
    assert out.is_file() and sidecar_path(out).is_file()


def test_script_exports_parseq_in_the_mode_asked(tmp_path, capsys):
    """--decode_ar / --refine_iters set the mode the graph holds (checked against PyTorch in that mode); an export
    given as --saved_model refuses a mode of its own."""
    make_model("None-ViT-None-PARSeq", **SMALL_VIT).save_pretrained(tmp_path / "model")
    script = load_script("export_onnx")
    out = tmp_path / "nar.onnx"
    argv = ["--saved_model", str(tmp_path / "model"), "--output", str(out), "--num_check_images", "2",
            "--decode_ar", "false", "--refine_iters", "2"]  # fmt: skip
    assert run(script.main, argv) == 0
    meta = json.loads(sidecar_path(out).read_text())
    assert (meta["model_config"]["decode_ar"], meta["model_config"]["refine_iters"]) == (False, 2)
    heads = [n.name for n in onnx.load(str(out)).graph.node if n.name.startswith("/Prediction/head")]
    assert len({name.split("/")[2] for name in heads}) == 3  # one pass all at once, two refinements: no loop
    assert "greedy texts identical" in capsys.readouterr().out
    argv = ["--saved_model", str(out), "--output", str(tmp_path / "again.onnx"), "--decode_ar", "true"]
    assert run(script.main, argv) == 1
    assert "--decode_ar cannot apply to" in capsys.readouterr().err


def test_script_on_a_dtrb_checkpoint_with_check_images(tmp_path, capsys):
    pth = tmp_path / "None-VGG-BiLSTM-CTC.pth"
    state = random_dtrb_state_dict(
        dtrb_manifest("None", "VGG", "BiLSTM", "CTC", num_class=37, output_channel=64, hidden_size=32), seed=5
    )
    torch.save({"module." + k: v for k, v in state.items()}, pth)
    folder = tmp_path / "images"
    SyntheticWords(seed=3).write_folder(folder, 3, progress=False)
    script = load_script("export_onnx")
    out = tmp_path / "crnn.onnx"
    argv = ["--saved_model", str(pth), "--output", str(out), "--check_images", str(folder), *CRNN_FLAGS]
    assert run(script.main, argv) == 0
    assert "on 3 images: max abs diff" in capsys.readouterr().out

    model = TextRecognitionModel.from_dtrb_checkpoint(pth, ModelConfig.from_stage_string(
        "None-VGG-BiLSTM-CTC", output_channel=64, hidden_size=32))  # fmt: skip
    pixel_values = load_check_images(model.config, folder)
    with torch.no_grad():
        torch.testing.assert_close(run_onnxruntime(out, pixel_values), model(pixel_values), rtol=0, atol=ATOL)

    # A .pth without its flags, and an empty image folder, are one-line errors.
    assert run(script.main, ["--saved_model", str(pth), "--output", str(out)]) == 1
    assert "is a file, read as a DTRB checkpoint" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    argv = ["--saved_model", str(pth), "--output", str(out), "--check_images", str(tmp_path / "empty"), *CRNN_FLAGS]
    assert run(script.main, argv) == 1
    assert "No .jpg/.jpeg/.png images under" in capsys.readouterr().err


def test_script_bad_atol_and_undecodable_check_images(tmp_path, capsys):
    """Issue 21 case 13: --atol -1 was accepted and the failed check blamed on the CNN; an undecodable image in
    --check_images aborted the export where demo.py skips it."""
    make_model("None-VGG-None-CTC").save_pretrained(tmp_path / "model")
    script = load_script("export_onnx")
    out = tmp_path / "model.onnx"
    for atol in ("-1", "0", "nan"):
        assert run(script.main, ["--saved_model", str(tmp_path / "model"), "--output", str(out), "--atol", atol]) == 1
        assert "--atol must be a positive number" in capsys.readouterr().err and not out.exists()
    folder = tmp_path / "images"
    SyntheticWords(seed=3).write_folder(folder, 2, progress=False)
    (folder / "images" / "a_broken.png").write_bytes(b"not a png")
    argv = ["--saved_model", str(tmp_path / "model"), "--output", str(out), "--check_images", str(folder)]
    assert run(script.main, argv) == 0
    captured = capsys.readouterr()
    assert "on 2 images: max abs diff" in captured.out
    assert "skipped (cannot be decoded): " in captured.err and "a_broken.png" in captured.err
    for path in (folder / "images").glob("word_*"):
        path.write_bytes(b"garbage")
    assert run(script.main, argv) == 1
    assert "None of the 3 images under" in capsys.readouterr().err


def test_script_failed_check_exits_1_with_the_stage(tmp_path, capsys, monkeypatch):
    make_model("None-VGG-BiLSTM-CTC").save_pretrained(tmp_path / "model")
    perturb_when_exporting(monkeypatch, VGG_FeatureExtractor)
    script = load_script("export_onnx")
    argv = ["--saved_model", str(tmp_path / "model"), "--output", str(tmp_path / "m.onnx"), "--num_check_images", "2"]
    assert run(script.main, argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ONNX output of") and "first in stage FeatureExtraction (VGG)" in err
    assert "Traceback" not in err


def test_script_lists_a_near_tie(tmp_path, capsys, monkeypatch):
    model, _, top, twin = near_tie_model(nudge=2 * TIE)
    script = load_script("export_onnx")
    monkeypatch.setattr(script, "load_model", lambda *args: model)
    argv = ["--saved_model", "near-tie", "--output", str(tmp_path / "t.onnx"), "--num_check_images", "2"]
    assert run(script.main, argv) == 0
    stdout = capsys.readouterr().out
    tokens = model.tokenizer.tokens
    assert "greedy texts DIFFERENT (at a near-tie, listed below)" in stdout
    assert f"image 0 step 0: PyTorch chose {tokens[top]!r}, onnxruntime {tokens[twin]!r}, 3.0e-05 apart" in stdout
