"""The start of a run, in order: the accelerator and the run folder, the model (DTRB's initialisation, then
``--saved_model`` strictly or with ``--FT``), the optimizer and the resumed state, the data, and the files a run
writes first (``run_config.json``, DTRB's ``opt.txt`` and ``log_dataset.txt``)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, set_seed
from torch.utils.data import DataLoader

from ..augment import TextAugment
from ..checkpoints import check_state_dict, read_dtrb_state_dict
from ..config import DataConfig, ModelConfig, TrainConfig, parse_select_data
from ..data.loaders import (
    build_eval_data,
    build_stream_train_data,
    build_synth_eval_data,
    build_train_data,
    check_decodable,
)
from ..data.synth_source import SYNTH, SynthSource, synth_options
from ..fastpath import compile_encoder
from ..loading import load_model
from ..model import TextRecognitionModel
from .distributed import main_process_first, main_reports
from .hub_push import HubPusher
from .optim import EMA, build_optimizer, build_scheduler, enable_cpu_fp16, freeze_stages, warn_slow_precision
from .resume import changed_model_flags, check_resumed_config, resume_checkpoint, run_configs, truncate_log
from .run_dir import CHECKPOINT_PREFIX, check_run_dir, check_shared_run_dir, clear_run_dir, remove_leftovers
from .state import DASHED, Run, TrainingStopped
from .streams import load_stream_state, marking_consumed, stream_sampler

logger = get_logger(__name__)  # main process only, unless a call says main_process_only=False


def start_run(model_config: ModelConfig, data_config: DataConfig, train_config: TrainConfig) -> Run:
    """The accelerator (devices, precision, processes), the run folder (checked, and cleared of what a killed run
    left behind) and the seeds."""
    exp_name = train_config.exp_name or f"{model_config.stage_string}-Seed{train_config.seed}"
    run_dir = Path(train_config.output_dir) / exp_name
    report_to = _report_to(train_config.report_to)
    accelerator = Accelerator(
        gradient_accumulation_steps=train_config.gradient_accumulation_steps,
        log_with=report_to,
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "logs")),
    )
    enable_cpu_fp16(accelerator)
    warn_slow_precision(accelerator)
    run = Run(model_config, data_config, train_config, accelerator, exp_name, run_dir, report_to=report_to)
    with main_reports(accelerator):
        check_run_dir(run_dir, train_config)  # every process reads the folder before any writes to it
    accelerator.wait_for_everyone()
    if run.main:
        if train_config.overwrite_output_dir and not train_config.resume_from_checkpoint:
            clear_run_dir(run_dir)
        remove_leftovers(run_dir)
        run.checkpoints_dir.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    check_shared_run_dir(accelerator, run_dir)  # every node that does not see the folder says so
    set_seed(train_config.seed)
    return run


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


def build_model_and_optimizer(run: Run) -> None:
    """DTRB's initialisation, then ``--saved_model`` (strict, or what fits with ``--FT``), the optimizer, and the
    state of the checkpoint to resume from, if any."""
    config, train_config = run.model_config, run.train_config
    model = TextRecognitionModel(config)
    model.init_weights()
    reinitialised: list[str] = []
    if train_config.saved_model:
        state_dict, saved = load_saved_model(train_config.saved_model)
        if train_config.ft and saved is not None and only_charset_differs(saved.config, config):
            model = saved  # every symbol in both charsets keeps its learned rows
            change = model.resize_charset(config.character)
            model.config = model._hub_mixin_config = config
            if run.main and (change.added or change.removed):
                run.accelerator.print(f"--FT: charset resized, {change}")
        elif train_config.ft:
            reinitialised = load_fitting_weights(model, state_dict)
        else:
            model.load_state_dict(check_state_dict(model, state_dict, config, repr(train_config.saved_model)))
    model.train()
    run.frozen = freeze_stages(model, train_config.freeze)
    if train_config.label_smoothing and config.prediction != "Attn":
        raise ValueError("--label_smoothing applies to the attention loss: it needs --Prediction Attn.")
    if reinitialised and run.main:
        run.accelerator.print(f"--FT: re-initialised {len(reinitialised)} tensors that did not fit: "
                              + ", ".join(reinitialised))  # fmt: skip
    resume_dir = resume_checkpoint(train_config, run.checkpoints_dir, run.main)
    run.resume_dir = resume_dir
    run.model, run.optimizer = run.accelerator.prepare(model, build_optimizer(model, train_config))
    run.scheduler = build_scheduler(run.optimizer, train_config)
    run.accelerator.register_for_checkpointing(run.scheduler)
    if train_config.ema_decay is not None:
        run.ema = EMA(run.unwrapped, train_config.ema_decay)
        run.accelerator.register_for_checkpointing(run.ema)
    if train_config.compile:  # after the EMA copy, which stays eager (it is only validated)
        compile_encoder(run.unwrapped)
    if resume_dir is not None:
        try:
            run.accelerator.load_state(str(resume_dir))
        except Exception as error:  # a file truncated or corrupted after its manifest was written
            changed = changed_model_flags(run)
            if changed:  # --allow_config_change let a model flag through: the weights do not fit this model
                raise TrainingStopped(
                    f"Cannot resume from {resume_dir}: its weights do not fit this model, and model flags cannot "
                    f"change on resume (--allow_config_change allows data and batch changes): {', '.join(changed)}. "
                    f"Give the checkpoint's values, or start a new run (another --exp_name) from the old run's best "
                    f"model: --saved_model {run.run_dir / 'best_accuracy'} --FT."
                ) from None
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise TrainingStopped(f"Cannot resume from {resume_dir}: {reason}. Resume from an earlier checkpoint "
                                  f"(--resume_from_checkpoint {resume_dir.parent}/{CHECKPOINT_PREFIX}N).") from None
        run.state.load_state_dict(json.loads((resume_dir / "train_state.json").read_text()))
        run.state.skipped_in_a_row = 0
        if run.main:
            logger.info("Resuming from %s at iteration %d.", resume_dir, run.state.iteration)
            truncate_log(run.run_dir / "log_train.txt", run.state.iteration)
    run.skips.counts.update(run.state.skipped)


def load_saved_model(saved_model: str) -> tuple[dict[str, torch.Tensor], TextRecognitionModel | None]:
    """The weights of ``--saved_model`` (a model folder, a Hub id or a DTRB .pth), and the model itself when it
    records its configuration (not a .pth)."""
    path = Path(saved_model)
    if path.is_file():
        return read_dtrb_state_dict(path), None
    model = load_model(saved_model)
    return model.state_dict(), model


def only_charset_differs(saved: ModelConfig, wanted: ModelConfig) -> bool:
    return dataclasses.replace(saved, character=wanted.character, sensitive=wanted.sensitive) == wanted


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


def build_data(run: Run) -> None:
    """Training and validation data, built on the main process first (so LMDB conversion caches are written once);
    the training sampler starts at the resumed batch."""
    data_config, train_config, accelerator = run.data_config, run.train_config, run.accelerator

    def build() -> None:
        augment = TextAugment(data_config.augment_strength, seed=train_config.seed) if data_config.augment else None
        if data_config.streaming:
            run.train_data = build_stream_train_data(
                data_config.train_data, run.model_config, select_data=data_config.select_data,
                batch_ratio=data_config.batch_ratio, batch_size=train_config.batch_size,
                data_filtering_off=data_config.data_filtering_off, seed=train_config.seed,
                rank=accelerator.process_index, world_size=accelerator.num_processes,
                shuffle_block=data_config.shuffle_block, augment=augment,
            )  # fmt: skip
            if run.resume_dir is not None:
                load_stream_state(run)
        else:
            run.train_data = build_train_data(
                data_config.train_data, run.model_config, select_data=data_config.select_data,
                batch_ratio=data_config.batch_ratio, total_data_usage_ratio=data_config.total_data_usage_ratio,
                batch_size=train_config.batch_size, data_filtering_off=data_config.data_filtering_off,
                seed=train_config.seed, rank=accelerator.process_index, world_size=accelerator.num_processes,
                start_iteration=run.state.iteration * train_config.gradient_accumulation_steps, augment=augment,
                synth=synth_options(data_config.synth),
            )  # fmt: skip
        if data_config.valid_data:
            run.valid_data = build_eval_data(data_config.valid_data, run.model_config,
                                             data_filtering_off=data_config.data_filtering_off)  # fmt: skip
            check_decodable(run.valid_data, data_config.valid_data)  # before a step, not after the last
        else:  # --select_data synth without --valid_data: held-out synthetic samples
            run.valid_data = build_synth_eval_data(run.model_config, synth_options(data_config.synth),
                                                   train_config.seed, data_config.synth_valid_samples)  # fmt: skip

    main_process_first(accelerator, build)
    loader = DataLoader(run.train_data.dataset, batch_sampler=run.train_data.sampler,
                        collate_fn=run.train_data.collator, num_workers=data_config.workers,
                        pin_memory=accelerator.device.type == "cuda",
                        persistent_workers=data_config.workers > 0)  # fmt: skip
    run.batches = iter(loader)  # the batch sampler is endless: no epochs, no re-shuffling restarts
    stream = stream_sampler(run)
    if stream is not None:
        run.batches = marking_consumed(run.batches, stream)
    if run.main and run.train_config.push_to_hub:
        run.pusher = HubPusher(train_config.hub_model_id, train_config.hub_private_repo)


def write_run_files(run: Run) -> None:
    """``run_config.json``, DTRB's ``opt.txt`` and ``log_dataset.txt``, the opening summary and the trackers."""
    accelerator, model_config = run.accelerator, run.model_config
    configs = run_configs(run)
    if run.resume_dir is not None:
        with main_reports(accelerator):
            check_resumed_config(run, configs)  # every process: all refuse alike
    if not run.main:
        accelerator.init_trackers(run.exp_name)
        return
    text = json.dumps(configs, indent=2, sort_keys=True) + "\n"
    config_file = run.run_dir / "run_config.json"
    if run.resume_dir is None or not config_file.exists():
        config_file.write_text(text)
    elif config_file.read_text() != text:  # the old one is kept: the new one goes beside it
        config_file.with_name(f"run_config.resume-{run.state.iteration}.json").write_text(text)
    options = {**configs["model"], **configs["data"], **configs["train"], "exp_name": run.exp_name,
               "num_class": model_config.num_class, "num_processes": accelerator.num_processes,
               "mixed_precision": accelerator.mixed_precision, "total_batch_size": run.total_batch_size}  # fmt: skip
    with open(run.run_dir / "opt.txt", "a", encoding="utf-8") as opt_file:
        opt_file.write("------------ Options -------------\n")
        opt_file.writelines(f"{key}: {value}\n" for key, value in options.items())
        opt_file.write("---------------------------------------\n")
    with open(run.run_dir / "log_dataset.txt", "a", encoding="utf-8") as log_dataset:
        log_dataset.write(run.train_data.log + "\nvalidation:\n" + run.valid_data.log + DASHED + "\n")
        log_dataset.write(label_audit(run) + "\n" + DASHED + "\n")
    tokens = parse_select_data(run.data_config.select_data)
    split = " + ".join(f"{n} {token}" for n, token in zip(run.train_data.batch_sizes, tokens))
    accelerator.print(
        f"{model_config.stage_string}: {run.unwrapped.num_parameters:,} parameters\n"
        f"Training samples: {training_samples(run)} | validation samples: {len(run.valid_data.dataset):,}\n"
        f"Batch per process: {sum(run.train_data.batch_sizes)} ({split}) | processes: {accelerator.num_processes} | "
        f"accumulation: {run.train_config.gradient_accumulation_steps} | total batch: {run.total_batch_size} | "
        f"mixed precision: {accelerator.mixed_precision} | device: {accelerator.device}"
    )
    accelerator.init_trackers(run.exp_name, config={k: v for k, v in options.items()
                                                    if isinstance(v, (int, float, str, bool))})  # fmt: skip


def label_audit(run: Run) -> str:
    """The label part of ``scripts/audit_dataset.py`` for the training sources: per source, what the filter keeps
    and drops and why, lengths, and the symbols outside the charset with examples."""
    from ..audit import audit

    data_config = run.data_config
    if data_config.streaming or not Path(data_config.train_data).exists():
        return (f"label audit: {data_config.train_data} is streamed (filtering counts are in all_results.json); run "
                f"scripts/audit_dataset.py on it for the whole picture.")
    parts = ["label audit (scripts/audit_dataset.py; add --images there for sizes, corrupt images, duplicates):"]
    for token in parse_select_data(data_config.select_data):
        if token == SYNTH and _renders(run):
            parts.append(f"select_data {SYNTH}: rendered on the fly; its labels fit the charset by construction")
            continue
        report = audit(data_config.train_data, run.model_config, select_data=token,
                       data_filtering_off=data_config.data_filtering_off, show_progress=False)  # fmt: skip
        parts.append(f"select_data {token}:\n{report.label_table()}")
    return "\n".join(parts)


def training_samples(run: Run) -> str:
    """The training sample count as shown at start (a stream's is not known)."""
    dataset = run.train_data.dataset
    if not hasattr(dataset, "__len__"):
        return "streamed"
    if _renders(run):
        stored = sum(size for source, size in zip(dataset.datasets, dataset.sizes)
                     if not isinstance(source, SynthSource))  # fmt: skip
        return f"endless synthetic + {stored:,} stored" if stored else "endless synthetic"
    return f"{len(dataset):,}"


def _renders(run: Run) -> bool:
    """Whether the training data holds the synthetic engine (the token ``synth`` may select stored sources)."""
    return any(isinstance(source, SynthSource) for source in getattr(run.train_data.dataset, "datasets", ()))
