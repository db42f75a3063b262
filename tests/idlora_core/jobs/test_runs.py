"""Tests for idlora_core.jobs.runs (path safety, start/cancel) and the run tables of analysis.runs."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from analysis import runs as tables
from idlora_core.config import RunConfig, load_config
from idlora_core.jobs import runs
from idlora_core.training import run_files


def _write_fake_run(root: Path, name: str, method: str, losses: list[float], state="finished"):
    run_dir = root / name
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(
        "adapter:\n  method: " + method + "\n", encoding="utf-8"
    )
    with open(run_dir / "metrics.jsonl", "w", encoding="utf-8") as fh:
        for i, loss in enumerate(losses, start=1):
            fh.write(json.dumps({"step": i, "loss": loss, "trainable_params": 1000,
                                 "total_params": 5000, "step_seconds": 0.1 * i}) + "\n")
        fh.write(json.dumps({"step": len(losses), "eval_accuracy": 0.75}) + "\n")
    (run_dir / "status.json").write_text(json.dumps({"state": state, "step": len(losses)}))
    return run_dir


@pytest.mark.parametrize("bad", ["../x", "/tmp/x", "a/../../x", "", "."])
def test_safe_run_dir_rejects_escapes(tmp_path, bad):
    with pytest.raises(runs.RunPathError):
        runs.safe_run_dir(tmp_path, bad)


def test_safe_run_dir_rejects_symlink_escape(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(outside)
    with pytest.raises(runs.RunPathError):
        runs.safe_run_dir(root, "link/run")


def test_safe_run_dir_accepts_nested_names(tmp_path):
    assert runs.safe_run_dir(tmp_path, "a/b") == (tmp_path / "a" / "b").resolve()


def test_new_run_names_are_distinct():
    names = {runs.new_run_name("lora") for _ in range(50)}
    assert len(names) == 50 and all("-lora-" in n for n in names)


def test_metrics_tail_reads_only_new_complete_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    tail = run_files.MetricsTail(tmp_path)
    assert tail.read() == 0 and tail.frame.empty  # no file yet
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo', encoding="utf-8")
    assert tail.read() == 1
    with open(path, "a", encoding="utf-8") as fh:
        fh.write('ss": 1.5}\n{"step": 3, "loss": 1.25}\n')
    assert tail.read() == 2
    assert tail.read() == 0
    assert tail.frame["step"].tolist() == [1, 2, 3]
    assert tail.frame["loss"].tolist() == [2.0, 1.5, 1.25]
    assert tail.offset == path.stat().st_size


def test_run_summary_and_table_from_fake_runs(tmp_path):
    a = _write_fake_run(tmp_path, "a", "idlora", [3.0, 2.0, 1.5])
    b = _write_fake_run(tmp_path, "b", "lora", [3.0, 2.5], state="cancelled")
    table = tables.runs_table([a, b])
    assert table["run"].tolist() == ["a", "b"]
    assert table["method"].tolist() == ["idlora", "lora"]
    assert table["state"].tolist() == ["finished", "cancelled"]
    assert table["step"].tolist() == [3, 2]
    assert table["loss"].tolist() == [1.5, 2.5]
    assert table["trainable_params"].tolist() == [1000, 1000]
    # mean of 0.1, 0.2, 0.3 and of 0.1, 0.2
    assert table["step_seconds"].tolist() == pytest.approx([0.2, 0.15])
    assert table["eval_accuracy"].tolist() == [0.75, 0.75]


def test_list_runs_skips_other_folders(tmp_path):
    _write_fake_run(tmp_path, "a", "idlora", [1.0])
    (tmp_path / "not-a-run").mkdir()
    (tmp_path / "file.txt").write_text("x")
    assert [p.name for p in runs.list_runs(tmp_path)] == ["a"]
    assert runs.list_runs(tmp_path / "missing") == []


def test_read_metrics_missing_is_empty(tmp_path):
    assert isinstance(tables.read_metrics(tmp_path), pd.DataFrame)
    assert tables.read_metrics(tmp_path).empty
    assert run_files.read_status(tmp_path) == {} and run_files.read_run_json(tmp_path) == {}


def test_train_command_is_an_argument_list(tmp_path):
    cmd = runs.train_command(tmp_path / "c.yaml", ["train.steps=3"])
    assert cmd == [sys.executable, "-m", "idlora_core.train", str(tmp_path / "c.yaml"),
                   "--no-progress", "--set", "train.steps=3"]


def test_start_run_writes_config_in_own_folder(tmp_path, monkeypatch):
    started = []

    class FakePopen:
        def __init__(self, cmd, **kwargs):
            started.append((cmd, kwargs))

        def poll(self):
            return 0

    monkeypatch.setattr(runs.subprocess, "Popen", FakePopen)
    h1 = runs.start_run(RunConfig(), tmp_path)
    h2 = runs.start_run(RunConfig(), tmp_path)
    assert h1.run_dir != h2.run_dir and h1.run_dir.parent == tmp_path.resolve()
    cfg = load_config(h1.run_dir / "config.yaml")
    assert Path(cfg.output_dir) == h1.run_dir
    cmd, kwargs = started[0]
    assert cmd[1:4] == ["-m", "idlora_core.train", str(h1.run_dir / "config.yaml")]
    assert "shell" not in kwargs and kwargs["start_new_session"] is True
    assert run_files.read_status(h1.run_dir)["state"] == "starting"
    with pytest.raises(runs.RunPathError):
        runs.start_run(RunConfig(), tmp_path, name="../evil")
    assert "OMP_NUM_THREADS" not in kwargs["env"] or kwargs["env"]["OMP_NUM_THREADS"] == runs.os.environ.get(
        "OMP_NUM_THREADS")  # no threads asked: the server's environment as it is

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    runs.start_run(RunConfig(), tmp_path, threads=1)
    assert started[-1][1]["env"]["OMP_NUM_THREADS"] == "1"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the admin's own setting wins
    runs.start_run(RunConfig(), tmp_path, threads=1)
    assert started[-1][1]["env"]["OMP_NUM_THREADS"] == "3"


def _wait(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_real_run_streams_metrics_and_cancel_keeps_them(tmp_path, tiny_bert_dir, monkeypatch):
    """A real `python -m idlora_core.train` subprocess on a tiny BERT: tail it, then SIGTERM it."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # tiny BERT: one thread (tests/conftest.py)
    cfg = RunConfig.model_validate({
        "model": {"name": tiny_bert_dir},
        "adapter": {"method": "idlora", "targets": [{"pattern": "query", "r": 2, "k": 2}]},
        "tasks": [{"name": "sentiment", "num_train": 64, "num_eval": 8}],
        "train": {"steps": 10_000, "batch_size": 4, "seq_len": 16, "eval_interval": 0},
    })
    handle = runs.start_run(cfg, tmp_path)
    try:
        tail = run_files.MetricsTail(handle.run_dir)
        assert _wait(lambda: tail.read() >= 0 and len(tail.rows) >= 3, 90), runs.log_tail(
            handle.run_dir)
        assert runs.run_state(handle) == "running"
        assert runs.cancel_run(handle)
        assert runs.wait_run(handle, 60) is not None
    finally:
        if handle.process.poll() is None:
            handle.process.kill()
    assert runs.run_state(handle) == "cancelled"
    assert run_files.read_status(handle.run_dir)["state"] == "cancelled"
    tail.read()
    frame = tail.frame
    steps = frame.loc[frame["loss"].notna(), "step"].tolist()
    assert steps[:3] == [1, 2, 3] and 3 <= len(steps) < 10_000
    assert tables.read_metrics(handle.run_dir)["step"].tolist() == frame["step"].tolist()
    # trainable = ID-LoRA on the 2 query layers (32 x 32): m*r + k*r each (docs/THEORY.md)
    summary = tables.run_summary(handle.run_dir)
    assert summary["method"] == "idlora" and summary["state"] == "cancelled"
    assert summary["step"] == steps[-1]
    report = run_files.read_run_json(handle.run_dir)["adapter_report"]
    assert [row["trainable"] for row in report["rows"]] == [32 * 2 + 2 * 2] * 2
    assert summary["trainable_params"] > 2 * (32 * 2 + 2 * 2)  # + the classification head


def test_every_state_the_ui_writes_is_a_run_files_state(tmp_path):
    from idlora_core.training import run_files

    run_files.write_status(tmp_path, "starting", "process starting", pid=None)
    status = run_files.read_status(tmp_path)
    assert status["state"] == "starting" and status["pid"] is None
    assert set(run_files.ACTIVE_STATES) | set(run_files.FINAL_STATES) == set(run_files.STATES)
    with pytest.raises(ValueError, match="state must be one of"):
        run_files.write_status(tmp_path, "queued-ish")
