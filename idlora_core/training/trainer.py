"""The training engine: model + adapters + tasks -> a transformers `Trainer` run with live files.

`run_training(config)` loads the model (catalog), applies the adapters (`inject`), builds
the task data, trains with `transformers.Trainer` (single process, or data-parallel under
`accelerate launch` / torchrun), and leaves in `config.output_dir`: metrics.jsonl,
status.json, run.json, `checkpoints/` (trainable tensors + optimiser state) and `adapter/`.
Building the model for a run (device, precision, head, adapters) is `setup.py`; the CLI and
the signal handling live in `cli.py`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import Trainer, TrainingArguments
from transformers.trainer_callback import PrinterCallback
from transformers.trainer_callback import ProgressCallback as HFProgressCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from idlora_core.config import RunConfig, dumps_config
from idlora_core.tasks import load_tasks
from idlora_core.tasks.base import polling
from idlora_core.training.callbacks import (
    AdaLoraCallback,
    MetricsCallback,
    ProgressCallback,
    RunCancelled,
    StopFlag,
    peak_memory_mb,
)
from idlora_core.training.data import PadCollator, build_train_dataset
from idlora_core.training.evaluate import evaluate_tasks
from idlora_core.training.run_files import (
    RUN_FILE,
    STATUS_FILE,
    RunState,
    append_metrics,
    read_status,
    truncate_metrics,
    versions,
    write_json_atomic,
    write_status,
)
from idlora_core.training.run_folder import (
    CHECKPOINT_CONFIG,
    TRAINABLE_FILE,
    RunFolder,
    check_resume_config,
    last_complete_checkpoint,
)
from idlora_core.training.setup import build_model, count_params, resolve_device

CHECKPOINT_DIR = "checkpoints"
ADAPTER_DIR = "adapter"
STAGING_PREFIX = ".saving-"  # checkpoints/.saving-N/checkpoint-N: a checkpoint being written


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss."""


@dataclass
class RunResult:
    """How a run ended: state (finished|cancelled|failed), message, final metrics and files."""

    state: RunState
    message: str
    output_dir: Path
    steps: int
    final_metrics: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)


def _inner(model: torch.nn.Module) -> torch.nn.Module:
    """Return the model inside an AdaptedModel (checkpoint tensor names stay the model's own)."""
    from idlora_core.adapters.model import AdaptedModel

    return model.module if isinstance(model, AdaptedModel) else model


class AdapterTrainer(Trainer):
    """A Trainer whose checkpoints hold only the trainable tensors, and which notes non-finite losses."""

    nonfinite_step: int | None = None
    run_config_text: str = ""  # the run's YAML, saved in every checkpoint (checked by --resume)
    _staging = False

    def _get_output_dir(self, trial) -> str:
        base = super()._get_output_dir(trial)
        return os.path.join(base, f"{STAGING_PREFIX}{self.state.global_step}") if self._staging else base

    def _save_checkpoint(self, model, trial) -> None:
        """Write checkpoint-N into checkpoints/.saving-N/ and rename it into place once every file
        is written, then drop older checkpoints: a kill or a full disk mid-save leaves no half
        checkpoint under a checkpoint-N name, and the previous checkpoint stays until then.
        (transformers writes checkpoint-N in place; `last_complete_checkpoint` still checks files.)"""
        self._staging = True
        try:
            super()._save_checkpoint(model, trial)  # into .saving-N (its rotation sees only that one)
        finally:
            self._staging = False
        self.accelerator.wait_for_everyone()  # every process has written its RNG state
        if not self.args.should_save:
            return
        base = self._get_output_dir(trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging, final = os.path.join(base, f"{STAGING_PREFIX}{self.state.global_step}"), os.path.join(base, name)
        old = None
        if os.path.isdir(final):  # saved again at the same step: keep the old one until the swap
            old = final + ".old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(os.path.join(staging, name), final)
        for leftover in [old, staging, *(str(p) for p in Path(base).glob(f"{STAGING_PREFIX}*"))]:
            if leftover:
                shutil.rmtree(leftover, ignore_errors=True)  # incl. saves a kill interrupted
        rotate_checkpoints(output_dir=base, save_total_limit=self.args.save_total_limit,
                           best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=False)

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.nonfinite_step is None and not torch.isfinite(loss).all():
            self.nonfinite_step = self.state.global_step + 1
        return loss

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if not self.args.should_save:
            return
        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        model = _inner(self.accelerator.unwrap_model(self.model))
        tensors = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        save_file(tensors, os.path.join(output_dir, TRAINABLE_FILE))
        if self.run_config_text:
            with open(os.path.join(output_dir, CHECKPOINT_CONFIG), "w", encoding="utf-8") as fh:
                fh.write(self.run_config_text)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        model = _inner(self.accelerator.unwrap_model(model or self.model))
        saved = load_file(os.path.join(resume_from_checkpoint, TRAINABLE_FILE))
        expected = {n for n, p in model.named_parameters() if p.requires_grad}
        if set(saved) != expected:
            missing, extra = sorted(expected - set(saved)), sorted(set(saved) - expected)
            raise ValueError(f"checkpoint {resume_from_checkpoint} does not fit this model/config: "
                             f"missing {missing[:3]}, unexpected {extra[:3]}")
        model.load_state_dict(saved, strict=False)


def training_arguments(config: RunConfig, device: str, precision: str) -> TrainingArguments:
    """Return the TrainingArguments of a run (checkpoints in OUTPUT/checkpoints, no hub, no reports).

    Progress printing is not a TrainingArguments matter here: `run_training(progress=...)` adds or
    leaves out our own progress callback.
    """
    t = config.train
    schedule = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}[t.schedule]
    return TrainingArguments(
        output_dir=str(Path(config.output_dir) / CHECKPOINT_DIR),
        max_steps=t.steps,
        per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.learning_rate,
        lr_scheduler_type=schedule,
        warmup_steps=t.warmup_steps,
        weight_decay=t.weight_decay,
        logging_strategy="steps",
        logging_steps=t.log_interval,
        logging_nan_inf_filter=False,
        eval_strategy="no",
        save_strategy="steps" if t.save_interval else "no",
        save_steps=max(t.save_interval, 1),
        save_total_limit=1,
        seed=t.seed,
        data_seed=t.seed,
        use_cpu=device == "cpu",
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=device == "cuda",
        remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding",
        ddp_find_unused_parameters=False,
        average_tokens_across_devices=False,  # else classification losses are scaled by the world size
    )


def run_training(config: RunConfig, *, resume: bool = False, overwrite: bool = False,
                 stop: StopFlag | None = None, progress: bool = True,
                 callbacks: list | None = None, source=None) -> RunResult:
    """Train `config` and return how the run ended; every file goes under `config.output_dir`.

    The output folder is locked for the run (a second run into it fails at once, naming this
    one). A folder that already holds a run is refused unless `overwrite` (its files are then
    moved to `replaced-<time>/` once the new config, model and data have loaded) or `resume`.
    resume=True continues from the last checkpoint in OUTPUT/checkpoints (RunFolderError when
    there is none or the config differs from the checkpoint's). A stop request on `stop` ends
    the run after the current step with a checkpoint (state 'cancelled'), or at once while the
    model and data load; a NaN/inf loss ends it with state 'failed'.
    `callbacks`: extra transformers TrainerCallbacks (hooks for tests and tools); `source`: see
    `build_model`. Method `base` trains nothing: the model is evaluated once (step 0).
    """
    stop = stop or StopFlag()
    device, precision = resolve_device(config.train)
    args = training_arguments(config, device, precision)
    main = args.process_index == 0
    folder = RunFolder(config.output_dir, overwrite=overwrite, resume=resume)
    if main:
        folder.acquire()
    try:
        return _run_locked(config, folder, args, device, precision, main, resume=resume, stop=stop,
                           progress=progress, callbacks=callbacks, source=source)
    except RunCancelled:
        stop.immediate = False
        message = f"stopped by {stop.reason} before training started; nothing to keep"
        if main and folder.claimed:
            write_status(folder.path, RunState.cancelled, message)
        return RunResult(RunState.cancelled, message, folder.path, 0)
    except BaseException as exc:
        stop.immediate = False
        if main and (folder.claimed or _launched_here(folder.path)):
            if isinstance(exc, KeyboardInterrupt):
                _record_end(folder.path, RunState.cancelled, "interrupted (second SIGINT) without a final checkpoint")
            else:
                _record_end(folder.path, RunState.failed, failure_reason(exc, args.output_dir))
        raise
    finally:
        folder.release()


def failure_reason(exc: BaseException, checkpoints: str | Path | None = None) -> str:
    """Return the status message of a run that `exc` ended: what happened and what to do
    (out of memory, disk full, any other error as `Type: message`)."""
    last = last_complete_checkpoint(checkpoints) if checkpoints else None
    resume = f"; continue from {last} with --resume" if last else ""
    text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)) or (
            isinstance(exc, RuntimeError) and "out of memory" in text.lower()):
        return (f"out of memory ({type(exc).__name__}: {text or 'no detail'}): lower train.batch_size or "
                f"train.seq_len, or use train.grad_accum{resume}")
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" at {exc.filename}" if exc.filename else ""
        return f"disk full{where} ({os.strerror(exc.errno)}): free space and run again{resume}"
    return f"{type(exc).__name__}: {text}" + resume


def _launched_here(output_dir: Path) -> bool:
    """True when the folder's status says a launcher started this run (state starting) but the
    run had not claimed the folder yet (an earlier run's files waited to be moved aside)."""
    return read_status(output_dir).get("state") == RunState.starting


def _record_end(output_dir: Path, state: RunState, message: str) -> None:
    """Write the final status.json; on a full disk (the atomic write needs a new file) rewrite the
    existing file in place, whose blocks are already allocated. Never raises: the error that
    ended the run is the one to report. The step reached is kept from the last status."""
    last = read_status(output_dir)
    step = last.get("step") if isinstance(last.get("step"), int) else 0
    try:
        write_status(output_dir, state, message, step=step, max_steps=last.get("max_steps"))
        return
    except OSError:
        pass
    record = json.dumps({"state": state, "message": message, "pid": os.getpid(), "step": step,
                         "max_steps": last.get("max_steps"), "updated": time.time()})
    try:
        with open(output_dir / STATUS_FILE, "r+", encoding="utf-8") as fh:
            fh.truncate(0)
            fh.write(record)
    except OSError:
        pass  # nothing can be written: the run queue marks a run whose process is gone as failed


def _run_locked(config: RunConfig, folder: RunFolder, args: TrainingArguments, device: str,
                precision: str, main: bool, *, resume: bool, stop: StopFlag, progress: bool,
                callbacks: list | None, source=None) -> RunResult:
    """The body of `run_training`, with the output folder locked (main process)."""
    output_dir = folder.path
    checkpoint = None
    if resume:
        checkpoint = last_complete_checkpoint(args.output_dir)
        if checkpoint is None:
            raise ValueError(f"--resume: no complete checkpoint in {args.output_dir} (partial ones are "
                             "skipped); start the run without --resume")
        config = check_resume_config(config, output_dir, checkpoint)  # refuses before any write
        folder.claim()
    if main and folder.claimed:
        write_status(output_dir, RunState.running, "loading model and data", max_steps=config.train.steps)
    stop.immediate = True  # nothing to checkpoint yet: a stop request ends the run at once
    stop.check()
    with polling(stop.check):  # generating 10^6 examples takes minutes: a stop ends it
        tasks = load_tasks(config.tasks, seed=config.train.seed)
    model, tokenizer, report = build_model(config, tasks, source)  # an AdaptedModel
    trainable, total = count_params(model)
    train_set = build_train_dataset(tokenizer, tasks, [t.weight for t in config.tasks],
                                    config.train.seq_len, config.train.seed, check=stop.check)
    stop.immediate = False
    stop.check()
    if main and not folder.claimed:
        folder.claim()  # config, model and data loaded: only now move an earlier run aside
        write_status(output_dir, RunState.running, "model and data loaded", max_steps=config.train.steps)
    autocast = (torch.autocast(device, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
                if precision in ("bf16", "fp16") else contextlib.nullcontext())

    def evaluate(model_: torch.nn.Module, split: str = "eval") -> dict[str, float]:
        with autocast:
            return evaluate_tasks(model_, tokenizer, tasks, seq_len=config.train.seq_len,
                                  batch_size=config.train.batch_size * 2, device=args.device,
                                  check=stop.check, split=split)

    data = {t.name: {"source": t.source, "splits": t.split_hashes()} for t in tasks}
    if config.adapter.method == "base":
        return _evaluate_only(config, model, report, evaluate, trainable, total, device, precision,
                              args.world_size, main, data)
    trainer = AdapterTrainer(model=model, args=args, train_dataset=train_set,
                             data_collator=PadCollator(tokenizer.pad_token_id), processing_class=tokenizer)
    metrics_cb = MetricsCallback(
        output_dir, trainable_params=trainable, total_params=total, device=args.device,
        evaluate=evaluate, eval_interval=config.train.eval_interval, stop=stop,
        nonfinite=lambda: trainer.nonfinite_step,
    )
    for cb in (HFProgressCallback, PrinterCallback):
        trainer.remove_callback(cb)
    trainer.add_callback(metrics_cb)
    if progress:
        trainer.add_callback(ProgressCallback())
    if config.adapter.method == "adalora":
        trainer.add_callback(AdaLoraCallback())
    for cb in callbacks or []:
        trainer.add_callback(cb)
    summary = _summary(config, report, device, precision, args.world_size, data)
    trainer.run_config_text = dumps_config(RunConfig.model_validate(summary["config"]))
    if main:
        if checkpoint:
            truncate_metrics(output_dir, int(Path(checkpoint).name.split("-")[-1]))
        write_json_atomic(output_dir / RUN_FILE, {**summary, "state": RunState.running})
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=checkpoint)
    seconds = time.perf_counter() - start
    steps = trainer.state.global_step
    last_good = last_complete_checkpoint(args.output_dir)
    state, message = _outcome(metrics_cb.nonfinite_step, stop, steps, seconds, last_good)
    final = {
        "steps": steps, "train_seconds": seconds, "final_train_loss": metrics_cb.last_loss,
        "trainable_params": trainable, "total_params": total, "peak_memory_mb": peak_memory_mb(args.device),
        "tokens_per_s": (metrics_cb.tokens_seen / metrics_cb.train_seconds
                         if metrics_cb.train_seconds > 0 else None),  # optimiser steps only
        **metrics_cb.last_eval,
    }
    if state == RunState.finished:  # the test split is scored once, after training, never during it
        try:
            final.update(evaluate(model, "test"))
        except RunCancelled:
            state, message = RunState.cancelled, (
                f"stopped by {stop.reason} while scoring the test split after step {steps}; "
                f"checkpoint: {last_good}")
    if main:
        if state != RunState.failed:
            from idlora_core.adapters.io import save_adapters

            save_adapters(model, output_dir / ADAPTER_DIR)
        write_json_atomic(output_dir / RUN_FILE, {**summary, "state": state, "message": message,
                                                  "final_metrics": final, "checkpoint": last_good})
        write_status(output_dir, state, message, step=steps, max_steps=config.train.steps)
    return RunResult(state, message, output_dir, steps, final, summary["adapter_report"])


def _evaluate_only(config: RunConfig, model, report, evaluate, trainable: int, total: int, device: str,
                   precision: str, world_size: int, main: bool, data: dict) -> RunResult:
    """The `base` method: evaluate the untrained model once (validation and test) and write the
    usual run files."""
    output_dir = Path(config.output_dir)
    summary = _summary(config, report, device, precision, world_size, data)
    start = time.perf_counter()
    model.to(device)
    metrics = evaluate(model)
    tested = evaluate(model, "test")
    seconds = time.perf_counter() - start
    message = f"evaluated the base model in {seconds:.1f} s (method 'base' trains nothing)"
    final = {"steps": 0, "train_seconds": 0.0, "final_train_loss": None, "trainable_params": trainable,
             "total_params": total, "peak_memory_mb": peak_memory_mb(device), "tokens_per_s": None,
             **metrics, **tested}
    if main:
        append_metrics(output_dir, {"step": 0, "trainable_params": trainable, "total_params": total,
                                    "time": time.time(), **metrics})
        write_json_atomic(output_dir / RUN_FILE, {**summary, "state": RunState.finished,
                                                  "message": message, "final_metrics": final,
                                                  "checkpoint": None})
        write_status(output_dir, RunState.finished, message, step=0, max_steps=0)
    return RunResult(RunState.finished, message, output_dir, 0, final, summary["adapter_report"])


def _outcome(nonfinite_step: int | None, stop: StopFlag, steps: int, seconds: float,
             last_good: str | None) -> tuple[RunState, str]:
    """Return (state, message) of a run that left the training loop."""
    if nonfinite_step is not None:
        where = f"last good checkpoint: {last_good}" if last_good else "no checkpoint was saved before it"
        resume = " with --resume" if last_good else ""
        return RunState.failed, (f"loss became NaN/inf at step {nonfinite_step}; training stopped "
                                 f"({where}). Lower train.learning_rate and run again{resume}")
    if stop.requested:
        return RunState.cancelled, (f"stopped by {stop.reason} after step {steps}; checkpoint: "
                                    f"{last_good} (continue with --resume)")
    return RunState.finished, f"trained {steps} steps in {seconds:.1f} s"


def _summary(config: RunConfig, report, device: str, precision: str, world_size: int,
             data: dict) -> dict[str, Any]:
    """Return the run.json fields known before training: resolved config, report, versions,
    device, and `data`: per task its source and the size and SHA-256 of each split."""
    resolved = config
    if report.resolved_skeletons:
        resolved = config.model_copy(update={"adapter": config.adapter.model_copy(
            update={"skeletons": report.resolved_skeletons})})
    import yaml

    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    return {
        "config": yaml.safe_load(dumps_config(resolved)),
        "method": config.adapter.method,
        "model": config.model.name,
        "tasks": [t.name for t in config.tasks],
        "adapter_report": report.to_dict(),
        "data": data,
        "versions": versions(),
        "device": {"type": device, "name": name, "precision": precision, "world_size": world_size,
                   "torch_threads": torch.get_num_threads()},
        "pid": os.getpid(),
    }
