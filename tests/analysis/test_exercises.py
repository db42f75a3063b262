"""The lab exercises: one YAML source for the handout (docs/LAB.md) and the app's presets;
every number the handout quotes is recomputed from the preset's own sweep."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis import exercises as ex_mod
from analysis.exercises import (
    HANDOUT,
    load_exercises,
    measure,
    measure_all,
    render_section,
    replace_section,
    same,
)

# One torch / BLAS thread: the presets' sweeps are many small factorisations (tests/conftest.py;
# on a busy 2-core machine 10.7 s with one thread against 18.5 s with two).
pytestmark = pytest.mark.usefixtures("one_thread")


def test_handout_sections_are_generated_from_the_yaml():
    exercises = load_exercises()
    assert [e.id for e in exercises if e.handout] == [1, 2, 3]  # exercise 4: a preset only
    text = HANDOUT.read_text(encoding="utf-8")
    assert replace_section(text, exercises) == text, (
        "docs/LAB.md differs from analysis/exercises.yaml: run "
        "`python -m analysis.exercises --write docs/LAB.md`")
    section = render_section(exercises)
    assert "0.624" in section and "35 of the 36 layers" in section and "{" not in section
    assert "## Exercise 4" in text  # the rest of the handout is kept


def test_every_preset_names_its_sweep_and_every_number_has_a_check():
    for ex in load_exercises():
        if "lab_ks" in ex.settings:
            params = ex_mod.sweep_params(ex.settings)
            assert params["ks"] and params["ranks"] and params["selections"]
        for part in ("intro", "steps", "observe", "questions"):
            ex.text(part)  # KeyError when a placeholder has no check


def _table() -> pd.DataFrame:
    rows = []
    for layer, fro, svd, total in (("a", 0.5, 0.7, 0.3), ("b", 0.9, 0.8, 0.4), ("c", 0.6, 0.65, 0.2)):
        rows.append(dict(layer=layer, k=8, r=16, selection="id", feasible=True, rel_fro_error=fro,
                         svd_same_r=svd, svd_same_total=total, bound_cluster=2.0, bound_global=5.0))
    return pd.DataFrame(rows)


@pytest.mark.parametrize(("check", "expected"), [
    ({"kind": "layers"}, 3),
    ({"kind": "cell", "layer": "b", "column": "rel_fro_error", "digits": 2}, 0.9),
    ({"kind": "gain", "layer": "a", "digits": 3}, 0.2),
    ({"kind": "gain", "layer": "b", "digits": 3}, -0.1),
    ({"kind": "wins", "column": "svd_same_r"}, 2),
    ({"kind": "wins", "column": "svd_same_total"}, 0),
    ({"kind": "losses"}, "b"),
    ({"kind": "best"}, "a"),
    ({"kind": "mean", "column": "rel_fro_error", "digits": 4}, round((0.5 + 0.9 + 0.6) / 3, 4)),
    ({"kind": "ratio", "layer": "c", "column": "bound_global", "over": "bound_cluster", "digits": 1}, 2.5),
])
def test_measure_kinds_on_a_small_table(check, expected):
    check = {"k": 8, "r": 16, "selection": "id"} | check
    assert same(measure(check, _table()), expected)
    if isinstance(expected, float):
        assert not same(measure(check, _table()), expected + 0.001)


def test_each_preset_reproduces_the_numbers_the_handout_quotes():
    from idlora_core.weights import open_weights

    exercises = load_exercises()
    weights = open_weights("minilm")
    measured = measure_all(exercises, weights)
    by_id = {e.id: e for e in exercises}
    wrong = {key: (value, by_id[key[0]].checks[key[1]]["value"]) for key, value in measured.items()
             if not same(value, by_id[key[0]].checks[key[1]]["value"])}
    assert not wrong, f"measured vs quoted: {wrong}"
    assert len(measured) == sum(len(e.checks) for e in exercises) >= 40
    # an independent check of one quoted number: global SVD at rank 16 from numpy
    s = np.linalg.svd(weights.weight("encoder.layer.0.attention.self.query").astype(np.float64),
                      compute_uv=False)
    assert round(float(np.sqrt(np.sum(s[16:] ** 2) / np.sum(s**2))), 3) == \
        by_id[1].checks["q0_svd"]["value"]
