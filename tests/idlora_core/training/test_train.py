"""Training engine: loss goes down for every method and task, files, determinism, resume, NaN, signals.

Runs use tiny random models (conftest) saved with the real tokenizers, a few steps each.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, TrainerCallback

from idlora_core.config import METHOD_FIELDS, METHODS, parse_config, save_config
from idlora_core.tasks import CAUSAL_LM_TASKS, load_tasks
from idlora_core.training.callbacks import StopFlag
from idlora_core.training.cli import main as cli_main
from idlora_core.training.evaluate import classify, evaluate_tasks
from idlora_core.training.run_files import read_metrics
from idlora_core.training.run_folder import CHECKPOINT_FILES, last_complete_checkpoint
from idlora_core.training.setup import build_model, count_params, resolve_device
from idlora_core.training.trainer import run_training

REPO = Path(__file__).resolve().parents[3]
# One torch / BLAS thread: tiny models gain nothing from a second thread, and on a shared CPU
# every parallel region waits for both threads to be scheduled (grad-checkpoint test: 147 s -> 28 s).
pytestmark = pytest.mark.usefixtures("one_thread")
LM_TARGETS = [{"pattern": p, "r": 4, "k": 2, "heads": 2} for p in ("q_proj", "o_proj", "up_proj", "down_proj")]
BERT_TARGETS = [{"pattern": p, "r": 4, "k": 2, "heads": 2} for p in ("query", "value", "attention.output.dense")]
METRIC_KEYS = {"step", "epoch", "loss", "lr", "trainable_params", "total_params", "step_seconds",
               "tokens_per_s", "peak_memory_mb"}


def for_method(method: str, targets: list[dict]) -> list[dict]:
    """The targets with only the fields `method` uses (others are a config error)."""
    keep = METHOD_FIELDS.get(method, set(METHOD_FIELDS["idlora"])) | {"pattern", "regex", "layers"}
    return [{k: v for k, v in t.items() if k in keep} for t in targets]


def lm_config(model_dir: str, out: Path, method: str = "idlora", tasks=CAUSAL_LM_TASKS, **train) -> dict:
    """A tiny causal-LM run on `tasks` (each 16 train / 4 validation / 4 test examples)."""
    return {
        "model": {"name": model_dir},
        "adapter": {"method": method, "targets": for_method(method, LM_TARGETS)},
        "tasks": [{"name": n, "num_train": 16, "num_eval": 4} for n in tasks],
        "train": {"steps": 10, "batch_size": 4, "seq_len": 48, "learning_rate": 0.1, "schedule": "constant",
                  "eval_interval": 0, "save_interval": 0, **train},
        "output_dir": str(out),
    }


def cls_config(model_dir: str, out: Path, method: str = "idlora", **train) -> dict:
    targets = [{"pattern": p, "r": 4, "k": 2} for p in ("query", "value")] if model_dir == "minilm" else BERT_TARGETS
    return {
        "model": {"name": model_dir},
        "adapter": {"method": method, "targets": for_method(method, targets)},
        "tasks": [{"name": "sentiment", "num_train": 16, "num_eval": 16}],
        "train": {"steps": 12, "batch_size": 8, "seq_len": 24, "learning_rate": 0.05, "schedule": "constant",
                  "eval_interval": 0, "save_interval": 0, **train},
        "output_dir": str(out),
    }


def baseline_eval(cfg) -> dict[str, float]:
    """Eval metrics of the freshly adapted model (adapters start as the identity or the base)."""
    tasks = load_tasks(cfg.tasks, seed=cfg.train.seed)
    adapted, tokenizer, _ = build_model(cfg, tasks)
    return evaluate_tasks(adapted.module, tokenizer, tasks, seq_len=cfg.train.seq_len, batch_size=8,
                          device="cpu", generation=False)


@pytest.mark.parametrize("method", METHODS)
def test_lm_loss_decreases_on_every_task(method, tiny_llama_dir, tmp_path):
    cfg = parse_config(lm_config(tiny_llama_dir, tmp_path / method, method))
    before = baseline_eval(cfg)
    result = run_training(cfg, progress=False)
    assert result.state == "finished" and result.steps == 10
    for task in CAUSAL_LM_TASKS:  # held-out loss of every task goes down
        key = f"eval_{task}_loss"
        assert result.final_metrics[key] < before[key] - 0.02, (method, key, before[key], result.final_metrics[key])
    losses = [r["loss"] for r in read_metrics(cfg.output_dir)]
    assert len(losses) == 10 and sum(losses[-3:]) < sum(losses[:3])


@pytest.mark.parametrize("method", ["idlora", "lora"])  # the tiny Llama covers all five methods
def test_classification_loss_decreases(method, tmp_path):
    # The real MiniLM: a random tiny encoder barely separates sentences in a few steps.
    cfg = parse_config(cls_config("minilm", tmp_path / method, method, steps=8, learning_rate=3e-3))
    before = baseline_eval(cfg)
    result = run_training(cfg, progress=False)
    accuracy = result.final_metrics["eval_sentiment_accuracy"]
    assert accuracy * 16 == pytest.approx(round(accuracy * 16))  # a fraction of the 16 eval examples
    assert result.final_metrics["eval_sentiment_loss"] < before["eval_sentiment_loss"] - 0.003  # seeded
    losses = [r["loss"] for r in read_metrics(cfg.output_dir)]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.02, losses
    # the classification head trains too, and is counted apart from the adapters
    report = result.report["totals"]
    assert report["head_trainable"] == 384 * 2 + 2
    assert report["trainable_total"] == report["trainable"] + report["head_trainable"]


def test_metrics_file_and_run_summary(tiny_llama_dir, tmp_path):
    cfg = parse_config(lm_config(tiny_llama_dir, tmp_path / "run", "idlora", steps=6, eval_interval=3,
                                 log_interval=2))
    result = run_training(cfg, progress=False)
    rows = read_metrics(cfg.output_dir)
    assert [r["step"] for r in rows] == [2, 3, 4, 6]  # every log step, plus the eval step 3
    for row in rows:
        assert METRIC_KEYS <= set(row)
        assert row["step_seconds"] > 0 and row["tokens_per_s"] > 0 and row["peak_memory_mb"] > 0
        assert math.isfinite(row["loss"]) and row["lr"] == pytest.approx(0.1)
    evaluated = [r["step"] for r in rows if "eval_loss" in r]
    assert evaluated == [3, 6]
    assert {f"eval_{t}_loss" for t in CAUSAL_LM_TASKS} <= set(rows[-1])
    assert {"eval_arithmetic_exact_match", "eval_code_exact_match", "eval_knowledge_accuracy",
            "eval_refusal_refusal_rate_harmful", "eval_refusal_refusal_rate_benign"} <= set(rows[-1])
    # trainable counts: metrics == run.json report == the docs/ADAPTERS.md formula == the real modules
    run = json.loads((Path(cfg.output_dir) / "run.json").read_text())
    totals = run["adapter_report"]["totals"]
    assert rows[0]["trainable_params"] == totals["trainable_total"] == totals["formula"]
    # q/o: 32x32, up: 64x32, down: 32x64; ID-LoRA trains m*r + k*r per layer
    assert totals["trainable"] == sum(m * 4 + 2 * 4 for m in (32, 32, 64, 32)) * 2
    assert rows[0]["total_params"] == totals["total_params"]
    assert run["state"] == "finished" and run["method"] == "idlora"
    assert run["device"]["type"] == "cpu" and run["device"]["precision"] == "fp32"
    assert {"python", "torch", "transformers", "peft", "accelerate"} <= set(run["versions"])
    assert run["final_metrics"]["final_train_loss"] == pytest.approx(rows[-1]["loss"])
    assert run["final_metrics"]["eval_loss"] == pytest.approx(rows[-1]["eval_loss"])
    skeletons = run["config"]["adapter"]["skeletons"]
    assert len(skeletons) == 8 and all(len(s) == 2 and len(s[0]) == 4 for s in skeletons.values())
    status = json.loads((Path(cfg.output_dir) / "status.json").read_text())
    assert status["state"] == "finished" and status["step"] == 6 and status["pid"] == os.getpid()
    assert status["max_steps"] == 6
    assert (Path(cfg.output_dir) / "adapter" / "config.yaml").is_file()
    assert result.final_metrics["steps"] == 6


def test_test_split_is_scored_once_at_the_end_and_recorded(tiny_bert_dir, tmp_path):
    data = cls_config(tiny_bert_dir, tmp_path / "run", steps=4, eval_interval=2)
    data["tasks"][0].update(num_eval=12, num_test=20)
    cfg = parse_config(data)

    class KeepModel(TrainerCallback):
        def on_train_end(self, args, state, control, model=None, **kwargs):
            self.model = model

    keep = KeepModel()
    result = run_training(cfg, progress=False, callbacks=[keep])
    rows = read_metrics(cfg.output_dir)
    assert [r["step"] for r in rows if "eval_loss" in r] == [2, 4]  # validation during and after
    assert not any(k.startswith("test_") for r in rows for k in r)  # test never during training
    final = result.final_metrics
    # an independent count: the trained model's argmax on the 20 test texts against their labels
    tasks = load_tasks(cfg.tasks, seed=cfg.train.seed)
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    predicted = classify(keep.model, tokenizer, tasks[0], 24, 8, torch.device("cpu"),
                         examples=tasks[0].test)
    hits = sum(int(p == e.label) for p, e in zip(predicted, tasks[0].test, strict=True))
    assert len(tasks[0].test) == 20
    assert final["test_sentiment_accuracy"] == pytest.approx(hits / 20)
    assert "test_loss" in final and "eval_sentiment_accuracy" in final
    run = json.loads((Path(cfg.output_dir) / "run.json").read_text())
    assert run["final_metrics"]["test_sentiment_accuracy"] == pytest.approx(hits / 20)
    splits = run["data"]["sentiment"]["splits"]
    assert splits == json.loads(json.dumps(tasks[0].split_hashes()))
    assert [splits[s]["n"] for s in ("train", "eval", "test")] == [16, 12, 20]


def _losses(out) -> list[float]:
    return [r["loss"] for r in read_metrics(out)]


def test_same_seed_gives_identical_loss_curves(tiny_bert_dir, tmp_path):
    first = parse_config(cls_config(tiny_bert_dir, tmp_path / "a", steps=4))
    second = parse_config(cls_config(tiny_bert_dir, tmp_path / "b", steps=4))
    other = parse_config(cls_config(tiny_bert_dir, tmp_path / "c", steps=4, seed=1))
    for cfg in (first, second, other):
        run_training(cfg, progress=False)
    assert _losses(first.output_dir) == _losses(second.output_dir)
    assert _losses(first.output_dir) != _losses(other.output_dir)


class StopAt(TrainerCallback):
    """Requests a stop (as SIGTERM would) when a given step ends."""

    def __init__(self, flag: StopFlag, step: int):
        self.flag, self.step = flag, step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step:
            self.flag.request("test")


def test_stop_then_resume_continues_the_same_curve(tiny_bert_dir, tmp_path):
    full = parse_config(cls_config(tiny_bert_dir, tmp_path / "full", steps=6))
    run_training(full, progress=False)
    cfg = parse_config(cls_config(tiny_bert_dir, tmp_path / "stopped", steps=6))
    flag = StopFlag()
    stopped = run_training(cfg, progress=False, stop=flag, callbacks=[StopAt(flag, 3)])
    assert stopped.state == "cancelled" and stopped.steps == 3
    assert "checkpoint-3" in stopped.message
    assert json.loads((tmp_path / "stopped" / "status.json").read_text())["state"] == "cancelled"
    from safetensors import safe_open

    with safe_open(str(tmp_path / "stopped" / "checkpoints" / "checkpoint-3" / "trainable.safetensors"),
                   framework="pt") as f:  # the model's own names: the Trainer holds the AdaptedModel
        assert f.keys() and not any(k.startswith("module.") for k in f.keys())
    resumed = run_training(cfg, resume=True, progress=False)
    assert resumed.state == "finished" and resumed.steps == 6
    rows = read_metrics(cfg.output_dir)
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert _losses(cfg.output_dir) == pytest.approx(_losses(full.output_dir), rel=1e-5)


def test_resume_skips_a_truncated_checkpoint(tiny_bert_dir, tmp_path):
    """Issue 18 #7: a partial checkpoint-6 (no trainer_state.json: a full disk mid-save) was picked
    by --resume, which failed; the good checkpoint-3 was ignored."""
    cfg = parse_config(cls_config(tiny_bert_dir, tmp_path / "run", steps=6))
    flag = StopFlag()
    run_training(cfg, progress=False, stop=flag, callbacks=[StopAt(flag, 3)])
    checkpoints = tmp_path / "run" / "checkpoints"
    partial = checkpoints / "checkpoint-6"
    shutil.copytree(checkpoints / "checkpoint-3", partial)
    (partial / "trainer_state.json").unlink()
    (partial / "optimizer.pt").write_bytes(b"")
    assert last_complete_checkpoint(checkpoints) == str(checkpoints / "checkpoint-3")
    resumed = run_training(cfg, resume=True, progress=False)
    assert resumed.state == "finished" and resumed.steps == 6
    assert [r["step"] for r in read_metrics(cfg.output_dir)] == list(range(1, 7))


def test_last_complete_checkpoint_needs_every_file(tmp_path):
    assert last_complete_checkpoint(tmp_path / "missing") is None
    for step, files in ((2, CHECKPOINT_FILES), (10, CHECKPOINT_FILES[1:]), (7, CHECKPOINT_FILES)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        for name in files:
            (folder / name).write_bytes(b"x")
    (tmp_path / "checkpoint-x").mkdir()  # not a step number
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-7")  # 10 is partial
    (tmp_path / "checkpoint-7" / "scheduler.pt").write_bytes(b"")  # empty: a full disk
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")


def test_resume_without_checkpoint_is_an_error(tiny_bert_dir, tmp_path):
    cfg = parse_config(cls_config(tiny_bert_dir, tmp_path / "none"))
    with pytest.raises(ValueError, match="no complete checkpoint"):
        run_training(cfg, resume=True, progress=False)


def test_nan_loss_stops_with_step_and_last_checkpoint(tiny_bert_dir, tmp_path):
    cfg = parse_config(cls_config(tiny_bert_dir, tmp_path / "nan", steps=6, learning_rate=1e30,
                                  save_interval=1))
    result = run_training(cfg, progress=False)
    assert result.state == "failed"
    bad = int(result.message.split("at step ")[1].split(";")[0])
    assert 2 <= bad < 6 and result.steps == bad
    assert f"checkpoint-{bad - 1}" in result.message
    rows = read_metrics(cfg.output_dir)
    assert all(math.isfinite(r["loss"]) for r in rows) and rows[-1]["step"] == bad - 1
    status = json.loads((tmp_path / "nan" / "status.json").read_text())
    assert status["state"] == "failed" and f"step {bad}" in status["message"]


@pytest.mark.parametrize("cuda, bf16", [(False, False), (True, True), (True, False)])
def test_device_and_precision_resolution(cuda, bf16, monkeypatch):
    # Both branches run on every machine: CUDA availability is monkeypatched.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    cfg = parse_config({}).train
    if cuda:
        assert resolve_device(cfg) == ("cuda", "bf16" if bf16 else "fp32")
        assert resolve_device(cfg.model_copy(update={"precision": "fp16"})) == ("cuda", "fp16")
        assert resolve_device(cfg.model_copy(update={"device": "cpu"})) == ("cpu", "fp32")
    else:
        assert resolve_device(cfg) == ("cpu", "fp32")
        with pytest.raises(ValueError, match="no CUDA"):
            resolve_device(cfg.model_copy(update={"device": "cuda"}))
        with pytest.raises(ValueError, match="fp16 needs a CUDA"):
            resolve_device(cfg.model_copy(update={"precision": "fp16"}))
        assert resolve_device(cfg.model_copy(update={"precision": "bf16"})) == ("cpu", "bf16")


def test_cli_rejects_a_bad_config(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {steps: 0, sped: 1}\nadapter: {method: magic}\n")
    assert cli_main([str(bad)]) == 1
    err = capsys.readouterr().err
    assert "train.steps" in err and "train.sped" in err and "adapter.method" in err


def test_count_params_matches_report(tiny_llama_dir, tmp_path):
    cfg = parse_config(lm_config(tiny_llama_dir, tmp_path, "lora"))
    tasks = load_tasks(cfg.tasks)
    adapted, _, report = build_model(cfg, tasks)
    assert report is adapted.report
    assert adapted.run_config == cfg and adapted.adapter_config.method == "lora"
    trainable, total = count_params(adapted.module)
    assert trainable == report.totals["trainable_total"] == sum(4 * (m + n) for m, n in
                                                                 [(32, 32), (32, 32), (64, 32), (32, 64)]) * 2


def test_sigterm_stops_cli_after_the_step_with_a_checkpoint(tiny_bert_dir, tmp_path):
    out = tmp_path / "sig"
    cfg_path = save_config(parse_config(cls_config(tiny_bert_dir, out, steps=5000)), tmp_path / "c.yaml")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "idlora_core.train", str(cfg_path), "--no-progress"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 90
        while time.time() < deadline and len(read_metrics(out)) < 2:
            time.sleep(0.2)
        assert len(read_metrics(out)) >= 2, proc.stderr.read() if proc.poll() is not None else "too slow"
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 130
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "cancelled" and "SIGTERM" in status["message"]
    step = status["step"]
    assert 2 <= step < 5000
    assert (out / "checkpoints" / f"checkpoint-{step}" / "trainable.safetensors").is_file()
    assert read_metrics(out)[-1]["step"] == step
    assert json.loads((out / "run.json").read_text())["state"] == "cancelled"


def test_warns_when_accelerate_cpu_launch_started_one_process(monkeypatch, capsys):
    from idlora_core.training.cli import warn_single_cpu_launch

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    monkeypatch.setenv("MASTER_PORT", "29500")
    warn_single_cpu_launch()
    assert "--multi_gpu --num_processes N" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")
    warn_single_cpu_launch()
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("method", ["idlora", pytest.param("lora", marks=pytest.mark.slow),
                                    pytest.param("hydralora", marks=pytest.mark.slow)])
def test_bf16_run_loads_the_base_in_bf16_and_trains_float32_adapters(method, tiny_llama_dir, tmp_path):
    # one task: what is checked is the dtypes and a finite loss, not each task's metrics
    cfg = parse_config(lm_config(tiny_llama_dir, tmp_path / method, method, tasks=["arithmetic"],
                                 steps=3, precision="bf16", device="cpu", learning_rate=0.01))
    tasks = load_tasks(cfg.tasks, seed=cfg.train.seed)
    model, _, _ = build_model(cfg, tasks)
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    trained = {p.dtype for p in model.parameters() if p.requires_grad}
    assert frozen == {torch.bfloat16} and trained == {torch.float32}  # no float32 copy of the base
    result = run_training(cfg, progress=False)
    assert result.state == "finished" and result.steps == 3
    assert all(math.isfinite(r["loss"]) for r in read_metrics(cfg.output_dir) if "loss" in r)


def test_gradient_checkpointing_option_gives_the_same_losses(tiny_llama_dir, tmp_path):
    losses = {}
    for flag in (False, True):
        cfg = parse_config(lm_config(tiny_llama_dir, tmp_path / str(flag), tasks=["arithmetic"],
                                     steps=3, gradient_checkpointing=flag, device="cpu"))
        if flag:
            model, _, _ = build_model(cfg, load_tasks(cfg.tasks, seed=cfg.train.seed))
            base = getattr(model, "base_model", model)
            assert any(getattr(m, "gradient_checkpointing", False) for m in base.modules())
        assert run_training(cfg, progress=False).state == "finished"
        losses[flag] = [r["loss"] for r in read_metrics(cfg.output_dir) if "loss" in r]
    assert len(losses[True]) == 3
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)  # recomputation, same maths
