"""User data: JSONL (`prompt`/`response` or `text`/`label`) and CSV with the same columns.

Every malformed line is reported with its line number in one DataFileError; nothing is
silently dropped. Examples are shuffled with the seed and split into train / eval.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from .base import Example, TaskData
from .metrics import accuracy, exact_match, mean

_LM_KEYS = ("prompt", "response")
_CLS_KEYS = ("text", "label")


class DataFileError(ValueError):
    """A user data file with problems; `errors` holds one 'line N: ...' string per problem."""

    def __init__(self, path: str | Path, errors: list[str]):
        self.path, self.errors = str(path), errors
        shown = errors[:20] + ([f"... and {len(errors) - 20} more"] if len(errors) > 20 else [])
        super().__init__(f"{path}: {len(errors)} malformed line(s):\n" + "\n".join(f"  {e}" for e in shown))


def _record_errors(record: object, layout: tuple[str, str] | None) -> tuple[list[str], tuple[str, str] | None]:
    """Return (problems, layout) for one parsed record; the first good record fixes the layout."""
    if not isinstance(record, dict):
        return [f"expected an object with keys {_LM_KEYS} or {_CLS_KEYS}, got {type(record).__name__}"], layout
    if layout is None:
        layout = _LM_KEYS if "prompt" in record or "response" in record else _CLS_KEYS
    problems = []
    for key in layout:
        value = record.get(key)
        if value is None or (isinstance(value, float) and value != value) or value == "":
            problems.append(f"missing or empty {key!r}")
        elif key in ("prompt", "response", "text") and not isinstance(value, str):
            problems.append(f"{key!r} must be text, got {type(value).__name__}")
    extra = sorted(set(record) - set(layout))
    if extra:
        problems.append(f"unexpected key(s) {extra}; expected exactly {list(layout)}")
    return problems, layout


def read_records(path: str | Path) -> tuple[list[dict], tuple[str, str]]:
    """Return (records, layout) from a .jsonl/.json-lines or .csv file; raises DataFileError."""
    path = Path(path)
    if not path.is_file():
        raise DataFileError(path, [f"file not found: {path}"])
    rows: list[tuple[int, object]] = []
    errors: list[str] = []
    if path.suffix.lower() == ".csv":
        import pandas as pd

        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, on_bad_lines="error")
        except (pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise DataFileError(path, [f"not a readable CSV: {exc}"]) from None
        for index, row in enumerate(frame.to_dict(orient="records")):
            rows.append((index + 2, {k: (v if v != "" else None) for k, v in row.items()}))  # line 1 = header
    else:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append((number, json.loads(line)))
            except json.JSONDecodeError as exc:
                errors.append(f"line {number}: not valid JSON ({exc.msg} at column {exc.colno})")
    layout: tuple[str, str] | None = None
    records = []
    for number, record in rows:
        problems, layout = _record_errors(record, layout)
        errors.extend(f"line {number}: {p}" for p in problems)
        if not problems:
            records.append(record)
    if errors:
        raise DataFileError(path, errors)
    if not records:
        raise DataFileError(path, ["no examples in the file"])
    return records, layout or _LM_KEYS


def build(path: str | Path, num_train: int, num_eval: int, seed: int, name: str = "user") -> TaskData:
    """Return a task from a user file: a seeded shuffle, eval = up to `num_eval` (at most 1/5) examples."""
    records, layout = read_records(path)
    rng = random.Random(f"{seed}-user")
    rng.shuffle(records)
    n_eval = min(num_eval, max(1, len(records) // 5)) if len(records) > 1 else 0
    eval_records, train_records = records[:n_eval], records[n_eval:][:num_train]
    if layout == _LM_KEYS:
        train = [Example(prompt=str(r["prompt"]), response=str(r["response"])) for r in train_records]
        evaluation = [Example(prompt=str(r["prompt"]), response=str(r["response"])) for r in eval_records]

        def score_lm(predictions: list[str], examples: list[Example]) -> dict[str, float]:
            return {"exact_match": mean([exact_match(p, e.response) for p, e in zip(predictions, examples, strict=True)])}

        return TaskData(name, "causal-lm", train, evaluation, score_lm, max_new_tokens=32)
    names = sorted({str(r["label"]) for r in records})
    ids = {label: i for i, label in enumerate(names)}

    def to_cls(rs: list[dict]) -> list[Example]:
        return [Example(prompt=str(r["text"]), label=ids[str(r["label"])]) for r in rs]

    def score_cls(predictions: list[int], examples: list[Example]) -> dict[str, float]:
        return {"accuracy": accuracy(predictions, [e.label for e in examples])}

    return TaskData(name, "classification", to_cls(train_records), to_cls(eval_records), score_cls,
                    num_labels=len(names), label_names=names)
