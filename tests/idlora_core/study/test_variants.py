"""grid.variants (named arms with their own adapter section) and preset (c),
configs/studies/minilm_plan_vs_uniform.yaml: four arms at equal trainable parameters."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from idlora_core.adapters.inject import resolve_targets
from idlora_core.adapters.model import apply_adapters
from idlora_core.config import ConfigError, load_config
from idlora_core.study.__main__ import main as study_main
from idlora_core.study.config import dumps_study, load_study, parse_study
from idlora_core.study.grid import GRID_KEYS, budget_key, cell_config, cell_name, expand_grid
from idlora_core.study.summary import budget_label, paired_difference, parse_budget, summarize
from tests.conftest import shared_weight_copy

REPO = Path(__file__).resolve().parents[3]
PRESET = REPO / "configs" / "studies" / "minilm_plan_vs_uniform.yaml"
PLAN = REPO / "configs" / "studies" / "plans" / "minilm_plan_vs_uniform.yaml"
BASE = {"adapter": {"method": "idlora", "targets": [{"pattern": "query", "r": 8, "k": 4}]},
        "tasks": [{"name": "sentiment"}]}
PLANNED = {"method": "idlora", "seed": 7, "skeletons": {"layer.0.query": [[1, 2], [3, 4]]},
           "targets": [{"pattern": "layer.0.query", "layers": [0], "r": 2, "k": 2},
                       {"pattern": "layer.1.query", "layers": [1], "r": 16, "k": 2}]}


def _study(variants, **grid):
    return {"base": BASE, "grid": {"method": ["idlora", "lora"], "seed": [0, 1], **grid, "variants": variants},
            "metric": "eval_sentiment_accuracy"}


def test_variant_cells_configs_names_and_budget_keys():
    study = parse_study(_study({"planned": PLANNED, "wide": {"method": "lora", "targets": [
        {"pattern": "query", "r": 4}, {"pattern": "value", "r": 4}]}},
        learning_rates={"idlora": [0.01, 0.03], "lora": [0.003]}))
    cells, notes = expand_grid(study)
    assert notes == []
    arms = [c for c in cells if c["variant"] is not None]
    # planned: its method's 2 learning rates x 2 seeds; wide (lora): 1 x 2; the plain cells say None
    assert [(c["variant"], c["learning_rate"], c["seed"]) for c in arms] == [
        ("planned", 0.01, 0), ("planned", 0.01, 1), ("planned", 0.03, 0), ("planned", 0.03, 1),
        ("wide", 0.003, 0), ("wide", 0.003, 1)]
    assert len(cells) == 4 + 2 + 6 and all(set(GRID_KEYS) <= set(c) for c in cells)
    assert all(c["r"] is None and c["k"] is None for c in arms)
    planned = arms[1]
    config = cell_config(study.base, planned, "runs/x")
    assert [(t.pattern, t.r, t.k) for t in config.adapter.targets] == [("layer.0.query", 2, 2),
                                                                       ("layer.1.query", 16, 2)]
    assert config.adapter.seed == config.train.seed == 1 and config.train.learning_rate == 0.01
    assert config.adapter.skeletons == PLANNED["skeletons"]  # the arm's own rows are kept
    plain = cell_config(study.base, cells[0], "runs/y")
    assert [t.pattern for t in plain.adapter.targets] == ["query"]  # the base's, untouched
    assert budget_key(planned, study.base) == ("idlora", None, 2)  # r differs per layer, k shared
    assert budget_key(arms[4], study.base) == ("lora", 4, None)
    assert cell_name(30, planned) == "0030-idlora-planned-lr0.01-s1"
    # stored and read back: the study YAML holds the arms inline
    assert parse_study(yaml.safe_load(dumps_study(study))) == study


def test_variant_paths_resolve_next_to_the_study_file_and_errors_are_one_line(tmp_path):
    plan = tmp_path / "plans" / "p.yaml"
    plan.parent.mkdir()
    plan.write_text(yaml.safe_dump({"adapter": PLANNED, "train": {"steps": 999}}))
    spec = tmp_path / "study.yaml"
    spec.write_text(yaml.safe_dump(_study({"planned": "plans/p.yaml"})))
    study = load_study(spec)
    assert study.grid.variants["planned"].targets[1].r == 16
    assert study.base.train.steps != 999  # only the adapter section is taken
    spec.write_text(yaml.safe_dump(_study({"planned": "plans/missing.yaml", "bad name": PLANNED})))
    with pytest.raises(ConfigError) as err:
        load_study(spec)
    lines = err.value.errors
    assert any(line.startswith("grid.variants.planned (plans/missing.yaml): config file not found")
               for line in lines), lines
    assert any("variant names are letters, digits" in line and "bad name" in line for line in lines), lines
    # learning_rates may name a method that only a variant uses
    ok = parse_study({**_study({"only": {"method": "dora", "targets": [{"pattern": "query"}]}}),
                      "grid": {"method": ["idlora"], "learning_rates": {"dora": [0.01]},
                               "variants": {"only": {"method": "dora", "targets": [{"pattern": "query"}]}}}})
    assert [c["learning_rate"] for c in expand_grid(ok)[0] if c["variant"]] == [0.01]
    with pytest.raises(ConfigError, match="names methods not in grid.method"):
        parse_study({**_study({}), "grid": {"method": ["idlora"], "learning_rates": {"dora": [0.01]}}})


def test_budgets_and_pairs_with_a_variant():
    rows = []
    acc = {("idlora", None): [0.70, 0.72, 0.71], ("idlora", "planned"): [0.74, 0.73, 0.76],
           ("lora", None): [0.75, 0.75, 0.75]}
    for (method, variant), values in acc.items():
        for seed, value in enumerate(values):
            rows.append({"method": method, "variant": variant, "r": None if variant else (8 if method == "idlora" else 4),
                         "k": 2 if method == "idlora" else None, "learning_rate": 0.01, "seed": seed,
                         "trainable_params": 37_000, "state": "COMPLETE", "eval_x": value, "test_x": value})
    trials = pd.DataFrame(rows)
    summary = summarize(trials, "eval_x")
    assert list(summary["variant"].fillna("-")) == ["-", "planned", "-"]
    assert list(summary["test_mean"].round(4)) == [0.71, 0.7433, 0.75]
    assert parse_budget("idlora@planned") == {"method": "idlora", "variant": "planned"}
    assert parse_budget("idlora:r8:k2") == {"method": "idlora", "r": 8, "k": 2}
    assert budget_label({"method": "idlora", "k": 2, "variant": "planned"}) == "idlora:k2@planned"
    result = paired_difference(trials, "eval_x", parse_budget("idlora@planned"), parse_budget("idlora"))
    assert (result.a, result.b, result.n) == ("idlora:k2@planned", "idlora:r8:k2", 3)
    assert list(result.table["diff"].round(4)) == [0.04, 0.01, 0.05]
    assert result.mean == pytest.approx(0.1 / 3)
    with pytest.raises(ValueError, match="no budget"):
        paired_difference(trials, "eval_x", parse_budget("idlora@other"), parse_budget("lora"))
    without = trials[trials["variant"].isna()]  # no variant: the key is not a budget key
    assert "variant" not in summarize(without, "eval_x")
    with pytest.raises(ValueError, match="variant is not a budget key"):
        paired_difference(without, "eval_x", parse_budget("idlora@planned"), parse_budget("lora"))


def test_every_preset_in_the_presets_folder_is_a_study():
    from analysis.studies import list_presets

    presets = list_presets()  # what the Studies page offers: the plan file is not among them
    assert "minilm_plan_vs_uniform" in presets and not any("plans" in str(p.parent.name) for p in presets.values())
    for path in presets.values():
        assert load_study(path).metric


def test_preset_dry_run_lists_its_runs(capsys):
    assert study_main([str(PRESET), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "50 runs"
    names = lines[:-1]
    assert sum("-idlora-r8-k2-" in n for n in names) == 15 and sum("-idlora-planned-" in n for n in names) == 15
    assert sum("-lora-r4-" in n for n in names) == 5 and sum("-adalora-r4-" in n for n in names) == 15


def test_preset_arms_have_equal_trainable_parameters(minilm):
    """Build each arm's model on MiniLM from the preset's own cells and count from the modules."""
    study = load_study(PRESET)
    cells, _ = expand_grid(study)
    arms = {}
    for cell in cells:
        arms.setdefault(cell.get("variant") or cell["method"], cell)
    assert sorted(arms) == ["adalora", "idlora", "lora", "planned"]
    assert study.base.train.steps == 80 and study.grid.seed == [0, 1, 2, 3, 4]
    counts = {}
    for name, cell in arms.items():
        adapter = cell_config(study.base, cell, "runs/x").adapter
        with shared_weight_copy(minilm.model) as model:
            if adapter.method == "idlora":  # the count does not depend on which rows: skip clustering
                rows = {layer: [[i * t.r + j for j in range(t.r)] for i in range(t.k)]
                        for layer, t in resolve_targets(model, adapter)}
                adapter = adapter.model_copy(update={"skeletons": rows})
            adapted = apply_adapters(model, adapter)
            counts[name] = adapted.report.totals["trainable"]
            assert counts[name] == sum(p.numel() for p in adapted.parameters() if p.requires_grad)
            if name in ("lora", "adalora"):
                assert counts[name] == adapted.module.get_nb_trainable_parameters()[0]
    # 12 layers of 384 x 384: ID-LoRA 384*8 + 2*8, LoRA 4*768, AdaLoRA 4*769; the plan file's own sum
    plan = load_config(PLAN).adapter
    planned = sum(384 * t.r + t.k * t.r for t in plan.targets)
    assert counts == {"idlora": 12 * 3088, "lora": 12 * 3072, "adalora": 12 * 3076, "planned": planned}
    assert arms["planned"]["adapter"]["targets"] == plan.model_dump(mode="json")["targets"]
    head = 384 * 2 + 2  # the classification head every arm trains besides
    for with_head in (0, head):
        values = [c + with_head for c in counts.values()]
        assert max(values) / min(values) - 1 < 0.01, counts


@pytest.mark.slow
def test_a_study_with_a_variant_end_to_end(tiny_bert_dir, tmp_path):
    """The runner, worker and tables with a variant (1 worker, 2 steps): run folders, run configs,
    trials.csv, summary.csv and `compare --pair` all tell the arm apart."""
    import json
    import os
    import subprocess
    import sys

    arm = {"method": "idlora", "targets": [{"pattern": "bert.encoder.layer.0.attention.self.query", "r": 4, "k": 1},
                                           {"pattern": "bert.encoder.layer.1.attention.self.query", "r": 2, "k": 2}]}
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({
        "base": {"model": {"name": tiny_bert_dir},
                 "adapter": {"method": "idlora", "targets": [{"pattern": "query", "r": 2, "k": 2}]},
                 "tasks": [{"name": "sentiment", "num_train": 16, "num_eval": 16}],
                 "train": {"steps": 2, "batch_size": 4, "seq_len": 24, "learning_rate": 0.01,
                           "eval_interval": 0, "save_interval": 0}},
        "grid": {"method": ["idlora"], "seed": [0, 1], "variants": {"planned": arm}},
        "metric": "eval_sentiment_accuracy"}))
    out = tmp_path / "study"
    env = dict(os.environ, PYTHONPATH=str(REPO), IDLORA_CACHE_DIR=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "idlora_core.study", str(spec), "--out", str(out), "--workers", "1"],
                          cwd=REPO, env=env, text=True, capture_output=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    trials = pd.read_csv(out / "trials.csv")
    assert sorted(trials["variant"].fillna("-")) == ["-", "-", "planned", "planned"]
    for row in trials.itertuples():
        run = json.loads((out / row.run_dir / "run.json").read_text())
        patterns = [t["pattern"] for t in run["config"]["adapter"]["targets"]]
        if row.variant == "planned":
            assert "-idlora-planned-" in row.run_dir and patterns == [t["pattern"] for t in arm["targets"]]
            assert row.trainable_params == 32 * 4 + 4 + 32 * 2 + 4 + 2 * 32 + 2  # + the 2-label head
        else:
            assert patterns == ["query"] and pd.isna(row.variant)
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary["variant"].fillna("-")) == ["-", "planned"]
    pair = subprocess.run([sys.executable, "-m", "idlora_core.compare", str(out), "--pair", "idlora@planned",
                           "idlora"], cwd=REPO, env=env, text=True, capture_output=True)
    assert pair.returncode == 0, pair.stderr
    assert "A: idlora@planned" in pair.stdout and "B: idlora:r2:k2" in pair.stdout and "paired seeds: 2" in pair.stdout
