"""`python -m analysis.sweep` end to end on the real MiniLM, and its errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from analysis.sweep import COLUMNS
from analysis.sweep_cli import main
from idlora_core.layers import get_weight

LAYER = "encoder.layer.0.attention.self.query"


pytestmark = pytest.mark.usefixtures("one_blas_thread")  # tests/conftest.py


def lstsq_rel_error(W, labels, skeleton):
    total = 0.0
    for c, skel in enumerate(skeleton):
        block = W[labels == c]
        basis = W[skel].T
        X, *_ = np.linalg.lstsq(basis, block.T, rcond=None)
        total += np.linalg.norm(block.T - basis @ X) ** 2
    return np.sqrt(total) / np.linalg.norm(W)


def test_cli_writes_csv_and_json_that_recompute(minilm, tmp_path):
    out, clusters = tmp_path / "res" / "results.csv", tmp_path / "clusters.json"
    env = dict(os.environ, IDLORA_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.run(
        [sys.executable, "-m", "analysis.sweep", "--model", "minilm", "--layer", LAYER,
         "--ks", "1,2,4,8", "--ranks", "4,8,16,128", "--selections", "id,centroid,random",
         "--seed", "0", "--out", str(out), "--clusters-out", str(clusters)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "48 rows" in proc.stdout
    table = pd.read_csv(out)
    assert list(table.columns) == COLUMNS and len(table) == 4 * 4 * 3
    bad = table[~table["feasible"]]
    assert sorted(set(zip(bad["k"], bad["r"], strict=True))) == [(4, 128), (8, 128)]
    assert bad["rel_fro_error"].isna().all()
    doc = json.loads(clusters.read_text())
    assert doc["layer"] == LAYER and [c["k"] for c in doc["clusterings"]] == [1, 2, 4, 8]
    W = get_weight(minilm.model, LAYER)
    rows = table.set_index(["k", "r", "selection"])
    checked = 0
    for clustering in doc["clusterings"]:
        labels = np.asarray(clustering["labels"])
        assert labels.shape == (384,) and set(labels) == set(range(clustering["k"]))
        for sel in clustering["selections"]:
            expected = rows.loc[(clustering["k"], sel["r"], sel["selection"]), "rel_fro_error"]
            assert lstsq_rel_error(W, labels, sel["skeleton"]) == pytest.approx(expected, rel=1e-8)
            checked += 1
    assert checked == int(table["feasible"].sum()) == 42
    assert list((tmp_path / "cache" / "results").rglob("*.json"))  # cached in the chosen folder


def test_cli_list_layers_and_errors(minilm, tmp_path, capsys, empty_cache):
    assert main(["--list-layers"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 37 and lines[4].split("\t") == [
        "encoder.layer.0.intermediate.dense", "1536 x 384", str(1536 * 384 + 1536)]
    assert main(["--model", "no-such-model", "--list-layers"]) == 2
    err = capsys.readouterr().err
    assert "minilm" in err and "smollm2-135m" in err and len(err.strip().splitlines()) == 1
    assert main(["--model", str(tmp_path / "missing"), "--list-layers"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["--model", "/etc/passwd", "--list-layers"]) == 2
    assert "/etc/passwd is a file, not a model directory" in capsys.readouterr().err
    assert main(["--layer", "encoder.layer.0.attention.self.qury", "--out", str(tmp_path / "x.csv")]) == 2
    assert "close matches: encoder.layer.0.attention.self.query" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:  # an argparse error, before the model loads
        main(["--layer", LAYER, "--ks", "0", "--out", str(tmp_path / "x.csv")])
    assert info.value.code == 2 and "ks must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()
    with pytest.raises(SystemExit):
        main(["--layer", LAYER])  # --out missing


def test_cli_second_run_served_from_cache(minilm, tmp_path, capsys, empty_cache):
    args = ["--layer", LAYER, "--ks", "2", "--ranks", "8", "--out", str(tmp_path / "a.csv")]
    assert not (empty_cache / "results").exists()
    assert main(args) == 0 and "from cache" not in capsys.readouterr().out
    (entry,) = (empty_cache / "results").rglob("*.json")  # written by this run, in this test's cache
    assert main(args) == 0 and "from cache" in capsys.readouterr().out
    assert main(args + ["--no-cache"]) == 0 and "from cache" not in capsys.readouterr().out
