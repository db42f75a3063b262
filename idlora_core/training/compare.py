"""Compare finished runs: one table row per run (`python -m idlora_core.compare` prints it).

One row per run: method, trainable params, % of LoRA's (the first LoRA run given), final
train loss, seconds, peak memory, final validation (eval_*) and test (test_*) metrics.
Reads run.json and metrics.jsonl only.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from idlora_core.training.run_files import RUN_FILE, read_metrics, read_run_json

BASE_COLUMNS = ["run", "method", "state", "steps", "trainable_params", "pct_of_lora", "final_train_loss",
                "seconds", "peak_memory_mb"]


def run_row(run_dir: str | Path) -> dict[str, Any]:
    """Return the comparison row of one run folder (ValueError when it holds no run)."""
    run_dir = Path(run_dir)
    summary_path = run_dir / RUN_FILE
    rows = read_metrics(run_dir)
    if not summary_path.is_file() and not rows:
        raise ValueError(f"{run_dir} is not a run folder (no {RUN_FILE} nor metrics.jsonl)")
    summary = read_run_json(run_dir)
    final = summary.get("final_metrics") or {}
    train_rows = [r for r in rows if r.get("loss") is not None]
    last = train_rows[-1] if train_rows else {}
    row: dict[str, Any] = {
        "run": run_dir.name,
        "method": summary.get("method", "?"),
        "state": summary.get("state", "unknown"),
        "steps": final.get("steps", last.get("step")),
        "trainable_params": final.get("trainable_params", last.get("trainable_params")),
        "pct_of_lora": None,
        "final_train_loss": final.get("final_train_loss", last.get("loss")),
        "seconds": final.get("train_seconds"),
        "peak_memory_mb": final.get("peak_memory_mb", last.get("peak_memory_mb")),
    }
    evals = {k: v for r in rows for k, v in r.items() if k.startswith("eval_")}  # latest value wins
    evals.update({k: v for k, v in final.items() if k.startswith(("eval_", "test_"))})
    row.update(sorted(evals.items()))
    return row


def compare_runs(run_dirs: list[str | Path]) -> list[dict[str, Any]]:
    """Return one row per run, with pct_of_lora = trainable / trainable of the first LoRA run (in %)."""
    rows = [run_row(d) for d in run_dirs]
    lora = next((r["trainable_params"] for r in rows if r["method"] == "lora" and r["trainable_params"]), None)
    for r in rows:
        if lora and r["trainable_params"] is not None:
            r["pct_of_lora"] = 100.0 * r["trainable_params"] / lora
    return rows


def columns(rows: list[dict[str, Any]]) -> list[str]:
    """Return the table columns: the fixed ones, then every eval / test metric seen, sorted."""
    extra = sorted({k for r in rows for k in r if k not in BASE_COLUMNS})
    return BASE_COLUMNS + extra


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def to_markdown(rows: list[dict[str, Any]]) -> str:
    """Return the rows as a GitHub Markdown table."""
    cols = columns(rows)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(" --- " for _ in cols) + "|"]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def to_text(rows: list[dict[str, Any]]) -> str:
    """Return the rows as an aligned plain-text table."""
    cols = columns(rows)
    cells = [cols] + [[_fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells) + "\n"


def write_csv(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Write the rows to a CSV file at `path` and return the path."""
    path = Path(path)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns(rows))
        writer.writeheader()
        writer.writerows({c: r.get(c) for c in columns(rows)} for r in rows)
    return path
