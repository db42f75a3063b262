"""Issue 17 #3: run estimates from this server's own measurements (`idlora_core.jobs.throughput`).

Fake finished runs carry a known timeline (load, steps, evaluations, test split), so every
estimate is checked against arithmetic done here on the fixture's numbers; one real tiny-BERT
run is measured and the estimate of the next run of its shape printed next to its wall time.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import pytest

from idlora_core.config import parse_config
from idlora_core.jobs import limits, runs, throughput
from idlora_core.jobs.throughput import RunShape, Throughput, estimate_from, estimate_run_seconds

T0 = 1_700_000_000.0


def _config(method: str = "lora", steps: int = 10, batch: int = 8, seq: int = 128, eval_interval: int = 0,
            num_eval: int = 64, model: str = "minilm"):
    return parse_config({"model": {"name": model}, "adapter": {"method": method},
                         "tasks": [{"name": "sentiment", "num_eval": num_eval}],
                         "train": {"steps": steps, "batch_size": batch, "seq_len": seq, "device": "cpu",
                                   "eval_interval": eval_interval}})


def fake_run(root: Path, name: str, *, step_s: float = 0.5, eval_s: float = 2.0, load_s: float = 4.0,
             test_s: float = 1.0, state: str = "finished", **cfg) -> Path:
    """Write a finished run folder whose timeline is: config.yaml at T0, load_s of start-up, then
    steps of step_s each (a metrics row per step, `time` and `step_seconds`), eval_s more before
    every evaluating row is logged (as the trainer does), test_s of test split, run.json last."""
    config = _config(**cfg)
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("written by the launcher\n")
    steps, interval = config.train.steps, config.train.eval_interval
    now, rows = T0 + load_s, []
    for step in range(1, steps + 1):
        now += step_s
        row = {"step": step, "loss": 1.0 / step, "step_seconds": step_s}
        if step == steps or (interval and step % interval == 0):  # evaluated before the row is logged
            now += eval_s
            row["eval_sentiment_accuracy"] = 0.5
        rows.append(row | {"time": now})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    end = now + test_s
    (run / "run.json").write_text(json.dumps({
        "state": state, "method": config.adapter.method, "config": config.model_dump(mode="json"),
        "device": {"type": "cpu"}, "tasks": ["sentiment"],
        "final_metrics": {"steps": steps, "train_seconds": end - T0 - load_s - test_s}}))
    os.utime(run / "config.yaml", (T0, T0))
    os.utime(run / "run.json", (end, end))
    return run


def test_a_measurement_recovers_the_fixtures_timeline(tmp_path):
    run = fake_run(tmp_path, "a", steps=12, eval_interval=5, step_s=0.3, eval_s=2.5, load_s=6.0, test_s=1.5)
    m = throughput.measure_run(run)
    assert m.step_seconds == pytest.approx(0.3)
    assert m.evals == 3  # steps 5, 10 and the last
    assert m.eval_seconds == pytest.approx(2.5)
    assert m.wall_seconds == pytest.approx(6.0 + 12 * 0.3 + 3 * 2.5 + 1.5)
    assert m.overhead_seconds == pytest.approx(6.0 + 1.5)  # start-up and the test split
    assert throughput.measure_run(fake_run(tmp_path, "b", state="cancelled")) is None


def test_the_estimate_of_a_measured_shape_is_the_fixtures_arithmetic(tmp_path):
    fake_run(tmp_path, "slow", step_s=0.6, eval_s=3.0, load_s=5.0)
    fake_run(tmp_path, "fast", step_s=0.4, eval_s=1.0, load_s=3.0)
    fake_run(tmp_path, "mid", step_s=0.5, eval_s=2.0, load_s=4.0)
    fake_run(tmp_path, "other-model", model="smollm2-135m", step_s=40.0)  # not the same key
    est = estimate_run_seconds(_config(steps=100, eval_interval=25), tmp_path)
    # medians over the three MiniLM runs: 0.5 s/step, 2.0 s per evaluation, 4 + 1 s overhead
    expected = (4.0 + 1.0) + 100 * statistics.median([0.6, 0.4, 0.5]) + 4 * statistics.median([3.0, 1.0, 2.0])
    assert est.seconds == pytest.approx(expected)
    assert est.kind == "measured" and est.runs == 3
    assert est.source.startswith("measured on this server from 3 runs")


def test_other_batch_or_sequence_length_scale_linearly_and_say_so(tmp_path):
    fake_run(tmp_path, "a", batch=8, seq=128, step_s=0.8, eval_s=2.0, load_s=4.0, test_s=1.0)
    fake_run(tmp_path, "b", batch=32, seq=256, step_s=6.4, eval_s=4.0, load_s=4.0, test_s=1.0)
    est = estimate_run_seconds(_config(steps=50, batch=4, seq=64), tmp_path)
    # nearest tokens per step is run a (1,024 tokens): 0.8 x 256 / 1024 s a step; one evaluation
    # of the same 64 examples at half the sequence length: 2.0 x 64 / 128
    assert est.seconds == pytest.approx(5.0 + 50 * 0.8 * (4 * 64) / (8 * 128) + 2.0 * 64 / 128)
    assert est.kind == "scaled" and "batch 8 x 128" in est.source and "linear in steps" in est.source
    other = estimate_run_seconds(_config(method="idlora", steps=50, batch=8, seq=128), tmp_path)
    assert other.kind == "scaled" and "another method (lora)" in other.source
    assert other.seconds == pytest.approx(5.0 + 50 * 0.8 + 2.0)


def test_nothing_measured_falls_back_to_the_default_guess(tmp_path):
    est = estimate_run_seconds(_config(steps=100, batch=16, seq=48), tmp_path)
    assert est.kind == "default" and est.source.startswith("default guess")
    assert est.seconds == pytest.approx(throughput.DEFAULT_OVERHEAD_S + 100 * limits.SECONDS_PER_STEP)
    smol = estimate_run_seconds(_config(model="smollm2-135m", steps=100, batch=8, seq=128), None)
    assert smol.seconds == pytest.approx(10 + 100 * 40.0) and smol.seconds / 60 > 60  # the 40 min
    local = estimate_from(RunShape("/models/x", "lora", 10, 16, 48), [], param_count=int(2 * 22.7e6))
    assert local.step_seconds == pytest.approx(2 * 0.6) and "scaled to 45 M parameters" in local.source


def test_a_refresh_reads_only_new_or_changed_runs_and_keeps_them_in_the_cache_file(tmp_path):
    for name in ("a", "b", "c"):
        fake_run(tmp_path, name)
    running = fake_run(tmp_path, "d", state="running")
    tp = Throughput(tmp_path)
    assert tp.refresh() == 4 and len(tp.measurements()) == 3 and tp.reads == 4
    assert tp.refresh() == 0  # nothing new: one listing and a stat per run, no file parsed
    fake_run(tmp_path, "e")
    assert tp.refresh() == 1 and len(tp.measurements()) == 4
    # the running run finishes: its run.json is rewritten, so it is read again, and only it
    data = json.loads((running / "run.json").read_text())
    (running / "run.json").write_text(json.dumps(data | {"state": "finished"}))
    os.utime(running / "run.json", (T0 + 100, T0 + 100))
    assert tp.refresh() == 1 and len(tp.measurements()) == 5
    cache = json.loads((tmp_path / throughput.CACHE_FILE).read_text())
    assert len(cache["runs"]) == 5 and cache["version"] == throughput.VERSION
    fresh = Throughput(tmp_path)  # another server process: reads the cache, not the runs
    assert fresh.refresh() == 0 and len(fresh.measurements()) == 5 and fresh.reads == 0
    (tmp_path / "e" / "run.json").unlink()
    assert fresh.refresh() == 0 and len(fresh.measurements()) == 4  # a removed run is forgotten


def test_runs_of_studies_count_too(tmp_path):
    fake_run(tmp_path / "studies" / "s1" / "runs", "0000-lora-s0", step_s=0.25)
    est = estimate_run_seconds(_config(steps=10), tmp_path)
    assert est.kind == "measured" and est.step_seconds == pytest.approx(0.25)


class _Queue:
    def __init__(self, root, waiting, running):
        self.root, self._waiting, self._running = root, waiting, running

    def waiting(self):
        return self._waiting

    def running(self):
        return self._running


def test_the_expected_wait_is_the_time_left_of_the_runs_ahead_over_the_slots(tmp_path):
    fake_run(tmp_path, "a", step_s=0.5, eval_s=2.0, load_s=4.0, test_s=1.0)
    shape = RunShape.of(_config(steps=40)).__dict__
    per_run = 5.0 + 40 * 0.5 + 2.0
    now = T0 + 1000
    queue = _Queue(tmp_path, waiting=[{"shape": shape}, {"shape": shape}, {"shape": shape}],
                   running=[{"shape": shape, "started": now - 10}, {"shape": shape, "started": now - 500}])
    wait, ahead = throughput.estimate_wait_seconds(queue, 2, now=now)
    assert ahead == 5
    assert wait == pytest.approx(((per_run - 10) + 0 + 3 * per_run) / 2)  # the second one is overdue: 0 left


def test_limits_ask_for_a_confirmation_naming_the_estimate_and_refuse_over_the_hard_limit(tmp_path):
    fake_run(tmp_path, "a", step_s=2.0, eval_s=0.0, load_s=10.0, test_s=0.0)
    cfg = _config(steps=600)  # about 10 + 1200 s: 20 min
    lim = limits.ServerLimits(run_minutes=10, refuse_run_minutes=60)
    with pytest.raises(limits.NeedsConfirmation) as asked:
        limits.check_runs([cfg], None, lim, runs_root=tmp_path)
    assert asked.value.seconds == pytest.approx(10 + 600 * 2.0)
    assert "I know this run takes about 20 min" in str(asked.value) and "measured on this server" in str(asked.value)
    assert limits.check_runs([cfg], None, lim, runs_root=tmp_path, confirmed=True) == pytest.approx(1210)
    with pytest.raises(limits.LimitError, match="IDLORA_REFUSE_RUN_MINUTES") as refused:
        limits.check_runs([_config(steps=2000)], None, lim, runs_root=tmp_path, confirmed=True)
    assert not isinstance(refused.value, limits.NeedsConfirmation)


def test_the_room_limits_are_server_settings(monkeypatch):
    monkeypatch.setenv("IDLORA_MAX_RUN_MINUTES", "0")
    monkeypatch.setenv("IDLORA_REFUSE_RUN_MINUTES", "45")
    lim = limits.server_limits()
    assert lim.run_minutes == 0 and lim.refuse_run_minutes == 45
    monkeypatch.setenv("IDLORA_MAX_RUN_MINUTES", "-1")
    with pytest.raises(ValueError, match="IDLORA_MAX_RUN_MINUTES"):
        limits.server_limits()


def _tiny_config(model_dir: str, seed: int):
    return parse_config({"model": {"name": model_dir}, "adapter": {"method": "lora",
                         "targets": [{"pattern": "query", "r": 2}]},
                         "tasks": [{"name": "sentiment", "num_train": 16, "num_eval": 16}],
                         "train": {"steps": 4, "batch_size": 4, "seq_len": 24, "eval_interval": 0,
                                   "save_interval": 0, "device": "cpu", "seed": seed}})


def _train(root: Path, model_dir: str, seed: int) -> float:
    """Train one tiny run as the server's queue does (a `python -m idlora_core.train` process);
    return its wall time from start to exit (s)."""
    start = time.time()
    handle = runs.start_run(_tiny_config(model_dir, seed), root, name=f"seed{seed}")
    assert runs.wait_run(handle, 300) == 0, runs.log_tail(handle.run_dir)
    return time.time() - start


@pytest.fixture(scope="module")
def tiny_measured(tiny_bert_dir, tmp_path_factory) -> tuple[Path, float]:
    """A runs folder holding one finished real tiny-BERT run (4 steps); its wall time."""
    root = tmp_path_factory.mktemp("runs")
    return root, _train(root, tiny_bert_dir, 0)


def test_a_real_tiny_bert_run_is_measured_and_estimates_its_config(tiny_measured, tiny_bert_dir):
    """One real `python -m idlora_core.train` run of a tiny BERT (4 steps); the estimate of the
    same config comes from its recorded throughput and is printed next to its measured wall time
    (the ratio is recorded in the output, not asserted: it depends on the machine's load)."""
    root, wall = tiny_measured
    measured = throughput.measure_run(root / "seed0")
    assert measured is not None and measured.step_seconds > 0 and measured.overhead_seconds is not None
    est = estimate_run_seconds(_tiny_config(tiny_bert_dir, 0), root)
    assert est.kind == "measured" and est.source.startswith("measured on this server from 1 run")
    assert est.seconds == pytest.approx(measured.overhead_seconds + 4 * measured.step_seconds
                                        + measured.evals * (measured.eval_seconds or 0.0))
    print(f"\ntiny BERT, 4 steps: estimate {est.seconds:.1f} s ({est.source}); measured wall time "
          f"{wall:.1f} s (start to exit); ratio {est.seconds / wall:.2f}")


@pytest.mark.slow
def test_the_estimate_predicts_the_next_real_run(tiny_measured, tiny_bert_dir):
    """A second real run of the same shape (another seed), estimated before it starts."""
    root, _ = tiny_measured
    before = estimate_run_seconds(_tiny_config(tiny_bert_dir, 1), root)
    wall = _train(root, tiny_bert_dir, 1)
    print(f"\ntiny BERT, 4 steps, next run: estimate {before.seconds:.1f} s ({before.source}); measured "
          f"{wall:.1f} s; ratio {before.seconds / wall:.2f}")
    assert before.kind == "measured" and 0.2 < before.seconds / wall < 5  # a gross error only
