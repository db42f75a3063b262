"""Fine-tune page: start short runs of several PEFT methods, watch them live, compare them.

Runs are `python -m idlora_core.train` subprocesses (see `idlora_core/jobs/runs.py`), each in its own
folder under the runs folder; this page only writes their configs, starts/cancels them and
tails their `metrics.jsonl`. The live view is a fragment that polls only while a run of this
session is active. Runs wait in the server's one queue (`idlora_core/jobs/run_queue.py`: one FIFO for
all sessions, one limit, on disk under the runs folder, pumped by a server thread), so a closed
tab loses nothing; this tab's tickets and handles live in its session state, so two tabs never
touch each other's runs. Served to a lab, each user gets a fair share (`idlora_core/jobs/limits.py`):
Start is refused in one line when it would pass the user's cap of queued and running runs, or a
run's steps or estimated memory (base model included) pass the server's limits, before any run
is queued; a user withdraws their own waiting runs one by one, and the page reads the queue once
per render. Before Start the page shows each run's estimated minutes and the expected wait,
from this server's measured runs (`app/run_estimates.py`); a run over the room's time limit
needs a confirmation naming its estimate. A student reloads only their own past runs; the
instructor (server token) sees every run with its owner, cancels any and downloads the class's
results (`app/instructor_runs.py`).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import streamlit as st
import torch

from analysis import runs as run_tables
from app import background, class_panel, figures, instructor_runs, run_estimates, url_state
from app import settings_io as sio
from app.common import (
    K_CHOICES,
    RANK_CHOICES,
    SELECTIONS,
    choices_with_state,
    get_model,
    init_state,
    model_name,
    selected_layers,
    valid,
)
from app.report import COLLAPSED_NOTE, headline, lead_columns, readable, runs_display
from idlora_core.config import (
    ALL_METHODS,
    AdapterConfig,
    RunConfig,
    uses_clusters,
    uses_heads,
    uses_rank,
)
from idlora_core.jobs import limits, run_queue, runs, slots, throughput
from idlora_core.tasks import pool_sizes
from idlora_core.training import compare, preflight
from idlora_core.training.evaluate import collapsed
from idlora_core.training.run_files import ACTIVE_STATES, MetricsTail, RunState, read_run_json

POLL_SECONDS = 1.0
LEARNING_RATES = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 3e-4, 5e-4, 1e-3, 2e-3, 3e-3, 5e-3, 1e-2, 2e-2,
                  3e-2, 5e-2, 1e-1, 3e-1, 1.0)
# Widget values survive page switches and fragment reruns (Streamlit >= 1.67).
KEEP = {"persist_state": "session"}
HANDLES = "ft_handles"  # list[RunHandle] of this session's started runs
TICKETS = "ft_tickets"  # list[run_queue.Ticket] this session submitted to the server queue
TAILS = "ft_tails"  # {run_dir: MetricsTail}
LABELS = "ft_labels"  # {run name: label}
PLAN = "ft_plan"  # a plan the Budget planner sent: {"model", "adapter" (JSON), "summary"}
SHOWN_ONLY = ("metric", "validation_metric", "test_metric", "task", "note", "dir")  # not in the CSV


def _controls(loaded) -> list[str]:
    """Draw the run settings; return the target layer names."""
    state = st.session_state
    layers = selected_layers(loaded)
    sio.sizes_for_kind(state, loaded.kind)  # a causal LM generates its answers: smaller held-out sets
    left, mid, right = st.columns(3)
    with left:
        st.multiselect(
            "Methods", list(ALL_METHODS), format_func=sio.METHOD_LABELS.get, key="ft_methods", **KEEP,
            help="One run per method (and per rank / clusters k / heads N in the next column), "
            "side by side.",
        )
        options = list(sio.task_options(loaded.kind))
        state["ft_tasks"] = valid(state.get("ft_tasks") or [], options) or [options[0]]
        st.multiselect("Task(s)", options, key="ft_tasks", format_func=sio.task_label, **KEEP,
                       help="Built-in offline tasks, each with train / validation / test splits; "
                       "several are mixed with equal weights. Real data first: the synthetic "
                       "sentiment task saturates (every adapter reaches 1.0), so it only checks "
                       "that a run works.")
        st.caption(f"Targets: **{len(layers)}** layers from the Model & layers page "
                   f"(types {', '.join(state.get('layer_kinds') or ['all'])}).")
        for task in state["ft_tasks"]:
            pools = pool_sizes(task)
            if pools and any(want > have for want, have in zip(
                    (state["ft_num_train"], state["ft_num_eval"], state["ft_num_test"]), pools, strict=True)):
                st.caption(f"{sio.task_label(task)} holds {pools[0]:,} training, {pools[1]:,} "
                           f"validation and {pools[2]:,} test examples: its runs use at most these.")
    with mid:
        st.multiselect("Ranks r", choices_with_state(RANK_CHOICES, "ft_ranks"),
                       key="ft_ranks", **KEEP)
        st.multiselect("Clusters k (ID-LoRA)", choices_with_state(K_CHOICES, "ft_ks"), key="ft_ks", **KEEP)
        if any(uses_heads(m) for m in state.get("ft_methods") or []):  # like the learning rates
            st.multiselect("Heads N (HydraLoRA)", choices_with_state(K_CHOICES, "ft_heads"),
                           key="ft_heads", **KEEP,
                           help="B matrices the router mixes; one HydraLoRA run per rank and N.")
        st.selectbox("Skeleton selection (ID-LoRA)", list(SELECTIONS),
                     key="ft_selection", **KEEP,
                     help="id (default): pivoted-QR skeleton, the theory-backed choice and the "
                     "best reconstruction on MiniLM (lab exercise 3); centroid: the paper's "
                     "rule, the worst of the three there; random: a baseline.")
        st.number_input("Rank-boosting splits p (our reading of the paper's RB)",
                        **sio.bounds("ft_rb_splits"), key="ft_rb_splits", **KEEP,
                        help="p must divide r; 1 = plain ID-LoRA.")
        st.checkbox("Normalise rows (ID-LoRA)", key="ft_normalize_rows", **KEEP,
                    help="Cluster L2-normalised rows (cosine geometry) when picking skeletons. "
                    "This page's own setting.")
        st.number_input("Adapter seed", **sio.bounds("ft_adapter_seed"), step=1,
                        key="ft_adapter_seed", **KEEP,
                        help="k-means and random-skeleton seed of the runs.")
    with right:
        st.number_input("Steps", **sio.bounds("ft_steps"), key="ft_steps", **KEEP)
        st.number_input("Batch size", **sio.bounds("ft_batch_size"), key="ft_batch_size", **KEEP)
        for method in [m for m in ALL_METHODS if m in (state.get("ft_methods") or []) and m != "base"]:
            key = sio.LR_KEYS[method]
            lr_options = sorted(set(LEARNING_RATES) | {float(state[key])})
            st.selectbox(f"Learning rate: {sio.METHOD_LABELS[method]}", lr_options, key=key, **KEEP,
                         format_func=lambda v: f"{v:g}",
                         help="Each method at its own learning rate (defaults: the best of study preset "
                         "(a), docs/STUDIES.md). A run's YAML keeps its one train.learning_rate.")
    # Drawn only on demand: fewer widgets make the page appear faster in the browser.
    if st.toggle("More training settings", key="ft_more", **KEEP):
        c1, c2, c3, c4 = st.columns(4)
        c1.number_input("Max sequence length (tokens)", **sio.bounds("ft_seq_len"), key="ft_seq_len", **KEEP)
        c2.number_input("Evaluate every N steps (0 = end)", **sio.bounds("ft_eval_interval"),
                        key="ft_eval_interval",
                        **KEEP)
        c3.number_input("Training examples per task", **sio.bounds("ft_num_train"), key="ft_num_train", **KEEP)
        c4.selectbox("Schedule", ["constant", "linear", "cosine"], key="ft_schedule", **KEEP)
        c1.number_input("Validation examples per task", **sio.bounds("ft_num_eval"), key="ft_num_eval",
                        **KEEP, help="Scored during and after training; they choose hyper-parameters.")
        c2.number_input("Test examples per task", **sio.bounds("ft_num_test"), key="ft_num_test", **KEEP,
                        help="Scored once, after training (test_* metrics); never used to choose "
                        "anything. 0 = no test split.")
        c3.number_input("alpha (scale alpha/r)", **sio.bounds("ft_alpha"), key="ft_alpha", **KEEP)
        c4.selectbox("Precision", ["auto", "fp32", "bf16", "fp16"], key="ft_precision", **KEEP)
        c1.selectbox("Device", ["auto", "cpu", "cuda"], key="ft_device", **KEEP)
        c2.number_input("Warm-up steps", **sio.bounds("ft_warmup_steps"), key="ft_warmup_steps", **KEEP)
        limit = slots.max_runs()
        c4.caption(f"At most **{limit}** run{'' if limit == 1 else 's'} train{'s' if limit == 1 else ''} at once on this server "
                   "(all users; IDLORA_MAX_RUNS); further runs wait in one queue, first come first served.")
        c3.checkbox("Gradient checkpointing", key="ft_gradient_checkpointing", **KEEP,
                    help="Recompute activations in the backward pass: less memory for long "
                    "sequences and big models, about 30 % more compute.")
        st.caption(f"Runs are written to the server's runs folder `{sio.runs_root()}` "
                   "(IDLORA_RUNS_DIR, set where the app is started).")
    gpu = torch.cuda.is_available()
    st.caption(("A GPU is available: device 'auto' trains on CUDA (bf16 where supported)."
                if gpu else "No GPU here: runs train on the CPU.")
               + " ID-LoRA keeps its k frozen projections at inference (the router depends on "
               "the input), so it cannot be merged into W like LoRA.")
    return layers


def _queue() -> run_queue.RunQueue:
    return background.server_queue(sio.runs_root())


def _planned_count(state) -> int:
    """Return how many runs Start would queue, from the lengths of the choices (no configs built):
    ID-LoRA one per r x k, HydraLoRA one per r x heads N, LoRA, DoRA and AdaLoRA one per r, the
    others one."""
    ranks = len(set(state.get("ft_ranks") or [])) or 1
    ks = len(set(state.get("ft_ks") or [])) or 1
    heads = len(set(state.get("ft_heads", state.get("ft_ks")) or [])) or 1  # an old session: ft_ks
    return sum((ranks if uses_rank(m) else 1) * (ks if uses_clusters(m) else 1) * (heads if uses_heads(m) else 1)
               for m in dict.fromkeys(state.get("ft_methods") or []))


def _memory(loaded, config, layers: list[str]) -> int:
    """The run's estimated peak memory in bytes (base model, activations, adapters), from headers."""
    weights = loaded.weights
    shapes = {name: tuple(weights.linear[name].shape[:2]) for name in layers if name in weights.linear}
    return preflight.estimate_from_headers(config, weights.config, _param_count(weights), shapes).total


def _param_count(weights) -> int:
    return sum(math.prod(t.shape) for t in weights.tensors.values())


def _start_clicked(loaded, layers: list[str], confirmed: bool = False) -> None:
    """Queue the chosen runs, after the checks that need nothing built: the user's share of the
    queue (from the number of runs), then the size of each run (steps, estimated memory, and its
    estimated time: over the room's limit only when `confirmed`)."""
    state = st.session_state
    queue, me = _queue(), background.user_id()
    try:
        lim = limits.server_limits()
        waiting, running = queue.owned(me)
        limits.check_share(len(waiting) + len(running), _planned_count(state), lim.queued_per_user,
                           "runs", "IDLORA_MAX_QUEUED_PER_USER")
        planned = sio.finetune_configs(state, model_name(), loaded.kind, layers)
        if planned:
            configs = [cfg for _, cfg in planned]
            estimates = throughput.estimate_runs(configs, queue.root, param_count=_param_count(loaded.weights))
            limits.check_runs(configs, [_memory(loaded, cfg, layers) for cfg in configs], lim,
                              estimates=estimates, confirmed=confirmed)
    except limits.LimitError as exc:
        st.error(str(exc))
        return
    except Exception as exc:  # noqa: BLE001 - invalid settings are shown, not raised
        st.error(f"Cannot start: {exc}")
        return
    if not planned:
        st.error("Pick at least one method.")
        return
    _submit(planned)


def _plan_panel(loaded) -> None:
    """A plan sent by the Budget planner (`ft_plan`): per-layer ID-LoRA targets, started as one
    run with this page's tasks and training."""
    state = st.session_state
    plan = state.get(PLAN)
    if not plan:
        return
    with st.container(border=True, key="plan_panel"):
        st.markdown(f"**Budget plan** from the Budget planner ({plan['model']}): ID-LoRA on "
                    f"{plan['summary']}. Each layer keeps its own k and r; it trains with this "
                    "page's tasks and training settings at ID-LoRA's learning rate (the methods, "
                    "ranks and clusters above do not apply to it).")
        b1, b2, _ = st.columns([1, 1, 3])
        other = plan["model"] != model_name()
        if other:
            st.warning(f"The plan is for {plan['model']}: pick that model in the sidebar to run it.")
        if b1.button("Start the plan run", key="start_plan", type="primary", disabled=other):
            try:
                adapter = AdapterConfig.model_validate_json(plan["adapter"])
                _submit([("ID-LoRA budget plan",
                          sio.plan_run_config(state, adapter, model_name(), loaded.kind))])
            except Exception as exc:  # noqa: BLE001 - invalid settings are shown, not raised
                st.error(f"Cannot start the plan: {exc}")
        if b2.button("Discard the plan", key="discard_plan"):
            state.pop(PLAN, None)
            st.rerun()


def _submit(planned: list[tuple[str, RunConfig]]) -> None:
    """Queue `planned` (label, config) runs for this user within their share of the queue."""
    state = st.session_state
    queue, me = _queue(), background.user_id()
    try:
        tickets = queue.submit_many(planned, owner=me, share=limits.server_limits().queued_per_user)
    except (OSError, ValueError) as exc:
        st.error(f"Could not queue the runs: {exc}")
        return
    for ticket in tickets:
        state[TICKETS].append(ticket)
        state[LABELS][ticket.run_dir.name] = ticket.label
    state[background.QUEUE_ROOT] = str(queue.root)  # the heartbeat of every page keeps them queued
    _pump_queue()


def _pump_queue() -> None:
    """Start what the server's limit allows (the server thread does it too, every second) and
    add this session's newly started runs to its handles."""
    state = st.session_state
    _queue().pump()
    known = {h.run_dir for h in state[HANDLES]}
    for ticket in state[TICKETS]:
        if ticket.run_dir not in known and ticket.run_dir.is_dir():
            state[HANDLES].append(runs.RunHandle(run_dir=ticket.run_dir, method=ticket.method))


def _mine_waiting() -> tuple[list[dict], int]:
    """Return (this user's waiting entries with their "place", the queue's length), from one read
    of the queue; touches the user's heartbeat while they have runs waiting."""
    queue, me = _queue(), background.user_id()
    line = queue.waiting()
    mine = [e | {"place": i} for i, e in enumerate(line, 1) if e.get("owner") == me]
    if mine:
        queue.touch(me)
    return mine, len(line)


def _waiting_panel(mine: list[dict], total: int) -> None:
    """List this user's waiting runs with their place in line and a Withdraw button each."""
    try:
        share = f"; {limits.server_limits().queued_per_user} queued or running per user"
    except ValueError:  # a bad server setting is reported by Start runs
        share = ""
    st.caption(f"Waiting for a free slot (server queue, first come first served{share}):")
    for entry in mine:
        left, right = st.columns([5, 1], vertical_alignment="center")
        left.caption(f"{entry['label']} — place {entry['place']} of {total}")
        if right.button("Withdraw", key=f"withdraw_{entry['id']}"):
            if _queue().withdraw(entry["id"], background.user_id()):
                st.toast(f"Withdrew {entry['label']}: its place is free.")
            st.rerun()


def _label(run_dir) -> str:
    return st.session_state[LABELS].get(run_dir.name, run_dir.name)


def _metrics(run_dir) -> pd.DataFrame:
    tails = st.session_state[TAILS]
    key = str(run_dir)
    if key not in tails:
        tails[key] = MetricsTail(run_dir)
    tails[key].read()
    return tails[key].frame


def _chance(loaded) -> float | None:
    """Return the chance-level loss of the page's first task: ln(labels) for a classification
    task (ln 2 for Rotten Tomatoes), None for a causal-LM task."""
    labels = sio.num_labels(sio.chosen_tasks(st.session_state, loaded.kind)[0])
    return math.log(labels) if labels else None


def _outcome(run_dir: Path, latest: dict) -> dict:
    """Return a run's headline columns (`report.headline` of its final metrics, else of its
    `latest` logged ones), "task", and "note" when its final metrics say it collapsed."""
    summary = read_run_json(run_dir)
    final = summary.get("final_metrics") or {}
    top = headline(latest | final, summary.get("tasks") or ())
    row = {"metric": top["name"], "validation_metric": top["validation"],
           "test_metric": top["test"], "task": top["task"]}
    return row | ({"note": COLLAPSED_NOTE} if collapsed(final) else {})


def _with_notes(table: pd.DataFrame) -> pd.DataFrame:
    """Return `table` with its "note" column only when a run has a note (blank for the rest)."""
    notes = table["note"].fillna("") if "note" in table else pd.Series("", index=table.index)
    return table.assign(note=notes) if notes.ne("").any() else table.drop(columns="note", errors="ignore")


def _learning_rate(run_dir: Path) -> float | None:
    return ((read_run_json(run_dir).get("config") or {}).get("train") or {}).get("learning_rate")


def _tradeoff(table: pd.DataFrame) -> None:
    """Draw the trade-off section: the final validation metric of the finished runs."""
    done = table[table["state"].isin([RunState.finished, RunState.cancelled])
                 & table["validation_metric"].notna()
                 & table["trainable_params"].notna()]
    if done.empty:
        return
    metric = done["metric"].mode().iloc[0]  # runs of other tasks would share no axis
    shown = done[done["metric"] == metric].rename(columns={"validation_metric": "validation"})
    task = shown["task"].iloc[0]
    labels = sio.num_labels(task) if isinstance(task, str) else None
    chance = (1 / labels if labels and metric.startswith("accuracy")
              else st.session_state.get("_ft_chance") if metric.startswith("loss") else None)
    other = len(done) - len(shown)
    st.markdown(f"**The PEFT trade-off** — final validation {metric} of each run's first task "
                "against trainable parameters (fills in as runs finish; the training loss is in "
                "the chart above). One seed per run: differences within a few points are noise; "
                "the Studies page gives intervals over seeds."
                + (f" {other} run(s) with another metric are left out." if other else ""))
    with st.container(key="tradeoff_chart"):
        st.plotly_chart(figures.tradeoff_figure(shown, chance, metric), key="tradeoff_plot",
                        width="stretch")


def _live_view(past: list) -> None:
    """Draw the live charts and table for this session's runs plus the chosen past runs."""
    state = st.session_state
    _pump_queue()
    handles = list(state[HANDLES])
    dirs = [h.run_dir for h in handles] + [d for d in past if d not in {h.run_dir for h in handles}]
    mine, total = _mine_waiting()
    if not dirs:
        if mine:
            st.info("Your runs wait in the server's queue: " + "; ".join(
                f"{e['label']} — place {e['place']} of {total}" for e in mine))
            _waiting_panel(mine, total)
        else:
            st.info("No runs yet: choose methods above and press **Start runs**, or reload past "
                    "runs from the runs folder (the box above).")
        return
    frames = {_label(d): _metrics(d) for d in dirs}
    rows = []
    for d, df in zip(dirs, frames.values(), strict=True):
        row = run_tables.run_summary(d, df)
        handle = next((h for h in handles if h.run_dir == d), None)
        if handle is not None:
            row["state"] = runs.run_state(handle)
        rows.append({"label": _label(d)} | row | _outcome(d, row))
    table = _with_notes(pd.DataFrame(rows))
    queued = len(mine)
    active = int(table["state"].isin(ACTIVE_STATES).sum())
    st.caption(f"{active} running, {queued} queued, {len(table) - active} done · "
               + ("updating every second" if active or queued else "idle"))
    if mine:
        _waiting_panel(mine, total)
    methods = dict(zip(table["label"], table.get("method", pd.Series(dtype=str)), strict=False))
    chance = state.get("_ft_chance")
    with st.container(key="loss_chart"):  # CSS class st-key-loss_chart for browser tests
        fig = figures.loss_figure(frames, methods, chance)
        if fig is None:
            st.info("Runs are starting: the loss curves appear with the first logged step "
                    "(ID-LoRA first clusters the rows of every target layer).")
        else:
            st.plotly_chart(fig, key="loss_plot", width="stretch")
    st.dataframe(runs_display(lead_columns(table.drop(columns="task"))), key="runs_table",
                 hide_index=True, width="stretch")
    for d, note in zip(dirs, table.get("note", [""] * len(dirs)), strict=True):
        if note:
            lr = _learning_rate(d)
            st.warning(f"Run {_label(d)} collapsed: it predicts one class for (almost) every "
                       f"validation example. Try a lower learning rate"
                       + (f" than {lr:g}." if isinstance(lr, (int, float)) else "."))
    _tradeoff(table)
    _compare_section([d for d, state in zip(dirs, table["state"], strict=True)
                      if state not in ACTIVE_STATES])
    failed = table[table["state"] == RunState.failed]
    for d in [d for d in dirs if d.name in set(failed["run"])]:
        st.error(f"Run {_label(d)} failed. Last lines of its log:\n\n"
                 f"```\n{runs.log_tail(d, 1500)}\n```")
    if state.get("_ft_was_active") and not (active or queued):
        state["_ft_was_active"] = False
        st.rerun()  # all done: a full rerun redraws the page without the polling timer
    state["_ft_was_active"] = bool(active or queued)


def _compare_section(dirs: list) -> None:
    st.subheader("Comparison table")
    if not dirs:
        st.caption("Runs appear here when they finish (or are cancelled).")
        return
    table = _compare_table(dirs)
    shown = _with_notes(table.drop(columns="task")).assign(
        run_label=[_label(Path(d)) for d in table["dir"]])
    st.dataframe(readable(lead_columns(shown.drop(columns="dir"))), key="compare_table",
                 hide_index=True, width="stretch")
    cli = table.drop(columns=[c for c in SHOWN_ONLY if c in table.columns])
    st.download_button("Download comparison (CSV)", cli.to_csv(index=False),
                       file_name="comparison.csv", mime="text/csv", key="download_compare",
                       help="The columns of `python -m idlora_core.compare RUN_DIR ...`.")


def _compare_table(dirs: list) -> pd.DataFrame:
    """Return the table of `python -m idlora_core.compare` (one row per run folder)."""
    stamps = tuple((str(d), _mtime(d / "run.json"), _mtime(d / "metrics.jsonl")) for d in dirs)
    return _compare_cached(stamps)


def _mtime(path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _has_rows(run_dir: Path) -> bool:
    try:
        compare.run_row(run_dir)
    except ValueError:  # started, but nothing written yet
        return False
    return True


@st.cache_data(show_spinner=False, max_entries=64)
def _compare_cached(stamps: tuple) -> pd.DataFrame:
    """Cached on the run folders' file times, so the live view does not re-read finished runs.
    The columns of `idlora_core.compare`, then SHOWN_ONLY (the page's, not in the CSV)."""
    readable = [Path(d) for d, run_json, metrics in stamps if run_json or metrics]
    dirs = [d for d in readable if _has_rows(d)]
    rows = compare.compare_runs(dirs)
    extra = [{"dir": str(d)} | _outcome(d, row) for d, row in zip(dirs, rows, strict=True)]
    columns = (compare.columns(rows) if rows else []) + list(SHOWN_ONLY)
    return pd.DataFrame([row | more for row, more in zip(rows, extra, strict=True)], columns=columns)


def main() -> None:
    """Draw the Fine-tune page."""
    init_state()
    sio.init_defaults(st.session_state)
    state = st.session_state
    for key, empty in ((HANDLES, []), (TICKETS, []), (TAILS, {}), (LABELS, {})):
        state.setdefault(key, empty)
    st.header("Fine-tune")
    class_panel.is_instructor()  # reads ?token= before mirror() rewrites the address without it
    url_state.mirror("finetune")
    st.caption("Short runs of ID-LoRA, LoRA, DoRA, HydraLoRA and full fine-tuning on the same "
               "layers and task: watch the loss and the trainable-parameter budget side by side.")
    loaded = get_model()
    if loaded is None:
        return
    state["_ft_chance"] = _chance(loaded)
    layers = _controls(loaded)
    _plan_panel(loaded)
    queue, me = _queue(), background.user_id()
    confirmed = run_estimates.panel(loaded, layers, _planned_count(state), queue, _param_count(loaded.weights))
    b1, b2, _ = st.columns([1, 1, 4])
    if b1.button("Start runs", key="start_runs", type="primary"):
        _start_clicked(loaded, layers, confirmed)
    if b2.button("Cancel my runs", key="cancel_runs"):
        waiting, running = queue.owned(me)  # this user's runs, also those of a tab closed since
        n = sum(queue.withdraw(e["id"], me) for e in waiting) + sum(queue.cancel(e["id"], me) for e in running)
        st.toast(f"Withdrew or asked {n} run(s) to stop (after their current step; metrics are kept).")
    instructor = instructor_runs.panel(queue, me)

    root = sio.runs_root()
    mine = {h.run_dir for h in state[HANDLES]}
    past = {name: label for name, label in instructor_runs.past_runs(root, me, instructor).items()
            if root / name not in mine}  # a student lists only their own runs
    state["ft_past"] = valid(state.get("ft_past") or [], list(past))
    st.multiselect(f"Reload past runs from {root}", list(past), key="ft_past", format_func=past.get, **KEEP)
    past = [root / name for name in state["ft_past"]]

    active = any(runs.run_state(h) in ACTIVE_STATES for h in state[HANDLES])
    places = _queue().places() if state[TICKETS] else {}  # one read of the queue
    waiting = any(t.id in places for t in state[TICKETS])
    st.fragment(run_every=POLL_SECONDS if active or waiting else None)(_live_view)(past)


main()
