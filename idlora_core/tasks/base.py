"""The data types every task shares: one example, one task's splits and its metric.

A causal-LM example is a (prompt, response) pair; a classification example is a
text with an integer label. Every task has three disjoint splits: `train`, `eval` (the
validation split: it chooses hyper-parameters) and `test` (scored once at the end of a run,
never used to choose anything). This file holds no task content and no tokenisation.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

TaskKind = Literal["causal-lm", "classification"]


@dataclass(frozen=True)
class Example:
    """One example: `prompt` + `response` (causal LM) or `prompt` as text + `label` (classification)."""

    prompt: str
    response: str = ""
    label: int | None = None
    meta: dict = field(default_factory=dict, compare=False, hash=False)


@dataclass
class TaskData:
    """A task ready for training: its splits, kind and metric.

    `eval` is the validation split, `test` the held-out test split (empty when none was asked).
    `score(predictions, examples)` returns a dict of metric name -> value in [0, 1];
    predictions are generated strings (causal LM) or predicted label ids (classification).
    `source` names where the examples come from (a generator, a file, a packaged dataset).
    """

    name: str
    kind: TaskKind
    train: list[Example]
    eval: list[Example]
    score: Callable[[list, list[Example]], dict[str, float]]
    max_new_tokens: int = 16
    num_labels: int = 0
    label_names: list[str] = field(default_factory=list)
    test: list[Example] = field(default_factory=list)
    source: str = ""

    def split(self, name: str) -> list[Example]:
        """Return the examples of split `name`: 'train', 'eval' (validation) or 'test'."""
        if name not in ("train", "eval", "test"):
            raise ValueError(f"split must be 'train', 'eval' or 'test', got {name!r}")
        return getattr(self, name)

    def split_hashes(self) -> dict[str, dict[str, int | str]]:
        """Return {split: {'n': examples, 'sha256': hash of the examples in order}} for the
        train, validation and test splits (what run.json records, so two runs can be shown to
        have seen the same data)."""
        return {name: {"n": len(self.split(name)), "sha256": examples_hash(self.split(name))}
                for name in ("train", "eval", "test")}


def example_key(example: Example) -> str:
    """Return the text that identifies an example (prompt, response and label)."""
    return f"{example.prompt}\x1f{example.response}\x1f{example.label}"


def examples_hash(examples: list[Example]) -> str:
    """Return the hex SHA-256 of the examples' keys, in order."""
    digest = hashlib.sha256()
    for example in examples:
        digest.update(hashlib.sha256(example_key(example).encode("utf-8")).digest())
    return digest.hexdigest()


_CHECK: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar(
    "idlora_generation_check", default=None)


@contextlib.contextmanager
def polling(check: Callable[[], None] | None) -> Iterator[None]:
    """Within the block, example generation calls `check()` every 4096 draws; whatever it raises
    (a stop request) ends the generation."""
    token = _CHECK.set(check)
    try:
        yield
    finally:
        _CHECK.reset(token)


def _draw_distinct(make: Callable[[random.Random], Example], rng: random.Random, count: int,
                   seen: set[str], max_tries: int) -> list[Example]:
    """Return up to `count` examples whose prompts are not in `seen` (which is updated)."""
    drawn: list[Example] = []
    for _ in range(count * max_tries):
        if len(drawn) == count:
            break
        ex = make(rng)
        if ex.prompt not in seen:
            seen.add(ex.prompt)
            drawn.append(ex)
    return drawn


def generate_splits(
    make: Callable[[random.Random], Example],
    num_train: int,
    num_eval: int,
    seed: int,
    *,
    num_test: int = 0,
    max_tries: int = 50,
) -> tuple[list[Example], list[Example], list[Example]]:
    """Return (train, eval, test) lists drawn by `make` with seeded RNGs; no prompt appears in
    two of them.

    The evaluation (validation) and test splits hold distinct prompts; the training split
    avoids them and is filled with repeats only when the generator runs out of new prompts.
    """
    check = _CHECK.get()
    rng_eval = random.Random(f"{seed}-eval")
    rng_train = random.Random(f"{seed}-train")
    seen: set[str] = set()
    eval_examples = _draw_distinct(make, rng_eval, num_eval, seen, max_tries)
    test_examples = _draw_distinct(make, random.Random(f"{seed}-test"), num_test, seen, max_tries)
    train: list[Example] = []
    train_seen: set[str] = set()
    for tries in range(num_train * max_tries):
        if len(train) == num_train:
            break
        if check is not None and tries % 4096 == 0:
            check()
        ex = make(rng_train)
        if ex.prompt in seen or ex.prompt in train_seen:
            continue
        train_seen.add(ex.prompt)
        train.append(ex)
    if not train:
        raise ValueError("the task generator produced no training examples outside the eval split")
    unique = list(train)
    while len(train) < num_train:  # a small generator space: repeat its distinct prompts
        train.append(unique[len(train) % len(unique)])
    return train, eval_examples, test_examples
