"""Trainer callbacks: the live metrics file, evaluation, stop requests, NaN guard, progress bar,
AdaLoRA's rank allocation.

`MetricsCallback` appends one JSON line per logging step to `OUTPUT/metrics.jsonl`
(`run_files.MetricRow`): step, epoch, loss, lr, grad_norm, trainable_params, total_params,
step_seconds, tokens_per_s, peak_memory_mb, time, and the `eval_*` metrics on steps where the
model was evaluated. Only the
main process (rank 0) writes. This file does not build models or data.
"""

from __future__ import annotations

import math
import resource
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import TrainerCallback

from idlora_core.adapters.adalora import set_total_step, update_and_allocate
from idlora_core.training.run_files import MetricRow, RunState, append_metrics, write_status


def peak_memory_mb(device: torch.device | str) -> float:
    """Return the peak memory in MiB: CUDA max allocated on a GPU, else the process's max RSS."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


class RunCancelled(BaseException):
    """A stop request ended work that has nothing to checkpoint (loading, data, evaluation).

    A BaseException, like KeyboardInterrupt: raised from a signal handler anywhere in the
    loading code, it must not be caught and re-wrapped by a library's `except Exception`."""


class StopFlag:
    """A stop request set from a signal handler and read by the training callback.

    While `immediate` is True (the run is loading its model and data: no step to finish),
    `request()` raises RunCancelled at once, so a signal handler interrupts any loop;
    `check()` raises it in loops that poll the flag (tokenisation, evaluation).
    """

    def __init__(self) -> None:
        self.reason: str | None = None
        self.immediate = False

    def request(self, reason: str) -> None:
        self.reason = reason
        if self.immediate and threading.current_thread() is threading.main_thread():
            self.immediate = False  # a signal handler runs here: interrupt the loading at once
            raise RunCancelled(reason)

    def check(self) -> None:
        """Raise RunCancelled when a stop was requested."""
        if self.reason is not None:
            raise RunCancelled(self.reason)

    @property
    def requested(self) -> bool:
        return self.reason is not None


class MetricsCallback(TrainerCallback):
    """Writes metrics lines, runs evaluation on schedule, honours stop requests, guards against NaN.

    evaluate: a function of the model returning a dict of eval_* metrics.
    eval_interval: evaluate every N steps (0 = only at the end); the last step is always evaluated.
    nonfinite: a function returning the first step with a non-finite loss seen so far (or None).
    """

    def __init__(self, output_dir: str | Path, *, trainable_params: int, total_params: int,
                 device: torch.device | str, evaluate: Callable[[torch.nn.Module], dict[str, float]],
                 eval_interval: int, stop: StopFlag, nonfinite: Callable[[], int | None]):
        self.output_dir = Path(output_dir)
        self.trainable_params, self.total_params = trainable_params, total_params
        self.device = torch.device(device)
        self.evaluate, self.eval_interval = evaluate, eval_interval
        self.stop, self.nonfinite = stop, nonfinite
        self.pending_eval: dict[str, float] = {}
        self.last_eval: dict[str, float] = {}
        self.nonfinite_step: int | None = None
        self.last_loss: float | None = None
        self._step_start = 0.0
        self._window_seconds = 0.0
        self._window_steps = 0
        self._window_tokens_start = 0
        self.train_seconds = 0.0  # seconds inside optimiser steps (evaluation excluded), this session
        self.tokens_start = 0
        self.tokens_seen = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self._window_tokens_start = self.tokens_start = state.num_input_tokens_seen
        if state.is_world_process_zero:
            write_status(self.output_dir, RunState.running, "training", step=state.global_step,
                         max_steps=state.max_steps)

    def on_step_begin(self, args, state, control, **kwargs):
        self._step_start = time.perf_counter()

    def on_step_end(self, args, state, control, model=None, **kwargs):
        elapsed = time.perf_counter() - self._step_start
        self._window_seconds += elapsed
        self.train_seconds += elapsed
        self._window_steps += 1
        self.tokens_seen = state.num_input_tokens_seen - self.tokens_start
        bad = self.nonfinite()
        bad, stop_now = _agree_across_ranks(bad, self.stop.requested)
        if stop_now and not self.stop.requested:
            self.stop.request("another process")
        if bad is not None:
            self.nonfinite_step = bad
            control.should_training_stop = True
            control.should_save = control.should_log = control.should_evaluate = False
            return control
        final = state.global_step >= state.max_steps
        due = self.eval_interval > 0 and state.global_step % self.eval_interval == 0
        if self.stop.requested:
            control.should_training_stop = True
            control.should_save = True
        if (final or due) and not self.stop.requested:  # a stop skips evaluation: cancel is quick
            try:
                self.pending_eval = self.evaluate(model)
                self.last_eval = dict(self.pending_eval)
            except RunCancelled:  # stop requested during the evaluation: leave it unfinished
                self.pending_eval = {}
                control.should_training_stop = control.should_save = True
        control.should_log = control.should_log or final or due or self.stop.requested
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" not in logs:
            return
        self.last_loss = float(logs["loss"])
        seconds = self._window_seconds / max(self._window_steps, 1)
        tokens = state.num_input_tokens_seen - self._window_tokens_start
        row: MetricRow = {  # and the eval_* metrics of this step (MetricRow's dict extras)
            "step": state.global_step,
            "epoch": round(float(state.epoch or 0.0), 4),
            "loss": self.last_loss,
            "lr": float(logs.get("learning_rate", 0.0)),
            "grad_norm": logs.get("grad_norm"),
            "trainable_params": self.trainable_params,
            "total_params": self.total_params,
            "step_seconds": seconds,
            "tokens_per_s": tokens / self._window_seconds if self._window_seconds > 0 else None,
            "peak_memory_mb": peak_memory_mb(self.device),
            "time": time.time(),
            **self.pending_eval,  # type: ignore[typeddict-item]
        }
        self.pending_eval = {}
        self._window_seconds, self._window_steps = 0.0, 0
        self._window_tokens_start = state.num_input_tokens_seen
        if state.is_world_process_zero:
            append_metrics(self.output_dir, row)
            write_status(self.output_dir, RunState.running, f"step {state.global_step}/{state.max_steps}",
                         step=state.global_step, max_steps=state.max_steps)


def _agree_across_ranks(bad_step: int | None, stop: bool) -> tuple[int | None, bool]:
    """Return (first non-finite step, stop) agreed by all processes (unchanged in one process).

    One rank seeing a NaN or a signal must stop every rank at the same step, or the others
    would wait forever in the next gradient all-reduce.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return bad_step, stop
    flags = torch.tensor([-1 if bad_step is None else bad_step, int(stop)], dtype=torch.long)
    if dist.get_backend() == "nccl":
        flags = flags.cuda()
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    bad, agreed_stop = int(flags[0]), bool(flags[1])
    return (None if bad < 0 else bad), agreed_stop


class ProgressCallback(TrainerCallback):
    """A tqdm progress bar on stderr showing the step and the last loss (rank 0 only)."""

    def __init__(self) -> None:
        self.bar = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="training",
                            unit="step", dynamic_ncols=True, file=sys.stderr)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is not None and logs and "loss" in logs and math.isfinite(logs["loss"]):
            self.bar.set_postfix(loss=f"{logs['loss']:.4f}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class AdaLoraCallback(TrainerCallback):
    """AdaLoRA's part of the training loop (`adapters/adalora.py`): at the start, the schedule
    for the Trainer's max_steps; after every optimiser step (before the gradients are zeroed),
    PEFT's `update_and_allocate(step)`, which scores the singular values and prunes to the
    budget. `calls` counts the allocations made."""

    def __init__(self) -> None:
        self.calls = 0

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        set_total_step(model, state.max_steps)

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        update_and_allocate(model, state.global_step)  # 0-based: the step just taken
        self.calls += 1
