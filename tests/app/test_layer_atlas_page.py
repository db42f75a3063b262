"""Layer atlas page: a scan CSV as two heatmaps; a chosen cell opens the Decomposition lab."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
from streamlit.testing.v1 import AppTest

import analysis.scan
from analysis.sweep import SweepSpec, sweep_layer

PAGE = str(Path(__file__).resolve().parents[2] / "app" / "views" / "layer_atlas.py")


def write_scan(path: Path) -> list[str]:
    rng = np.random.default_rng(1)
    names = [f"encoder.layer.{b}.attention.self.{p}" for b in (0, 1) for p in ("query", "value")]
    frames = [sweep_layer(rng.standard_normal((24, 12)), SweepSpec([1, 2], [2, 4], ["id"]),
                          layer=name).table for name in names]
    pd.concat(frames).to_csv(path, index=False)
    return names


def test_scan_csv_shows_two_heatmaps_and_opens_the_lab(tmp_path):
    names = write_scan(tmp_path / "atlas.csv")
    at = AppTest.from_file(PAGE, default_timeout=120).run()
    assert not at.exception
    at.text_input(key="atlas_path").set_value(str(tmp_path / "atlas.csv"))
    at.button(key="atlas_load").click().run()
    assert not at.exception and len(at.error) == 0
    cells = at.dataframe[0].value
    assert sorted(cells["layer"]) == sorted(names) and set(cells["block"]) == {0, 1}
    assert set(cells["type"]) == {"q", "v"}
    assert "gain over SVD(r) (difference)" in cells.columns  # readable headers, as in the report
    assert not [c for c in cells.columns if "_" in c], list(cells.columns)
    charts = at.get("plotly_chart")
    assert len(charts) == 2  # gain and gap heatmaps
    import json

    gain = json.loads(charts[0].proto.spec)["data"][0]
    assert sorted(row[0] for row in gain["customdata"]) == sorted(names)  # one cell per layer
    at.selectbox(key="atlas_pick").set_value(names[3])
    at.button(key="atlas_open").click().run()
    assert at.session_state["lab_layers"] == [names[3]]
    assert at.session_state["lab_focus_layer"] == names[3]


def test_a_clicked_cell_opens_that_layer(tmp_path):
    from app.figures import clicked_layer

    names = write_scan(tmp_path / "atlas.csv")
    at = AppTest.from_file(PAGE, default_timeout=120).run()
    at.text_input(key="atlas_path").set_value(str(tmp_path / "atlas.csv"))
    at.button(key="atlas_load").click().run()
    # what Streamlit stores for a click on a cell, read as the page's on_select callback does
    state = {"selection": {"points": [{"customdata": [names[2], 2, "id"], "x": 0, "y": 1}]}}
    assert clicked_layer(state) == names[2]
    assert clicked_layer({"selection": {"points": []}}) is None and clicked_layer(None) is None
    at.session_state["_atlas_open_layer"] = clicked_layer(state)
    at.run()
    assert at.session_state["lab_layers"] == [names[2]]
    assert "_atlas_open_layer" not in at.session_state  # consumed once: no loop on return


def test_bad_csv_shows_one_error(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    at.text_input(key="atlas_path").set_value(str(tmp_path / "x.csv"))
    at.button(key="atlas_load").click().run()
    assert not at.exception
    assert "not a scan table" in at.error[0].value


def _scan_here(at: AppTest) -> AppTest:
    at.run()
    at.radio(key="atlas_source").set_value("Scan the current model here").run()
    assert not at.exception
    return at


def test_a_pattern_that_backtracks_is_one_line_within_a_second():
    """Issue 18 #1: `^(.|\\w)*!` froze the served lab for > 100 s under Python's `re`."""
    at = _scan_here(AppTest.from_file(PAGE, default_timeout=120))
    start = time.monotonic()
    at.run()
    plain = time.monotonic() - start  # a rerun without the click, the page's own cost
    nothing = r"^(.|\w)*!"
    for pattern, words in ((nothing, f"No linear layer matches {nothing!r}"),
                           (r"^(\w|[a-z]|\.)*\d\d\d", "took longer than 0.5 s: simplify it")):
        at.text_input(key="atlas_layers").set_value(pattern)
        start = time.monotonic()
        at.button(key="atlas_run").click().run()
        took = time.monotonic() - start
        assert not at.exception
        shown = re.sub(r"\\(.)", r"\1", at.error[0].value)  # the Markdown source as it displays
        assert len(at.error) == 1 and words in shown, [e.value for e in at.error]
        assert "\n" not in at.error[0].value
        assert took < plain + 1.0, (took, plain)
        assert "atlas_job" not in at.session_state  # no job was started


def test_a_scan_runs_in_the_background_and_fills_the_atlas():
    at = _scan_here(AppTest.from_file(PAGE, default_timeout=120))
    layer = "encoder.layer.0.attention.self.query"
    at.multiselect(key="atlas_ks").set_value([1])
    at.multiselect(key="atlas_ranks").set_value([4])
    at.text_input(key="atlas_layers").set_value(r"layer\.0\.attention\.self\.query$")
    at.button(key="atlas_run").click().run()
    assert not at.exception and len(at.error) == 0
    job = at.session_state["atlas_job"]
    assert job.kind == "scan" and job.label == "scan of 1 layer"
    table = job.result(timeout=120)
    assert sorted(set(table["layer"])) == [layer]
    at.run()  # the polling fragment takes the finished table and redraws the page
    assert not at.exception
    assert at.session_state["atlas_job"] is None
    assert list(at.dataframe[0].value["layer"]) == [layer] and len(at.get("plotly_chart")) == 2


def test_cancel_stops_a_running_scan_between_layers(monkeypatch):
    started, stopped = threading.Event(), threading.Event()

    def endless(model, spec, *, layers, progress):  # one layer "done" every 10 ms, never the last
        started.set()
        try:
            for i in range(10**6):
                progress(i % len(layers), len(layers) + 1, layers[0], False)
                time.sleep(0.01)
        finally:
            stopped.set()

    monkeypatch.setattr(analysis.scan, "scan", endless)
    at = _scan_here(AppTest.from_file(PAGE, default_timeout=120))
    at.text_input(key="atlas_layers").set_value("query")
    at.button(key="atlas_run").click().run()
    assert started.wait(30)
    at.run()
    assert at.button(key="atlas_cancel").label == "Cancel"
    at.button(key="atlas_cancel").click().run()
    assert stopped.wait(10)  # the job ends at its next progress report
    at.run()
    assert not at.exception and at.session_state["atlas_job"] is None
    assert "cancelled" in at.info[0].value
