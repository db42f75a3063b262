"""The instructor's view of the Fine-tune page's runs: every queued and running run with its
owner, a Cancel for any, the per-student caps, and the class results as one CSV; and which past
runs a student may reload (only their own).

Who is the instructor: a session that gave the server's token (`app.class_panel.is_instructor`,
IDLORA_INSTRUCTOR_TOKEN); owners are `app.background.user_id()` ids recorded by the run queue
(`idlora_core.jobs.owners`). `class_results` is a plain function (no widgets) the tests call.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import streamlit as st

from app import class_panel
from app import settings_io as sio
from app.report import headline, lead_columns
from idlora_core.jobs import class_study, limits, owners, runs, slots, throughput
from idlora_core.jobs.run_queue import RunQueue
from idlora_core.training.run_files import read_run_json


def _first_target(config: dict) -> dict:
    targets = ((config.get("adapter") or {}).get("targets")) or [{}]
    return targets[0] if isinstance(targets[0], dict) else {}


def class_results(runs_root: str | Path) -> pd.DataFrame:
    """Return one row per finished run in the runs folder: owner (short form), run, method, r,
    k, the headline validation and test metric (`app.report.headline`; columns named by
    `lead_columns`), trainable parameters, training seconds, steps, owner id."""
    rows = []
    for run_dir in runs.list_runs(runs_root):
        summary = read_run_json(run_dir)
        if summary.get("state") != "finished":
            continue
        final = summary.get("final_metrics") or {}
        config = summary.get("config") or {}
        target = _first_target(config)
        top = headline(final, summary.get("tasks") or ())
        owner = owners.run_owner(run_dir)
        rows.append({"owner": owners.short_owner(owner), "run": run_dir.name,
                     "method": summary.get("method") or (config.get("adapter") or {}).get("method"),
                     "r": target.get("r"), "k": target.get("k"), "metric": top["name"],
                     "validation_metric": top["validation"], "test_metric": top["test"],
                     "trainable_params": final.get("trainable_params"), "seconds": final.get("train_seconds"),
                     "steps": final.get("steps"), "owner_id": owner or ""})
    if not rows:
        return pd.DataFrame(columns=["owner", "run", "method", "r", "k", "validation metric", "test metric",
                                     "trainable_params", "seconds", "steps", "owner_id"])
    table = lead_columns(pd.DataFrame(rows))
    first = ["owner", "run"]
    return table[first + [c for c in table.columns if c not in first]]


def past_runs(runs_root: Path, viewer: str, instructor: bool) -> dict[str, str]:
    """Return {run folder name: label} of the past runs `viewer` may reload: their own (every
    run for the instructor, with its owner; runs nobody owns too when not served to a lab)."""
    found = owners.visible_runs(runs_root, viewer, instructor=instructor, lab=sio.lab_mode())
    return {path.name: (f"{path.name} ({owners.short_owner(owner)})" if instructor else path.name)
            for path, owner in found}


def _caps() -> str:
    try:
        lim = limits.server_limits()
    except ValueError as exc:
        return f"(a server setting is invalid: {exc})"
    refuse = f"refused over {lim.refuse_run_minutes:g} min" if lim.refuse_run_minutes else "never refused for time"
    confirm = f"a confirmation over {lim.run_minutes:g} min" if lim.run_minutes else "no confirmation"
    return (f"Per student: {lim.queued_per_user} runs queued or running (IDLORA_MAX_QUEUED_PER_USER), "
            f"{lim.studies_per_user} running stud{'y' if lim.studies_per_user == 1 else 'ies'} "
            f"(IDLORA_MAX_STUDIES_PER_USER). Per run: {lim.run_steps:,} steps, {lim.run_memory_gb:g} GB, "
            f"{confirm} (IDLORA_MAX_RUN_MINUTES), {refuse} (IDLORA_REFUSE_RUN_MINUTES). "
            f"At most {slots.max_runs()} run(s) train at once (IDLORA_MAX_RUNS).")


def _queue_table(queue: RunQueue) -> tuple[pd.DataFrame, dict[str, str]]:
    """Return (the table of every queued and running run, {ticket id: its choice label})."""
    found = throughput.throughput(queue.root).measurements()
    rows, choices = [], {}
    entries = [(e, "running", None) for e in queue.running()] + [
        (e, "queued", place) for place, e in enumerate(queue.waiting(), 1)]
    for entry, state, place in entries:
        shape = throughput.RunShape.from_dict(entry.get("shape") or {})
        estimate = throughput.estimate_from(shape, found).seconds if shape else None
        owner = owners.short_owner(entry.get("owner"))
        since = entry.get("started") or entry.get("submitted")
        rows.append({"owner": owner, "label": entry.get("label", ""), "method": entry.get("method", ""),
                     "state": state, "place": place,
                     "since": time.strftime("%H:%M:%S", time.localtime(since)) if since else "",
                     "estimate": throughput.minutes(estimate) if estimate is not None else "—",
                     "run": Path(entry.get("run_dir", "")).name})
        choices[entry["id"]] = f"{entry.get('label', '')} ({owner}, {state})"
    return pd.DataFrame(rows), choices


def panel(queue: RunQueue, me: str) -> bool:
    """Draw the instructor's view for a session that gave the token (the sign-in box for the
    others when the server has a token); return True for the instructor."""
    if not class_panel.is_instructor():
        if class_study.token_configured():
            class_panel.sign_in()
        return False
    with st.expander("Instructor: every run", expanded=True):
        st.caption(_caps())
        table, choices = _queue_table(queue)
        if table.empty:
            st.caption("No run is queued or training now.")
        else:
            st.dataframe(table, key="instructor_runs", hide_index=True, width="stretch")
            c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
            chosen = c1.selectbox("Run", list(choices), format_func=choices.get, key="instructor_pick")
            if c2.button("Cancel this run", key="instructor_cancel"):
                done = queue.cancel(chosen, me, instructor=True)
                st.toast("Withdrawn or asked to stop (after its current step)." if done else "It had ended already.")
        root = queue.root
        st.download_button("Download class results (CSV)", lambda: class_results(root).to_csv(index=False),
                           file_name="class_results.csv", mime="text/csv", key="download_class_results",
                           help="Every finished run in the runs folder: owner, method, r, k, validation and "
                           "test metric, trainable parameters, seconds.")
    return True
