"""The Hub side of a model: its model card (rendered from ``model_card_template.md``, results as ``model-index``)
and pushing model folders and cards. DTRB ``.pth`` reading and checks live in ``checkpoints.py``."""

from __future__ import annotations

import copy
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from .config import CHARSET_36, CHARSET_94, ModelConfig

TEMPLATE_NAME = "model_card_template.md"
CITATION = """@inproceedings{baek2019STRcomparisons,
  title={What Is Wrong With Scene Text Recognition Model Comparisons? Dataset and Model Analysis},
  author={Baek, Jeonghun and Kim, Geewook and Lee, Junyeop and Park, Sungrae and Han, Dongyoon and Yun, Sangdoo and
          Oh, Seong Joon and Lee, Hwalsuk},
  booktitle={International Conference on Computer Vision (ICCV)},
  year={2019}
}"""


PARSEQ_CITATION = """@inproceedings{bautista2022parseq,
  title={Scene Text Recognition with Permuted Autoregressive Sequence Models},
  author={Bautista, Darwin and Atienza, Rowel},
  booktitle={European Conference on Computer Vision (ECCV)},
  year={2022}
}"""
VITSTR_CITATION = """@inproceedings{atienza2021vitstr,
  title={Vision Transformer for Fast and Efficient Scene Text Recognition},
  author={Atienza, Rowel},
  booktitle={International Conference on Document Analysis and Recognition (ICDAR)},
  year={2021}
}"""


def architecture_name(config: ModelConfig) -> str | None:
    """The name the field knows a model beyond DTRB's grid by: ``"PARSeq-S"``, ``"PARSeq-Ti"``, ``"ViTSTR-S"``
    (strhub's sizes), ``"PARSeq"`` / ``"ViTSTR"`` with other sizes; ``None`` for DTRB's combinations."""
    if config.prediction not in ("PARSeq", "ViTSTR"):
        return None
    if config.feature_extraction != "ViT":
        return f"PARSeq decoder on {config.feature_extraction}"
    sizes = {(384, 12, 6): "S", (192, 12, 3): "Ti"}
    size = sizes.get((config.embed_dim, config.encoder_depth, config.encoder_heads))
    return f"{config.prediction}-{size}" if size else f"{config.prediction} (ViT {config.embed_dim} wide, " \
        f"{config.encoder_depth} blocks)"  # fmt: skip


#: Markers around the card's evaluation section, so results can replace it without touching the rest of the card.
EVALUATION_START = "<!-- text_recognition:evaluation -->"
EVALUATION_END = "<!-- /text_recognition:evaluation -->"
NO_RESULTS = "No evaluation results yet. `scripts/test.py --push_results_to_hub` adds them to this card."


def is_repo_id(name: str) -> bool:
    """A valid Hub repo id (``"user/repo"`` or ``"repo"``, checked by ``huggingface_hub.utils.validate_repo_id``)
    that is not a checkpoint file name (``x.pth``): what a ``--saved_model`` or ``--train_data`` that is no local
    path is taken for."""
    if name.endswith((".pth", ".pt")):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


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
        card_data.eval_results = eval_results_for_card(eval_results)
    card_data.datasets = hub_dataset_ids(training) or None
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
        evaluation_section=evaluation_section(eval_results),
        evaluation_start=EVALUATION_START,
        evaluation_end=EVALUATION_END,
        training=training,
        run_config_json=json.dumps(run_config, indent=2, sort_keys=True, default=str) if run_config else None,
        citation=CITATION,
        architecture=architecture_name(config),
        extra_citation={"PARSeq": PARSEQ_CITATION, "ViTSTR": VITSTR_CITATION}.get(config.prediction),
        **kwargs,
    )


def eval_results_for_card(eval_results: list[dict[str, Any]]) -> list[EvalResult]:
    """``model-index`` entries of result dicts: one word-accuracy ``EvalResult`` per dataset, with its split
    (``"test"`` unless the dict says otherwise; training's validation results say ``"validation"``) and its
    evaluation protocol as metric config (``"dtrb --sensitive --data_filtering_off"``, ``"alnum36"``, ...)."""
    return [
        EvalResult(
            task_type="image-to-text",
            task_name="Scene Text Recognition",
            dataset_type=result.get("dataset_type") or result["dataset"],
            dataset_name=result["dataset"],
            dataset_split=result.get("split", "test"),
            metric_type="accuracy",
            metric_name=f"Word accuracy ({metric_config(result)})",
            metric_config=metric_config(result),
            metric_value=round(float(result["accuracy"]), 3),
        )
        for result in eval_results
    ]


#: What produced a result when its dict does not say (the trained model itself).
DEFAULT_RUN_BY = "PyTorch fp32"


def metric_config(result: dict[str, Any]) -> str:
    """The protocol, and what ran the model unless it is the PyTorch model in fp32: ``"dtrb; onnxruntime int8"``.
    An exported file's results are then kept beside the model's own instead of replacing them."""
    protocol = result.get("protocol") or "dtrb"
    run_by = result.get("run_by") or DEFAULT_RUN_BY
    return protocol if run_by == DEFAULT_RUN_BY else f"{protocol}; {run_by}"


def hub_dataset_ids(training: dict[str, Any] | None) -> list[str]:
    """The Hub dataset ids a model was trained on: ``train_data`` when it is no local path (the card's
    ``datasets:`` field links only to Hub datasets)."""
    train_data = (training or {}).get("train_data")
    if not isinstance(train_data, str) or not train_data or os.path.exists(train_data) or not is_repo_id(train_data):
        return []
    return [train_data]


def results_markdown(eval_results: list[dict[str, Any]]) -> str:
    """The card's evaluation table."""
    def number(value: Any, spec: str) -> str:
        return "" if value is None else format(value, spec)

    calibrated = any(r.get("ece") is not None for r in eval_results)
    run_by = any((r.get("run_by") or DEFAULT_RUN_BY) != DEFAULT_RUN_BY for r in eval_results)
    head = "| dataset | samples | word accuracy (%) | 1 - NED | mean confidence |"
    if run_by:
        head = "| dataset | run by | samples | word accuracy (%) | 1 - NED | mean confidence |"
    if calibrated:
        head += " ECE (temperature) | AURC | coverage @ 95 % accuracy |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in eval_results:
        samples = "" if r.get("num_samples") is None else r["num_samples"]
        by = f" {r.get('run_by') or DEFAULT_RUN_BY} |" if run_by else ""
        line = (f"| {r['dataset']} |{by} {samples} | {r['accuracy']:.3f} | {number(r.get('norm_ED'), '.4f')} | "
                f"{number(r.get('mean_confidence'), '.4f')} |")
        if calibrated:
            temperature = r.get("temperature")
            ece = number(r.get("ece"), ".4f") + (f" ({temperature:.3g})" if temperature is not None else "")
            line += f" {ece} | {number(r.get('aurc'), '.4f')} | {number(r.get('coverage_at_95'), '.3f')} |"
        lines.append(line)
    return "\n".join(lines)


def evaluation_section(eval_results: list[dict[str, Any]], extra_text: str = "") -> str:
    """The body of the card's ``## Evaluation`` section (between its markers)."""
    if not eval_results:
        return NO_RESULTS
    splits = sorted({r.get("split", "test") for r in eval_results})
    protocols = sorted({r.get("protocol") or "dtrb" for r in eval_results})
    text = (f"{results_markdown(eval_results)}\n\nWord accuracy and 1 - NED (ICDAR 2019 normalised edit distance) on "
            f"the {' and '.join(splits)} split{'s' if len(splits) > 1 else ''}, under the evaluation protocol "
            f"{', '.join(f'`{p}`' for p in protocols)} (`dtrb`: as DTRB's `test.py` computes them for those flags; "
            f"`alnum36`: both sides lowercased and reduced to [0-9a-z]).")  # fmt: skip
    if any(r.get("ece") is not None for r in eval_results):
        text += (" ECE: expected calibration error of the confidence (15 equal-width bins) at the model's temperature;"
                 " AURC: area under the risk-coverage curve; coverage @ 95 %: the share of words the model can answer,"
                 " most confident first, keeping 95 % word accuracy.")  # fmt: skip
    return text + (f"\n{extra_text}" if extra_text else "")


def push_model_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str | None = None,
    card_text: str | None = None,
) -> str:
    """Push a model folder (``config.json``, ``model.safetensors``, ``README.md``) to a Hub model repo, creating it if
    needed, in one commit. Returns the commit URL. ``card_text`` replaces the folder's ``README.md`` in the push (the
    folder itself is left as it is).

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
        message = commit_message or f"Upload {folder.name}"
        if card_text is None:
            commit = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=message)
        else:
            from huggingface_hub import CommitOperationAdd

            files = [path for path in sorted(folder.rglob("*")) if path.is_file()
                     and not any(part.startswith(".") for part in path.relative_to(folder).parts)]  # fmt: skip
            operations = [CommitOperationAdd(path.relative_to(folder).as_posix(), path) for path in files
                          if path.relative_to(folder).as_posix() != "README.md"]  # fmt: skip
            operations.append(CommitOperationAdd("README.md", card_text.encode("utf-8")))
            commit = api.create_commit(repo_id, operations, commit_message=message)
    except HfHubHTTPError as error:
        raise _refused(error, repo_id) from None
    return commit.commit_url if hasattr(commit, "commit_url") else str(commit)


def _refused(error: Exception, repo_id: str) -> PermissionError:
    status = getattr(getattr(error, "response", None), "status_code", None)
    hint = " Log in with `hf auth login` or set HF_TOKEN to a token with write access." if status in (401, 403) else ""
    return PermissionError(f"The Hub refused the push to {repo_id!r}: {str(error).splitlines()[0]}.{hint}")


def push_model_card(repo_id: str, card: ModelCard, token: str | None = None) -> None:
    """Replace the README.md (model card) of an existing Hub model repo (``ModelCard.push_to_hub``)."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        card.push_to_hub(repo_id, token=token, commit_message="Add evaluation results")
    except HfHubHTTPError as error:
        raise _refused(error, repo_id) from None


def card_with_results(
    card: ModelCard, eval_results: list[dict[str, Any]], model_name: str, extra_text: str = ""
) -> ModelCard:
    """``card`` (from ``ModelCard.load``) with ``eval_results`` in its ``model-index`` and its evaluation section.

    Existing ``model-index`` results for other datasets, splits or metrics are kept; those of the same dataset,
    split and metric are replaced. Only the text between the evaluation markers changes (a card written without
    them, e.g. by hand, gets a new ``## Evaluation`` section at the end); every other section is kept.
    """
    card = ModelCard(str(card))
    new = eval_results_for_card(eval_results)

    def key(result: EvalResult) -> tuple:
        return result.dataset_name, result.dataset_split, result.metric_type, result.metric_config

    replaced = {key(result) for result in new}
    kept = [result for result in card.data.eval_results or [] if key(result) not in replaced]
    card.data.model_name = card.data.model_name or model_name
    card.data.metrics = sorted(set(card.data.metrics or []) | {"accuracy"})
    card.data.eval_results = kept + new
    section = f"{EVALUATION_START}\n{evaluation_section(eval_results, extra_text)}\n{EVALUATION_END}"
    body = card.text
    start, end = body.find(EVALUATION_START), body.find(EVALUATION_END)
    if start != -1 and end > start:
        body = body[:start] + section + body[end + len(EVALUATION_END) :]
    else:
        body = body.rstrip() + f"\n\n## Evaluation\n\n{section}\n"
    return ModelCard(f"---\n{card.data.to_yaml()}\n---\n{body}")
