"""Studies end to end on a tiny BERT: 2 workers, tables vs run folders vs storage, a killed worker
and a resumed study, and a warm worker's trial equal to a fresh process's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from safetensors.torch import load_file

from idlora_core.study.runner import summary_table, trials_table
from idlora_core.study.storage import load_optuna_study, read_study_folder
from idlora_core.study.summary import summarize
from tests.conftest import study_cli, write_study_yaml

REPO = Path(__file__).resolve().parents[3]
# One thread here, and OMP_NUM_THREADS=1 in every process these tests start: tiny models, and
# a warm trial must equal a fresh process's to the bit (same thread count, same sums).
pytestmark = pytest.mark.usefixtures("one_thread")


def test_two_workers_write_tables_that_agree_with_runs_and_storage(finished_tiny_study):
    out, log = finished_tiny_study.out, finished_tiny_study.log  # run once (tests/conftest.py)
    assert "[worker 0]" in log and "[worker 1]" in log  # both workers took trials
    table = pd.read_csv(out / "trials.csv")
    # Two workers may draw the same grid cell at once; the later one is pruned before it
    # trains (state PRUNED, duplicate_of the trial that ran it) and stays listed.
    pruned = table[table.state == "PRUNED"]
    trials = table[table.state != "PRUNED"]
    assert len(trials) == 14 and set(trials.state) == {"COMPLETE"}  # (3 methods x 2 lr + base) x 2 seeds
    assert trials.cell.is_unique
    for row in pruned.itertuples():
        assert row.duplicate_of in set(trials.trial) and pd.isna(row.run_dir)
        assert row.cell == trials.loc[trials.trial == row.duplicate_of, "cell"].item()
    cfg, meta = read_study_folder(out)
    stored = {t.number: t for t in load_optuna_study(meta["storage"], meta["name"]).get_trials()}
    for row in trials.itertuples():
        run = json.loads((out / row.run_dir / "run.json").read_text())
        assert run["state"] == "finished" and run["method"] == row.method
        assert run["final_metrics"]["eval_sentiment_accuracy"] == pytest.approx(row.eval_sentiment_accuracy)
        assert run["final_metrics"]["trainable_params"] == row.trainable_params
        assert stored[row.trial].value == pytest.approx(row.eval_sentiment_accuracy)
        assert (out / row.run_dir / "metrics.jsonl").is_file() and (out / row.run_dir / "config.yaml").is_file()
        if row.method != "base":
            assert run["config"]["train"]["learning_rate"] == row.learning_rate
    assert trials.loc[trials.method == "base", "trainable_params"].tolist() == [0, 0]
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary.columns) == ["method", "r", "k", "trainable", "best_learning_rate", "metric_mean",
                                     "metric_std", "metric_ci95_low", "metric_ci95_high", "test_mean", "test_std",
                                     "test_ci95_low", "test_ci95_high", "n_seeds", "seeds_missing", "pareto",
                                     "pareto_confident"]
    expected = summarize(trials, "eval_sentiment_accuracy", "maximize", list(cfg.grid.method), grid_seeds=1)
    assert summary.seeds_missing.eq(0).all()  # one seed in the grid, one at every best lr
    pd.testing.assert_frame_equal(summary, expected, check_dtype=False)
    assert list(summary.method) == ["idlora", "lora", "head-only", "base"]
    assert summary.loc[summary.method == "base", "pareto"].item()  # 0 parameters: always on the frontier
    # the compare command prints the summary of a study folder
    printed = subprocess.run([sys.executable, "-m", "idlora_core.compare", str(out)], cwd=REPO, text=True,
                             capture_output=True, env=dict(os.environ, PYTHONPATH=str(REPO)), check=True)
    assert "best_learning_rate" in printed.stdout and "head-only" in printed.stdout


def _wait_for(predicate, timeout: float) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.3)
    return False


@pytest.mark.slow
def test_killed_worker_then_rerun_completes_without_repeating(tiny_bert_dir, tmp_path):
    out = tmp_path / "study"
    spec = write_study_yaml(tmp_path / "s.yaml", tiny_bert_dir, steps=150)
    spec_data = yaml.safe_load(spec.read_text())
    spec_data["grid"]["steps"] = [2, 150]  # the 150-step lora/idlora trials are the ones killed
    spec_data["grid"]["method"] = ["head-only", "lora"]
    spec.write_text(yaml.safe_dump(spec_data))
    proc = study_cli([str(spec), "--out", str(out), "--workers", "1"], tmp_path, start_new_session=True)

    def long_run_training() -> bool:
        for status in out.glob("runs/*-n150-*/status.json"):
            try:
                if json.loads(status.read_text()).get("step", 0) >= 2:
                    return True
            except (json.JSONDecodeError, OSError):
                pass
        return False

    assert _wait_for(long_run_training, 300), proc.communicate(timeout=5)[0] if proc.poll() is not None else ""
    os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its worker die without cleaning up
    proc.wait()
    _, meta = read_study_folder(out)
    before = {t.number: (t.state.name, t.params.get("cell")) for t in
              load_optuna_study(meta["storage"], meta["name"]).get_trials()}
    assert "RUNNING" in {s for s, _ in before.values()}
    finished_before = {n for n, (s, _) in before.items() if s == "COMPLETE"}
    mtimes = {}
    trials = trials_table(out)
    for row in trials[trials.state == "COMPLETE"].itertuples():
        mtimes[row.run_dir] = (out / row.run_dir / "run.json").stat().st_mtime_ns
    # the same command again (an override that changes nothing keeps the study's identity)
    proc = study_cli([str(spec), "--out", str(out), "--workers", "1", "--set", "base.train.steps=150"], tmp_path)
    log, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, log
    trials = pd.read_csv(out / "trials.csv")
    killed = trials[trials.failure == "worker process died"]
    assert len(killed) == 1
    retry = trials[trials.retry_of == killed.trial.item()]
    assert len(retry) == 1 and retry.state.item() == "COMPLETE" and retry.cell.item() == killed.cell.item()
    done = trials[trials.state == "COMPLETE"]
    assert done.cell.is_unique and len(done) == 4  # every cell once: head-only x2 steps, lora x2 steps
    for run_dir, mtime in mtimes.items():  # finished trials were not run again
        assert (out / run_dir / "run.json").stat().st_mtime_ns == mtime
    assert finished_before <= set(done.trial)
    # a third run has nothing left to do
    proc = study_cli([str(spec), "--out", str(out), "--set", "base.train.steps=150"], tmp_path)
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "[worker" not in log, log
    assert len(pd.read_csv(out / "trials.csv")) == len(trials)
    assert summary_table(out).n_seeds.sum() == 4


def test_warm_worker_trial_equals_fresh_process(tiny_bert_dir, tmp_path, monkeypatch):
    from idlora_core.config import METHOD_FIELDS, parse_config, save_config
    from idlora_core.study.worker import ModelPool

    def adapter(method: str) -> dict:  # the base's targets with the fields `method` uses
        keep = METHOD_FIELDS[method] | {"pattern", "regex", "layers"}
        targets = [{k: v for k, v in t.items() if k in keep} for t in spec["adapter"]["targets"]]
        return {**spec["adapter"], "method": method, "targets": targets}
    from idlora_core.training.trainer import run_training

    monkeypatch.setenv("IDLORA_CACHE_DIR", str(tmp_path / "cache"))
    spec = yaml.safe_load(write_study_yaml(tmp_path / "s.yaml", tiny_bert_dir, steps=4).read_text())["base"]
    pool = ModelPool()
    for method in ("idlora", "lora"):  # the pool's model has served (and been adapted in) other trials
        warmup = parse_config({**spec, "adapter": adapter(method),
                               "output_dir": str(tmp_path / f"warm-{method}")})
        run_training(warmup, progress=False, source=pool)
    cfg = parse_config({**spec, "adapter": adapter("lora"), "train": {**spec["train"], "seed": 3},
                        "output_dir": str(tmp_path / "warm")})
    warm = run_training(cfg, progress=False, source=pool)
    assert pool.loads == 1
    fresh_cfg = cfg.model_copy(update={"output_dir": str(tmp_path / "fresh")})
    save_config(fresh_cfg, tmp_path / "fresh.yaml")
    subprocess.run([sys.executable, "-m", "idlora_core.train", str(tmp_path / "fresh.yaml"), "--no-progress"],
                   cwd=REPO, check=True, capture_output=True,
                   env=dict(os.environ, PYTHONPATH=str(REPO), IDLORA_CACHE_DIR=str(tmp_path / "cache"),
                            OMP_NUM_THREADS="1"))
    fresh = json.loads((tmp_path / "fresh" / "run.json").read_text())["final_metrics"]
    for key in ("eval_sentiment_accuracy", "eval_sentiment_loss", "final_train_loss"):
        assert warm.final_metrics[key] == fresh[key], key
    a = load_file(str(tmp_path / "warm" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "fresh" / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_warm_worker_loads_in_the_runs_precision(tiny_bert_dir, tmp_path, monkeypatch):
    # the pool used to load every base model in float32, whatever train.precision said
    import torch

    from idlora_core.config import parse_config
    from idlora_core.study.worker import ModelPool
    from idlora_core.training.trainer import run_training

    monkeypatch.setenv("IDLORA_CACHE_DIR", str(tmp_path / "cache"))
    spec = yaml.safe_load(write_study_yaml(tmp_path / "s.yaml", tiny_bert_dir, steps=2).read_text())["base"]
    pool, dtypes = ModelPool(), {}
    for precision in ("bf16", "fp32"):
        cfg = parse_config({**spec, "train": {**spec["train"], "precision": precision, "device": "cpu"},
                            "output_dir": str(tmp_path / f"warm-{precision}")})
        warm = run_training(cfg, progress=False, source=pool)
        fresh = run_training(cfg.model_copy(update={"output_dir": str(tmp_path / f"fresh-{precision}")}),
                             progress=False)
        for key in ("eval_sentiment_accuracy", "eval_sentiment_loss", "final_train_loss"):
            assert warm.final_metrics[key] == fresh.final_metrics[key], (precision, key)
        model, _ = list(pool._models.values())[-1]
        dtypes[precision] = {p.dtype for n, p in model.named_parameters() if "encoder" in n}
    assert pool.loads == 2  # one pristine copy per precision
    assert dtypes == {"bf16": {torch.bfloat16}, "fp32": {torch.float32}}


@pytest.mark.slow  # 12 s; default: study/test_grid_config.py::test_tpe_range_checks_and_yaml_round_trip
def test_tpe_learning_rate_search(tiny_bert_dir, tmp_path):
    out = tmp_path / "study"
    spec = write_study_yaml(tmp_path / "s.yaml", tiny_bert_dir, learning_rate={"low": 1e-3, "high": 1e-1, "trials": 2},
                      seed=[0, 1])
    data = yaml.safe_load(spec.read_text())
    data["grid"]["method"] = ["lora"]
    spec.write_text(yaml.safe_dump(data))
    proc = study_cli([str(spec), "--out", str(out)], tmp_path)
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 4 and set(trials.state) == {"COMPLETE"}  # 2 TPE trials x 2 seeds
    assert trials.learning_rate.between(1e-3, 1e-1).all() and trials.groupby("trial").seed.nunique().eq(2).all()
    for row in trials.itertuples():
        run = json.loads((out / row.run_dir / "run.json").read_text())
        assert run["config"]["train"]["learning_rate"] == pytest.approx(row.learning_rate)
    summary = pd.read_csv(out / "summary.csv")
    means = trials.groupby("learning_rate").eval_sentiment_accuracy.mean()
    assert summary.best_learning_rate.item() == pytest.approx(means.idxmax())
    assert summary.n_seeds.item() == 2
