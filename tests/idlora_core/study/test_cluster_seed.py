"""The cluster_seed grid axis (ID-LoRA's k-means seed apart from the training seed): the cells
it expands to, the RunConfig of a cell, and the summary's two spreads against pandas."""

from __future__ import annotations

import itertools
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml

from idlora_core.config import ConfigError
from idlora_core.study.config import dumps_study, load_study, parse_study
from idlora_core.study.grid import GRID_KEYS, cell_config, cell_name, expand_grid
from idlora_core.study.summary import CLUSTER_COLUMNS, SUMMARY_COLUMNS, summarize

BASE = {"adapter": {"method": "idlora", "targets": [{"pattern": "query", "r": 8, "k": 4}]},
        "tasks": [{"name": "sentiment"}]}
PRESET = Path(__file__).resolve().parents[3] / "configs" / "studies" / "minilm_cluster_seeds.yaml"


def study(grid: dict) -> dict:
    return {"base": BASE, "grid": grid, "metric": "eval_sentiment_accuracy"}


def test_cluster_seed_is_crossed_with_the_training_seed_for_idlora_only():
    s = parse_study(study({"method": ["idlora", "lora", "hydralora"], "learning_rate": [1e-2],
                           "cluster_seed": [4, 5, 6], "seed": [0, 1]}))
    cells, notes = expand_grid(s)
    assert notes == []
    idl = [(c["cluster_seed"], c["seed"]) for c in cells if c["method"] == "idlora"]
    assert idl == list(itertools.product([4, 5, 6], [0, 1]))  # training seed varies fastest
    others = [(c["method"], c["cluster_seed"], c["seed"]) for c in cells if c["method"] != "idlora"]
    assert others == [("lora", None, 0), ("lora", None, 1), ("hydralora", None, 0), ("hydralora", None, 1)]
    for cell in cells:
        cfg = cell_config(s.base, cell, "/tmp/x")
        assert cfg.train.seed == cell["seed"]
        # ID-LoRA clusters with the cluster seed; the others keep adapter.seed = training seed
        assert cfg.adapter.seed == (cell["cluster_seed"] if cell["method"] == "idlora" else cell["seed"])
    names = [cell_name(i, c) for i, c in enumerate(cells)]
    assert len(set(names)) == len(names) and names[1] == "0001-idlora-lr0.01-c4-s1"
    assert set(cells[0]) == set(GRID_KEYS)


def test_without_cluster_seed_nothing_changes_and_resolved_skeletons_are_dropped_with_it():
    base = {**BASE, "adapter": {**BASE["adapter"], "skeletons": {"query": [[0], [1], [2], [3]]},
                                "targets": [{"pattern": "query", "r": 1, "k": 4}]}}
    plain = parse_study({**study({"method": ["idlora"], "seed": [0, 1]}), "base": base})
    cells, _ = expand_grid(plain)
    assert [c["cluster_seed"] for c in cells] == [None, None]
    cfg = cell_config(plain.base, cells[1], "/tmp/x")
    assert (cfg.train.seed, cfg.adapter.seed) == (1, 1)
    assert cfg.adapter.skeletons is not None  # unchanged: the base's resolved skeletons are kept
    assert "cluster_seed" not in dumps_study(plain)  # a study without the axis hashes as before
    crossed = parse_study({**study({"method": ["idlora"], "cluster_seed": [3], "seed": [0]}), "base": base})
    cfg = cell_config(crossed.base, expand_grid(crossed)[0][0], "/tmp/x")
    assert (cfg.train.seed, cfg.adapter.seed, cfg.adapter.skeletons) == (0, 3, None)  # cluster again
    assert parse_study(yaml.safe_load(dumps_study(crossed))) == crossed


def test_bad_cluster_seeds_are_refused():
    with pytest.raises(ConfigError, match="cluster seeds must be integers in 0.."):
        parse_study(study({"cluster_seed": [0, -1]}))
    with pytest.raises(ConfigError, match="grid.cluster_seed"):
        parse_study(study({"cluster_seed": []}))
    with pytest.raises(ConfigError, match="cluster_seed cannot be combined with a TPE range"):
        parse_study(study({"cluster_seed": [0, 1], "learning_rate": {"low": 1e-4, "high": 1e-2, "trials": 3}}))


def test_preset_dry_run_lists_nine_runs(capsys):
    from idlora_core.study.__main__ import main

    assert main([str(PRESET), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "9 runs"
    cells, _ = expand_grid(load_study(PRESET))
    assert {(c["cluster_seed"], c["seed"]) for c in cells} == set(itertools.product([0, 1, 2], [0, 1, 2]))
    assert {(c["method"], c["r"], c["k"], c["learning_rate"]) for c in cells} == {("idlora", 8, 4, 0.01)}


def _trials() -> pd.DataFrame:
    """ID-LoRA: 3 cluster seeds x 3 training seeds at two learning rates; LoRA: 3 seeds."""
    rng = np.random.default_rng(7)
    rows = []
    for lr, level in ((1e-3, 0.70), (1e-2, 0.80)):
        for c, s in itertools.product([0, 1, 2], [0, 1, 2]):
            value = level + 0.03 * c - 0.01 * s + 0.005 * rng.standard_normal()
            rows.append({"method": "idlora", "r": 8, "k": 4, "learning_rate": lr, "cluster_seed": c,
                         "seed": s, "trainable_params": 500, "state": "COMPLETE",
                         "eval_acc": value, "test_acc": value - 0.02 + 0.01 * rng.standard_normal()})
    for s in range(3):
        rows.append({"method": "lora", "r": 4, "k": None, "learning_rate": 1e-3, "cluster_seed": None,
                     "seed": s, "trainable_params": 600, "state": "COMPLETE", "eval_acc": 0.75 + 0.01 * s,
                     "test_acc": 0.74 + 0.02 * s})
    rows.append({**rows[0], "state": "FAIL", "eval_acc": 0.0})  # failed runs never count
    return pd.DataFrame(rows)


def test_summary_separates_training_and_cluster_seed_spreads():
    trials = _trials()
    summary = summarize(trials, "eval_acc")
    assert list(summary.columns) == SUMMARY_COLUMNS + CLUSTER_COLUMNS
    idl = summary[summary["method"] == "idlora"].iloc[0]
    assert idl["best_learning_rate"] == 1e-2 and idl["n_seeds"] == 9 and idl["n_cluster_seeds"] == 3
    # independent: pandas pivot of the runs at the chosen rate
    best = trials[(trials["method"] == "idlora") & (trials["learning_rate"] == 1e-2)]
    for col, prefix in (("eval_acc", ""), ("test_acc", "test_")):
        grid = best.pivot_table(index="cluster_seed", columns="seed", values=col, aggfunc="mean")
        assert idl[f"{prefix}cluster_std"] == pytest.approx(grid.mean(axis=1).std(ddof=1), rel=1e-12)
        assert idl[f"{prefix}seed_std"] == pytest.approx(grid.mean(axis=0).std(ddof=1), rel=1e-12)
    assert idl["metric_std"] == pytest.approx(best["eval_acc"].std(ddof=1), rel=1e-12)  # all 9 runs
    # built with 0.03 per cluster seed and 0.01 per training seed: the spreads say so
    assert idl["cluster_std"] == pytest.approx(0.03, abs=0.01) and idl["seed_std"] == pytest.approx(0.01, abs=0.01)
    lora = summary[summary["method"] == "lora"].iloc[0]
    assert lora["n_cluster_seeds"] == 0 and np.isnan(lora["cluster_std"])
    assert lora["seed_std"] == pytest.approx(lora["metric_std"], rel=1e-12)  # one run per seed


def test_summary_of_a_study_without_cluster_seeds_keeps_its_columns():
    trials = _trials()
    plain = trials[trials["cluster_seed"].isna() | (trials["cluster_seed"] == 0)].assign(cluster_seed=None)
    assert list(summarize(plain, "eval_acc").columns) == SUMMARY_COLUMNS
    assert list(summarize(plain.drop(columns="cluster_seed"), "eval_acc").columns) == SUMMARY_COLUMNS


def test_the_trials_table_carries_the_cluster_seed_to_the_summary():
    from idlora_core.study.runner import _row

    s = parse_study(study({"method": ["idlora"], "cluster_seed": [2], "seed": [1]}))
    cell = expand_grid(s)[0][0]
    trial = SimpleNamespace(number=0, state=SimpleNamespace(name="COMPLETE"), user_attrs={})
    row = _row(trial, cell, {"final": {"eval_sentiment_accuracy": 0.8}}, s, 0, {})
    assert (row["cluster_seed"], row["seed"], row["method"]) == (2, 1, "idlora")
