"""The fast path (``text_recognition.fastpath``): channels_last, bf16/fp16 autocast and a compiled encoder give the
fp32 path's predictions within stated tolerances; fp16 training with a GradScaler on the CPU, resumed exactly.

Tolerances, relative to the largest |logit| of the fp32 output (``scale``):
- channels_last and the compiled encoder (fp32): logits within 1e-4 * scale;
- bf16 and fp16 autocast: logits within 0.15 * scale (bf16 keeps 8 bits of mantissa).
In both, the prediction is the same at every frame / step whose fp32 top-1 margin is above 2 x the tolerance; below
it, it may change: these small models are untrained, many of their classes are near ties, and which way a rounding
swaps them depends on the CPU's kernels (AVX2, AVX-512, AMX; bf16 is native on AMX and avx512_bf16, emulated on
AVX2), so no share of agreeing predictions is asserted. Attention is compared under teacher forcing with the fp32
greedy ids, so one swapped step cannot change the steps after it; the compiled encoder's own greedy decoding may
leave the eager path only at a near-tie (``conftest.assert_branches_at_near_ties``). No timing is asserted.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import assert_branches_at_near_ties
from PIL import Image
from test_scripts import load_script
from test_training import TINY_CTC, base_args, data, final_weights, launch, run_files  # noqa: F401

from text_recognition import ModelConfig, TextRecognitionModel
from text_recognition.cli import run
from text_recognition.fastpath import (
    autocast,
    check_precision,
    compile_encoder,
    is_channels_last,
    set_channels_last,
    uncompiled,
)

LOW_PRECISION_TOLERANCE = 0.15
FP32_TOLERANCE = 1e-4
SMALL = {"output_channel": 32, "hidden_size": 32, "num_fiducial": 6}


def small_model(stages: str) -> TextRecognitionModel:
    torch.manual_seed(0)
    model = TextRecognitionModel(ModelConfig.from_stage_string(stages, **SMALL))
    model.init_weights()
    return model.eval()


def logits_of(model: TextRecognitionModel, images: torch.Tensor, text: torch.Tensor | None) -> torch.Tensor:
    with torch.no_grad():
        return model(images, text).float()


def assert_same_predictions(got: torch.Tensor, reference: torch.Tensor, tolerance: float, what: str) -> None:
    scale = reference.abs().max()
    assert (got - reference).abs().max() <= tolerance * scale, f"{what}: logits beyond {tolerance} * scale"
    top2 = reference.topk(2, dim=-1).values
    clear = (top2[..., 0] - top2[..., 1]) > 2 * tolerance * scale
    assert torch.equal(got.argmax(-1)[clear], reference.argmax(-1)[clear]), f"{what}: a clear prediction changed"


@pytest.fixture(params=["None-VGG-BiLSTM-CTC", "TPS-ResNet-BiLSTM-Attn", "None-RCNN-None-Attn"])
def model_and_batch(request):
    model = small_model(request.param)
    images = torch.rand(12, 1, 32, 100, generator=torch.Generator().manual_seed(1)) * 2 - 1
    assert is_channels_last(model) == (model.config.transformation == "None")  # TPS: contiguous by default
    set_channels_last(model)  # every case below runs the channels_last path
    text = None
    if model.config.prediction == "Attn":  # teacher forcing with the fp32 greedy ids: no feedback of a swapped step
        greedy = logits_of(model, images, None).argmax(-1)
        text = torch.cat([torch.zeros_like(greedy[:, :1]), greedy], dim=1)
    return model, images, text


def test_models_are_built_channels_last_with_the_contiguous_values(model_and_batch):
    model, images, text = model_and_batch
    reference = logits_of(model, images, text)
    set_channels_last(model, False)
    assert not is_channels_last(model)
    assert_same_predictions(logits_of(model, images, text), reference, FP32_TOLERANCE, "contiguous")
    set_channels_last(model)
    assert is_channels_last(model)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_inference_gives_the_fp32_predictions(model_and_batch, precision):
    model, images, text = model_and_batch
    reference = logits_of(model, images, text)
    with autocast("cpu", precision):
        got = logits_of(model, images, text)
    assert_same_predictions(got, reference, LOW_PRECISION_TOLERANCE, precision)


@pytest.mark.slow
def test_compiled_encoder_gives_the_fp32_predictions(model_and_batch):
    model, images, text = model_and_batch
    reference = logits_of(model, images, text)
    eager_greedy = logits_of(model, images, None) if text is not None else None
    compile_encoder(model)
    try:
        assert_same_predictions(logits_of(model, images, text), reference, FP32_TOLERANCE, "compiled")
        if text is not None:  # greedy decoding runs the eager step loop over the compiled encoder
            # Inductor's kernels depend on the vector width: a near-tie may flip, and attention decodes on from there
            compiled_ids = logits_of(model, images, None).argmax(-1)
            assert_branches_at_near_ties(eager_greedy, compiled_ids, 2 * FP32_TOLERANCE, "compiled greedy decoding")
    finally:
        uncompiled(model)


def test_recognize_precision_and_compile_options():
    model = small_model("None-VGG-BiLSTM-CTC")
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (30 + i, 90 + 3 * i), dtype=np.uint8)) for i in range(6)]
    reference = model.recognize(images, batch_size=4)
    bf16 = model.recognize(images, batch_size=4, precision="bf16")
    assert len(bf16) == len(reference) and all(0.0 <= r.confidence <= 1.0 for r in bf16)
    assert model.recognize(images, batch_size=4, precision="no") == reference  # accelerate's spelling of fp32
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16, fp16"):
        model.recognize(images, precision="fp8")
    with pytest.raises(ValueError, match="int8 is the precision of an int8 export"):
        model.recognize(images, precision="int8")
    assert check_precision("bfloat16") == "bf16"


def test_channels_last_weights_save_and_load(tmp_path):
    model = small_model("TPS-ResNet-BiLSTM-Attn")
    model.save_pretrained(tmp_path / "m")
    loaded = TextRecognitionModel.from_pretrained(tmp_path / "m")
    assert not is_channels_last(loaded)  # TPS: contiguous by default; the values are what counts
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_scripts_take_precision_and_reject_a_bad_one(tmp_path, monkeypatch, capsys):
    from text_recognition.data import SyntheticWords

    monkeypatch.chdir(tmp_path)
    model = small_model("None-VGG-BiLSTM-CTC")
    model.save_pretrained(tmp_path / "m")
    SyntheticWords(seed=3).save_dataset(tmp_path / "eval" / "synth", 10)
    test = load_script("test")
    argv = ["--saved_model", str(tmp_path / "m"), "--eval_data", str(tmp_path / "eval"), "--workers", "0",
            "--timing_samples", "2", "--output_json", "r.json"]  # fmt: skip
    assert run(test.main, [*argv, "--precision", "bf16"]) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["precision"] == "bf16" and result["compiled"] is False
    assert "Precision: bf16" in capsys.readouterr().out
    assert run(test.main, [*argv, "--mixed_precision", "no"]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["precision"] == "fp32"
    with pytest.raises(SystemExit):
        run(test.main, [*argv, "--precision", "fp8"])
    assert "invalid precision value: 'fp8'" in capsys.readouterr().err

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((32, 100), 40 * i, dtype=np.uint8)).save(folder / f"w{i}.png")
    demo = load_script("demo")
    assert run(demo.main, ["--image_folder", str(folder), "--saved_model", str(tmp_path / "m"), "--workers", "0",
                           "--precision", "bf16", "--output", "out.json"]) == 0  # fmt: skip
    assert len(json.loads((tmp_path / "out.json").read_text())) == 3


def test_validation_loader_and_its_workers_persist():
    from text_recognition.data import SyntheticWords
    from text_recognition.data.collate import TextCollator
    from text_recognition.data.loaders import TextData
    from text_recognition.data.mixing import MixedSources
    from text_recognition.evaluation import _eval_loader, predict_records

    model = small_model("None-VGG-BiLSTM-CTC")
    dataset = SyntheticWords(seed=4).to_dataset(12)
    text_data = TextData(MixedSources([("synth", dataset, len(dataset), None)]), TextCollator(model.config), log="")
    first = _eval_loader(text_data, list(range(12)), 5, 1, persistent=True)
    assert _eval_loader(text_data, list(range(12)), 5, 1, persistent=True) is first
    assert _eval_loader(text_data, list(range(12)), 5, 0, persistent=True) is not first  # no workers: nothing to keep
    for _ in range(2):
        records, _, _ = predict_records(model, text_data, list(range(12)), 5, device=torch.device("cpu"), num_workers=1,
                                        persistent=True)  # fmt: skip
        assert len(records) == 12


@pytest.mark.slow
def test_fp16_training_on_cpu_with_a_grad_scaler_resumes_exactly(data, tmp_path):  # noqa: F811
    """``--mixed_precision fp16`` on the CPU runs fp16 autocast with a GradScaler (clip_grad_norm_ unscales under
    it); its state is in every checkpoint and a resumed run ends with the uninterrupted run's weights and scaler."""
    common = [*TINY_CTC, "--num_iter", "6", "--valInterval", "6", "--checkpointing_steps", "3", "--adam",
              "--lr", "1e-3"]  # fmt: skip
    fp16 = ["--mixed_precision", "fp16"]
    straight = launch(base_args(data, tmp_path / "a", *common), tmp_path, launch_args=fp16)
    assert straight.returncode == 0, straight.stdout + straight.stderr
    assert "mixed precision: fp16" in straight.stdout
    checkpoint = tmp_path / "a" / "run" / "checkpoints" / "checkpoint-3"
    assert (checkpoint / "scaler.pt").is_file()
    resumed = launch(base_args(data, tmp_path / "b", *common, "--resume_from_checkpoint", str(checkpoint)),
                     tmp_path, launch_args=fp16)  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    a, b = final_weights(tmp_path / "a", 6), final_weights(tmp_path / "b", 6)
    assert all(torch.equal(a[k], b[k]) for k in a)
    scalers = [torch.load(tmp_path / r / "run" / "checkpoints" / "checkpoint-6" / "scaler.pt", weights_only=True)
               for r in ("a", "b")]  # fmt: skip
    assert scalers[0] == scalers[1]
    fresh = torch.amp.GradScaler("cpu").state_dict()
    assert scalers[0]["_growth_tracker"] != fresh.get("_growth_tracker", 0)  # it counted steps: a real scaler
    assert all(np.isfinite(v) for v in [run_files(tmp_path / "a")["final_valid_loss"]])
