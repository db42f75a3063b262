"""`python -m analysis.plan`: the plan YAML loads, states per-layer k / r / block, stays within the
budget, and trains two steps through `python -m idlora_core.train` with exactly those shapes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

from analysis import plan as ap
from idlora_core.config import load_config
from idlora_core.planner import parse_budget

pytestmark = pytest.mark.usefixtures("one_blas_thread")
REPO = Path(__file__).resolve().parents[2]
QV = [f"encoder.layer.{b}.attention.self.{p}" for b in range(6) for p in ("query", "value")]


def _cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def test_plan_yaml_trains_two_steps_with_the_shapes_it_states(tmp_path):
    out = tmp_path / "plan.yaml"
    done = _cli("-m", "analysis.plan", "--model", "minilm", "--budget", "0.5xlora@8",
                "--targets", "query,value", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "[12/12]" in done.stderr and "-> " in done.stdout  # progress on stderr
    cfg = load_config(out)
    assert cfg.model.name == "minilm" and cfg.adapter.method == "idlora"
    targets = {t.pattern: t for t in cfg.adapter.targets}
    assert set(targets) <= set(QV) and len(targets) >= 6
    budget = 0.5 * 12 * 8 * (384 + 384)  # LoRA r = 8 on the 12 query / value layers
    params = sum(384 * t.r + t.k * t.r for t in targets.values())
    assert params <= budget
    for name, t in targets.items():  # the block of its name, its own k and r, measured skeleton
        assert t.layers == [int(name.split(".")[2])] and t.selection == "id"
        assert [len(rows) for rows in cfg.adapter.skeletons[name]] == [t.r] * t.k
    assert len({(t.k, t.r) for t in targets.values()}) > 1  # a per-layer plan, not a uniform one

    run = tmp_path / "run"
    done = _cli("-m", "idlora_core.train", str(out), "--no-progress", "--output-dir", str(run),
                "--set", "train.steps=2", "--set", "train.batch_size=4", "--set", "train.seq_len=24",
                "--set", "train.eval_interval=0", "--set", "train.save_interval=0",
                "--set", "tasks.0.num_train=16", "--set", "tasks.0.num_eval=8",
                "--set", "tasks.0.num_test=0")
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((run / "run.json").read_text())["adapter_report"]
    rows = {row["name"].removeprefix("bert."): row for row in report["rows"]}
    assert set(rows) == set(targets)
    for name, t in targets.items():
        assert (rows[name]["k"], rows[name]["r"], rows[name]["m"]) == (t.k, t.r, 384)
        assert rows[name]["trainable"] == 384 * t.r + t.k * t.r
    assert report["totals"]["trainable"] == params
    with safe_open(str(run / "adapter" / "adapter_model.safetensors"), "np") as f:
        for name, t in targets.items():
            key = f"bert.{name}"
            assert f.get_slice(f"{key}.idlora_B").get_shape() == [384, t.r]
            assert f.get_slice(f"{key}.idlora_T").get_shape() == [t.k, t.r]
            assert f.get_tensor(f"{key}.idlora_skeleton").tolist() == cfg.adapter.skeletons[name]


@pytest.fixture(scope="module")
def curves():
    from analysis.sweep import SweepSpec
    from idlora_core.weights import open_weights

    weights = open_weights("minilm")
    layers = ap.candidate_layers(weights, ["query", "value"])
    assert layers == QV
    table, clusterings = ap.scan_layers(weights, layers[:4], SweepSpec((1, 4), (4, 16), ("id",)))
    return ap.planner_curves(table), clusterings


def test_budget_curve_plan_never_worse_than_uniform(curves):
    curves, _ = curves
    lora = ap.lora_params(curves, 8)
    assert lora == 4 * 8 * 768
    table = ap.budget_curve(curves, [lora // 8, lora // 2, lora])
    assert list(table["budget"]) == [lora // 8, lora // 2, lora]
    assert (table["plan_params"] <= table["budget"]).all()
    assert (table["uniform_params"] <= table["budget"]).all()
    assert (table["plan_objective"] <= table["uniform_objective"] + 1e-12).all()
    assert table["plan_objective"].is_monotonic_decreasing


def test_plan_cells_and_config(curves):
    curves, clusterings = curves
    plan = ap.make_plan(curves, "0.5xlora@16")
    assert plan.budget == parse_budget("0.5xlora@16").params(curves)
    cells = ap.plan_cells(plan, curves)
    assert list(cells["layer"]) == QV[:4] and list(cells["block"]) == [0, 0, 1, 1]
    assert list(cells["type"]) == ["q", "v", "q", "v"]
    assert cells["params"].sum() == plan.params
    skeletons = ap.plan_skeletons(plan, clusterings, "id")
    cfg = ap.plan_config(plan, "minilm", skeletons=skeletons)
    assert cfg.tasks[0].name == "rotten_tomatoes" and cfg.output_dir == "runs/budget-plan"
    assert [(t.k, t.r) for t in cfg.adapter.targets] == list(plan.adapted.values())


@pytest.mark.parametrize("args, message", [
    (["--budget", "half"], "budget 'half' is not a parameter count"),
    (["--budget", "10"], "below the cheapest adapter"),
    (["--targets", "q_proj"], "target 'q_proj' matches no linear layer"),
    (["--ks", "1,x"], "--ks must be integers"),
    (["--selection", "best"], "invalid choice"),
    (["--model", "no-such-model-dir"], "no-such-model-dir"),
])
def test_bad_flags_are_one_line_errors(args, message, tmp_path, capsys):
    argv = ["--out", str(tmp_path / "p.yaml"), "--targets", "query", "--ranks", "4", "--ks", "1", *args]
    try:
        status = ap.main(argv)
    except SystemExit as exc:  # argparse's own checks (our parser prints one line too)
        status = exc.code
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert status == 2 and message in last and last.startswith("error: "), err
    assert "Traceback" not in err and "usage:" not in err
    assert not (tmp_path / "p.yaml").exists()
