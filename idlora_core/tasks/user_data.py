"""User data: JSONL (`prompt`/`response` or `text`/`label`) and CSV with the same columns.

Every malformed line is reported with its line number in one DataFileError (bad bytes,
bad JSON, wrong CSV field counts, missing keys, mixed label types); nothing is silently
dropped. Labels 1 and 1.0 are one class; a file mixing text, number and boolean labels is
refused. Examples are shuffled with the seed and split into train / eval (at least one each).
"""

from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path

from .base import Example, TaskData
from .metrics import accuracy_score, exact_match, mean

_LM_KEYS = ("prompt", "response")
_CLS_KEYS = ("text", "label")
MIN_EXAMPLES = 2  # one to train on, one to evaluate
# A model reads at most seq_len tokens of a text; a 99 MB one-line text took the tokenizer to
# 10 GB and an abort. Longer texts are refused by line, larger files before they are read.
MAX_TEXT_CHARS = 100_000
MAX_FILE_BYTES = 1 << 30


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
        elif isinstance(value, str) and len(value) > MAX_TEXT_CHARS:
            problems.append(f"{key!r} is {len(value):,} characters; at most {MAX_TEXT_CHARS:,} "
                            "(a model reads only seq_len tokens): shorten or split it")
        elif key == "label" and not isinstance(value, (str, int, float)):
            problems.append(f"'label' must be text or a number, got {type(value).__name__}")
    extra = sorted(set(record) - set(layout))
    if extra:
        problems.append(f"unexpected key(s) {extra}; expected exactly {list(layout)}")
    return problems, layout


def read_records(path: str | Path) -> tuple[list[dict], tuple[str, str]]:
    """Return (records, layout) from a .jsonl/.json-lines or .csv file; raises DataFileError."""
    path = Path(path)
    if path.is_dir():
        raise DataFileError(path, [f"{path} is a folder, not a data file"])
    if not path.is_file():
        raise DataFileError(path, [f"file not found: {path}"])
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise DataFileError(path, [f"{path} is {size:,} bytes; a data file is at most "
                                   f"{MAX_FILE_BYTES:,} bytes: use a sample of it"])
    try:
        text, errors = _decode_lines(path.read_bytes())
    except OSError as exc:
        raise DataFileError(path, [f"cannot read the file: {exc.strerror or exc}"]) from None
    if path.suffix.lower() == ".csv":
        rows = _csv_rows(text, errors)
    else:
        rows = _jsonl_rows(text, errors)
    layout: tuple[str, str] | None = None
    records, numbers = [], []
    for number, record in rows:
        problems, layout = _record_errors(record, layout)
        errors.extend(f"line {number}: {p}" for p in problems)
        if not problems:
            records.append(record)
            numbers.append(number)
    if layout == _CLS_KEYS:
        errors += _normalise_labels(records, numbers)
    if errors:
        raise DataFileError(path, sorted(errors, key=_line_of))
    if not records:
        raise DataFileError(path, ["no examples in the file"])
    return records, layout or _LM_KEYS


def _line_of(error: str) -> int:
    head = error.split(":", 1)[0]
    return int(head[5:]) if head.startswith("line ") and head[5:].isdigit() else 0


def _decode_lines(data: bytes) -> tuple[str, list[str]]:
    """Return (text, errors): UTF-8 text (a leading byte-order mark, as spreadsheet programs write
    it, is dropped) with every undecodable line reported by number."""
    data = data.removeprefix(b"\xef\xbb\xbf")
    try:
        return data.decode("utf-8"), []
    except UnicodeDecodeError:
        pass
    lines, errors = [], []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            errors.append(f"line {number}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at "
                          f"column {exc.start + 1}); save the file as UTF-8")
            lines.append("")
    return "\n".join(lines), errors


def _jsonl_rows(text: str, errors: list[str]) -> list[tuple[int, object]]:
    rows: list[tuple[int, object]] = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            rows.append((number, json.loads(line)))
        except json.JSONDecodeError as exc:
            errors.append(f"line {number}: not valid JSON ({exc.msg} at column {exc.colno})")
        except RecursionError:
            errors.append(f"line {number}: JSON nested too deeply")
    return rows


def _csv_rows(text: str, errors: list[str]) -> list[tuple[int, object]]:
    """Return (line, record) per CSV row; every row with the wrong number of fields is reported."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            return []
        header = [h.strip() for h in header]
        rows: list[tuple[int, object]] = []
        start = reader.line_num + 1
        for fields in reader:
            if not any(f.strip() for f in fields):
                start = reader.line_num + 1
                continue
            if len(fields) != len(header):
                errors.append(f"line {start}: {len(fields)} fields, the header has {len(header)} "
                              f"({', '.join(header)}); quote values that contain commas")
            else:
                rows.append((start, {k: (v if v != "" else None) for k, v in zip(header, fields, strict=True)}))
            start = reader.line_num + 1
    except csv.Error as exc:
        errors.append(f"line {reader.line_num}: not readable CSV ({exc})")
        return []
    return rows


def _label_kind(value: object) -> str:
    return "boolean" if isinstance(value, bool) else (
        "number" if isinstance(value, (int, float)) else "text")


def _normalise_labels(records: list[dict], numbers: list[int]) -> list[str]:
    """Make number labels canonical (1 and 1.0 are one class); return one error per line whose
    label type (text, number, boolean) differs from the first record's."""
    if not records:
        return []
    first = _label_kind(records[0]["label"])
    errors = []
    for record, number in zip(records, numbers, strict=True):
        value = record["label"]
        kind = _label_kind(value)
        if kind != first:
            errors.append(f"line {number}: label {value!r} is {kind}, but line {numbers[0]} "
                          f"has a {first} label ({records[0]['label']!r}); use one type for "
                          "every label")
        elif isinstance(value, float) and value.is_integer():
            record["label"] = int(value)
    return errors


def build(path: str | Path, num_train: int, num_eval: int, seed: int, name: str = "user",
          num_test: int = 0) -> TaskData:
    """Return a task from a user file: a seeded shuffle, eval = up to `num_eval` (at most 1/5,
    at least 1) examples, test = the next up to `num_test` (at most 1/5), train = the rest;
    raises DataFileError for fewer than MIN_EXAMPLES examples."""
    records, layout = read_records(path)
    if len(records) < MIN_EXAMPLES:
        raise DataFileError(path, [
            f"{len(records)} example(s); at least {MIN_EXAMPLES} are needed (one or more to "
            "train on and at least one held out for evaluation)"])
    rng = random.Random(f"{seed}-user")
    rng.shuffle(records)
    n_eval = min(num_eval, max(1, len(records) // 5))
    n_test = min(num_test, len(records) // 5)
    eval_records, test_records = records[:n_eval], records[n_eval:n_eval + n_test]
    train_records = records[n_eval + n_test:][:num_train]
    source = f"user file {Path(path).name}"
    if layout == _LM_KEYS:
        train = [Example(prompt=str(r["prompt"]), response=str(r["response"])) for r in train_records]
        evaluation = [Example(prompt=str(r["prompt"]), response=str(r["response"])) for r in eval_records]
        test = [Example(prompt=str(r["prompt"]), response=str(r["response"])) for r in test_records]

        def score_lm(predictions: list[str], examples: list[Example]) -> dict[str, float]:
            return {"exact_match": mean([exact_match(p, e.response) for p, e in zip(predictions, examples, strict=True)])}

        return TaskData(name, "causal-lm", train, evaluation, score_lm, max_new_tokens=32, test=test,
                        source=source)
    names = sorted({str(r["label"]) for r in records})
    ids = {label: i for i, label in enumerate(names)}

    def to_cls(rs: list[dict]) -> list[Example]:
        return [Example(prompt=str(r["text"]), label=ids[str(r["label"])]) for r in rs]

    return TaskData(name, "classification", to_cls(train_records), to_cls(eval_records), accuracy_score,
                    num_labels=len(names), label_names=names, test=to_cls(test_records), source=source)
