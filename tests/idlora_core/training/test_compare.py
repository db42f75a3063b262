"""compare: rows from run folders, % of LoRA's budget, text / Markdown / CSV output, CLI."""

from __future__ import annotations

import csv
import json

import pytest

from idlora_core.compare import main
from idlora_core.training.compare import compare_runs, to_markdown


def fake_run(root, name, method, trainable, losses, evals, seconds=10.0):
    folder = root / name
    folder.mkdir()
    lines = [{"step": i + 1, "loss": loss, "trainable_params": trainable, "peak_memory_mb": 100.0 + i}
             for i, loss in enumerate(losses)]
    lines[-1].update(evals)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (folder / "run.json").write_text(json.dumps({
        "method": method, "state": "finished",
        "final_metrics": {"steps": len(losses), "trainable_params": trainable, "final_train_loss": losses[-1],
                          "train_seconds": seconds, "peak_memory_mb": 123.0, **evals},
    }))
    return folder


@pytest.fixture
def runs(tmp_path):
    return [
        fake_run(tmp_path, "a-idlora", "idlora", 4640, [2.0, 1.5], {"eval_loss": 1.4, "eval_code_exact_match": 0.25}),
        fake_run(tmp_path, "b-lora", "lora", 9216, [2.0, 1.2], {"eval_loss": 1.3, "eval_code_exact_match": 0.5}),
        fake_run(tmp_path, "c-full", "full", 331776, [2.0, 1.0], {"eval_loss": 1.1}),
    ]


def test_rows_and_percent_of_lora(runs):
    rows = compare_runs(runs)
    assert [r["method"] for r in rows] == ["idlora", "lora", "full"]
    assert rows[0]["pct_of_lora"] == pytest.approx(100 * 4640 / 9216)
    assert rows[1]["pct_of_lora"] == pytest.approx(100.0)
    assert rows[0]["final_train_loss"] == 1.5 and rows[0]["seconds"] == 10.0 and rows[0]["peak_memory_mb"] == 123.0
    assert rows[0]["eval_code_exact_match"] == 0.25 and "eval_code_exact_match" not in rows[2]


def test_markdown_and_csv_and_text(runs, tmp_path, capsys):
    md, out_csv = tmp_path / "t.md", tmp_path / "t.csv"
    assert main([str(r) for r in runs] + ["--csv", str(out_csv), "--markdown", str(md)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split()[:4] == ["run", "method", "state", "steps"] and len(printed) == 4
    table = md.read_text().splitlines()
    assert table[0].startswith("| run | method") and len(table) == 5 and "| 50.35 |" in table[2]
    with open(out_csv, newline="") as fh:
        data = list(csv.DictReader(fh))
    assert [d["method"] for d in data] == ["idlora", "lora", "full"]
    assert float(data[1]["eval_code_exact_match"]) == 0.5 and data[2]["eval_code_exact_match"] == ""
    assert to_markdown(compare_runs(runs)) == md.read_text()


def test_without_lora_and_bad_folder(tmp_path, capsys):
    only = fake_run(tmp_path, "x", "idlora", 10, [1.0], {})
    assert compare_runs([only])[0]["pct_of_lora"] is None
    assert main([str(tmp_path / "missing")]) == 1
    assert "not a run folder" in capsys.readouterr().err


# --- `--pair` on a study folder -------------------------------------------------------------

def fake_study(root, metric="eval_sentiment_accuracy"):
    """A real study folder (study.yaml, study.json, SQLite storage) whose trials are recorded
    with made-up final metrics instead of trained: {cell index: (cell, validation, test)}."""
    import numpy as np
    import optuna
    from optuna.distributions import CategoricalDistribution

    from idlora_core.study.config import parse_study
    from idlora_core.study.runner import prepare_study

    study = parse_study({"base": {"model": {"name": "minilm"},
                                  "adapter": {"method": "idlora", "targets": [{"pattern": "query", "r": 2, "k": 4}]},
                                  "tasks": [{"name": "sentiment", "num_train": 16, "num_eval": 16}],
                                  "train": {"steps": 2, "batch_size": 4, "seq_len": 24}},
                         "grid": {"method": ["idlora", "lora"], "r": [4, 8], "learning_rate": [0.01, 0.03],
                                  "seed": [0, 1, 2, 3]},
                         "metric": metric})
    out = root / "study"
    meta = prepare_study(study, out)
    storage = optuna.load_study(study_name=meta["name"], storage=meta["storage"])
    dist = {"cell": CategoricalDistribution(list(range(len(meta["cells"]))))}
    rng = np.random.default_rng(0)
    values = {}
    for i, cell in enumerate(meta["cells"]):
        good = (cell["method"], cell["learning_rate"]) in {("idlora", 0.03), ("lora", 0.01)}
        val = 0.7 + 0.1 * good + rng.normal(0, 0.01)
        test = 0.6 + 0.05 * good + 0.03 * (cell["method"] == "idlora") + 0.02 * cell["seed"] + rng.normal(0, 0.005)
        final = {metric: val, "test_sentiment_accuracy": test, "trainable_params": 100 * cell["r"]}
        storage.add_trial(optuna.trial.create_trial(
            params={"cell": i}, distributions=dist, value=val,
            user_attrs={"cell": i, "final": final, "run_state": "finished", "run_dir": f"runs/{i}"}))
        values[i] = (cell, val, test)
    return out, values


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    return fake_study(tmp_path_factory.mktemp("study"))


def test_pair_prints_the_paired_test_difference(study_dir, tmp_path, capsys):
    import numpy as np
    from scipy import stats

    out, values = study_dir
    table = tmp_path / "pair.csv"
    assert main([str(out), "--pair", "idlora:r8", "lora:r4", "--csv", str(table)]) == 0
    printed = capsys.readouterr().out
    # independent: each side's best learning rate on the validation mean, then test by seed
    sides = []
    for method, r in (("idlora", 8), ("lora", 4)):
        cells = [v for v in values.values() if v[0]["method"] == method and v[0]["r"] == r]
        lrs = sorted({c["learning_rate"] for c, _, _ in cells})
        best = max(lrs, key=lambda lr: np.mean([v for c, v, _ in cells if c["learning_rate"] == lr]))
        sides.append((best, {c["seed"]: t for c, _, t in cells if c["learning_rate"] == best}))
    (lr_a, a), (lr_b, b) = sides
    assert (lr_a, lr_b) == (0.03, 0.01)
    diff = np.array([a[s] - b[s] for s in range(4)])
    lo, hi = stats.ttest_rel([a[s] for s in range(4)], [b[s] for s in range(4)]).confidence_interval(0.95)
    assert "A: idlora:r8:k4 at learning rate 0.03" in printed and "B: lora:r4 at learning rate 0.01" in printed
    assert "metric: test_sentiment_accuracy" in printed and "paired seeds: 4" in printed
    assert f"mean difference A - B: {diff.mean():+.4g}, 95 % t-interval [{lo:+.4g}, {hi:+.4g}]" in printed
    assert "verdict: A is better" in printed and lo > 0
    rows = list(csv.DictReader(table.read_text().splitlines()))
    assert [int(r["seed"]) for r in rows] == [0, 1, 2, 3]
    assert [float(r["diff"]) for r in rows] == pytest.approx(diff.tolist(), rel=1e-9)


@pytest.mark.parametrize(("argv", "message"), [
    (["--pair", "idlora:r8", "lora:8"], "bad budget 'lora:8'"),
    (["--pair", "idlora", "lora:r4"], "matches 2 budgets"),
    (["--pair", "dora", "lora:r4"], "matches no budget"),
])
def test_pair_bad_budget_is_one_error_line(study_dir, capsys, argv, message):
    out, _ = study_dir
    assert main([str(out), *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_pair_needs_one_study_folder(runs, capsys):
    assert main([str(runs[0]), "--pair", "idlora", "lora"]) == 1
    assert capsys.readouterr().err.strip() == "error: --pair needs exactly one study folder (holding study.json)"


def test_final_test_metrics_are_shown(tmp_path, capsys):
    # test_* metrics are scored once, after training: only run.json's final_metrics holds them
    run = fake_run(tmp_path, "r", "lora", 9216, [0.7, 0.5],
                   {"eval_loss": 0.4, "eval_rotten_tomatoes_accuracy": 0.81})
    summary = json.loads((run / "run.json").read_text())
    summary["final_metrics"] |= {"test_loss": 0.45, "test_rotten_tomatoes_accuracy": 0.79}
    (run / "run.json").write_text(json.dumps(summary))
    (row,) = compare_runs([run])
    assert row["test_rotten_tomatoes_accuracy"] == 0.79 and row["test_loss"] == 0.45
    assert row["eval_rotten_tomatoes_accuracy"] == 0.81
    assert main([str(run)]) == 0
    header = capsys.readouterr().out.splitlines()[0].split()
    assert {"test_loss", "test_rotten_tomatoes_accuracy"} <= set(header)
