"""Code reading: what does a short Python snippet print? Metric: exact match of the output.

The expected output is computed by construction while the snippet is generated (the
generator evaluates its own tiny expression language); nothing is ever executed.
"""

from __future__ import annotations

import random

from .base import Example, TaskData, generate_splits
from .metrics import exact_match, mean

_VARS = ("a", "b", "n", "x", "y", "total", "count", "s")


def _arith(rng: random.Random) -> tuple[str, str]:
    v1, v2 = rng.sample(_VARS, 2)
    a, b, c = rng.randint(1, 9), rng.randint(1, 9), rng.randint(1, 5)
    op = rng.choice("+-*")
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    code = f"{v1} = {a}\n{v2} = {v1} {op} {b}\nprint({v2} + {c})"
    return code, str(value + c)


def _loop(rng: random.Random) -> tuple[str, str]:
    v = rng.choice(("s", "total", "acc"))
    stop, step = rng.randint(2, 6), rng.randint(1, 3)
    code = f"{v} = 0\nfor i in range({stop}):\n    {v} += i * {step}\nprint({v})"
    return code, str(sum(i * step for i in range(stop)))


def _string(rng: random.Random) -> tuple[str, str]:
    word = rng.choice(("ab", "cat", "xy", "hi", "dog", "ok"))
    times = rng.randint(2, 4)
    if rng.random() < 0.5:
        return f"w = {word!r}\nprint(w * {times})", word * times
    return f"w = {word!r} * {times}\nprint(len(w))", str(len(word) * times)


def _list(rng: random.Random) -> tuple[str, str]:
    items = [rng.randint(0, 9) for _ in range(rng.randint(3, 5))]
    fn = rng.choice(("max", "min", "sum", "len"))
    value = {"max": max, "min": min, "sum": sum, "len": len}[fn](items)
    return f"xs = {items}\nprint({fn}(xs))", str(value)


def _branch(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(0, 20), rng.randint(0, 20)
    yes, no = rng.sample(("yes", "no", "big", "small", "up", "down"), 2)
    code = f"a = {a}\nif a > {b}:\n    print({yes!r})\nelse:\n    print({no!r})"
    return code, yes if a > b else no


_KINDS = (_arith, _loop, _string, _list, _branch)


def make_snippet(rng: random.Random) -> Example:
    """Return one snippet question; the response is exactly what the snippet prints."""
    code, output = rng.choice(_KINDS)(rng)
    prompt = f"What does this Python code print?\n```python\n{code}\n```\nAnswer with the output only."
    return Example(prompt=prompt, response=output, meta={"code": code})


def score(predictions: list[str], examples: list[Example]) -> dict[str, float]:
    """Return {'exact_match': fraction of predictions whose first line equals the printed output}."""
    return {"exact_match": mean([exact_match(p, e.response) for p, e in zip(predictions, examples, strict=True)])}


def build(num_train: int, num_eval: int, seed: int, num_test: int = 0) -> TaskData:
    """Return the code-reading task with `num_train` / `num_eval` examples generated from `seed`."""
    train, evaluation, test = generate_splits(make_snippet, num_train, num_eval, seed,
                                             num_test=num_test)
    return TaskData("code", "causal-lm", train, evaluation, score, max_new_tokens=8,
                    test=test, source="generated templates (idlora_core/tasks/code_reading.py)")
