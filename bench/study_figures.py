"""Figures and tables of a finished study for docs/STUDIES.md (PNG export needs kaleido + Chromium).

    python bench/study_figures.py runs/studies/minilm-sentiment --out docs/figures --prefix minilm

Writes PREFIX-tradeoff.png and PREFIX-lr.png (plotly static export through kaleido) and prints
the summary table, the per-method learning-rate table (mean accuracy over ranks and seeds)
and the study's wall time in Markdown.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from analysis.studies import study_tables
from app.figures import study_lr_figure as lr_figure
from app.figures import study_tradeoff_figure as tradeoff_figure
from idlora_core.study.summary import to_markdown


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("study")
    parser.add_argument("--out", default="docs/figures")
    parser.add_argument("--prefix", default="study")
    args = parser.parse_args()
    trials, summary, meta = study_tables(args.study)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    metric = meta["metric"]
    tradeoff_figure(summary, metric, meta["direction"]).update_layout(width=900, height=520).write_image(
        out / f"{args.prefix}-tradeoff.png")
    lr_figure(trials, metric).update_layout(width=900, height=520).write_image(out / f"{args.prefix}-lr.png")
    print(to_markdown(summary))
    done = trials[trials.state == "COMPLETE"]
    by_lr = done.groupby(["method", "learning_rate"], dropna=False)[metric].agg(["mean", "min", "count"])
    print(to_markdown(by_lr.reset_index()))
    print(f"trials: {trials.state.value_counts().to_dict()}; median seconds per run by method:")
    print(to_markdown(done.groupby("method").seconds.median().reset_index()))
    pd.set_option("display.width", 200)


if __name__ == "__main__":
    main()
