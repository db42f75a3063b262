"""The lab server's fair shares and size limits: what one user may queue, and how big a run or a
study may be, decided before anything is queued or expanded.

Every limit is a server setting (an environment variable read at each call, so a test or an
admin can change it), with defaults for a room of about 30 students on a 2-core, 24 GB server:

  IDLORA_MAX_QUEUED_PER_USER    6    runs one user may have queued or running at once
  IDLORA_MAX_STUDIES_PER_USER   1    studies one user may have running at once
  IDLORA_MAX_RUN_STEPS          3000 optimiser steps of one run (about 30 min of MiniLM on 2 cores)
  IDLORA_MAX_RUN_MINUTES        10   estimated minutes of one run above which Start needs the
                                     user's confirmation naming the estimate (0 = never asks)
  IDLORA_REFUSE_RUN_MINUTES     120  estimated minutes of one run above which it is refused
                                     (0 = never refused for its time)
  IDLORA_MAX_STUDY_RUNS         200  runs of one study (the largest preset has 129)
  IDLORA_MAX_RUN_MEMORY_GB      8    estimated memory of one run, and the address-space cap of
                                     every run the server starts (0 = no cap)
  IDLORA_TICKET_TTL_MINUTES     10   a waiting run whose owner's page has not been seen for this
                                     long is dropped (the page reports every 30 s while open)
  IDLORA_BACKGROUND_WORKERS     1    threads computing the pages' scans, sweeps and projections
  IDLORA_MAX_BACKGROUND_JOBS    8    jobs queued or running in that pool, all sessions together
  IDLORA_MAX_JOBS_PER_SESSION   2    of them, per user

A run's time is estimated from this server's own measurements (`idlora_core.jobs.throughput`:
finished runs of the same model, method, batch and sequence length; the default guess
SECONDS_PER_STEP for MiniLM when nothing was measured). A study's size is computed from the
lengths of its grid's axes (`study_size`), never by expanding the grid, so a 172,010-run grid is
refused in milliseconds. Every refusal is a LimitError whose one line gives the estimate and the
setting. No Streamlit here.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields
from pathlib import Path

from idlora_core.config import RunConfig
from idlora_core.jobs import throughput
from idlora_core.study.config import StudyConfig
from idlora_core.study.grid import method_values

SECONDS_PER_STEP = throughput.SECONDS_PER_STEP  # the fallback when nothing was measured (MiniLM, 2 CPU cores)
GB = 1e9


class LimitError(ValueError):
    """A submission over one of the server's limits; its message is one line with the estimate."""


class NeedsConfirmation(LimitError):
    """A run whose estimated time is over the room's limit (IDLORA_MAX_RUN_MINUTES): it starts
    only when the user confirms `confirm_label(seconds)`; `seconds` and `source` are the estimate."""

    def __init__(self, message: str, seconds: float, source: str) -> None:
        super().__init__(message)
        self.seconds, self.source = seconds, source


@dataclass(frozen=True)
class ServerLimits:
    """The server's limits (see the module docstring for the variables and their defaults)."""

    queued_per_user: int = 6
    studies_per_user: int = 1
    run_steps: int = 3000
    study_runs: int = 200
    run_memory_gb: float = 8.0
    run_minutes: float = 10.0
    refuse_run_minutes: float = 120.0
    ticket_ttl_minutes: float = 10.0
    background_workers: int = 1
    background_jobs: int = 8
    jobs_per_session: int = 2


ENV = {"queued_per_user": "IDLORA_MAX_QUEUED_PER_USER", "studies_per_user": "IDLORA_MAX_STUDIES_PER_USER",
       "run_steps": "IDLORA_MAX_RUN_STEPS", "study_runs": "IDLORA_MAX_STUDY_RUNS",
       "run_memory_gb": "IDLORA_MAX_RUN_MEMORY_GB", "run_minutes": "IDLORA_MAX_RUN_MINUTES",
       "refuse_run_minutes": "IDLORA_REFUSE_RUN_MINUTES", "ticket_ttl_minutes": "IDLORA_TICKET_TTL_MINUTES",
       "background_workers": "IDLORA_BACKGROUND_WORKERS", "background_jobs": "IDLORA_MAX_BACKGROUND_JOBS",
       "jobs_per_session": "IDLORA_MAX_JOBS_PER_SESSION"}
_MAY_BE_ZERO = {"run_memory_gb", "run_minutes", "refuse_run_minutes"}  # 0 = no cap / never asks


def server_limits() -> ServerLimits:
    """Return the limits set in the environment (defaults where unset); raises ValueError naming
    the variable for a value that is not a number, or below 1 (below 0 where 0 means "off")."""
    values = {}
    for field in fields(ServerLimits):
        name = ENV[field.name]
        raw = os.environ.get(name, "").strip()
        if not raw:
            continue
        kind = float if field.type in ("float", float) else int
        try:
            value = kind(raw)
        except ValueError:
            value = None
        low = 0 if field.name in _MAY_BE_ZERO else 1
        if value is None or not math.isfinite(value) or value < low:
            raise ValueError(f"{name} must be a {'number' if kind is float else 'whole number'} "
                             f">= {low}, got {raw[:40]!r}")
        values[field.name] = value
    return ServerLimits(**values)


def hours(seconds: float) -> str:
    """Return a duration as '12 min' or '3.5 h'."""
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:,.1f} h"


def check_share(owned: int, adding: int, cap: int, what: str, setting: str) -> None:
    """Raise LimitError when a user holding `owned` items (runs, studies) would pass `cap` by
    `adding` more."""
    if owned + adding > cap:
        raise LimitError(f"refused: you have {owned} {what} queued or running and this adds {adding}; "
                         f"this server allows {cap} per user ({setting}). Withdraw or stop some, or wait")


def confirm_label(seconds: float, what: str = "this run") -> str:
    """Return the confirmation a run over the room's time limit needs, naming its estimate
    ("I know this run takes about 40 min"; `what`: "each run" for a study)."""
    return f"I know {what} takes about {throughput.minutes(seconds)}"


def check_runs(configs: list[RunConfig], memory_bytes: list[int] | None = None,
               limits: ServerLimits | None = None, *, runs_root: str | Path | None = None,
               estimates: list[throughput.Estimate] | None = None, confirmed: bool = False) -> float:
    """Return the estimated seconds of `configs` together (one `throughput.Estimate` per config:
    `estimates`, else measured in `runs_root`, else the default guess); raise LimitError when a
    run has more steps than IDLORA_MAX_RUN_STEPS, an estimated memory (`memory_bytes`, one per
    config, `idlora_core.training.preflight`) above IDLORA_MAX_RUN_MEMORY_GB or an estimated
    time above IDLORA_REFUSE_RUN_MINUTES, and NeedsConfirmation when a run's time is above
    IDLORA_MAX_RUN_MINUTES and not `confirmed`."""
    limits = limits or server_limits()
    steps = [c.train.steps for c in configs]
    if estimates is None:
        estimates = throughput.estimate_runs(configs, runs_root)
    seconds = sum(e.seconds for e in estimates)
    if steps and max(steps) > limits.run_steps:
        raise LimitError(f"refused: {len(steps)} run(s) x up to {max(steps):,} steps ≈ {hours(seconds)} "
                         f"({estimates[0].source if estimates else 'no estimate'}); this server allows {limits.run_steps:,} steps "
                         "per run (IDLORA_MAX_RUN_STEPS)")
    if memory_bytes and limits.run_memory_gb and max(memory_bytes) > limits.run_memory_gb * GB:
        raise LimitError(f"refused: a run needs about {max(memory_bytes) / GB:.1f} GB (base model, "
                         "activations at its batch size and sequence length, adapters); this server "
                         f"allows {limits.run_memory_gb:g} GB per run (IDLORA_MAX_RUN_MEMORY_GB): lower "
                         "batch_size or seq_len")
    longest = max(estimates, key=lambda e: e.seconds, default=None)
    smaller = "lower steps, batch size, sequence length or the number of target layers"
    if longest is not None and limits.refuse_run_minutes and longest.seconds > limits.refuse_run_minutes * 60:
        raise LimitError(f"refused: a run takes about {throughput.minutes(longest.seconds)} ({longest.source}); "
                         f"this server allows {limits.refuse_run_minutes:g} min per run "
                         f"(IDLORA_REFUSE_RUN_MINUTES): {smaller}")
    if longest is not None and limits.run_minutes and longest.seconds > limits.run_minutes * 60 and not confirmed:
        raise NeedsConfirmation(
            f"a run takes about {throughput.minutes(longest.seconds)} ({longest.source}), over this room's "
            f"{limits.run_minutes:g} min per run (IDLORA_MAX_RUN_MINUTES): tick \"{confirm_label(longest.seconds)}\" "
            f"to start it anyway, or {smaller}", longest.seconds, longest.source)
    return seconds


def study_size(study: StudyConfig) -> int:
    """Return an upper bound on the study's runs from the lengths of its grid's axes (per method,
    the product of the values it uses; x trials in TPE mode), without expanding the grid."""
    cells = sum(math.prod(len(v) for v in method_values(study, m).values())
                for m in dict.fromkeys(study.grid.method))
    return cells * (study.grid.learning_rate.trials if study.grid.tpe else 1)


def check_study(study: StudyConfig, limits: ServerLimits | None = None) -> int:
    """Return `study_size(study)`; raise LimitError, before any grid is expanded, when it is over
    IDLORA_MAX_STUDY_RUNS or a run of it has more steps than IDLORA_MAX_RUN_STEPS."""
    limits = limits or server_limits()
    size = study_size(study)
    steps = max(study.grid.steps or [study.base.train.steps])
    seconds = size * steps * SECONDS_PER_STEP
    if size > limits.study_runs:
        raise LimitError(f"refused: this grid makes up to {size:,} runs (≈ {hours(seconds)} at "
                         f"{SECONDS_PER_STEP} s/step); this server allows {limits.study_runs:,} runs per "
                         "study (IDLORA_MAX_STUDY_RUNS): fewer ranks, k, learning rates or seeds")
    if steps > limits.run_steps:
        raise LimitError(f"refused: runs of {steps:,} steps; this server allows {limits.run_steps:,} "
                         "steps per run (IDLORA_MAX_RUN_STEPS)")
    return size
