"""Studies page, issue 17 #3: the study's time is runs x per-run estimate / workers, each run
estimated from this server's measured runs (the source shown), and a study whose runs are over the
room's time limit starts only after the confirmation naming the estimate."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

from analysis.studies import list_presets, run_count
from idlora_core.jobs import throughput
from idlora_core.study.config import load_study
from idlora_core.study.grid import expand_grid
from tests.idlora_core.jobs.test_throughput import fake_run

PAGE = str(Path(__file__).resolve().parents[2] / "app" / "views" / "studies.py")


def test_the_study_estimate_rests_on_measured_runs_and_long_runs_need_a_confirmation(tmp_path, monkeypatch):
    import torch

    from idlora_core.jobs import studies as jobs

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the preset's "auto" device: the CPU
    monkeypatch.setenv("IDLORA_RUNS_DIR", str(tmp_path))
    monkeypatch.setenv("IDLORA_MAX_RUNS", "4")
    monkeypatch.setenv("IDLORA_MAX_RUN_MINUTES", "1")
    started = []
    monkeypatch.setattr(jobs, "start_study", lambda *a, **k: started.append(k) or tmp_path)
    # preset minilm_sentiment: 30 steps of batch 16 x 48 tokens, 128 validation examples
    fake_run(tmp_path, "lora-measured", method="lora", steps=12, batch=16, seq=48, num_eval=128,
             step_s=2.0, eval_s=1.0, load_s=4.0, test_s=1.0)
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.run()
    at.selectbox(key="st_preset").set_value("minilm_sentiment").run()
    assert not at.exception
    lora = 5.0 + 30 * 2.0 + 1.0  # measured: start-up + steps + one evaluation = 66 s
    # the other training methods: LoRA's measurement (same model and shape, another method); the
    # base model (no training step) has nothing measured: the default guess's 10 s of start-up
    study = load_study(list_presets()["minilm_sentiment"])
    cells, _ = expand_grid(study)
    per = [10.0 if c["method"] == "base" else lora for c in cells]
    expected = sum(per) * run_count(study) / len(cells) / 2  # two workers
    text = " ".join(m.value for m in at.markdown)
    assert f"about **{throughput.minutes(expected)}** with 2 worker(s)" in text
    caption = " ".join(c.value for c in at.caption if c.value.startswith("Time per run"))
    assert "LoRA about 66 s (measured on this server from 1 run (2.00 s/step))" in caption
    assert "ID-LoRA about 66 s (scaled from 1 run of another method (lora)" in caption
    assert "Base (no training) about 10 s (default guess" in caption
    label = "I know each run takes about 66 s"
    assert [b.label for b in at.checkbox if b.label.startswith("I know")] == [label]
    at.button(key="st_start").click().run()
    assert started == [] and any(label in e.value for e in at.error)
    at.checkbox(key="st_confirm_long").check().run()
    at.button(key="st_start").click().run()
    assert len(started) == 1 and not at.error


def test_the_token_in_the_studies_address_signs_the_instructor_in(tmp_path, monkeypatch):
    """The page rewrites its address with its settings (url_state.mirror): the token is read first."""
    from idlora_core.jobs import class_study as cs

    monkeypatch.setenv("IDLORA_RUNS_DIR", str(tmp_path))
    monkeypatch.setenv(cs.TOKEN_ENV, "a-long-random-instructor-token")
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.query_params["token"] = "a-long-random-instructor-token"
    at.run()
    assert not at.exception
    assert "Instructor: class studies" in [e.label for e in at.expander]
    assert "token" not in at.query_params
