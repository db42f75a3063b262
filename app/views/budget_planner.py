"""Budget planner page: per-layer ID-LoRA (k, r) under a trainable-parameter budget.

The candidate layers are the Model & layers selection; each is swept once (through the cache,
in the app's background pool with progress and Cancel; a scan already cached is read at once)
and `idlora_core.planner` chooses which to adapt and how
(`analysis/plan.py`). Shows the allocation heatmap, the objective against the budget with the
uniform reference, the plan's YAML (download) and sends the plan to the Fine-tune page.
No maths here.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from analysis import plan as ap
from analysis.sweep import SweepSpec
from app import background, plan_figures
from app import settings_io as sio
from app.common import SELECTIONS, get_model, init_state, model_name, selected_layers
from app.report import readable
from idlora_core.config import dumps_config

KEEP = {"persist_state": "session"}  # widget values survive page switches
SCANS = "_plan_scan"  # {"key": (model, layers, spec), "table", "clusterings"}: the last scan
JOB = "_plan_job"  # this session's scan in the background pool (app.background.Job), or None
POLL_SECONDS = 1.0
FINE_TUNE = str(Path(__file__).resolve().parent / "fine_tune.py")
KS, RANKS = [1, 2, 4, 8, 16], [1, 2, 4, 8, 16, 32, 64, 128]
FRACTIONS = [round(0.05 * i, 2) for i in range(1, 41)]  # budget slider and curve: 0.05 .. 2 x LoRA
CONFIG_FILE = "budget_plan.yaml"
SHOWN = {"params": "trainable parameters", "error": "rel. error (1 = not adapted)",
         "k": "k (0 = not adapted)", "r": "r (0 = not adapted)"}


def _scan_job(job: background.Job, weights, layers: list[str], spec: SweepSpec):
    # On a pool worker: analysis only; a progress report is also where Cancel stops it.
    return ap.scan_layers(weights, layers, spec, progress=lambda d, t, layer, hit: job.report(
        d / t, f"[{d}/{t}] {layer} ({'cached' if hit else 'swept'})"))


@st.fragment(run_every=POLL_SECONDS)
def _poll(job: background.Job) -> None:
    """Progress and Cancel of the scan; the whole page reruns once it has ended."""
    if job.done():
        st.rerun()
    background.show_job(job, "plan_cancel")


def _scan(loaded, layers: list[str], spec: SweepSpec):
    """Return (table, clusterings) of the candidate layers: this session's last scan, or the
    cached one (read at once), or the result of a scan in the background pool; while that runs
    the page shows its progress and stops here."""
    state = st.session_state
    key = (model_name(), tuple(layers), spec)
    last = state.get(SCANS)
    if last is not None and last["key"] == key:
        return last["table"], last["clusterings"]
    job, job_key = state.get(JOB), "plan-scan-" + repr(key)
    if job is not None and job.key != job_key:  # other layers or grid now: that scan is not needed
        background.pool().cancel(job.id, background.user_id())
        job = state[JOB] = None
    if job is None:
        found = ap.stored_scan(loaded.weights, layers, spec)  # cached: no job at all
        if found is not None:
            state[SCANS] = {"key": key, "table": found[0], "clusterings": found[1]}
            return found
        try:  # an identical scan of any session is shared; this session's older one is replaced
            job = state[JOB] = background.submit(
                _scan_job, loaded.weights, list(layers), spec, kind="plan-scan", key=job_key,
                supersede=True, label=f"scan of {len(layers)} layers (one weight at a time, cached)")
        except background.JobRefused as exc:
            st.error(str(exc))
            st.stop()
    if not job.done():
        _poll(job)
        st.stop()
    if job.state != "done":
        if job.state == "cancelled":
            st.info("The scan was cancelled; the layers it finished are cached and are not computed again.")
        else:
            st.error(f"Could not scan the layers: {job.exception()}")
        if st.button("Scan again", key="plan_rescan"):
            state[JOB] = None
            st.rerun()
        st.stop()
    found = job.result()
    state[JOB] = None
    state[SCANS] = {"key": key, "table": found[0], "clusterings": found[1]}
    return found


@st.cache_data(max_entries=8, show_spinner="Planning every budget of the curve ...")
def _curve(table, selection: str, lora_r: int):
    curves = ap.planner_curves(table, selection)
    lora = ap.lora_params(curves, lora_r)
    return ap.budget_curve(curves, [int(f * lora) for f in FRACTIONS])


def _controls() -> tuple[SweepSpec, int, float]:
    c1, c2, c3, c4 = st.columns([2, 3, 1, 1])
    ks = c1.multiselect("Clusters k to consider", KS, default=[1, 2, 4, 8], key="plan_ks", **KEEP)
    ranks = c2.multiselect("Ranks r to consider", RANKS, default=[2, 4, 8, 16, 32, 64],
                           key="plan_ranks", **KEEP)
    selection = c3.selectbox("Selection", list(SELECTIONS), key="plan_selection", **KEEP)
    lora_r = c4.selectbox("LoRA rank (budget unit)", [4, 8, 16, 32], index=1, key="plan_lora_r",
                          **KEEP)
    fraction = st.select_slider(
        f"Budget: trainable parameters as a fraction of LoRA's at r = {lora_r} on these layers",
        FRACTIONS, value=0.5, key="plan_budget", format_func=lambda f: f"{f:.2f}×", **KEEP)
    if not ks or not ranks:
        st.info("Pick at least one cluster count k and one rank r.")
        st.stop()
    return SweepSpec(sorted(ks), sorted(ranks), (selection,)), int(lora_r), float(fraction)


def _export(loaded, plan, clusterings, selection: str, budget_text: str) -> None:
    state = st.session_state
    skeletons = ap.plan_skeletons(plan, clusterings, selection)
    adapter = ap.plan_config(plan, model_name(), selection=selection, skeletons=skeletons).adapter
    cfg = sio.plan_run_config(state, adapter, model_name(), loaded.kind)
    text = dumps_config(cfg)
    st.markdown("**The plan as a run config** — the Fine-tune page's tasks and training, one "
                "ID-LoRA target per adapted layer with its own k and r, and the skeleton rows "
                "whose error the plan used (training does not cluster again).")
    b1, b2, _ = st.columns([1, 1, 3])
    b1.download_button("Export plan as YAML", text, file_name=CONFIG_FILE, mime="application/x-yaml",
                       key="plan_download", type="primary")
    if b2.button("Send to Fine-tune", key="plan_send"):
        state["ft_plan"] = {"model": model_name(), "adapter": adapter.model_dump_json(),
                            "summary": f"{len(plan.adapted)} layers, {plan.params:,} trainable "
                                       f"parameters, objective {plan.objective:.4f}"}
        st.switch_page(FINE_TUNE)
    st.caption("The Fine-tune page runs one (k, r) on every layer; a sent plan appears there as its "
               f"own run. From a shell: `python -m idlora_core.train {CONFIG_FILE}` (or `accelerate "
               f"launch ... -m idlora_core.train {CONFIG_FILE}`); the same plan from the command "
               f"line: `python -m analysis.plan --model {model_name()} --budget {budget_text} "
               f"--out {CONFIG_FILE}`.")
    with st.expander("YAML"):
        st.code(text, language="yaml")


def main() -> None:
    """Draw the Budget planner page."""
    init_state()
    sio.init_defaults(st.session_state)
    st.title("Budget planner")
    st.caption("Which layers to adapt with ID-LoRA, and each one's clusters k and rank r, under a "
               "trainable-parameter budget. Objective: the sum over the layers of their cluster-wise "
               "ID relative error weighted by their size (m·n), a layer left alone counting 1 "
               "(docs/THEORY.md, *The budget planner*). Exact (dynamic programming) unless stated.")
    loaded = get_model()
    if loaded is None:
        st.stop()
    layers = selected_layers(loaded)
    if not layers:
        st.error("No candidate layers: pick layer types and blocks on the Model & layers page.")
        st.stop()
    st.caption(f"Candidates: the **{len(layers)}** layers of the Model & layers selection (types "
               f"{', '.join(st.session_state.get('layer_kinds') or ['all'])}).")
    spec, lora_r, fraction = _controls()
    selection = spec.selections[0]
    try:
        table, clusterings = _scan(loaded, layers, spec)
        curves = ap.planner_curves(table, selection)
    except ValueError as exc:
        st.error(f"Could not scan the layers: {exc}")
        st.stop()
    budget_text = f"{fraction:g}xlora@{lora_r}"
    plan = ap.make_plan(curves, budget_text)
    uniform = ap.budget_curve(curves, [plan.budget]).iloc[0]
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("Budget", f"{plan.budget:,}", help=f"{fraction:.2f} × LoRA's "
              f"{ap.lora_params(curves, lora_r):,} trainable parameters at r = {lora_r}")
    m2.metric("Plan's trainable parameters", f"{plan.params:,}")
    m3.metric("Layers adapted", f"{len(plan.adapted)} of {len(curves)}")
    m4.metric("Objective", f"{plan.objective:.4f}",
              delta=f"{plan.objective - uniform['uniform_objective']:+.4f} vs uniform",
              delta_color="inverse")
    exact = plan.gap_bound == 0
    st.caption(f"Algorithm: {plan.method}" + (" — optimal." if exact else
               f" — at most {plan.gap_bound:.2g} above the optimum.") +
               (f" Best uniform choice: k = {uniform['uniform_k']}, r = {uniform['uniform_r']} on "
                f"every layer ({uniform['uniform_params']:,} parameters)." if uniform["uniform_r"]
                else " No uniform (k, r) fits this budget."))
    cells = ap.plan_cells(plan, curves)
    if not plan.adapted:
        st.warning("The budget is below the cheapest adapter of these layers: raise it.")
    left, right = st.columns(2)
    with left:
        st.plotly_chart(plan_figures.allocation_figure(cells), key="plan_heatmap")
    with right:
        curve = _curve(table, selection, lora_r)
        st.plotly_chart(plan_figures.budget_figure(curve, ap.lora_params(curves, lora_r), lora_r,
                                                   plan.budget), key="plan_curve")
    shown = cells.drop(columns=["label"]).rename(columns=SHOWN)
    st.dataframe(readable(shown), key="plan_cells", hide_index=True)
    if plan.adapted:
        _export(loaded, plan, clusterings, selection, budget_text)


main()
