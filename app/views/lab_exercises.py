"""Lab exercises page: the handout's exercises (docs/LAB.md), each one click away.

"Start exercise N" sets every control the exercise needs on every page and opens its page;
its steps and "what you should see" stay in the sidebar beside the plots. "Reset" puts every
page back to its defaults. The text and the presets come from `analysis/exercises.yaml`.
"""

from __future__ import annotations

import streamlit as st

from app import exercise_panel as panel
from app import url_state
from app.common import init_state

init_state()
st.title("Lab exercises")
url_state.mirror("exercises")
st.caption("The exercises of the lab handout (`docs/LAB.md`, generated from the same file as "
           "these presets). **Start** sets every control the exercise needs — model, layers, "
           "k, r, selections, seed, normalisation — and opens its page; the steps and what you "
           "should see stay in the sidebar. Your other settings go back to their defaults.")
active = st.session_state.get("lab_exercise")
for ex in panel.exercises():
    with st.container(border=True, key=f"exercise_card_{ex.id}"):
        head, button = st.columns([5, 1], vertical_alignment="center")
        head.markdown(f"#### Exercise {ex.id} — {ex.title}\n{ex.minutes} min · {ex.page}"
                      + (" · **active**" if active == ex.id else ""))
        if button.button(f"Start exercise {ex.id}", key=f"exercise_start_{ex.id}",
                         type="primary" if active != ex.id else "secondary"):
            panel.start(ex)
        st.markdown(ex.text("intro"))
        with st.expander("Steps and what you should see"):
            st.markdown(ex.text("steps"))
            st.markdown("**What you should see**\n\n" + ex.text("observe"))
if st.button("Reset every page to its defaults", key="exercise_reset_all"):
    panel.reset()


def _report_inputs():
    """Gather the lab's current tables and figures (nothing is computed that is not stored)."""
    from pathlib import Path

    import pandas as pd

    from analysis.exercises import sweep_params
    from analysis.views import error_vs_rank, heatmap_grid, layer_summary
    from app import figures
    from app.common import get_model
    from app.report import headline
    from app.sweeps import stored_spectral, stored_sweeps
    from idlora_core.training import compare

    state = st.session_state
    loaded = get_model()
    sweep, summary_r, figs = None, None, {}
    settings: dict[str, object] = {"model": loaded.name if loaded else "(none)"}
    layers = list(state.get("lab_layers") or [])
    if loaded is not None and layers:
        params = sweep_params(state)
        sweep = stored_sweeps(loaded, layers, **params)
        settings |= {"layers swept": len(layers)} | params
    if sweep is not None:
        ranks = sorted(int(r) for r in sweep["r"].unique())
        summary_r = state.get("lab_summary_r") if state.get("lab_summary_r") in ranks else \
            ranks[len(ranks) // 2]
        layer = state.get("lab_focus_layer") if state.get("lab_focus_layer") in layers else layers[0]
        one = sweep[sweep["layer"] == layer]
        ks = sorted(int(k) for k in one["k"].unique())
        k = state.get("lab_focus_k") if state.get("lab_focus_k") in ks else max(ks)
        settings |= {"inspected layer": layer, "k for the curves": k, "summary rank": summary_r}
        lo, hi = one["rel_fro_error"].min(), one["rel_fro_error"].max()
        for selection in params["selections"]:
            figs[f"heatmap_{selection}"] = figures.heatmap(heatmap_grid(one, selection), lo, hi, colorbar=True)
        curves = error_vs_rank(one, k, norm="frobenius")
        if not curves.empty:
            figs["error_vs_rank_frobenius"] = figures.error_vs_rank_figure(
                curves, "‖W − Ŵ‖_F / ‖W‖_F (log)")
        spec = stored_spectral(loaded, layer, **params)
        if spec is not None:
            figs["error_vs_rank_spectral"] = figures.error_vs_rank_figure(
                error_vs_rank(spec, k, norm="spectral"), "‖W − Ŵ‖₂ / σ₁(W) (log)")
        summary = layer_summary(sweep, summary_r)
        if len(summary) > 1:
            figs["gain_per_layer"] = figures.gain_figure(summary, summary_r)
    dirs = [h.run_dir for h in state.get("ft_handles", [])]
    comparison = None
    finished = [Path(d) for d in dirs if (Path(d) / "run.json").is_file()]
    if finished:
        rows = compare.compare_runs(finished)
        comparison = pd.DataFrame(rows, columns=compare.columns(rows) if rows else None)
        tops = [headline(row.dropna().to_dict()) for _, row in comparison.iterrows()]
        done = comparison.assign(validation=[t["validation"] for t in tops], label=comparison["run"])
        done = done.dropna(subset=["validation", "trainable_params"]).rename(columns={"steps": "step"})
        names = {t["name"] for t in tops if t["validation"] is not None}
        if not done.empty and len(names) == 1:  # the validation metric, never the last batch's loss
            metric = names.pop()
            chance = state.get("_ft_chance") if metric == "loss (nats)" else None
            figs["tradeoff"] = figures.tradeoff_figure(done, chance, metric)
    tails = state.get("ft_tails") or {}
    frames = {Path(d).name: tail.frame for d, tail in tails.items()}
    methods = dict(zip(comparison["run"], comparison["method"], strict=False)) \
        if comparison is not None else {}
    fig = figures.loss_figure(frames, methods, state.get("_ft_chance")) if frames else None
    if fig is not None:
        figs["training_loss"] = fig
    return sweep, summary_r, comparison, figs, settings


st.markdown("#### Lab report")
sweep, summary_r, comparison, figs, settings = _report_inputs()
have = ([f"the sweep of {settings.get('layers swept')} layer(s)"] if sweep is not None else []) \
    + ([f"{len(comparison)} fine-tune run(s)"] if comparison is not None else []) \
    + ([f"{len(figs)} figure(s)"] if figs else [])
st.caption("One zip with the sweep summary, the per-selection means, the run comparison (readable "
           "headers, rounded numbers) and the figures as PNG. It holds: "
           + (", ".join(have) if have else "nothing yet — run a sweep or a fine-tune first") + ".")


def _build(sweep=sweep, summary_r=summary_r, comparison=comparison, figs=figs,
           settings=settings) -> bytes:
    from app.report import report_files, report_zip

    return report_zip(report_files(sweep, summary_r, comparison, figs, settings))


st.download_button("Download the lab report (zip)", _build, file_name="idlora-lab-report.zip",
                   mime="application/zip", key="exercise_report", disabled=not have,
                   on_click="ignore")
