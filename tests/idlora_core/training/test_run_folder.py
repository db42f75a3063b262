"""The output folder of a run: lock, overwrite policy, resume checks, quick cancel (issue 8 #5-#7, #16)."""

from __future__ import annotations

import copy
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from idlora_core.config import parse_config, save_config
from idlora_core.training.callbacks import RunCancelled, StopFlag
from idlora_core.training.cli import main as cli_main
from idlora_core.training.evaluate import evaluate_tasks
from idlora_core.training.run_files import read_metrics, read_status
from idlora_core.training.run_folder import (
    LOCK_FILE,
    RunFolder,
    RunFolderError,
    config_differences,
    read_lock,
)
from idlora_core.training.trainer import run_training
from tests.idlora_core.training.test_train import StopAt, cls_config

REPO = Path(__file__).resolve().parents[3]
OLD_FILES = {"metrics.jsonl": '{"step": 1, "loss": 0.5}\n', "run.json": '{"state": "finished"}',
             "status.json": '{"state": "finished"}', "checkpoints/checkpoint-1/trainable.safetensors": "x",
             "adapter/adapter_config.yaml": "y"}

pytestmark = pytest.mark.usefixtures("one_thread")


def _old_run(folder: Path) -> dict[str, bytes]:
    for name, text in OLD_FILES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return {name: text.encode() for name, text in OLD_FILES.items()}


def _contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ---- #5: a failed re-run never deletes the previous results ----------------------------------

def test_non_empty_folder_is_refused_without_overwrite(tiny_bert_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    before = _old_run(out)
    cfg = parse_config(cls_config(tiny_bert_dir, out, steps=2))
    with pytest.raises(RunFolderError, match=r"not empty .*--overwrite.*--resume"):
        run_training(cfg, progress=False)
    assert _contents(out) == before  # not a byte changed, no lock left behind


def test_overwrite_with_bad_data_keeps_the_previous_run(tiny_bert_dir, tmp_path):
    """The old trainer deleted metrics, run.json, checkpoints and adapter before reading the data."""
    out = tmp_path / "run"
    out.mkdir()
    before = _old_run(out)
    raw = cls_config(tiny_bert_dir, out, steps=2)
    raw["tasks"] = [{"name": "jsonl", "path": str(tmp_path / "missing.jsonl"), "num_train": 8, "num_eval": 4}]
    with pytest.raises(Exception, match="missing.jsonl"):
        run_training(parse_config(raw), overwrite=True, progress=False)
    assert _contents(out) == before


def test_overwrite_moves_the_old_run_aside_after_loading(tiny_bert_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    before = _old_run(out)
    (out / "notes.txt").write_text("mine")  # not a run file: stays where it is
    result = run_training(parse_config(cls_config(tiny_bert_dir, out, steps=2)), overwrite=True,
                          progress=False)
    assert result.state == "finished"
    (aside,) = out.glob("replaced-*")
    assert _contents(aside) == before
    assert [r["step"] for r in read_metrics(out)] == [1, 2]
    assert (out / "notes.txt").read_text() == "mine" and not (out / LOCK_FILE).exists()


def test_launcher_files_do_not_count_as_a_run(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("x: 1")
    (out / "train.log").write_text("")
    (out / "status.json").write_text('{"state": "starting"}')
    with RunFolder(out) as folder:
        assert folder.claimed
    (out / "status.json").write_text('{"state": "finished"}')
    with pytest.raises(RunFolderError, match="status.json"):
        RunFolder(out).acquire()


@pytest.mark.parametrize("value", ["", "  ", "''", '""'])
def test_empty_output_dir_is_refused(tmp_path, monkeypatch, capsys, value):
    """`--set output_dir=""` used to clear run files from the working directory."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "metrics.jsonl").write_text("keep\n")
    cfg = save_config(parse_config({"train": {"steps": 1}}), tmp_path / "c.yaml")
    assert cli_main([str(cfg), "--set", f"output_dir={value}"]) == 1
    err = capsys.readouterr().err
    assert "output_dir is empty" in err and "Traceback" not in err
    assert (tmp_path / "metrics.jsonl").read_text() == "keep\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml", "metrics.jsonl"]


# ---- #6: one run per folder ------------------------------------------------------------------

def test_second_run_fails_at_once_naming_the_holder(tiny_bert_dir, tmp_path, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        out.mkdir()
        (out / LOCK_FILE).write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(),
                                                 "started": time.time()}))
        cfg = save_config(parse_config(cls_config(tiny_bert_dir, out, steps=2)), tmp_path / "c.yaml")
        start = time.process_time()
        assert cli_main([str(cfg), "--no-progress"]) == 1
        assert time.process_time() - start < 5  # refused before loading anything
        err = capsys.readouterr().err
        assert f"in use by another run, pid {holder.pid} on host {socket.gethostname()}" in err
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # nothing written
        assert read_lock(out)["pid"] == holder.pid
    finally:
        holder.kill()
        holder.wait()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname()}))
    with RunFolder(tmp_path):
        assert read_lock(tmp_path)["pid"] == os.getpid()
    assert not (tmp_path / LOCK_FILE).exists()
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": _dead_pid(), "host": "another-host"}))
    with pytest.raises(RunFolderError, match="host another-host"):  # cannot tell: refused
        RunFolder(tmp_path).acquire()


def test_concurrent_runs_get_exactly_one_lock(tmp_path):
    """Four processes race for one folder; the winner holds the lock until the test lets it go
    (a line on its stdin), so every loser meets a held lock whatever the start-up order."""
    code = ("import sys; from idlora_core.training.run_folder import RunFolder, RunFolderError\n"
            "try:\n    f = RunFolder(sys.argv[1]).acquire()\nexcept RunFolderError:\n    sys.exit(3)\n"
            "print('locked', flush=True)\nsys.stdin.readline()\nf.release()\n")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], env=env, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE) for _ in range(4)]
    try:
        deadline = time.monotonic() + 120  # failure guard only: the losers exit at once
        while sum(p.poll() is not None for p in procs) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        losers = [p for p in procs if p.poll() is not None]
        assert [p.returncode for p in losers] == [3, 3, 3]
        (winner,) = [p for p in procs if p.poll() is None]
        assert winner.stdout.readline() == "locked\n"
        assert read_lock(tmp_path)["pid"] == winner.pid
        winner.stdin.write("release\n")
        winner.stdin.flush()
        assert winner.wait(timeout=60) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert not (tmp_path / LOCK_FILE).exists()


# ---- #7: --resume after a config change ------------------------------------------------------

def test_config_differences_names_keys_and_allows_length_changes():
    base = parse_config({"train": {"steps": 10}}).model_dump(mode="json")
    longer = parse_config({"train": {"steps": 20, "eval_interval": 5}}).model_dump(mode="json")
    assert config_differences(base, longer) == []
    other = parse_config({"train": {"steps": 10, "learning_rate": 0.5}}).model_dump(mode="json")
    assert config_differences(base, other) == ["train.learning_rate"]


def test_resume_with_another_config_is_refused_touching_nothing(tiny_bert_dir, tmp_path):
    """It used to crash with a size mismatch and rewrite run.json as 'running'."""
    out = tmp_path / "run"
    cfg = parse_config(cls_config(tiny_bert_dir, out, steps=6))
    flag = StopFlag()
    assert run_training(cfg, progress=False, stop=flag, callbacks=[StopAt(flag, 2)]).state == "cancelled"
    before = _contents(out.parent)
    raw = copy.deepcopy(cls_config(tiny_bert_dir, out, steps=6, learning_rate=0.01))
    raw["adapter"]["targets"][0]["r"] = 8
    with pytest.raises(RunFolderError, match=r"adapter\.targets\[0\]\.r: 4 -> 8; train\.learning_rate") as info:
        run_training(parse_config(raw), resume=True, progress=False)
    assert "2 key(s)" in str(info.value)
    assert _contents(out.parent) == before
    longer = parse_config(cls_config(tiny_bert_dir, out, steps=4))  # length may change
    resumed = run_training(longer, resume=True, progress=False)
    assert resumed.state == "finished" and resumed.steps == 4


# ---- #16: cancel is quick during data preparation and evaluation -----------------------------

# The real command line (`idlora_core.training.cli.main`) with one hook: the 300th example to be
# tokenised writes HOLD and waits there for the test's SIGTERM (at most 120 s, then exit 97).
# On exit it writes how many examples it tokenised to COUNT.
_HOLD_IN_TOKENISATION = """
import os, sys, time
from pathlib import Path
from idlora_core.training import cli, data

config, hold, count = sys.argv[1:4]
calls, encode = [], data.encode

def held_encode(*args, **kwargs):
    calls.append(1)
    if len(calls) == 300:  # past the stop check at example 256, before the next at 512
        Path(hold).write_text(str(os.getpid()))
        for _ in range(2400):
            time.sleep(0.05)  # SIGTERM's handler raises here
        os._exit(97)
    return encode(*args, **kwargs)

data.encode = held_encode
code = cli.main([config, "--no-progress"])
Path(count).write_text(str(len(calls)))
sys.exit(code)
"""


def test_sigterm_while_preparing_data_stops_at_once(tiny_bert_dir, tmp_path):
    """SIGTERM while the data is tokenised ends the run where it is (no further example),
    exit 130, status 'cancelled' and the lock released."""
    out, hold, count = tmp_path / "big", tmp_path / "hold", tmp_path / "count"
    raw = cls_config(tiny_bert_dir, out, steps=5)
    raw["tasks"][0]["num_train"] = 5000
    cfg_path = save_config(parse_config(raw), tmp_path / "c.yaml")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", _HOLD_IN_TOKENISATION, str(cfg_path), str(hold),
                             str(count)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180  # failure guard only
        while not hold.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert hold.exists(), proc.communicate(timeout=60) if proc.poll() is not None else "no hold"
        assert read_status(out)["message"] == "loading model and data"
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert count.read_text() == "300"  # not one example tokenised after the signal
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "cancelled", status
    assert status["message"] == "stopped by SIGTERM before training started; nothing to keep"
    assert not (out / LOCK_FILE).exists()


def _stop_at_check(n: int):
    """Return (check, calls): a stop check that counts its calls and requests a stop at call n."""
    flag, calls = StopFlag(), []

    def check():
        calls.append(1)
        if len(calls) == n:
            flag.request("test")
        flag.check()

    return check, calls


def test_stop_flag_interrupts_tokenisation_in_process(tiny_bert_dir, tmp_path):
    from transformers import AutoTokenizer

    from idlora_core.config import TaskConfig
    from idlora_core.tasks import load_tasks
    from idlora_core.training.data import build_train_dataset

    tasks = load_tasks([TaskConfig(name="sentiment", num_train=5000, num_eval=4)])
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    check, calls = _stop_at_check(3)

    with pytest.raises(RunCancelled):
        build_train_dataset(tokenizer, tasks, [1.0], 24, 0, check=check)
    assert len(calls) == 3  # stopped after 2 * 256 of 5000 examples


def test_stop_flag_interrupts_example_generation_in_process():
    """Generating 10^6 examples took minutes and could not be stopped."""
    from idlora_core.config import TaskConfig
    from idlora_core.tasks import load_tasks
    from idlora_core.tasks.base import polling

    check, calls = _stop_at_check(3)

    start = time.process_time()
    with polling(check), pytest.raises(RunCancelled):
        load_tasks([TaskConfig(name="arithmetic", num_train=1_000_000, num_eval=4)])
    assert len(calls) == 3 and time.process_time() - start < 2  # 8192 draws, not 10^6
    assert load_tasks([TaskConfig(name="arithmetic", num_train=8, num_eval=4)])[0].train  # no check


def test_stop_during_evaluation_abandons_it(tiny_bert_dir):
    from idlora_core.config import TaskConfig
    from idlora_core.tasks import load_tasks
    from idlora_core.training.setup import build_model

    cfg = parse_config(cls_config(tiny_bert_dir, "unused"))
    tasks = load_tasks([TaskConfig(name="sentiment", num_train=8, num_eval=200)])
    model, tokenizer, _ = build_model(cfg, tasks)
    forwards = []
    model.register_forward_hook(lambda *a: forwards.append(1))
    check, calls = _stop_at_check(2)

    with pytest.raises(RunCancelled):
        evaluate_tasks(model, tokenizer, tasks, seq_len=24, batch_size=8, device="cpu", check=check)
    assert len(forwards) == 1  # of 25 loss batches + 25 classification batches


def test_cancelled_run_skips_the_final_evaluation(tiny_bert_dir, tmp_path):
    raw = cls_config(tiny_bert_dir, tmp_path / "run", steps=50)
    raw["tasks"][0]["num_eval"] = 64
    cfg = parse_config(raw)
    flag = StopFlag()
    result = run_training(cfg, progress=False, stop=flag, callbacks=[StopAt(flag, 2)])
    assert result.state == "cancelled" and result.steps == 2
    rows = read_metrics(cfg.output_dir)
    assert rows[-1]["step"] == 2 and not any(k.startswith("eval_") for r in rows for k in r)
