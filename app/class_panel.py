"""The class study on the Studies page: every student's Join, the instructor's open / watch / cancel.

One function, `panel()`, which app/views/studies.py draws above its study picker. The logic is
`idlora_core/jobs/class_study.py`; this file holds widgets and session state only.

Who is who: a student is `app.background.user_id()` (this browser session, or the user a
trusted proxy names), the same owner as the Fine-tune page's queued runs. The instructor is
any session that gave the server's instructor token ($IDLORA_INSTRUCTOR_TOKEN) in the URL
(`?token=...`, removed from the address at once) or in the Instructor box. A student sees and
cancels only their own joins; the instructor sees and cancels every join.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import streamlit as st

from analysis import studies
from app import background
from app import settings_io as sio
from idlora_core.config import ConfigError
from idlora_core.jobs import class_study as cs
from idlora_core.jobs import run_queue
from idlora_core.study.config import load_study

INSTRUCTOR = "cs_instructor"  # True once this session gave the right token
NOTE = "cs_note"  # (class study folder, kind, message) of this session's last join
POLL_SECONDS = 5.0
DEFAULT_PRESET = "minilm_rotten_tomatoes"
STUDY_CURRENT, STUDY_PICKER = "st_current", "st_open"  # the Studies page's chosen study


def queue() -> run_queue.RunQueue:
    """Return the server's run queue of the runs folder (the one the Fine-tune page submits to)."""
    return background.server_queue(sio.runs_root())


def session_id() -> str:
    """Return who this student is: the owner of this session's queued runs and joins
    (`app.background.user_id`, kept across a refresh by the session store)."""
    return background.user_id()


def is_instructor() -> bool:
    """Return True when this session gave the server's instructor token (URL `?token=` or the box)."""
    state = st.session_state
    if not cs.token_configured():
        return False
    given = st.query_params.get("token")
    if given is not None:
        del st.query_params["token"]  # out of the address bar, history and shared links
        state[INSTRUCTOR] = cs.token_ok(given)
        if not state[INSTRUCTOR]:
            st.error("Wrong token.")
    return bool(state.get(INSTRUCTOR))


def sign_in() -> None:
    """Draw the Instructor box: the token, once given, makes this session the instructor."""
    with st.expander("Instructor"), st.form("cs_signin", clear_on_submit=True, border=False):
        token = st.text_input("Instructor token", type="password", key="cs_token")
        if st.form_submit_button("Sign in", key="cs_signin_button"):
            if cs.token_ok(token):
                st.session_state[INSTRUCTOR] = True
                st.rerun()
            st.error("Wrong token.")


def _joins_table(folder: Path, joins: list[cs.Assignment], with_student: bool) -> pd.DataFrame:
    found = cs.states(folder, joins, queue())
    rows = [{**({"student": a.student} if with_student else {}), "budget": a.budget, "seed": a.seed,
             "state": state, "place in queue": place, "shared": a.shared, "run": a.run,
             "joined": time.strftime("%H:%M:%S", time.localtime(a.time))}
            for a, (state, place) in zip(joins, found, strict=True)]
    return pd.DataFrame(rows)


def _open_form(root: Path) -> None:
    """The instructor's 'open a class study' controls."""
    presets = studies.list_presets()
    if not presets:
        st.info("No study presets in configs/studies/.")
        return
    names = list(presets)
    c1, c2, c3 = st.columns(3)
    preset = c1.selectbox("Preset", names, index=names.index(DEFAULT_PRESET) if DEFAULT_PRESET in names else 0,
                          key="cs_preset")
    try:
        study = load_study(presets[preset])
    except ConfigError as exc:
        st.error(str(exc))
        return
    st.session_state.setdefault("cs_name", time.strftime("class-%Y%m%d"))
    name = c2.text_input("Class study name", key="cs_name")
    n_seeds = c3.number_input("Seeds per budget", 1, 50, max(len(study.grid.seed), 8), key="cs_seeds",
                              help="Each budget (method, r, k) is trained once per seed; a room of 20 "
                              "joining twice fills 5 budgets x 8 seeds.")
    extra = st.checkbox("Hand out further seeds when every run is taken", key="cs_extra")
    try:
        cfg = cs.class_config(study, list(range(int(n_seeds))))
    except ConfigError as exc:
        st.error(str(exc))
        return
    budgets, seeds = cs.class_plan(cfg)
    rates = ", ".join(f"{sio.METHOD_LABELS.get(m, m)} {v[0]:g}" for m, v in (cfg.grid.learning_rates or {}).items())
    st.caption(f"**{budgets} budgets x {seeds} seeds = {budgets * seeds} runs**, one per join, "
               f"{cfg.base.train.steps} steps each. One learning rate per method, the best of study preset "
               f"(a) on validation: {rates}.")
    if st.button("Open class study", key="cs_open", type="primary"):
        try:
            folder = cs.open_class_study(root, name, study, list(range(int(n_seeds))), extra_seeds=extra)
        except (ValueError, OSError) as exc:
            st.error(f"Could not open the class study: {exc}")
            return
        st.success(f"Opened {folder.name}: students press **Join** on their Studies page.")


def _instructor_view(folder: Path) -> None:
    """Every join of one class study, cancel any run, close it."""
    joins = cs.assignments(folder)
    st.markdown(f"**{folder.name}: all joins** ({len(joins)})")
    if joins:
        st.dataframe(_joins_table(folder, joins, True), hide_index=True, key=f"cs_all_{folder.name}")
        found = cs.states(folder, joins, queue())
        live = {a.id: f"{a.budget} seed {a.seed} ({a.student}, {state})"
                for a, (state, _) in zip(joins, found, strict=True) if state in cs.LIVE_STATES}
        if live:
            c1, c2 = st.columns([3, 1])
            chosen = c1.selectbox("Run", list(live), format_func=live.get, key=f"cs_pick_{folder.name}")
            if c2.button("Cancel this run", key=f"cs_cancel_{folder.name}"):
                done = cs.cancel(folder, chosen, session_id(), queue(), instructor=True)
                st.toast("Withdrawn or asked to stop." if done else "It had ended already.")
    if st.button(f"Close {folder.name} to new joins", key=f"cs_close_{folder.name}"):
        cs.close_class_study(folder)
        st.rerun()


def _join(folder: Path) -> tuple[str, str]:
    """Join the class study; return (kind, message): kind 'success', 'info' or 'error'."""
    try:
        a = cs.assign(folder, session_id(), queue())
    except cs.ClassStudyError as exc:
        return "info", str(exc)
    except (OSError, ValueError) as exc:
        return "error", f"Could not join: {exc}"
    queue().pump()
    st.session_state[background.QUEUE_ROOT] = str(queue().root)  # the heartbeat keeps it queued
    st.session_state[STUDY_CURRENT] = st.session_state[STUDY_PICKER] = str(folder)  # show it below
    what = f"**{a.budget}, seed {a.seed}**"
    if a.shared:
        return "success", (f"You joined {folder.name}: {what} is already trained or training for another "
                           "join (runs are deterministic: it would give the same numbers), so you watch that run.")
    return "success", (f"You joined {folder.name}: your run trains {what}; it fills in the class's plot "
                       "when it finishes.")


def _status(folder: Path) -> None:
    """Record the runs that ended (the plot below fills in), show this session's joins."""
    if cs.record_finished(folder):
        st.rerun()  # new trials: redraw the whole page with them
    mine = cs.assignments(folder, session_id())
    if not mine:
        return
    st.dataframe(_joins_table(folder, mine, False), hide_index=True, key="cs_mine")
    found = cs.states(folder, mine, queue())
    live = [a for a, (state, _) in zip(mine, found, strict=True) if state in cs.LIVE_STATES and not a.shared]
    if live and st.button("Cancel my class runs", key="cs_withdraw",
                          help="Withdraws your waiting runs and stops your training ones; their pairs go "
                          "to the next student who joins."):
        n = sum(cs.cancel(folder, a.id, session_id(), queue()) for a in live)
        st.toast(f"Withdrew or asked {n} run(s) to stop.")


def panel() -> None:
    """Draw the class study panel: Join for every student when a class study is open, the
    instructor's controls for a session that gave the token (sign-in box otherwise)."""
    root = sio.runs_root()
    instructor = is_instructor()
    if instructor:
        with st.expander("Instructor: class studies", expanded=True):
            _open_form(root)
            for folder in cs.list_class_studies(root):
                _instructor_view(folder)
    elif cs.token_configured():
        sign_in()
    for folder in cs.list_class_studies(root, only_open=False):
        cs.record_finished(folder)  # a student who closed the tab still contributes
    opened = cs.list_class_studies(root)
    if not opened:
        return
    with st.container(border=True, key="class_study"):
        folder = opened[0]
        if len(opened) > 1:
            folder = Path(st.selectbox("Class study", [str(p) for p in opened], format_func=lambda p: Path(p).name,
                                       key="cs_study"))
        count = cs.progress(folder, queue())
        st.markdown(f"**Class study: {folder.name}** — {count['budgets']} budgets x {count['seeds']} seeds, "
                    f"{count['finished']} of {count['runs']} runs finished, {count['live']} queued or training. "
                    "**Join** trains one run the study assigns you (a budget and a seed); when it finishes it "
                    "fills in the class's trade-off plot below, and the intervals narrow as the room "
                    "contributes.")
        if st.button("Join (trains one assigned run)", key="cs_join", type="primary"):
            st.session_state[NOTE] = (str(folder), *_join(folder))
            count = cs.progress(folder, queue())
        note = st.session_state.get(NOTE)
        if note and note[0] == str(folder):  # the last join's message, kept across reruns
            getattr(st, note[1])(note[2])
        st.fragment(run_every=POLL_SECONDS if count["live"] else None)(_status)(folder)
