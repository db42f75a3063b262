"""The lab report export: one zip with what a student needs for a report.

`report_files(...)` returns {file name: bytes}: README.txt (what is inside and the settings),
sweep_summary.csv (per layer at one rank), selection_means.csv, sweep_full.csv, run_comparison.csv
— readable headers, rounded numbers — and the figures as PNG (plotly + kaleido, which drives the
machine's Chromium; where no browser is available the figures are written as HTML instead and
README.txt says so). `report_zip(files)` packs them. No Streamlit here: the page gathers the
inputs and hands a callable to `st.download_button`, so the zip is built only on click.
"""

from __future__ import annotations

import io
import math
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio

from analysis.views import layer_summary, selection_means, short_label

HEADERS: dict[str, str] = {
    "layer": "layer", "label": "block · type", "m": "rows m", "n": "columns n",
    "k": "clusters k", "r": "rank r", "selection": "skeleton-row selection",
    "feasible": "feasible", "total_rank": "total rank k·r",
    "min_cluster_size": "minimum cluster size",
    "rel_fro_error": "cluster-wise ID error (rel. Frobenius)",
    "svd_same_r": "global SVD error, same r (rel. Frobenius)",
    "svd_same_total": "global SVD error, same k·r (rel. Frobenius)",
    "global_id_same_r": "global ID error, same r (rel. Frobenius)",
    "svd_spec_same_r": "global SVD error, same r (rel. spectral)",
    "global_id_spec_same_r": "global ID error, same r (rel. spectral)",
    "bound_cluster": "bound, cluster-wise ID (rel. spectral)",
    "bound_global": "bound, global ID (rel. spectral)",
    "rel_spec_error": "cluster-wise ID error (rel. spectral)",
    "gain_vs_svd": "gain over SVD(r) (difference)",
    "gap_vs_total": "gap to SVD(k·r)",
    "trainable_idlora": "ID-LoRA trainable parameters",
    "trainable_lora": "LoRA trainable parameters",
    "seconds": "seconds", "randomized": "randomized path",
    "layers": "layers", "mean_error": "mean cluster-wise ID error",
    "mean_svd_same_r": "mean global SVD error, same r", "mean_gain": "mean gain over SVD(r)",
    "run": "run", "method": "method", "state": "state", "steps": "steps",
    "trainable_params": "trainable parameters", "pct_of_lora": "% of LoRA's trainable",
    "final_train_loss": "final training loss (nats)", "peak_memory_mb": "peak memory (MiB)",
}
DECIMALS = {"seconds": 2, "pct_of_lora": 1, "peak_memory_mb": 0, "bound_cluster": 2,
            "bound_global": 2}


def readable(table: pd.DataFrame, decimals: int = 4) -> pd.DataFrame:
    """Return `table` with readable headers and floats rounded (errors to `decimals` places)."""
    out = table.copy()
    for column in out.columns:
        if pd.api.types.is_float_dtype(out[column]):
            out[column] = out[column].round(DECIMALS.get(column, decimals))
    names = {c: HEADERS.get(c, c.replace("eval_", "eval ").replace("_", " ")) for c in out.columns}
    return out.rename(columns=names)


RUN_NAMES = {"loss": "training loss", "step_seconds": "mean step (s)",
             "trainable_params": "trainable parameters", "total_params": "all parameters"}
RUN_FORMATS = {"step_seconds": "{:.2f}", "trainable_params": "{:,.0f}",
               "total_params": "{:,.0f}", "step": "{:.0f}"}


def runs_display(table: pd.DataFrame) -> pd.DataFrame:
    """Return the live runs table as text: readable headers, numbers rounded (4 decimals unless
    RUN_FORMATS says otherwise), and "—" where a starting run has no value yet (never "None")."""
    shown = pd.DataFrame(index=table.index)
    for column in table.columns:
        fmt = RUN_FORMATS.get(column, "{:.4f}")
        shown[RUN_NAMES.get(column, column.replace("_", " "))] = [
            "—" if v is None or (isinstance(v, float) and math.isnan(v))
            else fmt.format(v) if isinstance(v, (int, float)) and not isinstance(v, bool)
            else str(v) for v in table[column]]
    return shown


# A run's headline metric: the main metric of its first task, the first of these it has.
MAIN_METRICS = ("accuracy", "exact_match", "refusal_rate_harmful")
COLLAPSED_NOTE = "collapsed: predicts one class"
_NOT_HEADLINE = ("loss", "top_class_share")


def headline(metrics: Mapping[str, Any], tasks: Sequence[str] = ()) -> dict[str, Any]:
    """Return a run's headline metric from its final (or latest) metrics: {"task", "metric"
    (e.g. "accuracy"), "name" (`metric_name`), "validation" (eval_<task>_<metric>), "test"
    (test_<task>_<metric>)}; a value the run has not written is None, and so is "name" while
    it has written neither.

    The task is `tasks[0]` (the run's first task), else the first task whose main metric is
    in `metrics`; its metric is the first of MAIN_METRICS it has, else its first other score.
    With none: the validation and test loss (metric "loss", task None).
    """
    first = list(tasks[:1]) or [key[len("eval_"):-len(m) - 1] for key in metrics for m in MAIN_METRICS
                                if key.startswith("eval_") and key.endswith(f"_{m}")
                                and len(key) > len(f"eval__{m}")]
    for task in first[:1]:
        own = [k[len(f"eval_{task}_"):] for k in metrics if k.startswith(f"eval_{task}_")]
        found = [m for m in MAIN_METRICS if m in own] + [m for m in own if m not in _NOT_HEADLINE]
        if found:
            return _headline(metrics, task, found[0])
    return _headline(metrics, None, "loss")


def _headline(metrics: Mapping[str, Any], task: str | None, metric: str) -> dict[str, Any]:
    key = f"{task}_{metric}" if task else metric
    values = {"validation": _number(metrics.get(f"eval_{key}")), "test": _number(metrics.get(f"test_{key}"))}
    written = any(v is not None for v in values.values())
    return {"task": task, "metric": metric, "name": metric_name(metric, task) if written else None} | values


def metric_name(metric: str, task: str | None = None) -> str:
    """Return a metric's readable name: "accuracy (rotten tomatoes)", "loss (nats)"."""
    if metric == "loss":
        return "loss (nats)"
    return metric.replace("_", " ") + (f" ({task.replace('_', ' ')})" if task else "")


def _number(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


LEAD = ("label", "run_label", "method", "validation_metric", "test_metric", "trainable_params",
        "loss", "final_train_loss", "note")


def lead_columns(table: pd.DataFrame) -> pd.DataFrame:
    """Return a runs or comparison table with its columns in reading order: the run label,
    method, validation metric, test metric, trainable parameters, training loss, note, the rest.

    The metric columns are "validation_metric" / "test_metric", and "metric" holds each row's
    `metric_name`. When all rows share one, the two columns are named by it ("validation
    accuracy (rotten tomatoes)") and "metric" is dropped; otherwise they read "validation
    metric" / "test metric" and "metric" follows them.
    """
    names = table["metric"].dropna().unique() if "metric" in table.columns else []
    if len(names) == 1:
        table = table.drop(columns="metric")
    lead = [c for c in (*LEAD[:5], "metric", *LEAD[5:]) if c in table.columns]
    out = table[lead + [c for c in table.columns if c not in lead]]
    prefix = f" {names[0]}" if len(names) == 1 else " metric"
    return out.rename(columns={"validation_metric": "validation" + prefix, "test_metric": "test" + prefix})


def _csv(table: pd.DataFrame) -> bytes:
    return readable(table).to_csv(index=False).encode("utf-8")


def _comparison_first(comparison: pd.DataFrame) -> pd.DataFrame:
    """Return the comparison table (`idlora_core.compare` rows) with the run, method, headline
    metrics (`headline`, validation and test), trainable parameters and training loss first."""
    if "validation_metric" in comparison:
        table = comparison
    else:
        tops = [headline(row.dropna().to_dict()) for _, row in comparison.iterrows()]
        table = comparison.assign(metric=[t["name"] for t in tops],
                                  validation_metric=[t["validation"] for t in tops],
                                  test_metric=[t["test"] for t in tops])
    table = lead_columns(table.drop(columns="task", errors="ignore"))
    return table[[c for c in ("run",) if c in table] + [c for c in table.columns if c != "run"]]


EXPORT_SIZE = (1100, 600)  # PNG width, height in pixels
EXPORT_MARGIN = {"l": 100, "r": 60, "t": 90, "b": 90}  # room for tick labels, axis and figure titles
FIGURE_TITLES = {
    "error_vs_rank_frobenius": "Error against rank, Frobenius norm",
    "error_vs_rank_spectral": "Error against rank, spectral norm",
    "gain_per_layer": "Gain of cluster-wise ID over SVD, per layer",
    "tradeoff": "Validation metric against trainable parameters",
    "training_loss": "Training loss",
}


def export_title(stem: str) -> str:
    """Return the title a report figure file `stem` gets ("heatmap_id" -> "Relative error, k x r,
    selection id")."""
    if stem.startswith("heatmap_"):
        return f"Relative error, k x r, selection {stem[len('heatmap_'):]}"
    return FIGURE_TITLES.get(stem, stem.replace("_", " ").capitalize())


def export_layout(fig: go.Figure, title: str) -> go.Figure:
    """Return a copy of `fig` laid out for a PNG: its title (kept when it has one), fixed margins
    wide enough for the tick labels, axis titles pushed out of the plot (automargin) and every
    axis's ticks shown, so nothing is clipped at EXPORT_SIZE."""
    out = go.Figure(fig)
    text = out.layout.title.text or title
    out.update_layout(title={"text": text, "x": 0.5, "xanchor": "center"}, margin=EXPORT_MARGIN,
                      width=EXPORT_SIZE[0], height=EXPORT_SIZE[1])
    out.update_xaxes(automargin=True, showticklabels=True)
    out.update_yaxes(automargin=True, showticklabels=True)
    return out


def figure_files(figures: dict[str, go.Figure]) -> dict[str, bytes]:
    """Return {"<stem>.png": PNG bytes} for every figure (laid out by `export_layout`), rendered
    in one kaleido browser session; when kaleido or a Chromium browser is missing,
    {"<stem>.html": standalone page}."""
    if not figures:
        return {}
    figures = {stem: export_layout(fig, export_title(stem)) for stem, fig in figures.items()}
    with tempfile.TemporaryDirectory() as folder:
        paths = [Path(folder) / f"{stem}.png" for stem in figures]
        try:
            pio.write_images(list(figures.values()), paths, width=EXPORT_SIZE[0], height=EXPORT_SIZE[1])
            return {path.name: path.read_bytes() for path in paths}
        except Exception:  # noqa: BLE001 - kaleido missing or no browser: keep them as HTML
            return {f"{stem}.html": fig.to_html(include_plotlyjs="cdn").encode("utf-8")
                    for stem, fig in figures.items()}


def report_files(
    sweep: pd.DataFrame | None,
    summary_r: int | None,
    comparison: pd.DataFrame | None,
    figures: dict[str, go.Figure],
    settings: dict[str, object],
) -> dict[str, bytes]:
    """Return the report's files: {name: bytes} (see the module docstring).

    sweep: the Decomposition lab's table (None: no sweep yet); summary_r: the summary's rank;
    comparison: the run comparison table (`idlora_core.training.compare`), None when no run
    finished; figures: {file stem: figure}; settings: shown in README.txt.
    """
    files: dict[str, bytes] = {}
    lines = ["ID-LoRA Lab report", f"created {datetime.now(UTC):%Y-%m-%d %H:%M} UTC", "",
             "Settings:"] + [f"  {k}: {v}" for k, v in settings.items()] + ["", "Files:"]
    if sweep is not None and summary_r is not None:
        summary = layer_summary(sweep, summary_r)
        summary.insert(1, "label", [short_label(name) for name in summary["layer"]])
        files["sweep_summary.csv"] = _csv(summary)
        lines.append(f"  sweep_summary.csv   best (k, selection) per layer at r = {summary_r}; "
                     "gain = SVD(r) error - cluster-wise ID error (negative = a loss)")
        ks = sorted(int(k) for k in sweep[(sweep["r"] == summary_r) & sweep["feasible"]]["k"].unique())
        if ks:
            files["selection_means.csv"] = _csv(selection_means(sweep, max(ks), summary_r))
            lines.append(f"  selection_means.csv  mean error over the layers at k = {max(ks)}, "
                         f"r = {summary_r}")
        files["sweep_full.csv"] = _csv(sweep)
        lines.append("  sweep_full.csv      every (layer, k, r, selection) of the sweep; "
                     + _spectral_note(sweep))
    if comparison is not None and not comparison.empty:
        files["run_comparison.csv"] = _csv(_comparison_first(comparison))
        lines.append("  run_comparison.csv  the fine-tune runs (python -m idlora_core.compare), "
                     "the validation and test metric of each run's first task first")
    rendered = figure_files(figures)
    for name, data in rendered.items():
        files[f"figures/{name}"] = data
        lines.append(f"  figures/{name}")
    if any(name.endswith(".html") for name in rendered):
        lines += ["", "PNG export needs kaleido and a Chromium browser; they were not available, "
                  "so the figures are HTML pages (open them in a browser)."]
    lines += ["", "Errors are relative: Frobenius errors divided by ||W||_F, spectral errors "
              "and bounds by sigma_1(W). Theory: docs/THEORY.md."]
    files["README.txt"] = ("\n".join(lines) + "\n").encode("utf-8")
    return files


def _spectral_note(sweep: pd.DataFrame) -> str:
    # which layers have the measured spectral errors (the lab measures the inspected layer's)
    measured = sweep.loc[sweep["feasible"] & sweep["rel_spec_error"].notna(), "layer"].unique()
    if len(measured) == 0:
        return ("the measured spectral errors are empty (the Decomposition lab measures them "
                "for the layer shown in its spectral panel)")
    names = ", ".join(short_label(name) for name in measured)
    return f"measured spectral errors for {len(measured)} layer(s): {names} (empty for the others)"


def report_zip(files: dict[str, bytes]) -> bytes:
    """Return the zip archive (deflated) of `files`."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(f"idlora-lab-report/{name}", data)
    return buffer.getvalue()
