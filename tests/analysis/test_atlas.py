"""The layer atlas grids against the scan table they summarise."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis.atlas import atlas_cells, atlas_grid, read_atlas
from analysis.sweep import SweepSpec, sweep_layer


@pytest.fixture(scope="module")
def table():
    rng = np.random.default_rng(0)
    frames = []
    for name, shape in [("model.layers.0.self_attn.q_proj", (32, 16)),
                        ("model.layers.0.mlp.down_proj", (16, 40)),
                        ("model.layers.1.self_attn.q_proj", (32, 16))]:
        W = rng.standard_normal(shape) @ np.diag(np.linspace(3, 0.1, shape[1]))
        frames.append(sweep_layer(W, SweepSpec([1, 2], [2, 4], ["id", "random"]), layer=name).table)
    return pd.concat(frames, ignore_index=True)


def test_grid_holds_each_layers_best_at_r(table):
    gain = atlas_grid(table, 4, "gain")
    gap = atlas_grid(table, 4, "gap")
    assert list(gain.index) == [0, 1] and list(gain.columns) == ["q", "down"]  # attention first
    assert np.isnan(gain.loc[1, "down"])  # block 1 has no down_proj in this table
    for (block, kind), name in {(0, "q"): "model.layers.0.self_attn.q_proj",
                                (0, "down"): "model.layers.0.mlp.down_proj",
                                (1, "q"): "model.layers.1.self_attn.q_proj"}.items():
        rows = table[(table["layer"] == name) & (table["r"] == 4) & table["feasible"]]
        best = rows.loc[rows["rel_fro_error"].idxmin()]  # independent: straight from the table
        assert gain.loc[block, kind] == pytest.approx(best["svd_same_r"] - best["rel_fro_error"])
        assert gap.loc[block, kind] == pytest.approx(best["rel_fro_error"] - best["svd_same_total"])
        assert gap.loc[block, kind] >= -1e-12  # Eckart-Young
    cells = atlas_cells(table, 2)
    assert set(cells["layer"]) == set(table["layer"]) and (cells["block"] >= 0).all()
    with pytest.raises(ValueError, match="measure must be one of"):
        atlas_grid(table, 4, "ratio")


def test_read_atlas_round_trip_and_error(table, tmp_path):
    path = tmp_path / "atlas.csv"
    table.to_csv(path, index=False)
    back = read_atlas(path)
    pd.testing.assert_frame_equal(back.drop(columns="seconds"), table.drop(columns="seconds"),
                                  check_exact=False, rtol=1e-12)
    pd.DataFrame({"a": [1]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match="not a scan table: missing columns layer"):
        read_atlas(path)


def test_read_atlas_refuses_devices_folders_and_huge_files_before_reading(tmp_path, monkeypatch):
    # The atlas page passes a typed server path: /dev/zero must not hang the server, a huge
    # file must not be parsed into memory.
    import analysis.atlas as atlas

    def no_parse(*args, **kwargs):
        raise AssertionError("read_csv ran on a path that should have been refused")

    for bad in ("/dev/zero", str(tmp_path)):
        monkeypatch.setattr(atlas.pd, "read_csv", no_parse)
        with pytest.raises(ValueError, match="is not a file"):
            read_atlas(bad)
    big = tmp_path / "big.csv"
    with open(big, "wb") as f:  # sparse: no disk used
        f.truncate(atlas.MAX_ATLAS_BYTES + 1)
    with pytest.raises(ValueError, match="a scan CSV is at most"):
        read_atlas(big)


@pytest.mark.parametrize("column, value", [("r", "1" + "0" * 30), ("k", "four")])
def test_read_atlas_refuses_values_that_do_not_fit_their_column(table, tmp_path, column, value):
    """Issue 18 #10: r = 10^30 raised OverflowError through the page."""
    path = tmp_path / "atlas.csv"
    bad = table.astype({column: object})
    bad.loc[0, column] = value
    bad.to_csv(path, index=False)
    with pytest.raises(ValueError, match="not a scan table: a value does not fit its column"):
        read_atlas(path)
