"""Studies page on a served lab (issue 18 #2, #6): a grid over the server's size is refused before
it is expanded, and a user runs at most IDLORA_MAX_STUDIES_PER_USER studies at once."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from streamlit.testing.v1 import AppTest

PAGE = str(Path(__file__).resolve().parents[2] / "app" / "views" / "studies.py")


def test_a_grid_over_the_limit_is_refused_before_expansion(tmp_path, monkeypatch):
    """Finding 6: URL-chosen ranks 1-30 x ks 1-16 made a 4,602-run study the page offered to start."""
    import analysis.studies
    import idlora_core.study.grid

    expanded = []

    def counting(study):
        expanded.append(study)
        return real(study)

    real = idlora_core.study.grid.expand_grid
    monkeypatch.setattr(analysis.studies, "expand_grid", counting)
    monkeypatch.setattr(idlora_core.study.grid, "expand_grid", counting)
    monkeypatch.setenv("IDLORA_RUNS_DIR", str(tmp_path))
    at = AppTest.from_file(PAGE, default_timeout=180)
    at.session_state["st_source"] = "Build from the Fine-tune choices"
    at.session_state["st_methods"] = ["idlora", "lora", "head-only", "base"]
    at.session_state["st_ranks"] = list(range(1, 31))
    at.session_state["st_ks"] = list(range(1, 17))
    start = time.monotonic()
    at.run()
    assert not at.exception and time.monotonic() - start < 60
    # idlora 30 r x 16 k x 3 lr x 3 seeds + lora 30 x 3 x 3 + head-only 3 x 3 + base 3 seeds
    assert [e.value for e in at.error] == [
        "refused: this grid makes up to 4,602 runs (≈ 115.0 h at 0.6 s/step); this server allows 200 runs "
        "per study (IDLORA_MAX_STUDY_RUNS): fewer ranks, k, learning rates or seeds"]
    assert expanded == [] and not [b for b in at.button if b.key == "st_start"]
    at.multiselect(key="st_ranks").set_value([4, 8]).run()
    at.multiselect(key="st_ks").set_value([4]).run()
    assert "**48 runs**" in " ".join(m.value for m in at.markdown) and expanded  # 18 + 18 + 9 + 3


def test_a_user_runs_one_study_at_a_time(tmp_path, monkeypatch):
    from idlora_core.jobs import studies

    monkeypatch.setenv("IDLORA_RUNS_DIR", str(tmp_path))
    monkeypatch.setenv("IDLORA_MAX_RUNS", "4")
    mine = tmp_path / "studies" / "mine"
    mine.mkdir(parents=True)
    (mine / studies.LAUNCH_FILE).write_text(json.dumps({"pid": os.getpid(), "workers": 1,
                                                        "owner": "session:me"}))  # alive
    started = []
    monkeypatch.setattr(studies, "start_study", lambda *a, **k: started.append(k) or tmp_path)
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.session_state["_idlora_session"] = "me"
    at.run()
    at.selectbox(key="st_preset").set_value("minilm_sentiment").run()
    at.button(key="st_start").click().run()
    assert not at.exception and started == []
    assert ("refused: you have 1 studies queued or running and this adds 1; this server allows 1 per user "
            "(IDLORA_MAX_STUDIES_PER_USER)") in at.error[0].value
    monkeypatch.setenv("IDLORA_MAX_STUDIES_PER_USER", "2")
    at.button(key="st_start").click().run()
    assert [k["owner"] for k in started] == ["session:me"] and started[0]["memory_cap_gb"] == 8.0
