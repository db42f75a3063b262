"""Studies page: build or pick a trade-off study, start it in the background, watch it fill in.

A study is a grid of fine-tunes (methods x ranks x learning rates x seeds) run as Optuna trials
by `python -m idlora_core.study` in its own process session: closing the tab does not stop it.
The page draws, from the study's storage, the trade-off plot (metric against trainable
parameters with 95 % CIs and the Pareto frontier), metric against learning rate per budget,
the summary table (validation and test columns) and a paired comparison of two budgets.
Served to a lab, a study is sized before anything is expanded or started (its run count from the
grid's axis lengths, its steps and its base run's estimated memory against the server's limits,
`idlora_core/jobs/limits.py`; its time from this server's measured runs,
`idlora_core/jobs/throughput.py`, with a confirmation when a run is over the room's time limit),
each user runs at most IDLORA_MAX_STUDIES_PER_USER studies at once, and only the user who
started a study can stop it here.
No maths here: `analysis/studies.py`, `idlora_core/study/` and `idlora_core/jobs/studies.py`.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import streamlit as st

from analysis import studies
from app import background, class_panel, figures, url_state
from app import settings_io as sio
from app.common import (
    K_CHOICES,
    RANK_CHOICES,
    choices_with_state,
    get_model,
    init_state,
    model_name,
    open_named,
    selected_layers,
    valid,
)
from app.page_settings import lr_text
from idlora_core.config import ALL_METHODS, ConfigError, uses_heads
from idlora_core.jobs import limits, run_queue, throughput
from idlora_core.jobs import studies as jobs
from idlora_core.jobs.runs import log_tail
from idlora_core.study.config import load_study
from idlora_core.study.summary import paired_difference, to_markdown
from idlora_core.training import preflight

KEEP = {"persist_state": "session"}
CURRENT = "st_current"  # the study folder this page shows
HEADERS = {"best_learning_rate": "best lr (validation)", "metric_mean": "validation mean",
           "metric_std": "validation std", "metric_ci95_low": "validation 95 % CI low",
           "metric_ci95_high": "validation 95 % CI high", "test_mean": "test mean", "test_std": "test std",
           "test_ci95_low": "test 95 % CI low", "test_ci95_high": "test 95 % CI high", "n_seeds": "seeds",
           "pareto_confident": "pareto (confident)"}  # display only: the CSV keeps the raw names


def _lr_list(text: str) -> list[float]:
    values = [float(v) for v in text.replace(";", ",").split(",") if v.strip()]
    if not values or any(v <= 0 for v in values):
        raise ValueError(f"learning rates must be positive numbers separated by commas, got {text!r}")
    return values


def _study_ranks(finetune_ranks: list) -> list[int]:
    """Return the study's default ranks: the Fine-tune ranks, or r/2, r, 2r for a single one."""
    ranks = sorted({int(r) for r in finetune_ranks if int(r) >= 1})
    if len(ranks) == 1:
        ranks = [r for r in (ranks[0] // 2, ranks[0], ranks[0] * 2) if r >= 1]
    return ranks or [4, 8, 16]


def _built_study(loaded):
    """Draw the grid controls (from the Fine-tune choices); return the StudyConfig or None."""
    state = st.session_state
    layers = selected_layers(loaded)
    tasks = state.get("ft_tasks") or list(sio.task_options(loaded.kind))[:1]
    left, right = st.columns(2)
    with left:
        chosen = state.get("ft_methods", sio.DEFAULTS["ft_methods"])  # Fine-tune not visited: its defaults
        baselines = ["head-only", "base"] if loaded.kind == "encoder" else ["base"]  # head-only: classification
        if state.get("st_methods") is None:  # first visit: from the Fine-tune choices
            state["st_methods"] = list(dict.fromkeys(
                [m for m in chosen if m != "head-only" or loaded.kind == "encoder"] + baselines))
        methods = st.multiselect("Methods", list(ALL_METHODS), key="st_methods", format_func=sio.METHOD_LABELS.get,
                                 **KEEP,
                                 help="head-only trains the classification head alone; base trains nothing.")
        if state.get("st_ranks") is None:
            state["st_ranks"] = _study_ranks(state.get("ft_ranks", sio.DEFAULTS["ft_ranks"]))
        if state.get("st_ks") is None:
            state["st_ks"] = sorted({int(k) for k in state.get("ft_ks", sio.DEFAULTS["ft_ks"])}) or [4]
        if state.get("st_heads") is None:  # a session without ft_heads: its ft_ks held the heads
            fine_tune = state.get("ft_heads", state.get("ft_ks", sio.DEFAULTS["ft_heads"]))
            state["st_heads"] = sorted({int(n) for n in fine_tune}) or [4]
        ranks = st.multiselect("Ranks r", choices_with_state(RANK_CHOICES, "st_ranks"), key="st_ranks", **KEEP,
                               help="From the Fine-tune ranks: one rank r becomes r/2, r, 2r (a trade-off needs budgets).")
        ks = st.multiselect("Clusters k (ID-LoRA)", choices_with_state(K_CHOICES, "st_ks"), key="st_ks", **KEEP)
        heads = None  # grid.heads: only for a chosen HydraLoRA, whose box is shown like Fine-tune's
        if any(uses_heads(m) for m in methods):
            heads = st.multiselect("Heads N (HydraLoRA)", choices_with_state(K_CHOICES, "st_heads"),
                                   key="st_heads", **KEEP)
        state["st_seeds"] = valid(state.get("st_seeds") or [], list(range(10)))
        seeds = st.multiselect("Seeds", list(range(10)), key="st_seeds", **KEEP)
    with right:
        st.markdown("**Learning rates per method** (comma-separated; each method is compared at its best)")
        lrs = {}
        for method in methods:
            if method == "base":
                continue
            key = f"st_lr_{method}"
            if state.get(key) is None:  # a method StudiesSettings does not know
                state[key] = lr_text(method)
            text = st.text_input(sio.METHOD_LABELS[method], key=key, **KEEP)
            try:
                lrs[method] = _lr_list(text)
            except ValueError as exc:
                st.error(str(exc))
                return None
    if not methods or not ranks or not ks or heads == [] or not seeds or not layers:
        st.info("Pick at least one method, rank, k, heads N (HydraLoRA) and seed (and target layers on "
                "the Model & layers page).")
        return None
    # validation metrics choose the learning rate; the summary reports their test_* twins
    kind_metric = (f"eval_{tasks[0]}_accuracy", "maximize") if loaded.kind == "encoder" else ("eval_loss", "minimize")
    probe = {**dict(state), "ft_methods": ["lora"], "ft_tasks": tasks}
    try:
        base = sio.finetune_configs(probe, model_name(), loaded.kind, layers)[0][1]
        return studies.build_study(base, methods, ranks, ks, lrs, seeds, *kind_metric, heads=heads)
    except (ConfigError, ValueError) as exc:
        st.error(f"The grid is not valid: {exc}")
        return None


def _memory(study) -> list[int]:
    """The estimated peak memory of the study's base run (bytes, from its model's headers), or []
    when its model cannot be opened here (the run's own preflight then decides)."""
    try:
        weights = open_named(study.base.model.name).weights
    except Exception:  # noqa: BLE001 - a model missing here is reported when the study runs
        return []
    shapes = {n: tuple(t.shape[:2]) for n, t in weights.linear.items()}
    params = sum(math.prod(t.shape) for t in weights.tensors.values())
    return [preflight.estimate_from_headers(study.base, weights.config, params, shapes).total]


def _setup(loaded) -> None:
    """The 'new study' panel: preset or built grid, trial count, estimate, start button."""
    source = st.radio("Study", ["Preset", "Build from the Fine-tune choices"], horizontal=True, key="st_source")
    study = None
    if source == "Preset":
        presets = studies.list_presets()
        if st.session_state.get("st_preset") not in presets:  # none yet, or a stale URL/store value
            st.session_state["st_preset"] = next(iter(presets), None)
        name = st.selectbox("Preset", list(presets), key="st_preset")
        if name:
            try:
                study = load_study(presets[name])
            except ConfigError as exc:
                st.error(str(exc))
            with st.expander("Preset YAML"):
                st.code(presets[name].read_text(encoding="utf-8"), language="yaml")
    elif loaded is not None:
        study = _built_study(loaded)
    else:
        st.info("Load a model (sidebar) to build a grid from the Fine-tune choices.")
    if study is None:
        return
    try:  # from the grid's axis lengths and headers: refused before anything is expanded
        lim = limits.server_limits()
        limits.check_study(study, lim)
        serial, per_method = studies.estimate_study(study, 1, sio.runs_root())  # measured on this server
        longest = max(per_method.values(), key=lambda e: e.seconds)
        try:
            limits.check_runs([study.base], _memory(study), lim, estimates=[longest])
            long_runs = None
        except limits.NeedsConfirmation as exc:  # over the room's time per run: ask below
            long_runs = exc
    except (limits.LimitError, ValueError) as exc:
        st.error(str(exc))
        return
    slots = run_queue.free_run_slots(sio.runs_root())
    if slots < 1:
        st.warning("The server's run limit is reached (IDLORA_MAX_RUNS): wait for running fine-tunes or "
                   "studies to finish before starting a study.")
        return
    workers = st.number_input("Workers (processes)", 1, slots, min(2, slots), key="st_workers",
                              help=f"Trials run in this many processes; at most {slots} now, within the "
                              "server's global run limit (IDLORA_MAX_RUNS) shared with the Fine-tune page.")
    runs = studies.run_count(study)
    st.markdown(f"**{runs} runs**, about **{throughput.minutes(serial / int(workers))}** with {int(workers)} "
                "worker(s): runs x time per run / workers.")
    st.caption("Time per run: " + " · ".join(
        f"{sio.METHOD_LABELS.get(m, m)} about {throughput.minutes(e.seconds)} ({e.source})"
        for m, e in per_method.items()))
    confirmed = True
    if long_runs is not None:
        st.warning(f"A run of this study takes about {throughput.minutes(long_runs.seconds)} ({long_runs.source}), "
                   f"over this room's {lim.run_minutes:g} min per run (IDLORA_MAX_RUN_MINUTES): tick the box to "
                   "start it anyway.")
        confirmed = st.checkbox(limits.confirm_label(long_runs.seconds, "each run"), key="st_confirm_long")
    # the default name follows the chosen study: a name typed for one preset must not carry
    # over to another preset or to a built grid
    chosen = f"preset:{st.session_state.get('st_preset')}" if source == "Preset" else "built"
    if st.session_state.get("_st_name_for") != chosen:
        st.session_state["_st_name_for"] = chosen
        st.session_state["st_name"] = study.name or time.strftime("study-%Y%m%d-%H%M%S")
    name = st.text_input("Study name", key="st_name")
    if st.button("Start study", type="primary", key="st_start"):
        if not confirmed:
            st.error(f"Tick \"{limits.confirm_label(long_runs.seconds, 'each run')}\" to start this study, or "
                     "lower its steps, batch size or sequence length.")
            return
        me = background.user_id()
        try:
            limits.check_share(len(jobs.running_studies_of(sio.runs_root(), me)), 1, lim.studies_per_user,
                               "studies", "IDLORA_MAX_STUDIES_PER_USER")
            out = jobs.start_study(study.model_copy(update={"name": name}), sio.runs_root(), name, int(workers),
                                   owner=me, memory_cap_gb=lim.run_memory_gb)
        except (ValueError, OSError) as exc:
            st.error(f"Could not start the study: {exc}")
            return
        st.session_state[CURRENT] = st.session_state["st_open"] = str(out)  # show it at once
        st.success(f"Started in the background: {out} (it keeps running if you close the tab).")


def _show(folder: Path) -> None:
    """Draw the tables and figures of one study folder (live while it runs)."""
    if not (folder / "study.json").is_file():
        if jobs.study_running(folder):
            st.info(f"{folder.name} is starting: the coordinator is preparing its grid and first runs "
                    "(loading the model and data takes up to a minute on a CPU).")
        else:
            st.warning(f"{folder.name} ended before its first trial; its study.log says why:\n\n"
                       f"```\n{log_tail(folder, 1500, 'study.log')}\n```")
        return
    try:
        trials, summary, meta = studies.study_tables(folder)
    except (ConfigError, ValueError, KeyError) as exc:
        st.warning(f"{folder.name}: {exc}")
        return
    running = jobs.study_running(folder)
    done = int((trials["state"] == "COMPLETE").sum()) if len(trials) else 0
    total = len(meta["cells"])
    st.progress(min(done / max(total, 1), 1.0), text=f"{done} / {total} trials complete"
                + (" — running" if running else ""))
    if running and not jobs.may_stop(folder, background.user_id()):
        st.caption("Another user started this study: only they (or the server's admin) can stop it.")
    elif running and st.button("Stop this study", key="st_stop",
                               help="Its runs stop after their current step; starting it again with the "
                               "same settings resumes it (finished trials are never repeated)."):
        if jobs.stop_study(folder):
            st.toast(f"Asked {folder.name} to stop after the current step of each run.")
    metric, direction = meta["metric"], meta["direction"]
    if summary.empty:
        st.info("No finished trial yet.")
        return
    st.markdown("#### Trade-off: quality against trainable parameters")
    st.plotly_chart(figures.study_tradeoff_figure(summary, metric, direction), key="st_tradeoff")
    st.caption("Held-out test mean over seeds (the validation mean when the runs report no test metric) at "
               "each budget's learning rate chosen on validation; bars: 95 % t-interval, drawn within [0, 1] "
               "for scores. With 2-3 seeds an interval is wide: that is the honest width of so few samples; "
               "the paired comparison below is sharper. Dashed: Pareto frontier (fewer parameters, better "
               "metric). Stars: head-only and base, the reference points.")
    st.markdown("#### Is the comparison fair? Metric against learning rate")
    st.plotly_chart(figures.study_lr_figure(trials, metric), key="st_lr")
    st.markdown("#### Summary")
    st.dataframe(summary, hide_index=True, key="st_summary", column_config=HEADERS)
    st.caption("The learning rate is chosen on the validation mean; the test columns are the held-out test "
               "split at that learning rate. pareto: not dominated on the means; pareto (confident): no cheaper "
               "point's 95 % interval (test when there is one) lies wholly better.")
    c1, c2 = st.columns(2)
    c1.download_button("Summary (CSV)", summary.to_csv(index=False), f"{folder.name}-summary.csv", "text/csv",
                       key="st_csv")
    c2.download_button("Summary (Markdown)", to_markdown(summary), f"{folder.name}-summary.md", "text/markdown",
                       key="st_md")
    with st.expander(f"All {len(trials)} trials"):
        st.dataframe(trials, hide_index=True)
    _paired(trials, summary, metric, direction)


def _paired(trials, summary, metric: str, direction: str) -> None:
    """Two budgets compared seed by seed (each at its own validation-chosen learning rate)."""
    st.markdown("#### Paired comparison")
    choices = studies.budget_choices(summary)
    if len(choices) < 2:
        st.caption("Needs two budgets with finished trials.")
        return
    labels = list(choices)
    left, right = st.columns(2)
    a = left.selectbox("A", labels, index=0, key="st_pair_a")
    other = next((i for i, label in enumerate(labels) if choices[label]["method"] != choices[labels[0]]["method"]), 1)
    b = right.selectbox("B", labels, index=other, key="st_pair_b")
    if a == b:
        st.info("Pick two different budgets.")
        return
    try:
        res = paired_difference(trials, metric, choices[a], choices[b], direction)
    except ValueError as exc:
        st.warning(str(exc))
        return
    lr_a, lr_b = ("—" if lr is None else f"{lr:g}" for lr in (res.a_learning_rate, res.b_learning_rate))
    st.markdown(f"**A − B on `{res.metric}`** ({res.note}), {res.n} paired seeds, A at lr {lr_a}, B at lr "
                f"{lr_b}: mean difference **{res.mean:+.4g}**, "
                f"95 % t-interval [{res.ci95_low:+.4g}, {res.ci95_high:+.4g}]. **Verdict:** {res.verdict}.")


def main() -> None:
    init_state()
    st.title("Studies")
    class_panel.is_instructor()  # reads ?token= before the URL mirror below rewrites the address
    url_state.mirror("studies")
    st.caption("A fair comparison: every method at its own best learning rate, several seeds, against "
               "head-only and base. Run as Optuna trials; each trial is an ordinary run folder.")
    loaded = get_model()
    with st.expander("New study", expanded=not jobs.list_studies(sio.runs_root())):
        _setup(loaded)
    class_panel.panel()  # the class study: Join for students, open / watch / cancel for the instructor
    past = jobs.list_studies(sio.runs_root())
    if not past:
        return
    names = [str(p) for p in past]
    current = st.session_state.get(CURRENT)
    index = names.index(current) if current in names else 0
    chosen = st.selectbox("Study", names, index=index, format_func=lambda p: Path(p).name, key="st_open")
    st.session_state[CURRENT] = chosen
    every = 3.0 if jobs.study_running(chosen) else None

    @st.fragment(run_every=every)
    def live() -> None:
        _show(Path(chosen))

    live()


main()
