"""Study names are folder names, and one name holds one study (issue 18 #3, #4)."""

from __future__ import annotations

import json
import os

import pytest

from analysis import studies
from analysis.runs import RunPathError
from idlora_core.study.config import parse_study

BASE = {"adapter": {"method": "idlora", "targets": [{"pattern": "query", "r": 8, "k": 4}]},
        "tasks": [{"name": "sentiment"}]}


def _study(seeds: list[int]):
    return parse_study({"base": BASE, "grid": {"method": ["base"], "seed": seeds},
                        "metric": "eval_sentiment_accuracy"})


@pytest.mark.parametrize("name", ["a/b", "", "  ", ".", "..", "x\\y", "nul\x00"])
def test_a_study_name_must_be_one_folder_name(tmp_path, name):
    with pytest.raises(RunPathError, match="must be one folder name"):
        studies.study_dir(tmp_path, name)
    assert studies.study_dir(tmp_path, " my-study ") == (tmp_path / "studies" / "my-study").resolve()


def test_a_name_in_use_is_refused_and_its_files_are_kept(tmp_path, monkeypatch):
    started = []
    monkeypatch.setattr(studies.subprocess, "Popen", lambda *a, **k: started.append(a) or
                        type("P", (), {"pid": 10**7})())  # never a live pid
    out = studies.start_study(_study([0]), tmp_path, "mine")
    spec = (out / "input.yaml").read_text()
    with pytest.raises(ValueError, match="a study with other settings is named 'mine'"):
        studies.start_study(_study([0, 1]), tmp_path, "mine")
    assert (out / "input.yaml").read_text() == spec and len(started) == 1
    assert studies.start_study(_study([0]), tmp_path, "mine") == out  # same settings: resume
    (out / studies.LAUNCH_FILE).write_text(json.dumps({"pid": os.getpid(), "workers": 1}))  # alive
    with pytest.raises(ValueError, match="study 'mine' is running"):
        studies.start_study(_study([0]), tmp_path, "mine")
    assert len(started) == 2
