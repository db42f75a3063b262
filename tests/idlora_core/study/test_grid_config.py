"""Study YAML validation (every error at once) and grid expansion with collapse of unused values."""

from __future__ import annotations

import itertools

import pytest
import yaml

from idlora_core.config import ConfigError, parse_config
from idlora_core.study.config import apply_study_overrides, dumps_study, load_study, parse_study
from idlora_core.study.grid import budget_key, cell_config, cell_name, expand_grid

BASE = {"adapter": {"method": "idlora", "targets": [{"pattern": "query", "r": 8, "k": 4}]},
        "tasks": [{"name": "sentiment"}]}


def study(grid: dict, **extra) -> dict:
    return {"base": BASE, "grid": grid, "metric": "eval_sentiment_accuracy", **extra}


def test_collapse_counts_match_an_independent_enumeration():
    grid = {"method": ["idlora", "lora", "dora", "hydralora", "full", "head-only", "base"],
            "r": [4, 8], "k": [2, 4], "learning_rate": [1e-3, 3e-3], "seed": [0, 1, 2]}
    cells, notes = expand_grid(parse_study(study(grid)))
    assert notes == []
    # independent count: r*k for idlora/hydralora, r for lora/dora, 1 for full/head-only; x lr x seed;
    # base uses the seed only
    per_method = {"idlora": 4, "hydralora": 4, "lora": 2, "dora": 2, "full": 1, "head-only": 1}
    expected = sum(per_method.values()) * 2 * 3 + 3
    assert len(cells) == expected == 87
    keys = [tuple(sorted(c.items())) for c in cells]
    assert len(set(keys)) == len(keys)  # no duplicated trial
    assert {c["k"] for c in cells if c["method"] in ("lora", "dora", "full", "head-only", "base")} == {None}
    assert {c["r"] for c in cells if c["method"] in ("full", "head-only", "base")} == {None}
    assert {c["learning_rate"] for c in cells if c["method"] == "base"} == {None}
    lora = {(c["r"], c["learning_rate"], c["seed"]) for c in cells if c["method"] == "lora"}
    assert lora == set(itertools.product([4, 8], [1e-3, 3e-3], [0, 1, 2]))


def test_per_method_learning_rates_and_rb_split_notes():
    grid = {"method": ["idlora", "head-only"], "r": [4, 6], "rb_splits": [1, 2, 4],
            "learning_rate": [1e-3], "learning_rates": {"head-only": [1e-2, 3e-2]}}
    cells, notes = expand_grid(parse_study(study(grid)))
    idl = [(c["r"], c["rb_splits"]) for c in cells if c["method"] == "idlora"]
    assert idl == [(4, 1), (4, 2), (4, 4), (6, 1), (6, 2)]  # 4 does not divide 6
    assert notes == ["skipped idlora r=[6] rb_splits=4: p must divide r"]
    assert sorted(c["learning_rate"] for c in cells if c["method"] == "head-only") == [1e-2, 3e-2]


def test_per_method_ranks_override_r_for_that_method_only():
    grid = {"method": ["idlora", "lora", "head-only"], "r": [16], "ranks": {"idlora": [8], "lora": [4, 8]},
            "learning_rate": [1e-3, 1e-2], "seed": [0, 1]}
    cells, _ = expand_grid(parse_study(study(grid)))
    ranks = {m: sorted({c["r"] for c in cells if c["method"] == m}) for m in grid["method"]}
    assert ranks == {"idlora": [8], "lora": [4, 8], "head-only": [None]}
    assert len(cells) == (1 + 2) * 2 * 2 + 2 * 2  # ranks x lr x seed, head-only lr x seed
    with pytest.raises(ConfigError, match="grid.ranks names methods not in grid.method"):
        parse_study(study({**grid, "ranks": {"dora": [4]}}))
    with pytest.raises(ConfigError, match="ranks >= 1"):
        parse_study(study({**grid, "ranks": {"lora": [0]}}))


def test_cell_config_sets_values_on_every_target():
    base = parse_config({**BASE, "adapter": {"method": "idlora", "targets": [
        {"pattern": "query", "r": 8, "k": 4}, {"pattern": "value", "r": 8, "k": 4}]}})
    cell = {"method": "hydralora", "r": 2, "k": 3, "selection": None, "rb_splits": None, "steps": 5,
            "learning_rate": 0.01, "seed": 7}
    cfg = cell_config(base, cell, "/tmp/x")
    assert cfg.adapter.method == "hydralora" and cfg.output_dir == "/tmp/x"
    assert [(t.r, t.heads) for t in cfg.adapter.targets] == [(2, 3), (2, 3)]  # the k axis: heads
    assert (cfg.train.steps, cfg.train.learning_rate, cfg.train.seed, cfg.adapter.seed) == (5, 0.01, 7, 7)
    assert budget_key(cell, base) == ("hydralora", 2, 3)
    assert budget_key({**cell, "method": "lora", "r": None}, base) == ("lora", 8, None)
    assert cell_name(3, cell) == "0003-hydralora-r2-k3-n5-lr0.01-s7"


def test_every_error_reported_at_once():
    bad = {"base": {**BASE, "train": {"steps": 0}}, "grid": {"method": ["idlora", "lorra"], "r": [0, 4],
           "learning_rate": [-1.0], "colour": [1]}, "direction": "up"}
    with pytest.raises(ConfigError) as info:
        parse_study(bad)
    text = "\n".join(info.value.errors)
    for needle in ("base.train.steps", "grid.method.1", "grid.r", "grid.learning_rate", "grid.colour",
                   "metric", "direction"):
        assert needle in text, (needle, text)
    assert len(info.value.errors) >= 7


def test_tpe_range_checks_and_yaml_round_trip(tmp_path):
    s = parse_study(study({"method": ["lora"], "learning_rate": {"low": 1e-4, "high": 1e-2, "trials": 4}}))
    assert s.grid.tpe and parse_study(yaml.safe_load(dumps_study(s))) == s
    with pytest.raises(ConfigError, match="low=0.1 must be below high=0.01"):
        parse_study(study({"learning_rate": {"low": 0.1, "high": 0.01, "trials": 2}}))
    with pytest.raises(ConfigError, match="not in grid.method"):
        parse_study(study({"method": ["lora"], "learning_rates": {"idlora": [1e-3]}}))


def test_base_path_and_overrides(tmp_path):
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(BASE))
    (tmp_path / "study.yaml").write_text(yaml.safe_dump({"base": "run.yaml", "grid": {"method": ["lora"]},
                                                         "metric": "eval_loss"}))
    s = load_study(tmp_path / "study.yaml", ["grid.seed=[0, 1]", "base.train.steps=7"])
    assert s.grid.seed == [0, 1] and s.base.train.steps == 7 and s.base.adapter.targets[0].r == 8
    with pytest.raises(ConfigError, match="base \\(missing.yaml\\): config file not found"):
        parse_study({"base": "missing.yaml", "metric": "m"}, tmp_path)
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_study_overrides({}, ["grid.seed"])


def test_dry_run_needs_no_out_folder_and_counts_the_grid(capsys):
    # `--dry-run` only prints the trials: asking for --out (a folder it never writes) was a trap
    from pathlib import Path

    from idlora_core.study.__main__ import main

    path = Path(__file__).resolve().parents[3] / "configs" / "studies" / "minilm_sentiment.yaml"
    assert main([str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    cells, _ = expand_grid(load_study(str(path), []))
    assert out[-1] == f"{len(cells)} runs" and out[0] == cell_name(0, cells[0])


def test_one_worker_per_gpu(monkeypatch):
    from idlora_core.study.runner import gpu_count, worker_env

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    assert gpu_count() == 3
    assert [worker_env(i, 4)["CUDA_VISIBLE_DEVICES"] for i in range(4)] == ["0", "1", "2", "0"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert worker_env(1, 2)["CUDA_VISIBLE_DEVICES"] == "0"  # one GPU: every worker shares it


def test_changed_keys_ignores_new_schema_fields():
    from idlora_core.study.runner import changed_keys

    old = {"name": "a", "base": {"train": {"steps": 30}, "adapter": {"targets": [{"r": 8}]}}, "metric": "m"}
    new = {"name": "b", "base": {"train": {"steps": 30, "new_field": 1}, "adapter": {"targets": [{"r": 4}]}},
           "metric": "m"}
    assert changed_keys(old, new) == ["base.adapter.targets.0.r"]
    assert changed_keys(old, {**old, "name": "c"}) == []


@pytest.mark.parametrize("lrs", [{"learning_rate": [1e-3, float("nan")]}, {"learning_rate": [float("inf")]},
                                 {"learning_rates": {"lora": [float("nan")]}},
                                 {"learning_rate": {"low": 1e-4, "high": float("inf"), "trials": 2}}])
def test_nan_and_inf_learning_rates_are_refused_before_anything_runs(lrs):
    """They passed --dry-run and failed at run time with an empty failure column (issue 18 #10)."""
    with pytest.raises(ConfigError, match="finite|infinity|nan"):
        parse_study(study({"method": ["idlora", "lora"], **lrs}))


def test_bad_out_and_storage_are_one_error_line_not_a_traceback(tmp_path, capsys):
    """Issue 18 #10: --out /proc/x, a storage that is not a database, a journal that is a folder."""
    from idlora_core.study.__main__ import main

    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump(study({"method": ["base"], "seed": [0]})))
    not_a_db = tmp_path / "notes.txt"
    not_a_db.write_text("not a database\n" * 10)
    cases = [(["--out", "/proc/no-such/x"], "cannot create the study folder"),
             (["--out", str(tmp_path / "a"), "--storage", f"sqlite:///{not_a_db}"], "file is not a database"),
             (["--out", str(tmp_path / "b"), "--storage", f"journal:{tmp_path}"], "Is a directory")]
    for args, reason in cases:
        assert main([str(spec), *args]) == 1
        err = capsys.readouterr().err
        assert reason in err and "Traceback" not in err
    assert not_a_db.read_text() == "not a database\n" * 10  # nothing written into it
