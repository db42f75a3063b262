"""Issue 18 #7: a run that dies of an error ends with status.json 'failed' and the reason (out of
memory, full disk, any error), even when the disk is too full for an atomic write; a checkpoint
is written under .saving-N and renamed when complete, so a full disk mid-save leaves the last
complete checkpoint for --resume."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
from transformers import Trainer, TrainerCallback

from idlora_core.config import parse_config
from idlora_core.training import run_files
from idlora_core.training.run_files import read_metrics
from idlora_core.training.run_folder import last_complete_checkpoint
from idlora_core.training.trainer import STAGING_PREFIX, failure_reason, run_training


def cls_config(model_dir: str, out: Path, **train) -> dict:
    return {
        "model": {"name": model_dir},
        "adapter": {"method": "lora", "targets": [{"pattern": "query", "r": 2}]},
        "tasks": [{"name": "sentiment", "num_train": 16, "num_eval": 8}],
        "train": {"steps": 6, "batch_size": 4, "seq_len": 24, "learning_rate": 0.01, "eval_interval": 0,
                  "save_interval": 0, **train},
        "output_dir": str(out),
    }


class RaiseAt(TrainerCallback):
    """Raise `exc` at the end of optimiser step `step` (an error inside training)."""

    def __init__(self, step: int, exc: BaseException, before=None):
        self.step, self.exc, self.before = step, exc, before

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            if self.before:
                self.before()
            raise self.exc


def status(out: Path) -> dict:
    return json.loads((out / "status.json").read_text())


@pytest.mark.parametrize(("exc", "expected"), [
    (MemoryError("cannot allocate 3 GiB"), "out of memory (MemoryError: cannot allocate 3 GiB): lower train.batch_size"),
    (OSError(errno.ENOSPC, "No space left on device", "/data/run/metrics.jsonl"),
     "disk full at /data/run/metrics.jsonl (No space left on device): free space and run again"),
    (RuntimeError("CUDA error: an illegal memory access"), "RuntimeError: CUDA error: an illegal memory access"),
    (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), "out of memory (RuntimeError: CUDA out of"),
])
def test_an_error_inside_training_ends_failed_with_the_reason(exc, expected, tiny_bert_dir, tmp_path):
    out = tmp_path / "run"
    cfg = parse_config(cls_config(tiny_bert_dir, out, save_interval=1))
    with pytest.raises(type(exc)):
        run_training(cfg, progress=False, callbacks=[RaiseAt(2, exc)])
    found = status(out)
    assert found["state"] == "failed" and found["message"].startswith(expected), found
    # the checkpoint of step 1 was complete: the reason says where to resume from
    assert found["message"].endswith(f"continue from {out / 'checkpoints' / 'checkpoint-1'} with --resume")
    assert found["step"] == 1  # the last step the status recorded before the error


def test_full_disk_status_is_rewritten_in_place(tiny_bert_dir, tmp_path, monkeypatch):
    # the disk fills at step 2: from then on no new file can be created (the atomic write needs
    # one), yet status.json must not stay 'running'
    out = tmp_path / "run"
    full = []
    real = run_files.write_text_atomic

    def atomic(path, text):
        if full:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, text)

    monkeypatch.setattr(run_files, "write_text_atomic", atomic)
    cfg = parse_config(cls_config(tiny_bert_dir, out))
    disk_full = OSError(errno.ENOSPC, "No space left on device", str(out / "metrics.jsonl"))
    with pytest.raises(OSError):
        run_training(cfg, progress=False, callbacks=[RaiseAt(2, disk_full, before=lambda: full.append(1))])
    found = status(out)
    assert found["state"] == "failed" and found["message"].startswith(f"disk full at {out / 'metrics.jsonl'}")
    assert found["pid"] > 0 and not list(out.glob(".tmp*")) and not list(out.glob("*.tmp"))


def test_failure_reason_without_checkpoint(tmp_path):
    assert failure_reason(ValueError("bad\nsecond line"), tmp_path / "none") == "ValueError: bad"
    assert failure_reason(OSError(errno.EDQUOT, "Disk quota exceeded")).startswith("disk full (")


def test_checkpoints_are_renamed_into_place_and_rotated(tiny_bert_dir, tmp_path):
    out = tmp_path / "run"
    result = run_training(parse_config(cls_config(tiny_bert_dir, out, save_interval=2)), progress=False)
    assert result.state == "finished"
    checkpoints = out / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-6"]  # 2 and 4 rotated out
    assert last_complete_checkpoint(checkpoints) == str(checkpoints / "checkpoint-6")


def test_full_disk_mid_checkpoint_keeps_the_last_complete_one(tiny_bert_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    cfg = parse_config(cls_config(tiny_bert_dir, out, save_interval=2))
    real = Trainer._save_rng_state

    def rng_state(self, output_dir):
        if self.state.global_step == 4:  # model, optimizer and scheduler are written, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", str(Path(output_dir) / "rng_state.pth"))
        return real(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_rng_state", rng_state)
    with pytest.raises(OSError):
        run_training(cfg, progress=False)
    checkpoints = out / "checkpoints"
    partial = checkpoints / f"{STAGING_PREFIX}4" / "checkpoint-4"
    assert (partial / "optimizer.pt").is_file()  # the save got that far, under the staging name
    assert sorted(p.name for p in checkpoints.iterdir()) == [f"{STAGING_PREFIX}4", "checkpoint-2"]
    found = status(out)
    assert found["state"] == "failed" and found["message"].startswith(f"disk full at {partial}")
    assert found["message"].endswith(f"continue from {checkpoints / 'checkpoint-2'} with --resume")
    monkeypatch.undo()
    resumed = run_training(cfg, resume=True, progress=False)
    assert resumed.state == "finished" and resumed.steps == 6
    assert [r["step"] for r in read_metrics(out)] == list(range(1, 7))
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-6"]  # the partial save is cleared
