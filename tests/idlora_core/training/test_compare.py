"""compare: rows from run folders, % of LoRA's budget, text / Markdown / CSV output, CLI."""

from __future__ import annotations

import csv
import json

import pytest

from idlora_core.training.compare import compare_runs, main, to_markdown


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
