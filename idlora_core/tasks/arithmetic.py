"""Arithmetic word problems (a miniature GSM-style task); metric: exact match on the final number."""

from __future__ import annotations

import random

from .base import Example, TaskData, generate_splits
from .metrics import mean, number_match

_NAMES = ("Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana", "Ivo", "Jun", "Kofi", "Lena")
_ITEMS = ("apples", "marbles", "stickers", "books", "coins", "pencils", "cards", "shells")


def make_problem(rng: random.Random) -> Example:
    """Return one word problem whose response shows the working and ends with the answer."""
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    start = rng.randint(2, 40)
    kind = rng.randrange(3)
    if kind == 0:
        gain, loss = rng.randint(1, 30), rng.randint(1, start)
        answer = start + gain - loss
        prompt = (f"{name} has {start} {item}. {name} gets {gain} more and then gives away {loss}. "
                  f"How many {item} does {name} have now?")
        work = f"{start} + {gain} - {loss} = {answer}"
    elif kind == 1:
        boxes, per_box = rng.randint(2, 9), rng.randint(2, 12)
        answer = start + boxes * per_box
        prompt = (f"{name} has {start} {item} and buys {boxes} boxes with {per_box} {item} each. "
                  f"How many {item} does {name} have in total?")
        work = f"{start} + {boxes} * {per_box} = {answer}"
    else:
        friends = rng.randint(2, 6)
        each = rng.randint(2, 10)
        total = friends * each
        prompt = (f"{name} shares {total} {item} equally among {friends} friends. "
                  f"How many {item} does each friend get?")
        work = f"{total} / {friends} = {each}"
        answer = each
    return Example(prompt=prompt, response=f"{work}. The answer is {answer}.", meta={"answer": answer})


def score(predictions: list[str], examples: list[Example]) -> dict[str, float]:
    """Return {'exact_match': fraction of predictions whose last number is the right answer}."""
    return {"exact_match": mean([number_match(p, e.response) for p, e in zip(predictions, examples, strict=True)])}


def build(num_train: int, num_eval: int, seed: int, num_test: int = 0) -> TaskData:
    """Return the arithmetic task with `num_train` / `num_eval` examples generated from `seed`."""
    train, evaluation, test = generate_splits(make_problem, num_train, num_eval, seed,
                                             num_test=num_test)
    return TaskData("arithmetic", "causal-lm", train, evaluation, score, max_new_tokens=24,
                    test=test, source="generated templates (idlora_core/tasks/arithmetic.py)")
