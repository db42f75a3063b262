"""Whole-model scan: equals per-layer sweeps, resumes from the cache, same on joblib and Dask."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import analysis.sweep as sweep_module
from analysis.scan import ProgressPrinter, main, scan
from analysis.sweep import COLUMNS, SweepSpec, sweep_layer
from idlora_core.weights import WeightReader

SPEC = SweepSpec([1, 2], [4, 8], ["id", "random"])


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, sharded_llama):
    return str(sharded_llama(tmp_path_factory.mktemp("scan") / "llama", "bf16", seed=3))


def errors(table: pd.DataFrame) -> pd.DataFrame:
    return table.drop(columns="seconds")


def test_scan_equals_per_layer_sweeps_and_reports_progress(ckpt, tmp_path):
    seen = []
    atlas = scan(ckpt, SPEC, cache_root=str(tmp_path),
                 progress=lambda d, t, layer, hit: seen.append((d, t, layer, hit)))
    reader = WeightReader(ckpt)
    names = list(reader.linear)
    assert list(atlas.columns) == COLUMNS and list(dict.fromkeys(atlas["layer"])) == names
    assert [s[0] for s in seen] == list(range(1, len(names) + 1)) and not any(s[3] for s in seen)
    for name in names:  # independent: the sweep of each layer on its own, no cache
        alone = sweep_layer(reader.weight(name), SPEC, layer=name).table
        pd.testing.assert_frame_equal(errors(atlas[atlas["layer"] == name].reset_index(drop=True)),
                                      errors(alone))


def test_resumed_scan_skips_cached_layers(ckpt, tmp_path, monkeypatch):
    first = scan(ckpt, SPEC, layers=r"\.0\.", cache_root=str(tmp_path))  # block 0 only, "stopped"
    real, swept = sweep_module._sweep, []
    monkeypatch.setattr(sweep_module, "_sweep",
                        lambda W, spec, layer, progress: swept.append(layer) or real(W, spec, layer, progress))
    hits = []
    full = scan(ckpt, SPEC, cache_root=str(tmp_path), progress=lambda d, t, n, hit: hits.append(hit))
    block0 = set(first["layer"])
    assert swept and not block0 & set(swept)  # only the missing layers were computed
    assert set(swept) | block0 == set(full["layer"]) and sum(hits) == len(block0)
    pd.testing.assert_frame_equal(errors(full[full["layer"].isin(block0)].reset_index(drop=True)),
                                  errors(first))


@pytest.mark.multiprocess
def test_joblib_path_equals_the_local_path(ckpt, tmp_path):
    local = scan(ckpt, SPEC, layers="mlp", cache_root=str(tmp_path / "a"))
    pooled = scan(ckpt, SPEC, layers="mlp", workers=2, cache_root=str(tmp_path / "b"))
    pd.testing.assert_frame_equal(errors(pooled), errors(local))
    assert list((tmp_path / "b" / "results").rglob("*.json"))  # the workers wrote the cache


@pytest.mark.slow  # a dask LocalCluster of 2 processes: about 10 s to start (tests/README.md)
@pytest.mark.multiprocess
def test_dask_path_equals_the_local_path(ckpt, tmp_path):
    from distributed import Client, LocalCluster

    local = scan(ckpt, SPEC, layers="mlp", cache_root=str(tmp_path / "a"))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        on_dask = scan(ckpt, SPEC, layers="mlp", dask=client, cache_root=str(tmp_path / "c"))
        assert len(client.scheduler_info()["workers"]) == 2
    pd.testing.assert_frame_equal(errors(on_dask), errors(local))
    assert list((tmp_path / "c" / "results").rglob("*.json"))  # the workers wrote the cache


def test_cli_writes_the_atlas_with_progress(ckpt, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("IDLORA_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "atlas.csv"
    assert main(["--model", ckpt, "--ks", "1,2", "--ranks", "4", "--selections", "id",
                 "--layers", "down_proj", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "[2/2] model.layers.1.mlp.down_proj (swept)" in captured.err and "ETA" in captured.err
    atlas = pd.read_csv(out)
    assert sorted(atlas["layer"].unique()) == ["model.layers.0.mlp.down_proj",
                                               "model.layers.1.mlp.down_proj"]
    assert main(["--model", ckpt, "--ranks", "4", "--layers", "down_proj", "--out", str(out),
                 "--ks", "1,2", "--selections", "id"]) == 0
    assert "(cached)" in capsys.readouterr().err
    assert main(["--model", ckpt, "--layers", "nothing_here", "--out", str(out)]) == 2
    assert "no linear layer matches" in capsys.readouterr().err
    assert main(["--model", ckpt, "--workers", "0", "--out", str(out)]) == 2
    assert "--workers must be >= 1" in capsys.readouterr().err


def test_progress_printer_eta_counts_only_computed_layers():
    import io

    stream = io.StringIO()
    printer = ProgressPrinter(stream)
    printer.start -= 10.0  # 10 s have passed
    printer(1, 5, "a", True)
    assert "ETA 0:00:00" in stream.getvalue()  # nothing computed yet: no estimate
    printer(2, 5, "b", False)
    eta = stream.getvalue().rsplit("ETA ", 1)[1]
    assert eta.strip() == "0:00:30"  # 10 s per computed layer, 3 to go
    assert np.isclose(printer.computed, 1)


def test_cli_checks_the_output_place_before_scanning(ckpt, tmp_path, capsys, monkeypatch):
    # --out onto a folder or into a place that cannot be written failed with a traceback
    # after the whole scan had run
    import analysis.scan as scan_module

    def no_scan(*args, **kwargs):
        raise AssertionError("the scan ran although --out cannot be written")

    monkeypatch.setattr(scan_module, "scan", no_scan)
    assert scan_module.main(["--model", ckpt, "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert scan_module.main(["--model", ckpt, "--out", str(blocker / "atlas.csv")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
