"""The data types every task shares: one example, one task's splits and its metric.

A causal-LM example is a (prompt, response) pair; a classification example is a
text with an integer label. This file holds no task content and no tokenisation.
"""

from __future__ import annotations

import contextlib
import contextvars
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

    `score(predictions, examples)` returns a dict of metric name -> value in [0, 1];
    predictions are generated strings (causal LM) or predicted label ids (classification).
    """

    name: str
    kind: TaskKind
    train: list[Example]
    eval: list[Example]
    score: Callable[[list, list[Example]], dict[str, float]]
    max_new_tokens: int = 16
    num_labels: int = 0
    label_names: list[str] = field(default_factory=list)


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


def generate_splits(
    make: Callable[[random.Random], Example],
    num_train: int,
    num_eval: int,
    seed: int,
    *,
    max_tries: int = 50,
) -> tuple[list[Example], list[Example]]:
    """Return (train, eval) lists drawn by `make` with seeded RNGs; no prompt appears in both.

    The evaluation split holds distinct prompts; the training split avoids them and is
    filled with repeats only when the generator runs out of new prompts.
    """
    check = _CHECK.get()
    rng_eval = random.Random(f"{seed}-eval")
    rng_train = random.Random(f"{seed}-train")
    eval_examples: list[Example] = []
    seen: set[str] = set()
    for _ in range(num_eval * max_tries):
        if len(eval_examples) == num_eval:
            break
        ex = make(rng_eval)
        if ex.prompt not in seen:
            seen.add(ex.prompt)
            eval_examples.append(ex)
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
    return train, eval_examples
