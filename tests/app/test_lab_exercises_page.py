"""Lab exercises through main.py: one click sets every control of an exercise, the app then
shows the numbers the handout quotes, and Reset restores the defaults."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from analysis.exercises import load_exercises
from app.common import DEFAULTS

MAIN = str(Path(__file__).resolve().parents[2] / "app" / "main.py")
Q0 = "encoder.layer.0.attention.self.query"
A3 = "encoder.layer.3.attention.output.dense"
PAGES = {1: "views/decomposition_lab.py", 2: "views/decomposition_lab.py",
         3: "views/cluster_explorer.py", 4: "views/fine_tune.py"}
TITLES = {"views/decomposition_lab.py": "Decomposition lab",
          "views/cluster_explorer.py": "Cluster explorer", "views/fine_tune.py": "Fine-tune"}
DIGITS = {ex.id: {name: c.get("digits") for name, c in ex.checks.items()} for ex in load_exercises()}
QUOTED = {ex.id: {name: c["value"] for name, c in ex.checks.items()} for ex in load_exercises()}


def _start(number: int) -> AppTest:
    at = AppTest.from_file(MAIN, default_timeout=300).run()
    at.switch_page("views/lab_exercises.py").run()
    assert not at.exception
    at.button(key=f"exercise_start_{number}").click().run()
    assert not at.exception, at.exception
    page = PAGES[number]
    titles = [t.value for t in at.title] + [h.value for h in at.header]
    assert TITLES[page] in titles  # st.switch_page opened the exercise's page
    return at.switch_page(page).run()  # AppTest's next run() would go back to its own page


def _charts(at) -> dict:
    return {c.proto.id.rsplit("-", 1)[-1]: json.loads(c.proto.spec) for c in at.get("plotly_chart")}


def _frame(at, column: str):
    """The one dataframe on the page that has `column` (AppTest does not look them up by key)."""
    frames = [d.value for d in at.dataframe if column in d.value.columns]
    assert len(frames) == 1, [list(d.value.columns) for d in at.dataframe]
    return frames[0]


def _values(v) -> list:
    """Plotly stores numeric arrays as base64 ("bdata") in the JSON spec."""
    if isinstance(v, dict) and "bdata" in v:
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=v["dtype"]).tolist()
    return list(v)


def _lines(chart: dict) -> dict[str, dict]:
    return {t["name"]: dict(zip(_values(t["x"]), _values(t["y"]), strict=True))
            for t in chart["data"]}


def test_exercise_2_preset_shows_the_quoted_numbers_and_reset_restores_defaults(settle):
    at = _start(2)
    assert at.title[0].value == "Decomposition lab"
    assert at.multiselect(key="lab_layers").value == [Q0]
    assert at.multiselect(key="lab_ranks").value == [1, 2, 4, 8, 12, 16]
    assert at.multiselect(key="lab_ks").value == [1, 4, 8]
    assert at.checkbox(key="lab_normalize_rows").value is False
    panel = " ".join(m.value for m in at.sidebar.markdown)
    assert "Exercise 2" in panel and str(QUOTED[2]["bound_cluster"]) in panel
    settle(at.button(key="lab_run").click())
    assert not at.exception, at.exception
    charts = _charts(at)
    spectral = _lines(charts["lab_error_vs_rank_spectral"])
    assert round(spectral["BOUND: cluster-wise ID"][16], 1) == QUOTED[2]["bound_cluster"]
    assert round(spectral["BOUND: global ID"][16], 1) == QUOTED[2]["bound_global"]
    assert round(spectral["cluster-wise ID (id)"][16], 3) == QUOTED[2]["spec_id"]
    frob = _lines(charts["lab_error_vs_rank"])
    assert round(frob["cluster-wise ID (id)"][16], 3) == QUOTED[2]["q0_id"]
    assert round(frob["global SVD, same total rank k·r"][16], 3) == QUOTED[2]["q0_total"]
    assert not any(name.startswith("BOUND") for name in frob)  # bounds: spectral panel only
    assert len(frob["cluster-wise ID (id)"]) == 6  # a curve, not two points
    at.sidebar.button(key="exercise_reset").click().run()
    assert not at.exception
    assert at.session_state["lab_exercise"] is None
    assert at.multiselect(key="lab_ranks").value == DEFAULTS["lab_ranks"]


@pytest.mark.parametrize("number", [1])
def test_exercise_1_preset_reproduces_the_handout_table_in_the_summary(number, settle):
    at = _start(number)
    assert len(at.multiselect(key="lab_layers").value) == QUOTED[1]["n_layers"]
    settle(at.button(key="lab_run").click())
    assert not at.exception, at.exception
    summary = _frame(at, "gain_vs_svd").set_index("layer")
    for short, layer in (("a3", A3), ("q0", Q0), ("f0", "encoder.layer.0.intermediate.dense")):
        row = summary.loc[layer]
        assert round(row["rel_fro_error"], 3) == QUOTED[1][f"{short}_id"]
        digits = DIGITS[1][f"{short}_gain"]
        assert round(row["gain_vs_svd"], digits) == QUOTED[1][f"{short}_gain"]
    assert (summary["result"] == "gain").sum() == QUOTED[1]["wins"]
    assert list(summary.index[summary["result"] == "LOSS"]) == [QUOTED[1]["only_loss"]]
    means = _frame(at, "mean_gain").set_index("selection")["mean_error"]
    for selection in ("id", "random", "centroid"):
        assert round(means[selection], 3) == QUOTED[3][f"mean_{selection}"]
    gain = _charts(at)["lab_summary_chart"]
    assert gain["layout"]["yaxis"].get("type", "linear") == "linear"  # bars never on a log axis
    assert "3 · attn_out" in _values(gain["data"][0]["x"])


def test_exercise_3_opens_the_explorer_with_the_quoted_cluster_sizes(settle):
    at = settle(_start(3))  # the clustering runs in the background pool
    assert at.title[0].value == "Cluster explorer"
    assert at.selectbox(key="explorer_layer").value == A3
    chart = _charts(at)["explorer_sizes"]
    assert len(chart["data"]) == 8  # one colour (trace) per cluster, every cluster labelled
    assert chart["layout"]["xaxis"]["tickmode"] == "linear"
    sizes = [y for t in chart["data"] for y in _values(t["y"])]
    assert sorted(sizes, reverse=True) == QUOTED[3]["sizes_raw"]
    scatter = _charts(at)["explorer_scatter"]["data"]
    assert [t["name"] for t in scatter if "skeleton" in t["name"]] == ["skeleton rows: id"]
    settle(at.checkbox(key="explorer_normalize_rows").check())
    sizes = [y for t in _charts(at)["explorer_sizes"]["data"] for y in _values(t["y"])]
    assert sorted(sizes, reverse=True) == QUOTED[3]["sizes_norm"]
    at.switch_page("views/decomposition_lab.py").run()
    assert at.checkbox(key="lab_normalize_rows").value is False  # the lab keeps its own


def test_exercise_4_preset_sets_the_fine_tune_controls():
    at = _start(4)
    assert not at.exception
    assert at.multiselect(key="ft_methods").value == ["idlora", "lora", "head-only", "base"]
    assert at.number_input(key="ft_steps").value == 150
    assert at.selectbox(key="ft_lr_idlora").value == 0.01 and at.selectbox(key="ft_lr_lora").value == 0.003
    assert at.selectbox(key="ft_lr_head-only").value == 1.0
    assert at.selectbox(key="ft_selection").value == "id"  # exercise 3's best selection
    assert at.multiselect(key="ft_tasks").value == ["rotten_tomatoes"]  # the real-data task
    assert at.session_state["layer_kinds"] == ["q", "v"]
    assert "Exercise 4" in " ".join(m.value for m in at.sidebar.markdown)
