"""Parity of an ONNX export with PyTorch: telling float32 rounding from an export that computes something else.

onnxruntime and PyTorch round differently, and each rounds differently from one CPU to another (AVX2, AVX-512,
AMX kernels), so every output moves by a little. For CTC, and for every stage before the prediction head, that is
all that happens and outputs are compared element by element. The attention decoder feeds each step's argmax back
as the next step's input (unrolled in the graph): where a step's two top logits are closer than the rounding, the
two runtimes can pick different symbols, and from there on they decode different paths. A greedy-against-greedy
comparison then finds differences of order 0.1 in an export that is right.

The rule (``compare_logits``), for onnxruntime's logits [B, T, C] against PyTorch's:

1. For each image, the *branch step* is the first step where onnxruntime's argmax and PyTorch's greedy argmax
   differ (none if they never do).
2. The reference is PyTorch's greedy logits up to and including the branch step (both runtimes fed the same symbols
   so far), and after it, for attention, PyTorch's decoder teacher-forced with ``[GO]`` and onnxruntime's own argmax
   of each previous step: the path the ONNX graph fed itself; for PARSeq decoding autoregressively without
   refinement, its decoder on that path (``PARSeq.forced``). CTC and ViTSTR feed nothing back, and after PARSeq's
   refinement the output is not the path the loop fed itself: their reference is the greedy logits throughout.
3. The export agrees when every logit is within ``atol`` of that reference. Since the branch step is compared on the
   common path, a branch passes only where PyTorch's two logits there (its symbol's and onnxruntime's) are within
   ``2 * atol``: a near-tie that rounding may flip. Each is reported as a ``NearTie``; anything else that differs is
   reported as the first (image, step, class) beyond ``atol``.

``load_check_images`` gives the images such a check runs on (a folder of word images, or rendered words).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from .config import ModelConfig
from .model import TextRecognitionModel
from .onnx_model import INSTALL_HINT, OnnxUnavailableError, _import_onnxruntime  # noqa: F401  (defined here before)
from .tokenizer import GO_ID


class OnnxMismatchError(ValueError):
    """onnxruntime's logits differ from PyTorch's beyond the tolerance (under the rule of ``compare_logits``).

    Attributes:
        max_abs_diff: the largest absolute difference of the logits (``inf`` when the shapes differ).
        stage: the first stage whose own ONNX graph differs (one of ``export.STAGES``), or ``None`` when no stage
            does (rounding amplified through the model, or a file exported from other weights; the message says
            which).
    """

    def __init__(self, message: str, max_abs_diff: float, stage: str | None) -> None:
        super().__init__(message)
        self.max_abs_diff = max_abs_diff
        self.stage = stage


@dataclass(frozen=True)
class NearTie:
    """An image's branch step: onnxruntime's greedy symbol differs from PyTorch's where both are within rounding.

    ``margin`` is PyTorch's logit for its own symbol minus its logit for onnxruntime's (>= 0).
    """

    image: int
    step: int
    pytorch_id: int
    onnx_id: int
    margin: float


@dataclass(frozen=True)
class Difference:
    """The first logit beyond the tolerance, in step order: where the export really differs."""

    image: int
    step: int
    class_id: int
    onnx: float
    pytorch: float


@dataclass(frozen=True)
class Parity:
    """What ``compare_logits`` found; ``max_abs_diff`` is ``inf`` when the shapes differ."""

    max_abs_diff: float
    first_difference: Difference | None
    near_ties: tuple[NearTie, ...]
    pytorch_logits: torch.Tensor = field(repr=False)  # PyTorch's greedy logits [B, T, C]


def _run_onnx(path: str | os.PathLike, pixel_values: torch.Tensor) -> np.ndarray:
    """onnxruntime (CPUExecutionProvider) on ``pixel_values`` [B, C, H, W]; the graph's first output."""
    ort = _import_onnxruntime()
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feeds = {session.get_inputs()[0].name: pixel_values.detach().cpu().float().numpy()}
        return session.run(None, feeds)[0]
    except Exception as error:  # onnxruntime raises its own pybind11 exception types
        text = str(error).strip()
        first_line = text.splitlines()[0] if text else repr(error)
        raise ValueError(f"onnxruntime cannot run {os.fspath(path)!r}: {first_line}") from None


def full_logits(head: torch.nn.Module, features: torch.Tensor) -> torch.Tensor:
    """A head's greedy logits over every step, as the export computes them: attention and PARSeq do not stop
    once every row has ended (the steps after a row's end are never read); CTC's and ViTSTR's have no steps to stop."""
    if getattr(head, "teacher_forced", False):
        return head(features, None, stop_at_eos=False)
    return head(features)


def reference_prefix(model: TextRecognitionModel, pixel_values: torch.Tensor, until: str) -> torch.Tensor:
    """What the model itself (not its export view) computes up to the end of stage ``until``."""
    x = model.Transformation(pixel_values)
    if until == "Transformation":
        return x
    if until == "FeatureExtraction":
        return model.FeatureExtraction(x)
    if until == "SequenceModeling":
        return model.encode(pixel_values)
    return full_logits(model.Prediction, model.encode(pixel_values))


def _sci(value: float) -> str:
    """Short scientific notation for messages: 0.032 -> '3.2e-2', 1e-4 -> '1e-4', 1.2 -> '1.2e0'."""
    if not math.isfinite(value):
        return str(value)
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa.removesuffix('.0')}e{int(exponent)}"


def _max_abs_diff(actual: np.ndarray, expected: torch.Tensor) -> float:
    reference = expected.detach().cpu().double().numpy()
    if actual.shape != reference.shape:
        return math.inf
    if not actual.size:
        return 0.0
    diff = np.abs(actual.astype(np.float64) - reference)
    return float(np.nan_to_num(diff, nan=np.inf).max())


def _scale(expected: torch.Tensor) -> float:
    """The magnitude a stage's differences are measured against: max |output|, at least 1."""
    return max(1.0, float(expected.detach().abs().max())) if expected.numel() else 1.0


def compare_logits(model: TextRecognitionModel, pixel_values: torch.Tensor, actual: np.ndarray, atol: float) -> Parity:
    """Compare onnxruntime's logits with PyTorch's under the rule of this module's docstring.

    Args:
        model: the exported model, as a float32 CPU copy in eval mode.
        pixel_values: the images both ran on, [B, C, H, W] float32 on the CPU.
        actual: onnxruntime's logits [B, T, C].
        atol: the largest absolute difference of a logit accepted.
    """
    with torch.no_grad():
        features = model.encode(pixel_values)  # [B, T', F]
        greedy = full_logits(model.Prediction, features)  # [B, T, C]
        if actual.shape != tuple(greedy.shape):
            return Parity(math.inf, None, (), greedy)
        onnx = torch.from_numpy(np.ascontiguousarray(actual, dtype=np.float32))
        # 1. Each image's branch step: the first where the greedy symbols differ (T where they never do).
        onnx_ids, pytorch_ids = onnx.argmax(2), greedy.argmax(2)  # [B, T]
        branched = (onnx_ids != pytorch_ids).any(dim=1)  # [B]
        branch = torch.where(branched, (onnx_ids != pytorch_ids).int().argmax(dim=1), greedy.size(1))  # [B]
        # 2. The reference: PyTorch's greedy logits up to the branch step, then its decoder on onnxruntime's path.
        reference = greedy
        forced = None
        if model.config.prediction == "Attn" and bool(branched.any()):
            go = torch.full_like(onnx_ids[:, :1], GO_ID)
            forced = model.Prediction(features, torch.cat([go, onnx_ids[:, :-1]], dim=1))  # [B, T, C]
        elif _follows_its_argmax(model) and bool(branched.any()):
            forced = model.Prediction.forced(features, onnx_ids)  # PARSeq's autoregressive steps on that path
        if forced is not None:
            after = (torch.arange(greedy.size(1))[None, :] > branch[:, None])[..., None]  # [B, T, 1]
            reference = torch.where(after, forced, greedy)
    # 3. Every logit within atol; a branch step that is within it is a near-tie, one beyond it a difference.
    diff = (onnx.double() - reference.double()).abs().nan_to_num(nan=math.inf)  # [B, T, C]
    near_ties = []
    for image in branched.nonzero().flatten().tolist():
        step = int(branch[image])
        if diff[image, step].max() <= atol:  # a branch step beyond the tolerance is a difference, not a near-tie
            ours, theirs = int(pytorch_ids[image, step]), int(onnx_ids[image, step])
            margin = float(greedy[image, step, ours] - greedy[image, step, theirs])
            near_ties.append(NearTie(image, step, ours, theirs, margin))
    first = None
    beyond = (diff > atol).nonzero()  # [N, 3] of (image, step, class)
    if len(beyond):
        step = int(beyond[:, 1].min())
        image, class_id = divmod(int(diff[:, step].argmax()), diff.size(2))
        first = Difference(image, step, class_id, float(onnx[image, step, class_id]),
                           float(reference[image, step, class_id]))  # fmt: skip
    max_abs_diff = float(diff.max()) if diff.numel() else 0.0
    return Parity(max_abs_diff, first, tuple(near_ties), greedy)


def _follows_its_argmax(model: TextRecognitionModel) -> bool:
    """Whether each output step's argmax is what the next step was fed: PARSeq decoding autoregressively without
    refinement (after refinement, the output is no longer the path the loop fed itself, and a branch inside the
    loop is compared as any other difference)."""
    config = model.config
    return config.prediction == "PARSeq" and bool(config.decode_ar) and not config.refine_iters


def _token(tokens: list[str], class_id: int) -> str:
    return f"{tokens[class_id]!r} (id {class_id})" if 0 <= class_id < len(tokens) else f"id {class_id}"


def describe_difference(parity: Parity, tokens: list[str], prediction: str) -> str:
    """Where the logits really differ, e.g. "first at image 0, decoding step 3, class 'a' (id 4): onnxruntime
    0.812 against PyTorch 0.762"; empty when nothing is beyond the tolerance."""
    first = parity.first_difference
    if first is None:
        return ""
    step = "column" if prediction == "CTC" else "decoding step"
    return (
        f"first at image {first.image}, {step} {first.step}, class {_token(tokens, first.class_id)}: onnxruntime "
        f"{first.onnx:.7g} against PyTorch {first.pytorch:.7g}"
    )


def describe_near_ties(parity: Parity, tokens: list[str], prediction: str, atol: float) -> str:
    """The near-ties as one sentence (empty when there are none), saying why they are not an error."""
    if not parity.near_ties:
        return ""
    step = "column" if prediction == "CTC" else "decoding step"
    ties = "; ".join(
        f"image {tie.image} at {step} {tie.step}: PyTorch's {_token(tokens, tie.pytorch_id)} led onnxruntime's "
        f"{_token(tokens, tie.onnx_id)} by {_sci(tie.margin)}"
        for tie in parity.near_ties
    )
    after = (
        "; each later step is compared with PyTorch fed onnxruntime's own symbols (teacher forcing)"
        if prediction in ("Attn", "PARSeq")
        else ""
    )
    return (
        f"Greedy decoding chose another symbol at a near-tie (float32 rounding, not an export error: accepted "
        f"while the two logits are within 2 x the tolerance, {_sci(2 * atol)}): {ties}{after}."
    )


def load_check_images(
    config: ModelConfig, folder: str | os.PathLike | None = None, count: int = 8, skipped: list[str] | None = None
) -> torch.Tensor:
    """Preprocessed images [B, input_channel, img_h, img_w] to check an export on.

    Args:
        config: the model's configuration (sizes, channels, padding).
        folder: the first ``count`` decodable .jpg/.jpeg/.png images under it, in natural order; an image that does
            not decode is passed over, as ``scripts/demo.py`` does, and its path and reason appended to ``skipped``.
            ``None`` renders ``count`` synthetic words (``data.synth.SyntheticWords``, seed 0), which have the sharp
            edges of real text.
        count: how many images.
        skipped: a list to append ``"path: reason"`` to, for each image passed over.

    Raises:
        ValueError: ``folder`` has no image, or none decodes.
        NotADirectoryError: ``folder`` does not exist.
    """
    from .transforms import load_image, preprocess

    if folder is None:
        from .data.synth import SyntheticWords

        synth = SyntheticWords(rgb=config.input_channel == 3, seed=0)
        return preprocess([synth.render(i)[0] for i in range(count)], config)
    from .inference import find_images

    paths = find_images(folder)
    if not paths:
        raise ValueError(f"No .jpg/.jpeg/.png images under {os.fspath(folder)!r} to check the export on.")
    images, passed_over = [], []
    for path in paths:
        try:
            images.append(load_image(path, config.input_channel))
        except (ValueError, OSError) as error:
            passed_over.append(f"{path}: {error}")
        if len(images) == count:
            break
    if skipped is not None:
        skipped.extend(passed_over)
    if not images:
        raise ValueError(f"None of the {len(paths)} images under {os.fspath(folder)!r} could be decoded to check the "
                         f"export on (the first: {passed_over[0]}).")  # fmt: skip
    return preprocess(images, config)
