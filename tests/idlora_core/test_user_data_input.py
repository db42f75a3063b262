"""User data files under careless input (issue 8 #12, #15): label types, too few examples,
non-UTF-8 bytes and several bad CSV lines, each reported with its line number."""

from __future__ import annotations

import json

import pytest

from idlora_core.config import TaskConfig
from idlora_core.tasks import DataFileError, load_task
from idlora_core.tasks.user_data import MIN_EXAMPLES, read_records


def _jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return str(path)


def test_number_labels_one_and_one_point_zero_are_one_class(tmp_path):
    rows = [{"text": f"t{i}", "label": [0, 1, 1.0, 0.0][i % 4]} for i in range(12)]
    task = load_task(TaskConfig(name="jsonl", path=_jsonl(tmp_path / "d.jsonl", rows)))
    assert task.num_labels == 2 and task.label_names == ["0", "1"]


def test_mixed_label_types_are_refused_with_line_numbers(tmp_path):
    rows = [{"text": "a", "label": 1}, {"text": "b", "label": "1"}, {"text": "c", "label": 1.0},
            {"text": "d", "label": True}, {"text": "e", "label": 0}]
    with pytest.raises(DataFileError) as info:
        load_task(TaskConfig(name="jsonl", path=_jsonl(tmp_path / "d.jsonl", rows)))
    errors = info.value.errors
    assert [e.split(":")[0] for e in errors] == ["line 2", "line 4"]
    assert "label '1' is text, but line 1 has a number label (1)" in errors[0]
    assert "label True is boolean" in errors[1]


def test_one_example_is_refused_with_the_minimum(tmp_path):
    path = _jsonl(tmp_path / "one.jsonl", [{"prompt": "q", "response": "a"}])
    with pytest.raises(DataFileError, match=f"at least {MIN_EXAMPLES} are needed"):
        load_task(TaskConfig(name="jsonl", path=path))
    two = _jsonl(tmp_path / "two.jsonl", [{"prompt": "q", "response": "a"}] * 2)
    task = load_task(TaskConfig(name="jsonl", path=two))
    assert len(task.train) == 1 and len(task.eval) == 1  # never an empty eval split


def test_non_utf8_lines_are_all_named(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"prompt": "a", "response": "b"}\n{"prompt": "caf\xe9", "response": "x"}\n'
                     b'{"prompt": "c", "response": "d"}\n{"prompt": "\xff", "response": "y"}\n')
    with pytest.raises(DataFileError) as info:
        read_records(path)
    assert [e.split(":")[0] for e in info.value.errors] == ["line 2", "line 4"]
    assert "not UTF-8 text (byte 0xe9" in info.value.errors[0]
    csv_path = tmp_path / "latin1.csv"
    csv_path.write_bytes(b"text,label\nok,1\ncaf\xe9,0\n")
    with pytest.raises(DataFileError) as info:
        read_records(csv_path)
    assert [e.split(":")[0] for e in info.value.errors] == ["line 3"]


def test_csv_reports_every_bad_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("text,label\nok,1\na,b,c\nfine,0\nx,y,z,w\n\"quoted, comma\",1\nlast\n")
    with pytest.raises(DataFileError) as info:
        read_records(path)
    errors = info.value.errors
    assert [e.split(":")[0] for e in errors] == ["line 3", "line 5", "line 7"]
    assert "3 fields, the header has 2" in errors[0]


def test_folder_and_deep_json(tmp_path):
    with pytest.raises(DataFileError, match="is a folder"):
        read_records(tmp_path)
    path = tmp_path / "deep.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n' + "[" * 100_000 + "\n")
    with pytest.raises(DataFileError) as info:
        read_records(path)
    assert info.value.errors[0].startswith("line 2:")


@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
def test_a_byte_order_mark_is_read_as_utf8(tmp_path, suffix):
    """Spreadsheet programs save 'CSV UTF-8' with a BOM; it was refused as key '\\ufefftext'."""
    path = tmp_path / f"bom.{suffix}"
    rows = [("bon film", "pos"), ("ennuyeux", "neg")] * 3
    if suffix == "csv":
        text = "text,label\n" + "".join(f"{t},{label}\n" for t, label in rows)
    else:
        text = "".join(json.dumps({"text": t, "label": label}) + "\n" for t, label in rows)
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    records, _ = read_records(path)
    assert [(r["text"], r["label"]) for r in records] == rows


def test_a_huge_text_is_refused_by_line_and_a_huge_file_before_reading(tmp_path, monkeypatch):
    from idlora_core.tasks import user_data

    rows = [{"text": "short", "label": 0}, {"text": "x" * (user_data.MAX_TEXT_CHARS + 1), "label": 1},
            {"text": "fine", "label": 1}]
    with pytest.raises(DataFileError) as info:
        read_records(_jsonl(tmp_path / "big.jsonl", rows))
    assert info.value.errors == [f"line 2: 'text' is {user_data.MAX_TEXT_CHARS + 1:,} characters; at "
                                 f"most {user_data.MAX_TEXT_CHARS:,} (a model reads only seq_len "
                                 "tokens): shorten or split it"]
    monkeypatch.setattr(user_data, "MAX_FILE_BYTES", 10)
    with pytest.raises(DataFileError, match="at most 10 bytes"):
        read_records(_jsonl(tmp_path / "ok.jsonl", rows[:1]))
