"""`python -m idlora_core.study STUDY.yaml --out DIR [--storage URL] [--workers N] [--set KEY=VALUE]`.

Runs N worker processes on this machine; the same command on other machines (each with its own
--out, the same study name), pointed at the same `--storage`, joins the same study. Running it
again resumes: finished trials are never repeated, trials whose worker died or went silent are
run once more. One study command per --out at a time. `--dry-run` lists the trials only;
`python -m idlora_core.study DIR --status` lists the cells: done / running (host, heartbeat age) /
stale / failed / pending.
Exit codes: 0 every cell done, 1 bad study file, folder in use, or cells failed / not done,
130 stopped (SIGINT / SIGTERM).
"""

from __future__ import annotations

import argparse
import signal
import sys

from idlora_core.config import ConfigError
from idlora_core.models import error_line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Return the parsed command-line arguments."""
    parser = argparse.ArgumentParser(prog="python -m idlora_core.study",
                                     description="Run a trade-off study: a grid of fine-tunes as Optuna trials.")
    parser.add_argument("study", nargs="?", help="the study YAML (base, grid, metric, direction)")
    parser.add_argument("--out", help="study folder: run folders, study.db, trials.csv, summary.csv")
    parser.add_argument("--storage", help="Optuna storage shared by all workers: an RDB URL "
                        "(sqlite:///f.db, postgresql://...) or a journal file (journal:PATH); "
                        "default: sqlite:///OUT/study.db")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes on this machine (default: one per GPU, else 1)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a study field, e.g. --set grid.seed=[0,1] --set base.train.steps=20")
    parser.add_argument("--dry-run", action="store_true", help="print the trials and exit")
    parser.add_argument("--status", action="store_true",
                        help="with a study folder instead of the YAML: list its cells (done / running with "
                        "host and heartbeat age / stale / failed / pending) and exit")
    parser.add_argument("--worker", metavar="DIR", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def worker_main(out_dir: str) -> int:
    """Run one worker on the study folder `out_dir`; return its exit code."""
    import os

    from idlora_core.study.storage import read_study_folder
    from idlora_core.study.worker import Worker
    from idlora_core.training.callbacks import StopFlag

    cfg, meta = read_study_folder(out_dir)
    stop = StopFlag()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _f: stop.request(signal.Signals(signum).name))
    worker = Worker(cfg, meta, out_dir, meta["storage"], stop, label=f"worker {os.environ.get('IDLORA_WORKER', 0)}")
    worker.run_tpe() if meta.get("tpe") else worker.run_grid()
    return 130 if stop.requested else 0


def status_main(folder: str | None) -> int:
    """Print the cell states of the study folder `folder`; return 0 (1 when it is no study folder)."""
    from idlora_core.study.status import status_text

    if not folder:
        print("error: --status needs the study folder, e.g. python -m idlora_core.study runs/studies/rt --status",
              file=sys.stderr)
        return 1
    try:
        print(status_text(folder), end="")
    except (ConfigError, KeyError, ValueError) as exc:
        line = exc.errors[0] if isinstance(exc, ConfigError) and exc.errors else error_line(exc)
        print(f"error: {folder}: {line}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit code."""
    from idlora_core.models import set_hub_defaults

    set_hub_defaults()
    args = parse_args(argv)
    if args.worker:
        return worker_main(args.worker)
    if args.status:
        return status_main(args.study or args.out)
    if not args.study or not (args.out or args.dry_run):  # a dry run writes nothing
        print("error: give the study YAML and --out DIR, e.g. python -m idlora_core.study "
              "configs/studies/minilm_sentiment.yaml --out runs/studies/minilm", file=sys.stderr)
        return 1
    if args.workers is None:
        from idlora_core.study.runner import gpu_count

        args.workers = max(1, gpu_count())
    if args.workers < 1:
        print(f"error: --workers must be at least 1, got {args.workers}", file=sys.stderr)
        return 1
    from idlora_core.study.config import load_study
    from idlora_core.study.grid import cell_name, expand_grid
    from idlora_core.study.runner import run_study

    try:
        study = load_study(args.study, args.overrides)
        if args.dry_run:
            cells, notes = expand_grid(study)
            for i, cell in enumerate(cells):
                print(cell_name(i, cell))
            for note in notes:
                print(f"note: {note}")
            tpe = study.grid.learning_rate.trials if study.grid.tpe else 1
            print(f"{len(cells) * tpe} runs")
            return 0
        return run_study(study, args.out, args.storage, args.workers)
    except ConfigError as exc:
        print(f"error: {args.study}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
