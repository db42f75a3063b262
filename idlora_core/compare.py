"""`python -m idlora_core.compare RUN_DIR... [--csv F] [--markdown F]`: compare finished runs.

One row per run (`training/compare.py`). `python -m idlora_core.compare STUDY_DIR` prints a
study's summary (`study/summary.py`); `... STUDY_DIR --pair idlora:r8 lora:r4` the paired
difference of two budgets seed by seed. This module sits on top of both `training/` and `study/`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from idlora_core.config import ConfigError
from idlora_core.models import set_hub_defaults
from idlora_core.study.runner import summary_table, trials_table
from idlora_core.study.storage import read_study_folder
from idlora_core.study.summary import paired_difference, parse_budget
from idlora_core.study.summary import to_markdown as study_markdown
from idlora_core.training.compare import compare_runs, to_markdown, to_text, write_csv


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit code (1 when a folder is not a run)."""
    set_hub_defaults()
    parser = argparse.ArgumentParser(prog="python -m idlora_core.compare",
                                     description="Compare training runs side by side.")
    parser.add_argument("runs", nargs="+", help="run output folders, or one study folder (prints "
                        "its summary: best learning rate, mean and 95 %% CI over seeds, Pareto)")
    parser.add_argument("--csv", help="also write the table as CSV to this file")
    parser.add_argument("--markdown", help="also write the table as Markdown to this file")
    parser.add_argument("--pair", nargs=2, metavar=("A", "B"),
                        help="with one study folder: the paired difference A - B of two budgets (METHOD, "
                        "METHOD:rN, METHOD:rN:kM or METHOD:kM, @VARIANT for a grid.variants arm, e.g. "
                        "idlora@planned) on the test metric, seed by seed, each at its "
                        "validation-chosen learning rate; --csv / --markdown then write the per-seed table")
    args = parser.parse_args(argv)
    study = len(args.runs) == 1 and (Path(args.runs[0]) / "study.json").is_file()
    if args.pair:
        if not study:
            print("error: --pair needs exactly one study folder (holding study.json)", file=sys.stderr)
            return 1
        return _pair_main(args)
    if study:
        return _study_main(args)
    try:
        rows = compare_runs(args.runs)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(to_text(rows), end="")
    if args.csv:
        write_csv(rows, args.csv)
    if args.markdown:
        Path(args.markdown).write_text(to_markdown(rows), encoding="utf-8")
    return 0


def _study_main(args: argparse.Namespace) -> int:
    """Print the summary (one row per method, r, k) of the study folder `args.runs[0]`."""
    try:
        table = summary_table(args.runs[0])
    except (ConfigError, KeyError, ValueError) as exc:
        print(f"error: {args.runs[0]}: {exc}", file=sys.stderr)
        return 1
    print(table.to_string(index=False))
    if args.csv:
        table.to_csv(args.csv, index=False)
    if args.markdown:
        Path(args.markdown).write_text(study_markdown(table), encoding="utf-8")
    return 0


def _pair_main(args: argparse.Namespace) -> int:
    """Print the paired difference of the budgets `args.pair` in the study folder `args.runs[0]`."""
    try:
        a, b = (parse_budget(text) for text in args.pair)
        cfg, _ = read_study_folder(args.runs[0])
        result = paired_difference(trials_table(args.runs[0]), cfg.metric, a, b, cfg.direction)
    except (ConfigError, KeyError, ValueError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    print(result.text(), end="")
    if args.csv:
        result.table.to_csv(args.csv, index=False)
    if args.markdown:
        Path(args.markdown).write_text(study_markdown(result.table), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
