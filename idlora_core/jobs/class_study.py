"""Class studies: one study the whole room fills in, one short run per student join.

The instructor opens a class study (`open_class_study`): its folder RUNS/studies/NAME is written
like any study's (input.yaml, study.yaml, study.json, the Optuna storage) but no coordinator
starts. Each join (`assign`) hands the student the next free (budget, seed) pair of the grid
and submits that run to the server's run queue; a finished run becomes a COMPLETE trial of the
study (`record`, `record_finished`), so the Studies page, `summary_table` and `compare` read a
class study exactly like any other study.

  class.json        the marker: open or closed, extra seeds allowed, when it was opened
  assignments.json  every join (student, cell, seed, run folder, queue ticket, time) and the
                    runs recorded as trials
  class.lock        flock'ed while either file or the storage changes

Join order: round q gives budget p the seed (p + q) mod S, so every budget fills evenly and
students joining one after the other get different seeds; a student joining again prefers a
seed they do not have yet. Runs are deterministic, so an identical configuration (this study's
pair, or the same config in another class study) is trained once: a join that would repeat one
that finished or is still training watches that run instead (`Assignment.shared`).
No Streamlit here; `app/class_panel.py` draws it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna

from idlora_core.cache import write_text_atomic
from idlora_core.config import ConfigError, RunConfig
from idlora_core.jobs import runs
from idlora_core.jobs.run_queue import RunQueue
from idlora_core.jobs.studies import STUDIES_DIR, study_dir
from idlora_core.study.config import StudyConfig, dumps_study, parse_study
from idlora_core.study.defaults import default_learning_rate
from idlora_core.study.grid import budget_key, cell_config, cell_name, expand_grid
from idlora_core.study.runner import prepare_study, study_hash
from idlora_core.study.storage import load_optuna_study, read_study_folder, write_study_folder
from idlora_core.study.summary import EXTRA_KEYS, budget_label
from idlora_core.training.run_files import RunState, read_run_json, read_status

CLASS_FILE = "class.json"
ASSIGN_FILE = "assignments.json"
LOCK_FILE = "class.lock"
TOKEN_ENV = "IDLORA_INSTRUCTOR_TOKEN"
LIVE_STATES = ("queued", RunState.starting, RunState.running)  # "queued": the server queue's
HOLDING = LIVE_STATES + (RunState.finished,)  # a pair in one of these is taken; failed / cancelled / withdrawn free it


class ClassStudyError(ValueError):
    """A join or an instructor action that cannot be done, with a one-line reason."""


@dataclass(frozen=True)
class Assignment:
    """One join: which student, which grid cell (index into study.json's cells) and seed, the
    run folder (a name under the runs root), its queue ticket (None when the join watches a
    run trained for an identical configuration: `shared`), when (Unix seconds)."""

    id: str
    student: str
    cell: int
    budget: str
    seed: int | None
    run: str
    ticket: str | None = None
    shared: bool = False
    time: float = 0.0
    withdrawn: bool = False
    config: RunConfig | None = field(default=None, compare=False, repr=False)  # on a fresh join only


# ----------------------------------------------------------------------------- instructor token

def token_configured() -> bool:
    """Return True when the server was started with an instructor token ($IDLORA_INSTRUCTOR_TOKEN)."""
    return bool(os.environ.get(TOKEN_ENV, "").strip())


def token_ok(given: str | None) -> bool:
    """Return True when `given` equals the server's instructor token (constant-time compare);
    always False when the server has none."""
    expected = os.environ.get(TOKEN_ENV, "").strip()
    if not expected or not given:
        return False
    return hmac.compare_digest(given.strip().encode("utf-8"), expected.encode("utf-8"))


# ----------------------------------------------------------------------------- folder and files

def runs_root_of(folder: str | Path) -> Path:
    """Return the runs root of the class study folder RUNS/studies/NAME (its runs live there)."""
    return Path(folder).resolve().parent.parent


def is_class_study(folder: str | Path) -> bool:
    """Return True when `folder` is a class study (holds class.json)."""
    return (Path(folder) / CLASS_FILE).is_file()


def _read_json(path: Path, default: dict[str, Any]) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default
    return data if isinstance(data, dict) else default


def class_info(folder: str | Path) -> dict[str, Any]:
    """Return class.json of a class study: name, open (bool), extra_seeds (bool), opened (Unix s)."""
    return _read_json(Path(folder) / CLASS_FILE, {})


def list_class_studies(runs_root: str | Path, only_open: bool = True) -> list[Path]:
    """Return the class study folders under RUNS/studies, newest first (only the open ones by default)."""
    root = Path(runs_root) / STUDIES_DIR
    found = [p.parent for p in root.glob(f"*/{CLASS_FILE}")] if root.is_dir() else []
    found = [p for p in found if not only_open or class_info(p).get("open")]
    return sorted(found, key=lambda p: class_info(p).get("opened", 0), reverse=True)


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    with open(folder / LOCK_FILE, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _load(folder: Path) -> dict[str, Any]:
    data = _read_json(folder / ASSIGN_FILE, {})
    return {"assignments": list(data.get("assignments", [])), "recorded": list(data.get("recorded", []))}


def _save(folder: Path, data: dict[str, Any]) -> None:
    write_text_atomic(folder / ASSIGN_FILE, json.dumps(data, indent=1))


def _entry(raw: dict[str, Any]) -> Assignment:
    keys = Assignment.__dataclass_fields__.keys() - {"config"}
    return Assignment(**{k: raw[k] for k in keys if k in raw})


def _raw(a: Assignment) -> dict[str, Any]:
    data = asdict(a)
    data.pop("config")
    return data


# ----------------------------------------------------------------------------- opening

def class_config(study: StudyConfig, seeds: list[int] | None = None) -> StudyConfig:
    """Return the class version of `study`: one learning rate per method (its default,
    `idlora_core.study.defaults`: preset (a)'s best on validation), the grid's seeds replaced by
    `seeds` when given. Raises ConfigError when the result is not a valid study."""
    data = study.model_dump(mode="json", exclude_none=True)
    methods = study.grid.method
    data["grid"].pop("learning_rate", None)
    lrs = {m: [default_learning_rate(m)] for m in methods if m != "base"}
    data["grid"]["learning_rates"] = lrs or None
    if seeds is not None:
        data["grid"]["seed"] = list(seeds)
    return parse_study(data)


def class_plan(study: StudyConfig) -> tuple[int, int]:
    """Return (budgets, seeds) of a class study config: its grid is budgets x seeds runs."""
    cells, _ = expand_grid(study)
    budgets = {_budget_of(c) for c in cells}
    return len(budgets), len(study.grid.seed)


def open_class_study(runs_root: str | Path, name: str, study: StudyConfig, seeds: list[int] | None = None,
                     extra_seeds: bool = False) -> Path:
    """Open the class study NAME (RUNS/studies/NAME) from `study` (see `class_config`) without
    starting any process; return its folder. Opening it again with the same settings reopens it
    (assignments and trials kept); ClassStudyError when the name holds another study."""
    folder = study_dir(runs_root, name)
    cfg = class_config(study, seeds).model_copy(update={"name": folder.name})
    text = dumps_study(cfg)
    spec = folder / "input.yaml"
    if is_class_study(folder):  # reopen: its storage, cells (extra seeds too) and joins stay
        if not spec.is_file() or spec.read_text(encoding="utf-8") != text:
            raise ClassStudyError(f"a class study with other settings is named {folder.name!r}; choose "
                                  "another name (the same settings reopen it)")
    elif folder.exists() and any(folder.iterdir()):
        raise ClassStudyError(f"a study named {folder.name!r} exists already; choose another name")
    else:
        try:
            prepare_study(cfg, folder)
        except ConfigError as exc:
            raise ClassStudyError("; ".join(exc.errors)) from None
        write_text_atomic(spec, text)
    with _locked(folder):
        info = class_info(folder)
        write_text_atomic(folder / CLASS_FILE, json.dumps({
            "name": folder.name, "open": True, "extra_seeds": bool(extra_seeds),
            "opened": info.get("opened", time.time())}, indent=1))
        if not (folder / ASSIGN_FILE).is_file():
            _save(folder, {"assignments": [], "recorded": []})
    return folder


def close_class_study(folder: str | Path) -> None:
    """Close a class study to new joins (its runs keep training and are still recorded)."""
    folder = Path(folder)
    with _locked(folder):
        info = class_info(folder)
        write_text_atomic(folder / CLASS_FILE, json.dumps({**info, "open": False}, indent=1))


# ----------------------------------------------------------------------------- the grid as pairs

def _budget_of(cell: dict[str, Any]) -> tuple:
    return tuple(sorted((k, v) for k, v in cell.items() if k != "seed"))


def pair_order(n_budgets: int, n_seeds: int) -> list[tuple[int, int]]:
    """Return the (budget index, seed index) pairs in join order: round q gives budget p the seed
    (p + q) mod n_seeds, so every budget fills evenly and consecutive joins differ in seed."""
    return [(p, (p + q) % n_seeds) for q in range(n_seeds) for p in range(n_budgets)]


def _pairs(cells: list[dict[str, Any]]) -> tuple[list[tuple], list[Any], dict[tuple[int, int], int]]:
    """(budgets, seeds, {(budget index, seed index): cell index}) of a study's cells."""
    budgets = list(dict.fromkeys(_budget_of(c) for c in cells))
    seeds = list(dict.fromkeys(c.get("seed") for c in cells))
    index = {(budgets.index(_budget_of(c)), seeds.index(c.get("seed"))): i for i, c in enumerate(cells)}
    return budgets, seeds, index


def config_hash(config: RunConfig) -> str:
    """Return a short hash of what a run computes: its config without the output folder."""
    data = config.model_dump(mode="json")
    data.pop("output_dir", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _label(cfg: StudyConfig, cell: dict[str, Any]) -> str:
    """The budget of a cell as the summary names it, e.g. "idlora:r8:k4" or "lora:r4 steps=60"."""
    method, r, k = budget_key(cell, cfg.base)
    return budget_label({"method": method, "r": r, "k": k, **{key: cell[key] for key in EXTRA_KEYS
                                                             if cell.get(key) is not None}})


# ----------------------------------------------------------------------------- states

def _places(queue: RunQueue | None) -> dict[str, int] | None:
    """{ticket id: 1-based place} of the queue's waiting runs (None without a queue)."""
    return None if queue is None else {e["id"]: i + 1 for i, e in enumerate(queue.waiting())}


def _state(folder: Path, a: Assignment, places: dict[str, int] | None) -> tuple[str, int | None]:
    if a.withdrawn:
        return "withdrawn", None
    run_dir = runs_root_of(folder) / a.run
    if run_dir.is_dir():
        return runs.recorded_state(run_dir), None
    if a.ticket is None or places is None:
        return "queued", None  # no queue to ask: assume it waits
    if a.ticket in places:
        return "queued", places[a.ticket]
    for _ in range(3):  # the queue may be starting it right now (its folder appears just after)
        if run_dir.is_dir():
            return runs.recorded_state(run_dir), None
        time.sleep(0.02)
    return "withdrawn", None


def assignment_state(folder: str | Path, a: Assignment, queue: RunQueue | None = None) -> tuple[str, int | None]:
    """Return (state, place) of a join's run: ('queued', place in the server queue) while it
    waits, else its run folder's state ('starting', 'running', 'finished', 'cancelled',
    'failed'), or 'withdrawn' when it left the queue without starting. Without `queue` a run
    whose folder does not exist yet counts as queued (place None)."""
    return _state(Path(folder), a, _places(queue))


def states(folder: str | Path, joins: list[Assignment], queue: RunQueue | None = None) -> list[tuple[str, int | None]]:
    """Return `assignment_state` of each join in `joins` (reading the queue once)."""
    places = _places(queue)
    return [_state(Path(folder), a, places) for a in joins]


def _mark_withdrawn(folder: Path, data: dict[str, Any], places: dict[str, int] | None) -> None:
    for raw in data["assignments"]:
        a = _entry(raw)
        if not a.withdrawn and a.ticket and _state(folder, a, places)[0] == "withdrawn":
            raw["withdrawn"] = True


def _known_runs(runs_root: Path, skip: Path, places: dict[str, int] | None) -> dict[str, Assignment]:
    """{config hash: join} of the OTHER class studies under `runs_root` whose run finished or may
    still finish (identical configurations are trained once)."""
    found: dict[str, Assignment] = {}
    for other in list_class_studies(runs_root, only_open=False):
        if other.resolve() == skip.resolve():
            continue
        for raw in _load(other)["assignments"]:
            a = _entry(raw)
            h = raw.get("config_hash")
            if h and h not in found and _state(other, a, places)[0] in HOLDING:
                found[h] = a
    return found


# ----------------------------------------------------------------------------- joining

def _extend_seeds(folder: Path, cfg: StudyConfig, meta: dict[str, Any]) -> tuple[StudyConfig, dict[str, Any]]:
    """Add one seed beyond the grid for every budget (cells appended: old indices stay)."""
    cells = meta["cells"]
    budgets, seeds, _ = _pairs(cells)
    new_seed = max(s for s in seeds if s is not None) + 1
    first = {_budget_of(c): c for c in reversed(cells)}
    added = [{**first[b], "seed": new_seed} for b in budgets]
    cfg = cfg.model_copy(update={"grid": cfg.grid.model_copy(update={"seed": [*cfg.grid.seed, new_seed]})})
    cells = cells + added
    write_study_folder(cfg, folder, meta["storage"], meta["name"], cells)
    study = load_optuna_study(meta["storage"], meta["name"])
    study.set_user_attr("cells", cells)
    study.set_user_attr("study_yaml", dumps_study(cfg))
    study.set_user_attr("study_hash", study_hash(cfg))
    return cfg, {**meta, "cells": cells}


def _run_name(folder: Path, index: int, cell: dict[str, Any], used: set[str]) -> str:
    """A new run folder name for the cell: class-STUDY-CELL, then -2, -3 for a retried pair."""
    base = f"class-{folder.name}-{cell_name(index, cell)}"
    root, name, n = runs_root_of(folder), base, 1
    while name in used or (root / name).exists():
        n += 1
        name = f"{base}-{n}"
    return name


def assign(folder: str | Path, student: str, queue: RunQueue, *, want: int | None = None) -> Assignment:
    """Join the class study in `folder` as `student`: pick the next free (budget, seed) pair
    (or the cell index `want`), submit its run to `queue` (owner = student) and record the join;
    return the Assignment (its `config` is the RunConfig of the pair). When an identical
    configuration finished or is training (this pair, or the same config in another class
    study), nothing is submitted: the join watches that run (`shared`, the same run and ticket).

    Raises ClassStudyError when the study is closed, or every pair is taken and the instructor
    allowed no extra seeds; the queue's errors (OSError, ValueError) leave no join behind."""
    folder = Path(folder)
    if not is_class_study(folder):
        raise ClassStudyError(f"{folder.name} is not a class study")
    with _locked(folder):
        info = class_info(folder)
        if not info.get("open"):
            raise ClassStudyError(f"class study {folder.name} is closed: ask the instructor to open one")
        cfg, meta = read_study_folder(folder)
        data = _load(folder)
        places = _places(queue)
        _mark_withdrawn(folder, data, places)
        held: dict[int, Assignment] = {}  # cell -> the join whose run holds it
        mine_seeds = set()
        for raw in data["assignments"]:
            a = _entry(raw)
            if _state(folder, a, places)[0] in HOLDING:
                held.setdefault(a.cell, a)
                mine_seeds.update([a.seed] if a.student == student else [])
        if want is not None:
            if not 0 <= want < len(meta["cells"]):
                raise ClassStudyError(f"cell {want} is not in class study {folder.name} "
                                      f"(cells 0-{len(meta['cells']) - 1})")
            index = want
        else:
            index = _next_cell(meta["cells"], held, mine_seeds)
            if index is None and info.get("extra_seeds"):
                cfg, meta = _extend_seeds(folder, cfg, meta)
                index = _next_cell(meta["cells"], held, mine_seeds)
            if index is None:
                raise ClassStudyError(f"every run of class study {folder.name} is taken "
                                      f"({len(meta['cells'])} runs): read its results on the Studies page")
        cell = meta["cells"][index]
        name = _run_name(folder, index, cell, {r.get("run") for r in data["assignments"]})
        config = cell_config(cfg.base, cell, str(runs_root_of(folder) / name))
        digest = config_hash(config)
        same = held.get(index) or _known_runs(runs_root_of(folder), folder, places).get(digest)
        if same is not None:
            run, ticket = same.run, same.ticket
        else:
            run, ticket = name, queue.submit(
                config, label=f"{folder.name}: {_label(cfg, cell)} seed {cell.get('seed')}", owner=student,
                name=name).id
        a = Assignment(id=uuid.uuid4().hex[:10], student=student, cell=index, budget=_label(cfg, cell),
                       seed=cell.get("seed"), run=run, ticket=ticket, shared=same is not None, time=time.time())
        data["assignments"].append({**_raw(a), "config_hash": digest})
        _save(folder, data)
    return Assignment(**{**_raw(a), "config": config})


def _next_cell(cells: list[dict[str, Any]], held: dict[int, Assignment], mine_seeds: set) -> int | None:
    budgets, seeds, index = _pairs(cells)
    free = [index[pair] for pair in pair_order(len(budgets), len(seeds)) if pair in index
            and index[pair] not in held]
    fresh = [i for i in free if cells[i].get("seed") not in mine_seeds]
    return (fresh or free or [None])[0]


def assignments(folder: str | Path, student: str | None = None) -> list[Assignment]:
    """Return the joins of a class study, oldest first: only `student`'s when given (what a
    student may see), every join when None (the instructor's view)."""
    found = [_entry(raw) for raw in _load(Path(folder))["assignments"]]
    return [a for a in found if student is None or a.student == student]


def cancel(folder: str | Path, assignment_id: str, student: str, queue: RunQueue,
           instructor: bool = False) -> bool:
    """Withdraw a join's waiting run or ask its running one to stop; return True when the queue
    found it. Raises PermissionError when `student` is not the one who joined and `instructor`
    is False, ClassStudyError for a shared join (its run belongs to another join) or an unknown id.
    A withdrawn or cancelled pair is free again for the next join."""
    folder = Path(folder)
    with _locked(folder):
        data = _load(folder)
        raw = next((r for r in data["assignments"] if r.get("id") == assignment_id), None)
        if raw is None:
            raise ClassStudyError(f"no join {assignment_id!r} in class study {folder.name}")
        if raw.get("student") != student and not instructor:
            raise PermissionError("this run belongs to another student; only the instructor can cancel it")
        if raw.get("shared") and not instructor:
            raise ClassStudyError("this join watches a run trained for an identical configuration "
                                  "(another join's); it cannot be cancelled from here")
        if not raw.get("ticket"):
            return False
        waiting = queue.place(raw["ticket"]) is not None
        found = queue.cancel(raw["ticket"])
        if found and waiting and not (runs_root_of(folder) / raw["run"]).is_dir():
            for other in data["assignments"]:
                if other.get("ticket") == raw["ticket"]:
                    other["withdrawn"] = True
            _save(folder, data)
    return found


# ----------------------------------------------------------------------------- recording trials

def _final(summary: dict[str, Any]) -> dict[str, Any]:
    final = summary.get("final_metrics") or {}
    return {k: v for k, v in final.items()
            if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))}


def _trial(folder: Path, cfg: StudyConfig, a: Assignment) -> optuna.trial.FrozenTrial | None:
    """The trial of join `a`'s run, with the user attributes the study worker writes: COMPLETE
    when it finished with the metric, FAIL when it failed (or lacks the metric), None while it
    trains or when it was cancelled (no trial)."""
    run_dir = runs_root_of(folder) / a.run
    summary = read_run_json(run_dir)
    state = summary.get("state")
    if state not in (RunState.finished, RunState.failed):
        if not run_dir.is_dir() or runs.recorded_state(run_dir) != RunState.failed:
            return None
        state = RunState.failed  # crashed before writing run.json's end
    final = _final(summary)
    attrs = {"cell": a.cell, "run": a.run, "run_dir": os.path.relpath(run_dir, folder), "run_state": state,
             "message": summary.get("message") or read_status(run_dir).get("message", ""),
             "seconds": final.get("train_seconds"), "final": final, "shared": a.shared}
    value = final.get(cfg.metric)
    if state == RunState.finished and value is not None:
        return optuna.trial.create_trial(value=float(value), user_attrs=attrs,
                                         state=optuna.trial.TrialState.COMPLETE)
    keys = ", ".join(sorted(k for k in final if k.startswith(("eval_", "final_"))))
    failure = attrs["message"] if state == RunState.failed else (
        f"metric {cfg.metric!r} is not in the run's final metrics ({keys})")
    return optuna.trial.create_trial(user_attrs={**attrs, "failure": failure},
                                     state=optuna.trial.TrialState.FAIL)


def _record_runs(folder: Path, data: dict[str, Any], todo: list[Assignment]) -> int:
    """Add the trials of `todo`'s ended runs (under the lock); return how many were added. The
    run folder name is the key: a run already in the storage is never added again."""
    todo = [a for a in todo if a.run not in data["recorded"]]
    if not todo:
        return 0
    cfg, meta = read_study_folder(folder)
    study = load_optuna_study(meta["storage"], meta["name"])
    stored = {t.user_attrs.get("run") for t in study.get_trials(deepcopy=False)}
    added = 0
    for a in todo:
        if a.run not in stored:
            trial = _trial(folder, cfg, a)
            if trial is None:
                continue
            study.add_trial(trial)
            stored.add(a.run)
            added += 1
        data["recorded"].append(a.run)
    _save(folder, data)
    return added


def record(folder: str | Path, run_dir: str | Path) -> bool:
    """Add the run in `run_dir` (the run of one of this class study's joins) as a trial of the
    study: COMPLETE with the study's metric as its value when it finished, FAIL when it failed.
    Return True when a trial was added; a run recorded before, still training or cancelled adds
    nothing. ClassStudyError for a run that no join of this study names."""
    folder = Path(folder)
    name = Path(run_dir).name
    with _locked(folder):
        data = _load(folder)
        joined = [_entry(r) for r in data["assignments"] if r.get("run") == name]
        if not joined:
            raise ClassStudyError(f"run {name} is not a run of class study {folder.name}")
        return _record_runs(folder, data, joined[:1]) > 0


def record_finished(folder: str | Path) -> int:
    """Record every finished or failed run of the class study's joins not recorded yet; return
    how many trials were added. Cheap when nothing new ended (reads the run folders' status
    files only), so the Studies page calls it on every render."""
    folder = Path(folder)
    if not is_class_study(folder):
        return 0
    root = runs_root_of(folder)
    data = _load(folder)
    ended = [a for a in (_entry(r) for r in data["assignments"]) if a.run not in data["recorded"]
             and (root / a.run).is_dir() and runs.recorded_state(root / a.run) in (RunState.finished, RunState.failed)]
    if not ended:
        return 0
    with _locked(folder):
        data = _load(folder)
        unique = list({a.run: a for a in (_entry(r) for r in data["assignments"])}.values())
        return _record_runs(folder, data, unique)


def progress(folder: str | Path, queue: RunQueue | None = None) -> dict[str, int]:
    """Return the counts of a class study: runs (cells of its grid), budgets, seeds, joined
    (joins so far), live (runs queued or training), finished (trials recorded)."""
    folder = Path(folder)
    meta = _read_json(folder / "study.json", {})
    cells = meta.get("cells", [])
    budgets, seeds, _ = _pairs(cells) if cells else ([], [], {})
    joins = assignments(folder)
    by_run = {a.run: s for a, (s, _) in zip(joins, states(folder, joins, queue), strict=True)}
    return {"runs": len(cells), "budgets": len(budgets), "seeds": len(seeds), "joined": len(joins),
            "live": sum(s in LIVE_STATES for s in by_run.values()),
            "finished": sum(s == RunState.finished for s in by_run.values())}
