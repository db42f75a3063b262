"""The Fine-tune page's estimate before Start: minutes per planned run and the expected wait in
the server's queue, from this server's own measurements, the room's time limit, and the warning
(with one button to shrink the run) when a causal LM such as SmolLM2 would train on a CPU.

The estimates are `idlora_core.jobs.throughput` (measured throughput of finished runs, the
default guess where nothing matches); the limits are `idlora_core.jobs.limits`
(IDLORA_MAX_RUN_MINUTES asks for a confirmation naming the estimate, IDLORA_REFUSE_RUN_MINUTES
refuses). Widgets and session state only; no maths here.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from analysis.layers import block_span, layer_table
from app import settings_io as sio
from app.common import RANGE_OWNER, model_name
from idlora_core.jobs import limits, slots, throughput
from idlora_core.jobs.run_queue import RunQueue

CONFIRM = "ft_confirm_long"  # prefix of the confirmation tick (its key names the estimate)
# "Use the small settings" for a causal LM on a CPU: a few steps of short sequences, the last two
# blocks only (the backward pass then stops there)
SMALL = {"ft_steps": 20, "ft_seq_len": 64, "ft_batch_size": 4, "ft_eval_interval": 0, "ft_grad_accum": 1}
SMALL_BLOCKS = 2


def planned_estimates(loaded, runs_root: Path, param_count: int | None = None) -> dict[str, throughput.Estimate]:
    """Return {method: Estimate of one of its runs} for the page's chosen methods, from the page's
    training and task settings (no run config is built: the rank and k do not change the time)."""
    state = st.session_state
    methods = list(dict.fromkeys(state.get("ft_methods") or []))
    tasks = sio.task_configs(state, loaded.kind)
    shapes = [throughput.RunShape.from_train(model_name(), m, sio.train_config(state, m), tasks) for m in methods]
    return dict(zip(methods, throughput.estimate_runs(shapes, runs_root, param_count=param_count), strict=True))


def _use_small_settings(loaded) -> None:
    """Button callback: the small settings, and the last SMALL_BLOCKS blocks as targets."""
    state = st.session_state
    state.update(SMALL)
    span = block_span(layer_table(loaded.weights))
    if span is not None:
        state["block_range"] = (max(span[0], span[1] - SMALL_BLOCKS + 1), span[1])
        state[RANGE_OWNER] = loaded.name  # the Model & layers page keeps it for this model
    state["_ft_small_applied"] = True


def cpu_warning(loaded, layers: list[str], estimate: throughput.Estimate | None) -> None:
    """Warn up front when a causal LM (SmolLM2) would train on the CPU, with a button that
    applies the small settings."""
    state = st.session_state
    try:
        device = throughput.device_kind(str(state.get("ft_device") or "auto"))
    except (AttributeError, ValueError):
        device = "cpu"
    if loaded.kind != "causal-lm" or device != "cpu":
        return
    per_step = f" (about {estimate.step_seconds:.0f} s a step here)" if estimate else ""
    whole = f"; one run of these settings takes about {throughput.minutes(estimate.seconds)}" if estimate else ""
    with st.container(border=True, key="ft_cpu_warning"):
        st.warning(f"**{model_name()} is a causal LM and this server trains on its CPU**: every step "
                   f"runs the whole model forward and back over {len(layers)} target layers{per_step}{whole}. "
                   f"The small settings ({SMALL['ft_steps']} steps, batch {SMALL['ft_batch_size']} x "
                   f"{SMALL['ft_seq_len']} tokens, the last {SMALL_BLOCKS} blocks only) make a run of a few "
                   "minutes: enough to see the loss fall and compare methods.")
        st.button("Use the small settings", key="ft_small_settings", on_click=_use_small_settings, args=(loaded,),
                  help="Sets steps, batch size, sequence length and evaluation here, and the block range of "
                  "the Model & layers page (shared with the other pages).")
    if state.pop("_ft_small_applied", False):
        st.toast("Small settings applied: fewer steps, shorter sequences, the last blocks only.")


def panel(loaded, layers: list[str], planned: int, queue: RunQueue, param_count: int | None = None) -> bool:
    """Draw the estimate of the planned runs (per run, all together, the expected wait) with its
    source, and the confirmation tick when a run is over the room's limit; return whether the
    user ticked it (False when no tick was needed)."""
    root = queue.root
    try:
        found = planned_estimates(loaded, root, param_count)
    except Exception as exc:  # noqa: BLE001 - invalid settings are reported by Start; no estimate here
        st.caption(f"No time estimate for these settings: {exc}")
        return False
    cpu_warning(loaded, layers, max(found.values(), key=lambda e: e.seconds, default=None))
    if not found:
        return False
    try:
        wait, ahead = throughput.estimate_wait_seconds(queue, slots.max_runs(), root)
        lim = limits.server_limits()
    except ValueError as exc:  # a bad server setting
        st.caption(f"No wait estimate: {exc}")
        return False
    each = " · ".join(f"{sio.METHOD_LABELS.get(m, m)}: about {throughput.minutes(e.seconds)} a run "
                      f"({e.source})" for m, e in found.items())
    total = sum(e.seconds for e in found.values()) * planned / max(len(found), 1)
    n_slots = slots.max_runs()
    with st.container(key="run_estimate"):
        st.caption(f"**Before you start:** {each}. **{planned} run{'' if planned == 1 else 's'}**, about "
                   f"{throughput.minutes(total)} of training in all; expected wait before they start: "
                   f"about {throughput.minutes(wait)} ({ahead} run{'' if ahead == 1 else 's'} ahead, "
                   f"{n_slots} slot{'' if n_slots == 1 else 's'}).")
    longest = max(found.values(), key=lambda e: e.seconds)
    if lim.refuse_run_minutes and longest.seconds > lim.refuse_run_minutes * 60:
        st.warning(f"A run of these settings takes about {throughput.minutes(longest.seconds)}: over this server's "
                 f"{lim.refuse_run_minutes:g} min per run (IDLORA_REFUSE_RUN_MINUTES); Start will refuse it. "
                 "Lower steps, batch size, sequence length or the number of target layers.")
        return False
    if lim.run_minutes and longest.seconds > lim.run_minutes * 60:
        st.warning(f"A run of these settings takes about {throughput.minutes(longest.seconds)}, over this room's "
                   f"{lim.run_minutes:g} min per run (IDLORA_MAX_RUN_MINUTES). Tick the box to start it anyway.")
        label = limits.confirm_label(longest.seconds)
        return bool(st.checkbox(label, key=f"{CONFIRM}_{label.rsplit('about ', 1)[-1].replace(' ', '_')}"))
    return False
