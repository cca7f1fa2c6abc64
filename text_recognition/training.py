"""The training loop: DTRB's train.py on Accelerate (devices, mixed precision, DDP on any number of processes or
nodes), with exact resume, atomic checkpoints, safetensors best models and DTRB-compatible text logs.

Iterations count optimizer steps, as DTRB's ``num_iter``; with gradient accumulation each one consumes
``gradient_accumulation_steps`` batches. The training sampler is a pure function of (seed, batch number, rank), so
resuming at step k continues exactly as an uninterrupted run would.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .config import DataConfig, ModelConfig, TrainConfig
from .data.collate import SkipTracker
from .data.loaders import TextData, build_eval_data, build_train_data
from .data.mixing import parse_select_data
from .hub import check_state_dict, read_dtrb_state_dict
from .metrics import score
from .model import TextRecognitionModel, load_model

logger = logging.getLogger(__name__)

DASHED = "-" * 80
CHECKPOINT_PREFIX = "checkpoint-"


# ---- building blocks ----------------------------------------------------------------------------------------------


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """DTRB's optimizers: Adadelta(lr, rho, eps) by default, Adam(lr, (beta1, 0.999)) with ``adam``."""
    params = [p for p in model.parameters() if p.requires_grad]
    if config.adam:
        return torch.optim.Adam(params, lr=config.lr, betas=(config.beta1, 0.999))
    return torch.optim.Adadelta(params, lr=config.lr, rho=config.rho, eps=config.eps)


def load_saved_state(saved_model: str) -> dict[str, torch.Tensor]:
    """The weights of ``--saved_model``: a model folder, a Hub id or a DTRB .pth."""
    path = Path(saved_model)
    if path.is_file():
        return read_dtrb_state_dict(path)
    return load_model(saved_model).state_dict()


def load_fitting_weights(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> list[str]:
    """``--FT``: copy every weight whose name and shape fit; return what kept its fresh initialisation."""
    own = model.state_dict()
    fitting = {k: v for k, v in state_dict.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(fitting, strict=False)
    return sorted(
        f"{key} {tuple(value.shape)}" + (f" (checkpoint {tuple(state_dict[key].shape)})" if key in state_dict else "")
        for key, value in own.items()
        if key not in fitting and not key.endswith("num_batches_tracked")
    )


@dataclass
class TrainState:
    """What resume needs besides model, optimizer and RNG (saved by Accelerate with the checkpoint)."""

    iteration: int = 0
    best_accuracy: float = -1.0
    best_norm_ED: float = -1.0
    elapsed: float = 0.0
    skipped: dict[str, int] = field(default_factory=dict)

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def latest_checkpoint(checkpoints_dir: Path) -> Path | None:
    """The complete checkpoint with the highest step (temporary folders of an interrupted save are ignored)."""
    found = []
    for path in checkpoints_dir.glob(f"{CHECKPOINT_PREFIX}*"):
        step = path.name[len(CHECKPOINT_PREFIX) :]
        if path.is_dir() and step.isdigit():
            found.append((int(step), path))
    return max(found)[1] if found else None


def prune_checkpoints(checkpoints_dir: Path, limit: int | None) -> None:
    if not limit:
        return
    steps = sorted(int(p.name[len(CHECKPOINT_PREFIX) :]) for p in checkpoints_dir.glob(f"{CHECKPOINT_PREFIX}*")
                   if p.name[len(CHECKPOINT_PREFIX) :].isdigit())  # fmt: skip
    for step in steps[:-limit]:
        shutil.rmtree(checkpoints_dir / f"{CHECKPOINT_PREFIX}{step}", ignore_errors=True)


def _replace_dir(tmp: Path, target: Path) -> None:
    """Move a finished folder into place; the old one is removed only once the new one is complete."""
    old = target.with_name(f".{target.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    if old.exists():
        shutil.rmtree(old)


def save_model_folder(model: TextRecognitionModel, target: Path, card_kwargs: dict[str, Any]) -> None:
    """``save_pretrained`` into a temporary sibling, then swap it in: a crash never leaves half a model folder."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp", dir=target.parent))
    try:
        model.save_pretrained(tmp, model_card_kwargs=card_kwargs)
        _replace_dir(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


# ---- validation ---------------------------------------------------------------------------------------------------


@dataclass
class Validation:
    loss: float
    accuracy: float
    norm_ED: float
    mean_confidence: float
    num_samples: int
    examples: list[tuple[str, str, float]]  # (ground truth, prediction, confidence) of the last batch, first 5


class Record(NamedTuple):
    ground_truth: str
    prediction: str
    confidence: float
    source: str
    index: int  # row of the sample in its stored source


def score_records(records: list[Record], *, sensitive: bool = False, data_filtering_off: bool = False):
    """``metrics.score`` of prediction records."""
    return score([r.prediction for r in records], [r.ground_truth for r in records], [r.confidence for r in records],
                 sensitive=sensitive, data_filtering_off=data_filtering_off)  # fmt: skip


@torch.no_grad()
def predict_records(
    model: TextRecognitionModel,
    data: TextData,
    indices: list[int],
    batch_size: int,
    *,
    device: torch.device,
    num_workers: int = 0,
    autocast: Callable[[], Any] | None = None,
    skips: SkipTracker | None = None,
    loss_kwargs: dict[str, Any] | None = None,
    warmup: bool = False,
) -> tuple[list[Record], list[float], float]:
    """Greedy predictions for ``indices`` of ``data``: one ``Record`` per decodable sample, the per-batch losses, and
    the seconds spent in the model (device synchronised; with ``warmup``, the first batch runs once untimed)."""
    tokenizer, config = model.tokenizer, model.config
    batches = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
    loader = DataLoader(data.dataset, batch_sampler=batches, collate_fn=data.collator, num_workers=num_workers)
    was_training = model.training
    model.eval()
    records: list[Record] = []
    losses: list[float] = []
    seconds = 0.0
    for batch in loader:
        if skips is not None:
            skips.update(batch["skipped"])
        if not batch["labels"]:
            continue
        images = batch["pixel_values"].to(device)
        targets, lengths = tokenizer.encode(batch["labels"], config.batch_max_length)
        if warmup:
            with autocast() if autocast is not None else contextlib.nullcontext():
                model(images)
            warmup = False
        _synchronize(device)
        start = time.perf_counter()
        with autocast() if autocast is not None else contextlib.nullcontext():
            logits = model(images)  # greedy for attention: what is evaluated is what inference gives
        _synchronize(device)
        seconds += time.perf_counter() - start
        losses.append(float(model.loss(logits, targets.to(device), lengths, **(loss_kwargs or {}))))
        decoded = tokenizer.decode_with_confidence(logits)
        for label, (text, confidence), (source, index) in zip(batch["labels"], decoded, batch["ids"]):
            records.append(Record(label, text, confidence, source, index))
    model.train(was_training)
    return records, losses, seconds


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def evaluate_model(
    model: torch.nn.Module,
    data: TextData,
    accelerator: Accelerator,
    batch_size: int,
    *,
    num_workers: int = 0,
    sensitive: bool = False,
    data_filtering_off: bool = False,
    baidu_ctc: bool = False,
    skips: SkipTracker | None = None,
) -> Validation:
    """DTRB's ``validation()``: greedy decoding, loss, accuracy, norm_ED and confidence over every sample once.

    Each process evaluates a contiguous share of the samples; the results are gathered, so every sample counts
    exactly once whatever the number of processes.
    """
    total = len(data.dataset)
    share = -(-total // accelerator.num_processes)
    start = min(accelerator.process_index * share, total)
    records, losses, _ = predict_records(
        accelerator.unwrap_model(model), data, list(range(start, min(start + share, total))), batch_size,
        device=accelerator.device, num_workers=num_workers, autocast=accelerator.autocast, skips=skips,
        loss_kwargs={"baidu": True} if baidu_ctc else None,
    )  # fmt: skip
    gathered_records = gather_object(records) if accelerator.num_processes > 1 else records
    gathered_losses = gather_object(losses) if accelerator.num_processes > 1 else losses
    result = score_records(gathered_records, sensitive=sensitive, data_filtering_off=data_filtering_off)
    return Validation(
        loss=sum(gathered_losses) / len(gathered_losses) if gathered_losses else 0.0,
        accuracy=result.accuracy,
        norm_ED=result.norm_ED,
        mean_confidence=result.mean_confidence,
        num_samples=result.num_samples,
        examples=[(r.ground_truth, r.prediction, r.confidence) for r in records[-5:]],
    )


def format_validation_log(
    iteration: int, num_iter: int, train_loss: float, valid: Validation, elapsed: float, state: TrainState
) -> str:
    """The block DTRB appends to ``log_train.txt`` after each validation."""
    lines = [
        f"[{iteration}/{num_iter}] Train loss: {train_loss:0.5f}, Valid loss: {valid.loss:0.5f}, "
        f"Elapsed_time: {elapsed:0.5f}",
        f"{'Current_accuracy':17s}: {valid.accuracy:0.3f}, {'Current_norm_ED':17s}: {valid.norm_ED:0.2f}",
        f"{'Best_accuracy':17s}: {state.best_accuracy:0.3f}, {'Best_norm_ED':17s}: {state.best_norm_ED:0.2f}",
        DASHED,
        f"{'Ground Truth':25s} | {'Prediction':25s} | Confidence Score & T/F",
        DASHED,
    ]
    lines += [f"{gt:25s} | {pred:25s} | {conf:0.4f}\t{pred == gt}" for gt, pred, conf in valid.examples]
    lines.append(DASHED)
    return "\n".join(lines)


# ---- the loop -----------------------------------------------------------------------------------------------------


def _report_to(requested: str | None) -> str | None:
    if requested in (None, ""):
        try:
            import tensorboard  # noqa: F401

            return "tensorboard"
        except ImportError:
            return None
    if requested == "none":
        return None
    if requested == "tensorboard":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise ValueError(
                "--report_to tensorboard needs the tensorboard package: pip install tensorboard"
            ) from None
    return requested


class _Pusher:
    """Pushes best-accuracy model folders to the Hub in the background; failures are logged, never raised."""

    def __init__(self, repo_id: str, private: bool) -> None:
        from huggingface_hub import HfApi

        self.api = HfApi()
        self.futures: list[Any] = []
        self.snapshots: list[Path] = []
        try:
            self.repo_id = self.api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        except Exception as error:  # token, permission, network: training goes on without pushing
            logger.error("Cannot create or reach the Hub repo %r (%s): training continues without --push_to_hub.",
                         repo_id, str(error).splitlines()[0] if str(error) else type(error).__name__)  # fmt: skip
            self.repo_id = None

    def push(self, folder: Path, message: str) -> None:
        if self.repo_id is None:
            return
        snapshot = Path(tempfile.mkdtemp(prefix="push_"))
        shutil.copytree(folder, snapshot, dirs_exist_ok=True)  # the folder may be replaced while uploading
        self.snapshots.append(snapshot)
        self.futures.append(
            self.api.upload_folder(
                repo_id=self.repo_id, folder_path=snapshot, commit_message=message, run_as_future=True
            )  # fmt: skip
        )

    def wait(self) -> list[str]:
        errors = []
        for future in self.futures:
            try:
                future.result()
            except Exception as error:  # report every failed push, keep the run's results
                errors.append(str(error).splitlines()[0] if str(error) else type(error).__name__)
        for snapshot in self.snapshots:
            shutil.rmtree(snapshot, ignore_errors=True)
        for error in errors:
            logger.error("A push to the Hub failed: %s", error)
        return errors


def train(model_config: ModelConfig, data_config: DataConfig, train_config: TrainConfig) -> dict[str, Any]:
    """Train a model; return the final results (also written to ``all_results.json`` in the run folder).

    Raises:
        FileNotFoundError / ValueError: bad data paths, empty data after filtering, a checkpoint that does not fit.
    """
    exp_name = train_config.exp_name or f"{model_config.stage_string}-Seed{train_config.seed}"
    run_dir = Path(train_config.output_dir) / exp_name
    checkpoints_dir = run_dir / "checkpoints"
    accelerator = Accelerator(
        gradient_accumulation_steps=train_config.gradient_accumulation_steps,
        log_with=_report_to(train_config.report_to),
        project_dir=str(run_dir / "logs"),
    )
    main = accelerator.is_main_process
    if main:
        checkpoints_dir.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    set_seed(train_config.seed)

    # Model: DTRB's initialisation, then --saved_model (strict, or what fits with --FT).
    model = TextRecognitionModel(model_config)
    model.init_weights()
    reinitialised: list[str] = []
    if train_config.saved_model:
        state_dict = load_saved_state(train_config.saved_model)
        if train_config.ft:
            reinitialised = load_fitting_weights(model, state_dict)
        else:
            model.load_state_dict(check_state_dict(model, state_dict, model_config, repr(train_config.saved_model)))
    model.train()

    # Resume point (decided before the data so the sampler starts at the right batch).
    state = TrainState()
    resume_dir = None
    if train_config.resume_from_checkpoint:
        if train_config.resume_from_checkpoint == "latest":
            resume_dir = latest_checkpoint(checkpoints_dir)
            if resume_dir is None and main:
                logger.warning("--resume_from_checkpoint latest: no checkpoint in %s yet, starting fresh.",
                               checkpoints_dir)  # fmt: skip
        else:
            resume_dir = Path(train_config.resume_from_checkpoint)
            if not (resume_dir / "train_state.json").is_file():
                raise FileNotFoundError(f"{str(resume_dir)!r} is not a complete checkpoint (no train_state.json).")

    optimizer = build_optimizer(model, train_config)
    model, optimizer = accelerator.prepare(model, optimizer)
    if resume_dir is not None:
        accelerator.load_state(str(resume_dir))
        state.load_state_dict(json.loads((resume_dir / "train_state.json").read_text()))

    # Data: built on the main process first (so LMDB conversion caches are written once), then on the others.
    accumulation = train_config.gradient_accumulation_steps
    with accelerator.main_process_first():
        train_data = build_train_data(
            data_config.train_data, model_config, select_data=data_config.select_data,
            batch_ratio=data_config.batch_ratio, total_data_usage_ratio=data_config.total_data_usage_ratio,
            batch_size=train_config.batch_size, data_filtering_off=data_config.data_filtering_off,
            seed=train_config.seed, rank=accelerator.process_index, world_size=accelerator.num_processes,
            start_iteration=state.iteration * accumulation,
        )  # fmt: skip
        valid_data = build_eval_data(data_config.valid_data, model_config,
                                     data_filtering_off=data_config.data_filtering_off)  # fmt: skip
    loader = DataLoader(train_data.dataset, batch_sampler=train_data.sampler, collate_fn=train_data.collator,
                        num_workers=data_config.workers, pin_memory=accelerator.device.type == "cuda",
                        persistent_workers=data_config.workers > 0)  # fmt: skip
    batches = iter(loader)  # the batch sampler is endless: no epochs, no re-shuffling restarts

    per_process = sum(train_data.batch_sizes)
    total_batch = per_process * accelerator.num_processes * accumulation
    if main:
        run_config = {"model": asdict(model_config), "data": asdict(data_config), "train": asdict(train_config)}
        (run_dir / "run_config.json").write_text(json.dumps(run_config, indent=2, sort_keys=True) + "\n")
        with open(run_dir / "opt.txt", "a", encoding="utf-8") as opt_file:
            options = {**asdict(model_config), **asdict(data_config), **asdict(train_config), "exp_name": exp_name,
                       "num_class": model_config.num_class, "num_processes": accelerator.num_processes,
                       "mixed_precision": accelerator.mixed_precision, "total_batch_size": total_batch}  # fmt: skip
            opt_file.write("------------ Options -------------\n")
            opt_file.writelines(f"{key}: {value}\n" for key, value in options.items())
            opt_file.write("---------------------------------------\n")
        with open(run_dir / "log_dataset.txt", "a", encoding="utf-8") as log_dataset:
            log_dataset.write(train_data.log + "\nvalidation:\n" + valid_data.log + DASHED + "\n")
        tokens = parse_select_data(data_config.select_data)
        split = " + ".join(f"{n} {token}" for n, token in zip(train_data.batch_sizes, tokens))
        accelerator.print(
            f"{model_config.stage_string}: {unwrap(accelerator, model).num_parameters:,} parameters\n"
            f"Training samples: {len(train_data.dataset):,} | validation samples: {len(valid_data.dataset):,}\n"
            f"Batch per process: {per_process} ({split}) | processes: {accelerator.num_processes} | "
            f"accumulation: {accumulation} | total batch: {total_batch} | mixed precision: "
            f"{accelerator.mixed_precision} | device: {accelerator.device}"
        )
        if reinitialised:
            accelerator.print(f"--FT: re-initialised {len(reinitialised)} tensors that did not fit: "
                              + ", ".join(reinitialised))  # fmt: skip
        accelerator.init_trackers(exp_name, config={k: v for k, v in options.items()
                                                    if isinstance(v, (int, float, str, bool))})  # fmt: skip
    else:
        accelerator.init_trackers(exp_name)

    pusher = _Pusher(train_config.hub_model_id, train_config.hub_private_repo) if (
        main and train_config.push_to_hub) else None  # fmt: skip
    skips = SkipTracker()
    skips.counts.update(state.skipped)
    tokenizer = unwrap(accelerator, model).tokenizer
    loss_kwargs = {"baidu": True} if train_config.baidu_ctc else {}
    card_training = {
        "train_data": data_config.train_data, "valid_data": data_config.valid_data,
        "select_data": data_config.select_data, "batch_ratio": data_config.batch_ratio,
        "total_batch_size": total_batch, "optimizer": "Adam" if train_config.adam else "Adadelta",
        "lr": train_config.lr, "grad_clip": train_config.grad_clip,
    }  # fmt: skip
    last_valid: Validation | None = None
    loss_sum, loss_count, images_seen = 0.0, 0, 0
    start_time = time.perf_counter() - state.elapsed
    loop_start = time.perf_counter()
    excluded = 0.0  # seconds of validation and checkpointing, left out of the training throughput
    window_start, window_images = time.perf_counter(), 0
    bar = tqdm(total=train_config.num_iter, initial=state.iteration, disable=not accelerator.is_local_main_process,
               desc="training", unit="it", dynamic_ncols=True)  # fmt: skip

    while state.iteration < train_config.num_iter:
        for _ in range(accumulation):
            batch = next(batches)
            skips.update(batch["skipped"])
            if not batch["labels"]:
                continue
            images = batch["pixel_values"].to(accelerator.device, non_blocking=True)
            targets, lengths = tokenizer.encode(batch["labels"], model_config.batch_max_length)
            targets = targets.to(accelerator.device)
            with accelerator.accumulate(model):
                with accelerator.autocast():
                    logits = model(images, targets if model_config.prediction == "Attn" else None)
                loss = unwrap(accelerator, model).loss(logits, targets, lengths, **loss_kwargs)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), train_config.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            loss_sum += float(loss.detach())
            loss_count += 1
            images_seen += len(batch["labels"])
            window_images += len(batch["labels"])
        state.iteration += 1
        rate = window_images * accelerator.num_processes / max(time.perf_counter() - window_start, 1e-9)
        bar.set_postfix(loss=f"{loss_sum / max(loss_count, 1):.4f}", img_s=f"{rate:.0f}", refresh=False)
        bar.update(1)

        if state.iteration % train_config.log_interval == 0 or state.iteration == 1:
            accelerator.log({"train/loss": loss_sum / max(loss_count, 1), "train/images_per_second": rate,
                             "train/lr": optimizer.param_groups[0]["lr"]}, step=state.iteration)  # fmt: skip
            window_start, window_images = time.perf_counter(), 0

        if (
            state.iteration == 1
            or state.iteration % train_config.val_interval == 0
            or (state.iteration == train_config.num_iter)
        ):
            pause = time.perf_counter()
            valid = evaluate_model(
                model, valid_data, accelerator, train_config.batch_size, num_workers=data_config.workers,
                sensitive=model_config.sensitive, data_filtering_off=data_config.data_filtering_off,
                baidu_ctc=train_config.baidu_ctc, skips=skips,
            )  # fmt: skip
            last_valid = valid
            train_loss = loss_sum / max(loss_count, 1)
            improved_accuracy = valid.accuracy > state.best_accuracy
            improved_ned = valid.norm_ED > state.best_norm_ED
            state.best_accuracy = max(state.best_accuracy, valid.accuracy)
            state.best_norm_ED = max(state.best_norm_ED, valid.norm_ED)
            if main:
                elapsed = time.perf_counter() - start_time
                log = format_validation_log(state.iteration, train_config.num_iter, train_loss, valid, elapsed, state)
                bar.write(log)
                with open(run_dir / "log_train.txt", "a", encoding="utf-8") as log_train:
                    log_train.write(log + "\n")
                results = [{"dataset": "validation", "num_samples": valid.num_samples, "accuracy": valid.accuracy,
                            "norm_ED": valid.norm_ED, "mean_confidence": valid.mean_confidence}]  # fmt: skip
                card = {"model_name": exp_name, "eval_results": results,
                        "training": {**card_training, "iteration": state.iteration}}  # fmt: skip
                if improved_accuracy:
                    save_model_folder(unwrap(accelerator, model), run_dir / "best_accuracy", card)
                    if pusher is not None:
                        pusher.push(run_dir / "best_accuracy",
                                    f"best accuracy {valid.accuracy:.3f} at iteration {state.iteration}")  # fmt: skip
                if improved_ned:
                    save_model_folder(unwrap(accelerator, model), run_dir / "best_norm_ED", card)
            accelerator.log({"valid/loss": valid.loss, "valid/accuracy": valid.accuracy,
                             "valid/norm_ED": valid.norm_ED, "valid/mean_confidence": valid.mean_confidence},
                            step=state.iteration)  # fmt: skip
            loss_sum, loss_count = 0.0, 0
            excluded += time.perf_counter() - pause
            window_start = time.perf_counter()

        if train_config.checkpointing_steps and state.iteration % train_config.checkpointing_steps == 0:
            pause = time.perf_counter()
            state.elapsed = time.perf_counter() - start_time
            state.skipped = dict(skips.counts)
            _save_checkpoint(accelerator, checkpoints_dir, state, train_config.checkpoints_total_limit)
            excluded += time.perf_counter() - pause

    bar.close()
    accelerator.wait_for_everyone()
    runtime = time.perf_counter() - start_time
    results = {
        "iterations": state.iteration,
        "best_accuracy": state.best_accuracy,
        "best_norm_ED": state.best_norm_ED,
        "final_accuracy": last_valid.accuracy if last_valid else None,
        "final_norm_ED": last_valid.norm_ED if last_valid else None,
        "final_valid_loss": last_valid.loss if last_valid else None,
        "final_mean_confidence": last_valid.mean_confidence if last_valid else None,
        "validation_samples": last_valid.num_samples if last_valid else None,
        "train_runtime": runtime,
        # optimizer steps only: validation and checkpoint time excluded
        "train_images_per_second": images_seen
        * accelerator.num_processes
        / max(time.perf_counter() - loop_start - excluded, 1e-9),
        "num_parameters": unwrap(accelerator, model).num_parameters,
        "corrupt_images_skipped": dict(skips.counts),
    }
    if main:
        (run_dir / "all_results.json").write_text(json.dumps(results, indent=2) + "\n")
        if pusher is not None:
            results["push_errors"] = pusher.wait()
        accelerator.print(f"end the training: best accuracy {state.best_accuracy:.3f}, best norm_ED "
                          f"{state.best_norm_ED:.4f}; results in {run_dir}")  # fmt: skip
    accelerator.end_training()
    return results


def unwrap(accelerator: Accelerator, model: torch.nn.Module) -> TextRecognitionModel:
    return accelerator.unwrap_model(model)


def _save_checkpoint(accelerator: Accelerator, checkpoints_dir: Path, state: TrainState, limit: int | None) -> None:
    """``save_state`` into a temporary folder, then rename: resume never sees a half-written checkpoint."""
    target = checkpoints_dir / f"{CHECKPOINT_PREFIX}{state.iteration}"
    tmp = checkpoints_dir / f".tmp-{CHECKPOINT_PREFIX}{state.iteration}"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / "train_state.json").write_text(json.dumps(state.state_dict(), indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
        prune_checkpoints(checkpoints_dir, limit)
    accelerator.wait_for_everyone()
