"""One vocabulary (issue 20 part 3): old names still load (with one note), METHOD_FIELDS is the
only "which method uses r / k / heads" table, RunState / MetricRow round-trip through the run
files, and no doc or app label uses a retired name (docs/VOCABULARY.md)."""

from __future__ import annotations

import ast
import json
import re
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from analysis import runs as run_tables
from analysis.exercises import load_exercises
from analysis.sweep import CACHE_NAMESPACE, SweepResult, SweepSpec, sweep_key, sweep_layer
from app import settings_io as sio
from idlora_core.cache import cache_key
from idlora_core.config import (
    ALL_METHODS,
    METHOD_FIELDS,
    METHODS,
    AdapterConfig,
    ConfigDeprecationWarning,
    ConfigError,
    TargetConfig,
    dumps_config,
    load_config,
    loads_config,
    uses_clusters,
    uses_heads,
    uses_rank,
)
from idlora_core.jobs.runs import recorded_state
from idlora_core.study import grid
from idlora_core.study.config import parse_study
from idlora_core.training.run_files import (
    ACTIVE_STATES,
    FINAL_STATES,
    METRIC_KEYS,
    STATUS_FILE,
    RunState,
    read_metrics,
    read_status,
    run_state_of,
    write_status,
)

REPO = Path(__file__).resolve().parents[2]
HYDRA_OLD = """\
adapter:
  method: hydralora
  targets:
    - {pattern: query, r: 4, k: 6, alpha: 8.0}
    - {pattern: value, r: 4, k: 6}
tasks: [{name: sentiment, num_train: 8, num_eval: 2}]
"""


def _notes(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, ConfigDeprecationWarning)]


def _load_recording(text: str):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        cfg = loads_config(text)
    return cfg, _notes(record)


# --- old config keys ------------------------------------------------------------------------


def test_old_hydralora_k_loads_as_heads_with_one_note(tmp_path):
    old, notes = _load_recording(HYDRA_OLD)
    new, new_notes = _load_recording(HYDRA_OLD.replace("k: 6", "heads: 6"))
    assert old == new and new_notes == []
    assert [(t.r, t.heads, t.k) for t in old.adapter.targets] == [(4, 6, 4), (4, 6, 4)]
    assert len(notes) == 1 and "\n" not in notes[0]  # one line, naming both targets
    assert "k -> heads on targets 0, 1" in notes[0] and "VOCABULARY.md" in notes[0]
    # a file, and a dump of what loaded, give the same config; the dump is silent
    path = tmp_path / "old.yaml"
    path.write_text(HYDRA_OLD)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert load_config(path) == new
    assert len(_notes(record)) == 1
    again, again_notes = _load_recording(dumps_config(old))
    assert again == new and again_notes == []


def test_train_cli_prints_the_note_in_one_line(tmp_path, monkeypatch, capsys):
    from idlora_core.training import cli, trainer

    path = tmp_path / "old.yaml"
    path.write_text(HYDRA_OLD + f"output_dir: {tmp_path / 'run'}\n")
    seen = {}

    def fake_training(config, **options):
        seen["heads"] = [t.heads for t in config.adapter.targets]
        return trainer.RunResult(RunState.finished, "trained", tmp_path / "run", 0)

    monkeypatch.setattr(trainer, "run_training", fake_training)
    monkeypatch.setattr(cli, "install_signal_handlers", lambda stop: None)
    assert cli.main([str(path), "--no-progress"]) == 0
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if "k -> heads" in line]
    assert len(notes) == 1 and notes[0].startswith(f"note: {path}: adapter method 'hydralora'")
    assert "Warning" not in err and seen["heads"] == [6, 6]


def test_a_whole_old_hydralora_dump_loads():
    # what the earlier code dumped: every target field, hydralora's heads spelled k
    dumped = yaml.safe_load(dumps_config(loads_config(HYDRA_OLD.replace("k: 6", "heads: 6"))))
    for target in dumped["adapter"]["targets"]:
        target["k"] = target.pop("heads")
    old, notes = _load_recording(yaml.safe_dump(dumped))
    assert [t.heads for t in old.adapter.targets] == [6, 6] and len(notes) == 1


def test_shorthand_and_other_methods():
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        short = AdapterConfig(method="hydralora", r=4, k=3, target_modules=["q", "v"])
        idl = AdapterConfig(method="idlora", r=4, k=3, target_modules=["q"])
    assert [t.heads for t in short.targets] == [3, 3] and idl.targets[0].k == 3
    assert len(_notes(record)) == 1  # the hydralora one; ID-LoRA's k is its clusters
    # both given: k is not HydraLoRA's, so a set k is an error naming the field to use
    with pytest.raises(ConfigError, match=r"targets\.0\.k=8 does not apply to method 'hydralora' "
                       r"\(only to idlora\) \(hydralora's is 'heads'\)"), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConfigDeprecationWarning)  # target 1's k is renamed
        loads_config(HYDRA_OLD.replace("k: 6, alpha", "k: 8, heads: 2, alpha"))
    with pytest.raises(ConfigError, match=r"targets\.0\.heads=2 does not apply to method 'idlora'"):
        loads_config("adapter: {method: idlora, targets: [{pattern: q, heads: 2}]}")


def test_old_exercise_keys_load_with_one_note(tmp_path):
    source = (REPO / "analysis" / "exercises.yaml").read_text(encoding="utf-8")
    old = re.sub(r"(?<=[{ ,] )selection: ", "strategy: ", source.replace("lab_selections", "lab_strategies"))
    assert old != source
    (tmp_path / "old.yaml").write_text(old, encoding="utf-8")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        read = load_exercises(tmp_path / "old.yaml")
    notes = _notes(record)
    assert len(notes) == 1 and "lab_strategies, strategy" in notes[0]
    assert read == load_exercises()


# --- one METHOD_FIELDS table ----------------------------------------------------------------


def test_uses_helpers_read_method_fields():
    for method in ALL_METHODS:
        fields = METHOD_FIELDS.get(method, frozenset())
        assert uses_rank(method) == ("r" in fields)
        assert uses_clusters(method) == ("k" in fields)
        assert uses_heads(method) == ("heads" in fields)
    assert [m for m in METHODS if uses_clusters(m)] == ["idlora"]
    assert [m for m in METHODS if uses_heads(m)] == ["hydralora"]
    assert not any(uses_rank(m) for m in ("full", "head-only", "base"))


@pytest.mark.parametrize("method", ALL_METHODS)
def test_grid_and_pages_agree_with_method_fields(method):
    counts = uses_clusters(method) or uses_heads(method)
    # the study grid: its r / k axes exist exactly for the methods that use the field
    assert ("r" in grid.USES[method]) == uses_rank(method)
    assert ("k" in grid.USES[method]) == counts
    assert grid.axis_field(method, "k") == ("heads" if uses_heads(method) else "k")
    # the Fine-tune page: one run per r (if used) x count (if used), each count from its own
    # widget onto its own field (clusters k: ft_ks, heads N: ft_heads)
    state = {"ft_methods": [method], "ft_ranks": [4, 8], "ft_ks": [2, 3], "ft_heads": [5, 6]}
    runs = sio.finetune_configs(state, "minilm", "encoder", ["encoder.layer.0.attention.self.query"])
    assert len(runs) == (2 if uses_rank(method) else 1) * (2 if counts else 1)
    if uses_clusters(method) or uses_heads(method):
        field, values = ("heads", [5, 6]) if uses_heads(method) else ("k", [2, 3])
        assert sorted({getattr(cfg.adapter.targets[0], field) for _, cfg in runs}) == values
        assert all(f" {field}=" in label for label, _ in runs)


def test_no_other_list_of_method_names_decides_fields():
    """grid.py and the page settings never test `method in ("idlora", ...)`: they ask METHOD_FIELDS."""
    names = set(ALL_METHODS)
    for path in ("idlora_core/study/grid.py", "app/settings_io.py", "app/page_settings.py"):
        tree = ast.parse((REPO / path).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare) and any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops):
                for right in node.comparators:
                    if isinstance(right, (ast.Tuple, ast.List, ast.Set)):
                        values = {e.value for e in right.elts if isinstance(e, ast.Constant)}
                        assert not values & names, f"{path}:{node.lineno} lists methods {values & names}"


def test_study_cell_and_pages_put_hydralora_counts_on_heads():
    base = loads_config("adapter: {method: idlora, targets: [{pattern: q, r: 8, k: 4}]}\n"
                        "tasks: [{name: sentiment}]")
    cell = {"method": "hydralora", "r": 4, "k": 5, "selection": None, "rb_splits": None,
            "steps": None, "learning_rate": None, "seed": None}
    cfg = grid.cell_config(base, cell, "/tmp/x")
    assert (cfg.adapter.targets[0].heads, cfg.adapter.targets[0].k) == (5, 4)
    assert grid.budget_key({**cell, "k": None}, base) == ("hydralora", 4, 4)  # base heads: default
    # export and import: HydraLoRA's N is the heads widget's and a layer choice's `heads`, both ways
    state = {"ex_method": "hydralora"}
    choices = {"q": {"k": 2, "heads": 3, "r": 4, "selection": "id", "rb_splits": 1}}
    exported = sio.export_config(state, "minilm", "encoder", ["q"], choices)
    assert exported.adapter.targets[0].heads == 3
    values = sio.settings_from_config(exported, {})
    assert (values["adapter_heads"], values["ft_heads"], values["layer_choices"]["q"]["heads"]) == (3, [3], 3)
    # a study's grid.heads is HydraLoRA's N; without it, grid.k (what a study held before)
    study = parse_study({"base": base.model_dump(mode="json"), "metric": "eval_loss",
                         "grid": {"method": ["idlora", "hydralora"], "k": [8], "heads": [2, 3]}})
    cells, _ = grid.expand_grid(study)
    counts = {(c["method"], grid.cell_config(base, c, "/tmp/x").adapter.targets[0].k,
               grid.cell_config(base, c, "/tmp/x").adapter.targets[0].heads) for c in cells}
    assert counts == {("idlora", 8, 4), ("hydralora", 4, 2), ("hydralora", 4, 3)}
    without = parse_study({"base": base.model_dump(mode="json"), "metric": "eval_loss",
                           "grid": {"method": ["hydralora"], "k": [5]}})
    assert [c["k"] for c in grid.expand_grid(without)[0]] == [5]
    assert values["adapter_rb_splits"] == 1 and "adapter_rb" not in values


# --- run states and metric rows -------------------------------------------------------------


@pytest.mark.parametrize("state", list(RunState))
def test_run_state_round_trips_as_the_plain_string(tmp_path, state):
    write_status(tmp_path, state, "msg", pid=None)
    raw = json.loads((tmp_path / STATUS_FILE).read_text())
    assert raw["state"] == state.value and type(raw["state"]) is str
    assert f'"state": "{state.value}"' in (tmp_path / STATUS_FILE).read_text()
    assert run_state_of(read_status(tmp_path)) is state
    write_status(tmp_path, state.value, "msg", pid=None)  # the plain string is accepted too
    assert read_status(tmp_path)["state"] == state  # a member equals its string
    assert recorded_state(tmp_path) is state  # no pid recorded: nothing to check


def test_run_state_sets_and_readers(tmp_path):
    assert set(ACTIVE_STATES) | set(FINAL_STATES) == set(RunState)
    assert not set(ACTIVE_STATES) & set(FINAL_STATES)
    assert [s.active for s in RunState] == [True, True, False, False, False]
    assert run_state_of({}) is RunState.starting and run_state_of({"state": "queued"}) is RunState.starting
    with pytest.raises(ValueError, match="state must be one of starting, running, finished, "
                       "cancelled, failed, got 'done'"):
        write_status(tmp_path, "done")
    write_status(tmp_path, RunState.running, "training", pid=2**22 + 12345)  # no such process
    assert recorded_state(tmp_path) is RunState.failed
    assert run_tables.run_summary(tmp_path)["state"] is RunState.running  # as recorded


def test_metric_row_written_by_the_callback_is_what_readers_read(tmp_path):
    from idlora_core.training.callbacks import MetricsCallback, StopFlag

    cb = MetricsCallback(tmp_path, trainable_params=10, total_params=100, device="cpu",
                         evaluate=lambda model: {}, eval_interval=0, stop=StopFlag(),
                         nonfinite=lambda: None)
    cb.pending_eval = {"eval_loss": 0.5, "eval_sentiment_accuracy": 0.75}
    cb._window_seconds, cb._window_steps = 0.2, 2
    state = SimpleNamespace(global_step=2, epoch=0.5, num_input_tokens_seen=64, max_steps=4,
                            is_world_process_zero=True)
    cb.on_log(None, state, None, logs={"loss": 1.25, "learning_rate": 1e-3, "grad_norm": 0.5})
    rows = read_metrics(tmp_path)
    assert len(rows) == 1
    assert list(rows[0]) == [*METRIC_KEYS, "eval_loss", "eval_sentiment_accuracy"]
    assert (rows[0]["step"], rows[0]["loss"], rows[0]["lr"], rows[0]["step_seconds"]) == (2, 1.25, 1e-3, 0.1)
    frame = run_tables.read_metrics(tmp_path)
    assert list(frame.columns) == list(rows[0])
    summary = run_tables.run_summary(tmp_path, frame)
    assert (summary["step"], summary["loss"], summary["trainable_params"], summary["total_params"],
            summary["step_seconds"], summary["eval_sentiment_accuracy"]) == (2, 1.25, 10, 100, 0.1, 0.75)
    assert read_status(tmp_path)["state"] == "running"


# --- the sweep: cache keys and old tables ---------------------------------------------------


def test_sweep_cache_key_keeps_its_meaning_and_old_entries_load():
    W = np.random.default_rng(0).standard_normal((24, 10))
    spec = SweepSpec(ks=[1, 2], ranks=[2, 3], selections=["id", "random"], seed=1)
    old_params = {"ks": [1, 2], "ranks": [2, 3], "strategies": ["id", "random"], "seed": 1,
                  "normalize_rows": False, "randomized": None, "spectral": False, "n_init": None,
                  "layer": "L"}
    assert sweep_key(W, spec, "L") == cache_key(CACHE_NAMESPACE, [W], old_params)
    assert sweep_key(W, spec, "L") != sweep_key(W, SweepSpec([1, 2], [2, 3], ["id"], seed=1), "L")
    result = sweep_layer(W, spec, layer="L")
    payload = json.loads(json.dumps(result.to_payload()))
    # an entry written before the rename: column and skeleton key `strategy`
    payload["table"]["columns"] = ["strategy" if c == "selection" else c for c in payload["table"]["columns"]]
    for clustering in payload["clusterings"]:
        for sel in clustering["selections"]:
            sel["strategy"] = sel.pop("selection")
    old = SweepResult.from_payload(payload)
    old.check()
    assert list(old.table["selection"]) == list(result.table["selection"])
    assert np.allclose(old.table["rel_fro_error"], result.table["rel_fro_error"], equal_nan=True)
    assert [a.tolist() for a in old.skeleton(2, 3, "random")] == [a.tolist() for a in result.skeleton(2, 3, "random")]


def test_old_cli_flags_still_work_with_one_note(capsys):
    from analysis import plan, scan, sweep_cli

    args = sweep_cli.build_parser().parse_args(["--strategies", "id,random"])
    assert args.selections == ("id", "random")
    assert sweep_cli.build_parser().parse_args([]).selections == ("id", "centroid", "random")
    assert scan.build_parser().parse_args(["--out", "x", "--model", "m", "--strategies", "centroid"]
                                          ).selections == "centroid"
    assert plan.build_parser().parse_args(["--out", "x", "--strategy", "random"]).selection == "random"
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["note: --strategies is now --selections (docs/VOCABULARY.md); the old name still works"] * 2 \
        + ["note: --strategy is now --selection (docs/VOCABULARY.md); the old name still works"]
    with pytest.raises(SystemExit):
        plan.build_parser().parse_args(["--out", "x", "--strategy", "best"])  # choices still apply
    assert "--strategies" not in sweep_cli.build_parser().format_help()  # hidden


def test_old_page_keys_are_read(monkeypatch):
    from app import common, url_state

    class Params(dict):
        def to_dict(self):
            return dict(self)

    fake = SimpleNamespace(session_state={}, query_params=Params(lab_strategies="id,random", lab_ks="2"))
    monkeypatch.setattr(url_state, "st", fake)
    url_state.restore()
    assert fake.session_state["lab_selections"] == ["id", "random"] and fake.session_state["lab_ks"] == [2]
    assert "lab_strategies" not in fake.session_state
    monkeypatch.setattr(common, "st", SimpleNamespace(session_state={"adapter_rb": 2}))
    assert common.layer_choice("q")["rb_splits"] == 2  # the retired session key
    monkeypatch.setattr(common, "st", SimpleNamespace(session_state={"adapter_rb_splits": 4, "adapter_rb": 2}))
    assert common.layer_choice("q")["rb_splits"] == 4


# --- no retired name in the docs or the app's labels ----------------------------------------

RETIRED = re.compile(r"\bstrateg(?:y|ies)\b|\badapter_rb\b|--strateg", re.IGNORECASE)
# Old keys the app still reads for compatibility (docs/VOCABULARY.md, "old names" and "retired
# page keys"): string constants equal to one of these are allowed, nothing else.
READ_FOR_COMPATIBILITY = {"adapter_rb", "lab_strategies", "strategy"}


def test_docs_use_no_retired_name_outside_the_old_names():
    problems = []
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
            text = re.sub(r"`[^`]*`", "", line) if doc.name == "VOCABULARY.md" else line
            text = re.sub(r"\b(?:save|eval|logging)_strategy\b", "", text)  # transformers' arguments
            if RETIRED.search(text):
                problems.append(f"{doc.name}:{number}: {line.strip()}")
    assert not problems, "\n".join(problems)


def _labels(path: Path) -> list[tuple[int, str]]:
    # every string constant of a page file but docstrings (labels, help, captions, keys)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)) and node.body
                  and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def test_app_labels_use_no_retired_name():
    files = sorted((REPO / "app").rglob("*.py"))
    assert len(files) > 10
    problems = [f"{path.relative_to(REPO)}:{line}: {text!r}" for path in files
                for line, text in _labels(path)
                if text not in READ_FOR_COMPATIBILITY and RETIRED.search(text)]
    assert not problems, "\n".join(problems)
    # the pattern really catches a retired label
    assert RETIRED.search("Skeleton strategy") and RETIRED.search("--strategies")
    assert not RETIRED.search("adapter_rb_splits") and not RETIRED.search("save_strategy")


def test_no_helper_table_besides_method_fields():
    """The old copies are gone: no `USES = {"idlora": ...}` literal, no `uses_k`-style helper."""
    src = (REPO / "idlora_core/study/grid.py").read_text(encoding="utf-8")
    assert '"idlora": frozenset' not in src and "METHOD_FIELDS" in src
    assert sys.modules["app.page_settings"].uses_heads is uses_heads  # the typed page settings ask it
    assert TargetConfig.model_fields["heads"].default == TargetConfig.model_fields["k"].default == 4
