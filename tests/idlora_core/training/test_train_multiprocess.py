"""Two data-parallel CPU processes (gloo) through `accelerate launch`: same metrics file format.

accelerate 1.15 starts several CPU processes only through MPI when given `--cpu`; the
torchrun-based `--multi_gpu` launcher is the one that works everywhere, and with no GPU
present the processes train on the CPU over gloo.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from idlora_core.config import parse_config, save_config
from idlora_core.training.run_files import read_metrics

pytestmark = pytest.mark.multiprocess  # several processes (torchrun/gloo): skip locally with -m

REPO = Path(__file__).resolve().parents[3]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_process_launch_writes_one_metrics_file(tiny_bert_dir, tmp_path):
    out = tmp_path / "ddp"
    cfg = parse_config({
        "model": {"name": tiny_bert_dir},
        "adapter": {"method": "idlora", "targets": [{"pattern": "query", "r": 4, "k": 2}]},
        "tasks": [{"name": "sentiment", "num_train": 32, "num_eval": 4}],
        "train": {"steps": 3, "batch_size": 4, "seq_len": 24, "learning_rate": 0.01, "eval_interval": 3,
                  "save_interval": 2, "device": "cpu"},
        "output_dir": str(out),
    })
    cfg_path = save_config(cfg, tmp_path / "ddp.yaml")
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           "-m", "idlora_core.train", str(cfg_path), "--no-progress"]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("finished: trained 3 steps") == 2  # both ranks ran to the end
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3]  # one line per step: only rank 0 writes
    single_keys = {"step", "epoch", "loss", "lr", "trainable_params", "total_params", "step_seconds",
                   "tokens_per_s", "peak_memory_mb"}
    assert all(single_keys <= set(r) for r in rows) and "eval_sentiment_accuracy" in rows[-1]
    # 2 processes x 4 examples per step over 32 examples: a quarter epoch per step
    assert rows[0]["epoch"] == 0.25
    assert all(0.3 < r["loss"] < 1.2 for r in rows)  # a per-example mean, not summed over ranks
    run = json.loads((out / "run.json").read_text())
    assert run["device"]["world_size"] == 2 and run["state"] == "finished"
    assert run["final_metrics"]["trainable_params"] == run["adapter_report"]["totals"]["trainable_total"]
    # checkpoints (steps 2 and the last, 3) are written under .saving-N by both ranks (one RNG
    # state each), then renamed; the older one is rotated out
    checkpoints = out / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-3"]
    assert {"rng_state_0.pth", "rng_state_1.pth", "trainer_state.json"} <= {
        p.name for p in (checkpoints / "checkpoint-3").iterdir()}
