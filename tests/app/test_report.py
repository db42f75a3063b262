"""The lab report export: the zip holds the expected files, readable headers, rounded numbers
and the figures (PNG when kaleido finds a browser, HTML otherwise)."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pandas as pd

from analysis.sweep import SweepSpec, add_spectral, sweep_layer
from app import figures
from app.report import readable, report_files, report_zip


def _sweep() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    frames = []
    for name in ("encoder.layer.0.attention.self.query", "encoder.layer.1.attention.self.value"):
        W = rng.normal(size=(48, 24)) @ np.diag(np.linspace(2.0, 0.1, 24))
        spec = SweepSpec(ks=[1, 4], ranks=[2, 4], selections=["id", "random"])
        frames.append(sweep_layer(W, spec, layer=name).table)
    return pd.concat(frames, ignore_index=True)


def test_report_zip_holds_tables_with_readable_headers_and_figures():
    sweep = _sweep()
    comparison = pd.DataFrame([
        {"run": "a", "method": "idlora", "state": "finished", "steps": 60,
         "trainable_params": 38018, "pct_of_lora": 51.03224247630809,
         "final_train_loss": 0.678123456, "seconds": 123.456789, "peak_memory_mb": None,
         "eval_rotten_tomatoes_accuracy": 0.71875, "test_rotten_tomatoes_accuracy": 0.7025},
        {"run": "b", "method": "lora", "state": "finished", "steps": 60,
         "trainable_params": 74498, "pct_of_lora": 100.0, "final_train_loss": 0.646,
         "seconds": 99.0, "peak_memory_mb": None, "eval_rotten_tomatoes_accuracy": 0.796875,
         "test_rotten_tomatoes_accuracy": 0.77},
    ])
    summary_fig = figures.gain_figure(
        sweep[(sweep["r"] == 4) & (sweep["k"] == 4) & (sweep["selection"] == "id")].assign(
            gain_vs_svd=lambda t: t["svd_same_r"] - t["rel_fro_error"]), 4)
    files = report_files(sweep, 4, comparison, {"gain_per_layer": summary_fig},
                         {"model": "minilm"})
    data = report_zip(files)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = sorted(n.removeprefix("idlora-lab-report/") for n in archive.namelist())
        read = {n.removeprefix("idlora-lab-report/"): archive.read(n) for n in archive.namelist()}
    assert names[:4] == ["README.txt", "figures/gain_per_layer.html", "run_comparison.csv",
                         "selection_means.csv"] or names[:4] == [
        "README.txt", "figures/gain_per_layer.png", "run_comparison.csv", "selection_means.csv"]
    assert {"sweep_full.csv", "sweep_summary.csv"} <= set(names)
    figure = next(n for n in names if n.startswith("figures/"))
    if figure.endswith(".png"):
        assert read[figure][:8] == b"\x89PNG\r\n\x1a\n"

    runs = pd.read_csv(io.BytesIO(read["run_comparison.csv"]))
    # the validation and test metric of the run's first task lead, the training loss follows
    assert list(runs.columns[:8]) == ["run", "method", "validation accuracy (rotten tomatoes)",
                                      "test accuracy (rotten tomatoes)", "trainable parameters",
                                      "final training loss (nats)", "state", "steps"]
    assert runs["test accuracy (rotten tomatoes)"].tolist() == [0.7025, 0.77]
    assert runs["% of LoRA's trainable"].tolist() == [51.0, 100.0]
    assert runs["final training loss (nats)"].tolist() == [0.6781, 0.646]
    assert "eval rotten tomatoes accuracy" in runs.columns
    summary = pd.read_csv(io.BytesIO(read["sweep_summary.csv"]))
    assert {"block · type", "gain over SVD(r) (difference)",
            "cluster-wise ID error (rel. Frobenius)"} <= set(summary.columns)
    assert summary["block · type"].tolist() == ["0 · q", "1 · v"]
    gains = summary["gain over SVD(r) (difference)"]
    expected = (summary["global SVD error, same r (rel. Frobenius)"]
                - summary["cluster-wise ID error (rel. Frobenius)"])
    assert np.allclose(gains, expected, atol=2e-4)  # rounded to 4 places each
    assert all(len(str(v).split(".")[-1]) <= 4 for v in gains)
    means = pd.read_csv(io.BytesIO(read["selection_means.csv"]))
    assert sorted(means["skeleton-row selection"]) == ["id", "random"]
    readme = read["README.txt"].decode()
    assert "model: minilm" in readme and "sweep_summary.csv" in readme


def test_readable_rounds_floats_and_keeps_unknown_columns_readable():
    table = pd.DataFrame({"rel_fro_error": [0.123456789], "eval_loss": [0.5], "seconds": [1.23456]})
    out = readable(table)
    assert list(out.columns) == ["cluster-wise ID error (rel. Frobenius)", "eval loss", "seconds"]
    assert out.iloc[0].tolist() == [0.1235, 0.5, 1.23]


def test_runs_display_has_no_none_cells_and_rounds():
    from app.report import runs_display

    table = pd.DataFrame([
        {"label": "LoRA r=8", "state": "running", "step": 3, "loss": 0.69314718,
         "trainable_params": 74498, "step_seconds": 2.71828, "eval_loss": None},
        {"label": "ID-LoRA r=8 k=4", "state": "starting", "step": None, "loss": None,
         "trainable_params": None, "step_seconds": None, "eval_loss": float("nan")},
    ])
    shown = runs_display(table)
    assert list(shown.columns) == ["label", "state", "step", "training loss",
                                   "trainable parameters", "mean step (s)", "eval loss"]
    assert shown.iloc[0].tolist() == ["LoRA r=8", "running", "3", "0.6931", "74,498", "2.72", "—"]
    assert "None" not in shown.to_string() and "nan" not in shown.to_string()


def test_headline_is_the_first_tasks_main_metric_else_the_loss():
    from app.report import headline

    final = {"eval_loss": 0.4, "eval_rotten_tomatoes_loss": 0.4, "eval_rotten_tomatoes_accuracy": 0.8,
             "eval_rotten_tomatoes_top_class_share": 0.6, "test_rotten_tomatoes_accuracy": 0.78}
    top = headline(final)  # the task is read from the keys
    assert (top["task"], top["metric"], top["validation"], top["test"]) == (
        "rotten_tomatoes", "accuracy", 0.8, 0.78)
    assert top["name"] == "accuracy (rotten tomatoes)"
    causal = {"eval_loss": 1.2, "eval_math_exact_match": 0.25, "eval_code_exact_match": 0.5}
    assert headline(causal, ["code"])["validation"] == 0.5  # the run's first task
    assert headline({"eval_loss": 1.2, "eval_math_loss": 1.1}, ["math"]) == {
        "task": None, "metric": "loss", "name": "loss (nats)", "validation": 1.2, "test": None}
    assert headline({}, ["math"])["name"] is None  # nothing written yet


def test_lead_columns_put_the_metrics_first_and_name_them():
    from app.report import lead_columns

    table = pd.DataFrame([
        {"label": "LoRA r=8", "run": "b", "state": "finished", "loss": 0.4, "method": "lora",
         "trainable_params": 74498, "metric": "accuracy (rotten tomatoes)",
         "validation_metric": 0.8, "test_metric": 0.78},
        {"label": "DoRA r=8", "run": "c", "state": "running", "loss": 0.5, "method": "dora",
         "trainable_params": 80000, "metric": None, "validation_metric": None, "test_metric": None},
    ])
    assert list(lead_columns(table).columns) == [
        "label", "method", "validation accuracy (rotten tomatoes)", "test accuracy (rotten tomatoes)",
        "trainable_params", "loss", "run", "state"]
    mixed = table.assign(metric=["accuracy (rotten tomatoes)", "exact match (math)"])
    assert list(lead_columns(mixed).columns)[:6] == [
        "label", "method", "validation metric", "test metric", "metric", "trainable_params"]


def test_exported_figures_have_title_axis_titles_ticks_and_room_for_them():
    """Every kind of report figure, laid out for export: a title, both axis titles, tick labels
    shown and margins at least EXPORT_MARGIN (nothing clipped at EXPORT_SIZE)."""
    from analysis.views import error_vs_rank, heatmap_grid
    from app.report import EXPORT_MARGIN, EXPORT_SIZE, export_layout, export_title

    sweep = _sweep()
    one = sweep[sweep["layer"] == sweep["layer"].iloc[0]]
    done = pd.DataFrame({"method": ["idlora", "head-only"], "label": ["a", "b"],
                         "trainable_params": [1000, 10], "validation": [0.7, 0.6]})
    built = {
        "heatmap_id": figures.heatmap(heatmap_grid(one, "id"), 0.1, 0.9, colorbar=True),
        "error_vs_rank_frobenius": figures.error_vs_rank_figure(error_vs_rank(one, 4, norm="frobenius"), "err"),
        "tradeoff": figures.tradeoff_figure(done, 0.5, "accuracy (rotten tomatoes)"),
    }
    for stem, fig in built.items():
        out = export_layout(fig, export_title(stem))
        assert out.layout.title.text, stem
        assert out.layout.xaxis.title.text and out.layout.yaxis.title.text, stem
        assert out.layout.xaxis.showticklabels and out.layout.yaxis.showticklabels, stem
        assert out.layout.xaxis.automargin and out.layout.yaxis.automargin, stem
        margin = out.layout.margin
        assert all(getattr(margin, side) >= EXPORT_MARGIN[side] for side in "lrtb"), stem
        assert (out.layout.width, out.layout.height) == EXPORT_SIZE
        assert fig.layout.width is None  # the page's own figure is not changed
    assert export_title("heatmap_random") == "Relative error, k x r, selection random"
    assert "σ_{" not in " ".join(t.name for t in built["error_vs_rank_frobenius"].data)


def test_sweep_full_csv_holds_the_measured_spectral_errors_where_they_were_measured():
    rng = np.random.default_rng(3)
    spec = SweepSpec(ks=[1, 4], ranks=[2, 4], selections=["id", "random"])
    names = ("encoder.layer.0.attention.self.query", "encoder.layer.1.attention.self.value")
    weights = [rng.normal(size=(48, 24)) for _ in names]
    results = [sweep_layer(W, spec, layer=name) for W, name in zip(weights, names, strict=True)]
    results[0] = add_spectral(weights[0], results[0], spec)  # the inspected layer only
    sweep = pd.concat([r.table for r in results], ignore_index=True)
    files = report_files(sweep, 4, None, {}, {})
    csv = pd.read_csv(io.BytesIO(files["sweep_full.csv"]))
    measured = csv["cluster-wise ID error (rel. spectral)"]
    first = (csv["layer"] == names[0]).to_numpy()
    assert measured[first].notna().all() and measured[~first].isna().all()
    # the values: numpy's spectral norm of the residual on the stored clusters and skeletons
    W = weights[0]
    for i in csv.index[first]:
        k, r, selection = csv.loc[i, ["clusters k", "rank r", "skeleton-row selection"]]
        labels = results[0].labels(k)
        residual = np.zeros_like(W)
        for c, rows in enumerate(results[0].skeleton(k, r, selection)):
            X, *_ = np.linalg.lstsq(W[rows].T, W[labels == c].T, rcond=None)
            residual[labels == c] = W[labels == c] - (W[rows].T @ X).T
        expected = np.linalg.norm(residual, 2) / np.linalg.norm(W, 2)
        assert abs(measured[i] - expected) <= 5e-5 + 1e-12  # rounded to 4 places
    assert csv["global ID error, same r (rel. spectral)"][first].notna().all()
    readme = files["README.txt"].decode()
    assert "measured spectral errors for 1 layer(s): 0 · q (empty for the others)" in readme
    plain = report_files(pd.concat([results[1].table]), 4, None, {}, {})["README.txt"].decode()
    assert "the measured spectral errors are empty" in plain
