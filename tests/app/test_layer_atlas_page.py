"""Layer atlas page: a scan CSV as two heatmaps; a chosen cell opens the Decomposition lab."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from streamlit.testing.v1 import AppTest

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
