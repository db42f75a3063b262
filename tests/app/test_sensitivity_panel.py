"""The Decomposition lab's clustering-sensitivity section: nothing before its button, then the
ARI matrix, the spread and the moving rows, each against `analysis.sensitivity` itself."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from analysis.sensitivity import seed_sweeps, spread_reading, spread_table, sweep_sensitivity
from analysis.sweep import SweepSpec
from app.sweeps import _sweep_store
from idlora_core.weights import open_weights

PAGE = str(Path(__file__).resolve().parents[2] / "app" / "views" / "decomposition_lab.py")
LAYER = "encoder.layer.0.attention.self.query"
STATE = dict(lab_ks=[1, 4], lab_ranks=[4, 8], lab_selections=["id", "centroid"], lab_seed=2)
SPEC = SweepSpec(ks=(1, 4), ranks=(4, 8), selections=("id", "centroid"), seed=2)

pytestmark = pytest.mark.usefixtures("one_blas_thread")


def _values(v) -> np.ndarray:
    """Plotly stores numeric arrays as base64 ("bdata") in the JSON spec."""
    if isinstance(v, dict) and "bdata" in v:
        shape = [int(n) for n in str(v.get("shape", "-1")).split(",")]  # e.g. "3, 3"
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=v["dtype"]).reshape(shape)
    return np.asarray(v, dtype=float)


def _charts(at: AppTest) -> dict[str, dict]:
    return {c.proto.id.rsplit("-", 1)[-1]: json.loads(c.proto.spec) for c in at.get("plotly_chart")}


def test_sensitivity_section_shows_ari_and_spread_of_the_analysis(empty_cache, settle):
    _sweep_store.clear()
    at = AppTest.from_file(PAGE, default_timeout=180)
    for key, value in STATE.items():
        at.session_state[key] = value
    at.run()
    settle(at.button(key="lab_run").click())
    assert not at.exception, at.exception
    # before its button: the section is a caption, no chart, no extra sweep in the cache
    assert at.number_input(key="lab_sens_seeds").value == 5
    assert not {"lab_sens_ari", "lab_sens_spread_chart"} & set(_charts(at))
    assert any("seeds 2–6" in c.value for c in at.caption)
    assert len(list((empty_cache / "results").rglob("*.json"))) == 1  # the page's own sweep only

    at.number_input(key="lab_sens_seeds").set_value(3).run()
    settle(at.button(key="lab_sens_run").click())
    assert not at.exception, at.exception
    assert len(list((empty_cache / "results").rglob("*.json"))) == 3  # seeds 3 and 4 added

    # the same numbers from the analysis functions (served from the same cache)
    W = open_weights("minilm").weight(LAYER)
    results = seed_sweeps(W, SPEC, [2, 3, 4], layer=LAYER, cache=True)
    assert all(r.from_cache for r in results.values())
    sens, spread = sweep_sensitivity(results, 4), spread_table(results)
    assert sens.mean_ari < 0.999  # the seeds do differ on this layer: a real comparison

    charts = _charts(at)
    ari = _values(charts["lab_sens_ari"]["data"][0]["z"])
    np.testing.assert_allclose(ari, sens.ari.to_numpy(), rtol=1e-12)
    assert charts["lab_sens_ari"]["data"][0]["x"] == ["2", "3", "4"]
    lines = {t["name"]: t for t in charts["lab_sens_spread_chart"]["data"]}
    id_line = lines["cluster-wise ID (id), mean ± std"]
    at_k = spread[(spread["k"] == 4) & (spread["selection"] == "id")].sort_values("r")
    np.testing.assert_allclose(_values(id_line["y"]), at_k["rel_error_mean"], rtol=1e-12)
    np.testing.assert_allclose(_values(id_line["error_y"]["array"]), at_k["rel_error_std"], rtol=1e-12)
    # ... and the std against numpy on the three sweeps' own errors
    errors = np.stack([r.table.query("k == 4 and selection == 'id'").sort_values("r")["rel_fro_error"]
                       for r in results.values()])
    np.testing.assert_allclose(at_k["rel_error_std"], np.std(errors, axis=0, ddof=1), rtol=1e-12)

    def table(column: str):  # the one table of the section with this column
        found = [d.value for d in at.dataframe if column in d.value.columns]
        assert len(found) == 1, column
        return found[0]

    shown = table("rel_error_std")
    assert sorted(shown["r"].unique()) == [4, 8] and set(shown["k"]) == {4}
    np.testing.assert_allclose(shown.sort_values(["selection", "r"])["rel_error_std"],
                               spread[spread["k"] == 4].sort_values(["selection", "r"])["rel_error_std"])
    per_seed = table("ari_vs_reference")
    assert per_seed["rows_moved"].tolist() == sens.per_seed()["rows_moved"].tolist()
    assert table("seeds_moved")["row"].tolist() == np.flatnonzero(sens.moved_rows).tolist()
    reading = " ".join(m.value for m in at.markdown if m.value.startswith("**Reading.**"))
    assert f"ARI {sens.mean_ari:.2f} on average over 3 k-means seeds at k = 4" in reading
    assert f"{sens.n_moved} of 384 rows" in reading
    lines = " ".join(m.value for m in at.markdown)
    for selection in ("id", "centroid"):  # one line per selection at the middle rank (r = 8)
        assert spread_reading(spread, 4, 8, selection) in lines
