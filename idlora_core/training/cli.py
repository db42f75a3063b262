"""Command line: `python -m idlora_core.train CONFIG.yaml [--set train.steps=50 ...] [--resume | --overwrite]`.

The same command runs data-parallel under `accelerate launch --num_processes N -m
idlora_core.train CONFIG.yaml` (add `--cpu` for gloo on CPUs). SIGINT/SIGTERM stop the run
after the current step with a checkpoint (at once while the model and data load); a second
SIGINT aborts at once. The output folder is locked for the run and never overwritten without
--overwrite (see training/run_folder.py).
Exit codes: 0 finished, 1 failed (bad config, NaN loss, error), 130 cancelled.
"""

from __future__ import annotations

import argparse
import signal
import sys
import traceback
import warnings
from pathlib import Path

from idlora_core.config import ConfigDeprecationWarning, ConfigError, apply_overrides, load_config
from idlora_core.training.callbacks import StopFlag
from idlora_core.training.run_files import RunState


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Return the parsed command-line arguments."""
    parser = argparse.ArgumentParser(
        prog="python -m idlora_core.train",
        description="Fine-tune a model with ID-LoRA / LoRA / DoRA / HydraLoRA / full from a YAML config.",
    )
    parser.add_argument("config", help="the run's YAML configuration file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set train.steps=50 (repeatable)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the last checkpoint in OUTPUT/checkpoints")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the run already in the output folder (its files are moved to "
                             "OUTPUT/replaced-<time>/ once the new run has loaded)")
    parser.add_argument("--output-dir", help="shorthand for --set output_dir=DIR")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser.parse_args(argv)


def install_signal_handlers(stop: StopFlag) -> None:
    """Make SIGINT/SIGTERM request a stop after the current step (a second SIGINT interrupts)."""

    def handler(signum, _frame):
        name = signal.Signals(signum).name
        if stop.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if stop.immediate:
            print(f"\n{name} received: stopping now (training has not started)", file=sys.stderr)
        else:
            print(f"\n{name} received: stopping after the current step (checkpoint kept)", file=sys.stderr)
        stop.request(name)  # raises RunCancelled while the model and data load

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def warn_single_cpu_launch() -> None:
    """Warn when `accelerate launch --cpu --num_processes N>1` started only this one process.

    Without an MPI hostfile accelerate's CPU launcher runs a single process (it sets
    MASTER_PORT but no WORLD_SIZE); the torchrun-based `--multi_gpu` launcher starts N
    processes and, with no GPU present, they train on the CPU over gloo.
    """
    import os

    env = os.environ
    if env.get("ACCELERATE_USE_CPU", "").lower() == "true" and "MASTER_PORT" in env and "WORLD_SIZE" not in env:
        print("warning: `accelerate launch --cpu` started ONE process (several CPU processes need MPI); "
              "for data-parallel CPU training use `accelerate launch --multi_gpu --num_processes N "
              "-m idlora_core.train CONFIG.yaml` or `torchrun --nproc_per_node N -m idlora_core.train "
              "CONFIG.yaml`", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the process exit code."""
    from idlora_core.models import set_hub_defaults

    set_hub_defaults()
    args = parse_args(argv)
    overrides = list(args.overrides) + ([f"output_dir={args.output_dir}"] if args.output_dir else [])
    try:
        with warnings.catch_warnings(record=True) as notes:
            warnings.simplefilter("always", ConfigDeprecationWarning)
            config = apply_overrides(load_config(args.config), overrides) if overrides else load_config(args.config)
    except ConfigError as exc:
        print(f"error: {args.config}: {exc}", file=sys.stderr)
        return 1
    for note in notes:  # a retired key: one line, not a warning with its source line
        if issubclass(note.category, ConfigDeprecationWarning):
            print(f"note: {args.config}: {note.message}", file=sys.stderr)
        else:
            warnings.showwarning(note.message, note.category, note.filename, note.lineno)
    warn_single_cpu_launch()
    stop = StopFlag()
    install_signal_handlers(stop)
    from idlora_core.training.trainer import CHECKPOINT_DIR, failure_reason, run_training

    try:
        result = run_training(config, resume=args.resume, overwrite=args.overwrite, stop=stop,
                              progress=not args.no_progress)
    except KeyboardInterrupt:  # status.json written by run_training when the folder was ours
        return 130
    except Exception as exc:  # noqa: BLE001 - status.json written by run_training, then exit 1
        if not isinstance(exc, (ValueError, OSError, MemoryError)):
            traceback.print_exc()
        print(f"error: {failure_reason(exc, Path(config.output_dir) / CHECKPOINT_DIR)}", file=sys.stderr)
        return 1
    stream = sys.stdout if result.state == RunState.finished else sys.stderr
    print(f"{result.state}: {result.message}", file=stream)
    print(f"outputs: {result.output_dir}", file=stream)
    return {RunState.finished: 0, RunState.cancelled: 130}.get(result.state, 1)


if __name__ == "__main__":
    sys.exit(main())
