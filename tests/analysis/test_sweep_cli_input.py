"""Bad requests to `python -m analysis.sweep` fail in argparse, before any model loads or
sweep computes (issue 8 #9, #15): huge grid values, huge grids, unwritable outputs."""

from __future__ import annotations

import pytest

from analysis import sweep_cli
from analysis.sweep_cli import MAX_GRID, main, output_problem

LAYER = "encoder.layer.0.attention.self.query"


@pytest.fixture(autouse=True)
def _no_model(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model must not load for a bad request")

    monkeypatch.setattr(sweep_cli, "open_weights", refuse)


def _argparse_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err
    return err


@pytest.mark.parametrize("ks, expect", [
    ("1e21", "ks must be integers, got '1e21'"),
    (str(10**21), "ks must be at most 1,000,000"),
    ("2,x", "ks must be integers"),
    ("", "argument --ks: ks must"),
])
def test_bad_grid_values_are_argparse_errors(capsys, tmp_path, ks, expect):
    err = _argparse_error(capsys, ["--layer", LAYER, "--ks", ks, "--out", str(tmp_path / "a.csv")])
    assert expect in err and "usage:" in err


def test_huge_grid_needs_force(capsys, tmp_path):
    ks = ",".join(str(i) for i in range(1, 101))
    ranks = ",".join(str(i) for i in range(1, 51))  # 100 x 50 x 3 = 15,000 configurations
    err = _argparse_error(capsys, ["--layer", LAYER, "--ks", ks, "--ranks", ranks,
                                   "--out", str(tmp_path / "a.csv")])
    assert "15,000 configurations" in err and f"more than {MAX_GRID:,}" in err and "--force" in err


@pytest.mark.parametrize("flag", ["--out", "--clusters-out"])
def test_outputs_checked_before_the_sweep(capsys, tmp_path, flag):
    args = {"--out": str(tmp_path / "a.csv"), "--clusters-out": None}
    args[flag] = str(tmp_path)  # a folder
    argv = ["--layer", LAYER] + [x for k, v in args.items() if v for x in (k, v)]
    assert f"{flag} {tmp_path} is a folder" in _argparse_error(capsys, argv)
    args[flag] = "/proc/results.csv"  # read-only even for root
    argv = ["--layer", LAYER] + [x for k, v in args.items() if v for x in (k, v)]
    assert "cannot write there" in _argparse_error(capsys, argv)


def test_output_problem_accepts_new_nested_folders(tmp_path):
    assert output_problem(str(tmp_path / "new" / "deeper" / "a.csv"), "--out") is None
    assert not (tmp_path / "new").exists()  # checked, not created
    (tmp_path / "f").write_text("x")
    assert "is a file, not a folder" in output_problem(str(tmp_path / "f" / "a.csv"), "--out")
