"""Exercise 4's numbers in LAB.md equal what produces them: the trainable counts are the budget
formulas on MiniLM's 12 query / value layers plus the classification head, and the test table
is the measured preset (a) summary of STUDIES.md, row by row."""

from __future__ import annotations

import re
from pathlib import Path

from idlora_core.adapters.budget import trainable_params

DOCS = Path(__file__).resolve().parents[1] / "docs"
HEAD = 384 * 2 + 2  # MiniLM's pooler-free classifier: 384 x 2 weights + 2 biases
LAYERS = 12  # query and value of 6 blocks, 384 x 384 each


def _lab_table() -> dict[str, tuple[int, str]]:
    text = (DOCS / "LAB.md").read_text(encoding="utf-8")
    part = text[text.index("**What the full study showed**"):]
    part = part[part.index("| budget | trainable"):]
    rows = {}
    for line in part.splitlines()[2:]:
        if not line.startswith("|"):
            break
        name, trainable, _lr, test = (c.strip() for c in line.strip("|").split("|"))
        rows[name] = (int(trainable.replace(",", "")), test)
    return rows


def _studies_table() -> dict[tuple[str, str], tuple[int, str]]:
    text = (DOCS / "STUDIES.md").read_text(encoding="utf-8")
    start = text.index("| method | r | k | trainable | best lr (validation)")
    rows = {}
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[(cells[0], cells[1])] = (int(cells[3].replace(",", "")), cells[6].strip("*"))
    return rows


def test_exercise_4_trainable_counts_are_the_budget_formulas():
    lab = _lab_table()
    expected = {
        "ID-LoRA `r=8, k=4`": LAYERS * trainable_params("idlora", 384, 384, 8, k=4) + HEAD,
        "LoRA `r=4`": LAYERS * trainable_params("lora", 384, 384, 4) + HEAD,
        "LoRA `r=8`": LAYERS * trainable_params("lora", 384, 384, 8) + HEAD,
        "head-only": HEAD,
        "base": 0,
    }
    assert {name: count for name, (count, _) in lab.items()} == expected


def test_exercise_4_test_table_is_the_measured_study_summary():
    lab, study = _lab_table(), _studies_table()
    keys = {"ID-LoRA `r=8, k=4`": ("idlora", "8"), "LoRA `r=4`": ("lora", "4"), "LoRA `r=8`": ("lora", "8"),
            "head-only": ("head-only", ""), "base": ("base", "")}
    assert set(lab) == set(keys)
    for name, key in keys.items():
        assert lab[name] == study[key], name
        assert re.fullmatch(r"0\.\d{3} \[0\.\d{3}, 0\.\d{3}\]", lab[name][1]), name
