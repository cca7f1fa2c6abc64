"""Model cards, checkpoint checks and DTRB ``.pth`` conversion.

DTRB checkpoints are bare state dicts (keys prefixed ``module.`` by ``DataParallel``) with no record of the options
they were trained with, so the options come from the user and every key and shape is checked. When they do not fit,
the error lists what is missing, unexpected or mis-shaped, and says which flags the checkpoint itself points to.
"""

from __future__ import annotations

import copy
import json
import os
import re
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .config import CHARSET_36, CHARSET_94, ModelConfig

if TYPE_CHECKING:
    from torch import nn

TEMPLATE_NAME = "model_card_template.md"
CITATION = """@inproceedings{baek2019STRcomparisons,
  title={What Is Wrong With Scene Text Recognition Model Comparisons? Dataset and Model Analysis},
  author={Baek, Jeonghun and Kim, Geewook and Lee, Junyeop and Park, Sungrae and Han, Dongyoon and Yun, Sangdoo and
          Oh, Seong Joon and Lee, Hwalsuk},
  booktitle={International Conference on Computer Vision (ICCV)},
  year={2019}
}"""


_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def looks_like_repo_id(name: str) -> bool:
    """``"user/repo"`` or ``"repo"``, as opposed to a local path (``/data/x``, ``./x``, ``a/b/c``, ``x.pth``)."""
    return bool(_REPO_ID.match(name)) and not name.endswith((".pth", ".pt")) and ".." not in name


class CheckpointMismatchError(ValueError):
    """A state dict that does not fit the model: lists missing/unexpected keys, shape mismatches and a hint."""


def load_model_card_template() -> str:
    """The Jinja model-card template: shipped inside the wheel, or read from the repository root in a checkout."""
    packaged = resources.files("text_recognition").joinpath(TEMPLATE_NAME)
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    in_checkout = Path(__file__).resolve().parent.parent / TEMPLATE_NAME
    if in_checkout.is_file():
        return in_checkout.read_text(encoding="utf-8")
    raise FileNotFoundError(
        f"{TEMPLATE_NAME} is neither inside the installed text_recognition package nor at the repository root "
        f"({in_checkout}). Reinstall the package: pip install text_recognition."
    )


def charset_description(character: str) -> str:
    if character == CHARSET_36:
        return "36 symbols: digits and lowercase letters (DTRB's default, case-insensitive)"
    if character == CHARSET_94:
        return "94 symbols: digits, upper- and lowercase letters and ASCII punctuation (DTRB's --sensitive set)"
    return f"{len(character)} symbols (custom)"


def build_card(
    base_card_data: ModelCardData,
    template: str,
    config: ModelConfig,
    num_params: int,
    **kwargs: Any,
) -> ModelCard:
    """Render the model card of a model with ``config``.

    Keyword Args:
        model_name: title and ``model-index`` name (default: the stage string).
        repo_id: shown in the usage snippet (default ``"<user>/<repo>"``).
        eval_results: list of ``{"dataset": str, "num_samples": int, "accuracy": float (percent),
            "norm_ED": float, "mean_confidence": float}``; they also become ``model-index`` results.
        training: dict describing the training run (``train_data``, ``select_data``, ``batch_ratio``,
            ``num_iter``, ...), shown under "Training".
        run_config: the full run configuration (dict), shown as JSON.
        Anything else is passed to the template.
    """
    card_data = copy.deepcopy(base_card_data)
    model_name = kwargs.pop("model_name", None) or config.stage_string
    eval_results = kwargs.pop("eval_results", None) or []
    training = kwargs.pop("training", None)
    run_config = kwargs.pop("run_config", None)
    card_data.tags = sorted(
        set(card_data.tags or [])
        | {config.stage_string, *(s.lower() for s in config.stage_string.split("-") if s != "None")}
    )
    if eval_results:
        card_data.model_name = model_name
        card_data.metrics = ["accuracy"]
        card_data.eval_results = [
            EvalResult(
                task_type="image-to-text",
                task_name="Scene Text Recognition",
                dataset_type=result["dataset"],
                dataset_name=result["dataset"],
                dataset_split="test",
                metric_type="accuracy",
                metric_name="Word accuracy",
                metric_value=round(float(result["accuracy"]), 3),
            )
            for result in eval_results
        ]
    if training and training.get("select_data"):
        card_data.datasets = None  # source names are local folders, not Hub dataset ids
    return ModelCard.from_template(
        card_data,
        template_str=template,
        model_name=model_name,
        stage_string=config.stage_string,
        config=config.to_dict(),
        num_params=num_params,
        charset=config.character,
        charset_description=charset_description(config.character),
        repo_id=kwargs.pop("repo_id", None) or "<user>/<repo>",
        eval_results=eval_results,
        training=training,
        run_config_json=json.dumps(run_config, indent=2, sort_keys=True, default=str) if run_config else None,
        citation=CITATION,
        **kwargs,
    )


def read_dtrb_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a DTRB ``.pth`` (a pickled state dict) safely with ``weights_only=True`` and strip ``module.``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"DTRB checkpoint not found: {str(path)!r}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and weights-only errors all mean "not a DTRB state dict"
        lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
        # torch's weights-only message starts with advice to disable the check; show the actual reason instead.
        marker = [i for i, line in enumerate(lines) if "WeightsUnpickler error:" in line]
        if marker:
            after = lines[marker[0]].split("WeightsUnpickler error:", 1)[1].strip()
            reason = after or (lines[marker[0] + 1] if marker[0] + 1 < len(lines) else lines[0])
        else:
            reason = lines[0]
        reason = reason.split(". ")[0].rstrip(".")
        raise ValueError(
            f"Cannot read {str(path)!r} as a DTRB checkpoint: torch.load(weights_only=True) refused it ({reason}). "
            f"A DTRB .pth is a plain state dict of tensors saved with torch.save(model.state_dict())."
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{str(path)!r} does not hold a state dict of tensors (DTRB saves model.state_dict()).")
    return {key.removeprefix("module."): value for key, value in state.items()}


def infer_dtrb_flags(state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Read what a state dict itself says about its architecture (stages, sizes, class count)."""
    flags: dict[str, Any] = {}
    keys = set(state_dict)
    flags["Transformation"] = "TPS" if any(k.startswith("Transformation.") for k in keys) else "None"
    if "FeatureExtraction.ConvNet.conv0_1.weight" in keys:
        flags["FeatureExtraction"] = "ResNet"
        first_conv = state_dict["FeatureExtraction.ConvNet.conv0_1.weight"]
        flags["output_channel"] = first_conv.shape[0] * 16
    elif any(".wgf_u." in k for k in keys):
        flags["FeatureExtraction"] = "RCNN"
        first_conv = state_dict.get("FeatureExtraction.ConvNet.0.weight")
        if first_conv is not None:
            flags["output_channel"] = first_conv.shape[0] * 8
    elif "FeatureExtraction.ConvNet.0.weight" in keys:
        flags["FeatureExtraction"] = "VGG"
        first_conv = state_dict["FeatureExtraction.ConvNet.0.weight"]
        flags["output_channel"] = first_conv.shape[0] * 8
    else:
        first_conv = None
    if first_conv is not None:
        flags["input_channel"] = first_conv.shape[1]
    flags["SequenceModeling"] = "BiLSTM" if any(k.startswith("SequenceModeling.") for k in keys) else "None"
    if "SequenceModeling.0.linear.weight" in keys:
        flags["hidden_size"] = state_dict["SequenceModeling.0.linear.weight"].shape[0]
    if "Prediction.generator.weight" in keys:
        flags["Prediction"] = "Attn"
        flags["hidden_size"] = state_dict["Prediction.generator.weight"].shape[1]
        flags["num_class"] = state_dict["Prediction.generator.weight"].shape[0]
        flags["charset_size"] = flags["num_class"] - 2
    elif "Prediction.weight" in keys:
        flags["Prediction"] = "CTC"
        flags["num_class"] = state_dict["Prediction.weight"].shape[0]
        flags["charset_size"] = flags["num_class"] - 1
    if "Transformation.LocalizationNetwork.localization_fc2.bias" in keys:
        flags["num_fiducial"] = state_dict["Transformation.LocalizationNetwork.localization_fc2.bias"].shape[0] // 2
    if "Transformation.GridGenerator.P_hat" in keys:
        flags["imgH_x_imgW"] = state_dict["Transformation.GridGenerator.P_hat"].shape[0]
    return flags


def _flag_hints(config: ModelConfig, flags: dict[str, Any]) -> list[str]:
    """Flags whose value in ``config`` differs from what the checkpoint shows."""
    ours = {
        "Transformation": config.transformation,
        "FeatureExtraction": config.feature_extraction,
        "SequenceModeling": config.sequence_modeling,
        "Prediction": config.prediction,
        "input_channel": config.input_channel,
        "output_channel": config.output_channel,
        "hidden_size": config.hidden_size,
        "num_fiducial": config.num_fiducial,
    }
    hints = []
    for flag, value in ours.items():
        if flag in flags and flags[flag] != value:
            extra = " (--rgb sets 3)" if flag == "input_channel" else ""
            hints.append(f"--{flag} {flags[flag]} (you gave {value}){extra}")
    if "charset_size" in flags and flags.get("Prediction", config.prediction) == config.prediction:
        if flags["charset_size"] != len(config.character):
            size = flags["charset_size"]
            known = " (DTRB's --sensitive set)" if size == 94 else " (DTRB's default set)" if size == 36 else ""
            hints.append(
                f"a charset of {size} symbols{known}: the head has {flags['num_class']} classes, but --character "
                f"has {len(config.character)} symbols; check --character / --sensitive"
            )
    if "imgH_x_imgW" in flags and flags["imgH_x_imgW"] != config.img_h * config.img_w:
        hints.append(
            f"an image size with imgH x imgW = {flags['imgH_x_imgW']} pixels (you gave --imgH {config.img_h} "
            f"--imgW {config.img_w} = {config.img_h * config.img_w}); the TPS grid depends on it"
        )
    return hints


def check_state_dict(
    model: nn.Module, state_dict: dict[str, torch.Tensor], config: ModelConfig, source: str
) -> dict[str, torch.Tensor]:
    """Check that ``state_dict`` fits ``model`` key for key and shape for shape.

    A missing ``num_batches_tracked`` (older PyTorch) is filled in. Returns the state dict ready for a strict
    ``load_state_dict``.

    Raises:
        CheckpointMismatchError: listing missing keys, unexpected keys and shape mismatches, with the flags the
            checkpoint points to.
    """
    expected = model.state_dict()
    state_dict = dict(state_dict)
    for key, value in expected.items():
        running_mean = key.removesuffix("num_batches_tracked") + "running_mean"
        if key.endswith("num_batches_tracked") and key not in state_dict and running_mean in state_dict:
            state_dict[key] = torch.zeros_like(value)  # checkpoints from PyTorch < 0.4.1 lack it
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = sorted(
        f"{key}: checkpoint {tuple(state_dict[key].shape)}, model {tuple(expected[key].shape)}"
        for key in set(expected) & set(state_dict)
        if state_dict[key].shape != expected[key].shape
    )
    if not (missing or unexpected or mismatched):
        return state_dict

    def listing(title: str, items: list[str]) -> str:
        shown = "\n".join(f"    {item}" for item in items[:12])
        more = f"\n    ... and {len(items) - 12} more" if len(items) > 12 else ""
        return f"  {title} ({len(items)}):\n{shown}{more}\n"

    message = f"The checkpoint {source} does not fit a {config.stage_string} model with this configuration.\n"
    if missing:
        message += listing("missing keys", missing)
    if unexpected:
        message += listing("unexpected keys", unexpected)
    if mismatched:
        message += listing("shape mismatches", mismatched)
    hints = _flag_hints(config, infer_dtrb_flags(state_dict))
    if hints:
        message += "The checkpoint looks like it was trained with: " + "; ".join(hints) + "."
    else:
        message += "Check that the model flags are those the checkpoint was trained with."
    raise CheckpointMismatchError(message)


def verify_tps_buffers(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """DTRB stores the TPS constants in its checkpoints; they must equal the ones we compute for the config."""
    expected = model.state_dict()
    for key in ("Transformation.GridGenerator.inv_delta_C", "Transformation.GridGenerator.P_hat"):
        if key in state_dict and not torch.allclose(state_dict[key].float(), expected[key], rtol=1e-4, atol=1e-4):
            raise CheckpointMismatchError(
                f"The TPS constant {key} stored in {source} differs from the one computed for num_fiducial / imgH / "
                f"imgW of this configuration: the checkpoint was built for another TPS geometry."
            )


def push_model_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Push a model folder (``config.json``, ``model.safetensors``, ``README.md``) to a Hub model repo, creating it if
    needed, in one commit. Returns the commit URL.

    Raises:
        FileNotFoundError: the folder is not a complete model folder.
        PermissionError: the Hub refused (no or bad token, no write access), with the Hub's message.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    folder = Path(folder)
    missing = [name for name in ("config.json", "model.safetensors", "README.md") if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{str(folder)!r} is not a complete model folder: missing {', '.join(missing)}.")
    api = HfApi(token=token)
    try:
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        commit = api.upload_folder(repo_id=repo_id, folder_path=folder,
                                   commit_message=commit_message or f"Upload {folder.name}")  # fmt: skip
    except HfHubHTTPError as error:
        raise _refused(error, repo_id) from None
    return commit.commit_url if hasattr(commit, "commit_url") else str(commit)


def _refused(error: Exception, repo_id: str) -> PermissionError:
    status = getattr(getattr(error, "response", None), "status_code", None)
    hint = " Log in with `hf auth login` or set HF_TOKEN to a token with write access." if status in (401, 403) else ""
    return PermissionError(f"The Hub refused the push to {repo_id!r}: {str(error).splitlines()[0]}.{hint}")


def push_model_card(repo_id: str, card: str, token: str | None = None) -> None:
    """Replace the README.md (model card) of an existing Hub model repo."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    try:
        HfApi(token=token).upload_file(path_or_fileobj=card.encode("utf-8"), path_in_repo="README.md",
                                       repo_id=repo_id, commit_message="Add evaluation results")  # fmt: skip
    except HfHubHTTPError as error:
        raise _refused(error, repo_id) from None


def results_markdown(eval_results: list[dict[str, Any]]) -> str:
    """The card's evaluation table (the same columns as ``model_card_template.md``)."""
    lines = ["| dataset | samples | word accuracy (%) | 1 - NED | mean confidence |", "|---|---|---|---|---|"]
    lines += [f"| {r['dataset']} | {r['num_samples']} | {r['accuracy']:.3f} | {r['norm_ED']:.4f} | "
              f"{r['mean_confidence']:.4f} |" for r in eval_results]  # fmt: skip
    return "\n".join(lines)


def card_with_results(readme: str, eval_results: list[dict[str, Any]], model_name: str, extra_text: str = "") -> str:
    """An existing model card with its ``## Evaluation`` section replaced by ``eval_results`` (and ``extra_text``)
    and its ``model-index`` set to them; every other section is kept."""
    card = ModelCard(readme)
    card.data.model_name = card.data.model_name or model_name
    card.data.metrics = ["accuracy"]
    card.data.eval_results = [
        EvalResult(task_type="image-to-text", task_name="Scene Text Recognition", dataset_type=r["dataset"],
                   dataset_name=r["dataset"], dataset_split="test", metric_type="accuracy",
                   metric_name="Word accuracy", metric_value=round(float(r["accuracy"]), 3))
        for r in eval_results
    ]  # fmt: skip
    section = (f"## Evaluation\n\n{results_markdown(eval_results)}\n\nWord accuracy and 1 - NED (ICDAR 2019 "
               f"normalised edit distance) as DTRB's `test.py` computes them.\n{extra_text}\n")  # fmt: skip
    body = card.text
    start = body.find("## Evaluation")
    if start == -1:
        body = body.rstrip() + "\n\n" + section
    else:
        end = body.find("\n## ", start + 1)
        body = body[:start] + section + (body[end + 1 :] if end != -1 else "")
    return f"---\n{card.data.to_yaml()}\n---\n{body}"
