"""School-level maths questions from DeepMind's `mathematics_dataset` generator (Saxton et al.
2019) at its `train-easy` difficulty (causal LM: prompt = the question, response = the
answer); metric: exact match of the answer.

Four modules a 135M model can learn: `arithmetic__add_or_sub`, `arithmetic__mul`,
`numbers__round_number` and `comparison__pair` ("Calculate -160*0.2." -> "-32", "Is -53/18 >
-3?" -> "True", "Which is smaller: -16/5 or -4?" -> "-4"). Answers are integers, decimals,
fractions or True / False, so they are compared as whole strings (`metrics.exact_match`), not as
last numbers. Each example picks a module and a 32-bit seed from the split's seeded RNG;
the package draws from Python's and NumPy's global RNGs, so `build` seeds both per question and
restores them afterwards, under a lock. A question is a function of (seed, split) alone; the
splits share no question text (`base.generate_splits`). Questions longer than the package's
limits (160 / 30 characters) are redrawn, as its own generator does. 512 + 64 + 64 questions
take 0.3 s once the package is imported and 0.85 s in a fresh process (imports included),
measured on one core of the 2-core development machine.

The package needs `mathematics-dataset==1.0.1` and `absl-py` (requirements.txt); it is imported
on first use. Its `sample/polynomials.py` imports `base_solution_linear` from a sympy path that
sympy >= 1.6 moved; `_generators` re-exports it there before the import.
"""

from __future__ import annotations

import functools
import importlib
import random
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np

from .base import Example, TaskData, generate_splits
from .metrics import exact_match, mean
from .packaged import DatasetNotInstalledError

MODULES = ("arithmetic__add_or_sub", "arithmetic__mul", "numbers__round_number", "comparison__pair")
MAX_QUESTION_LENGTH, MAX_ANSWER_LENGTH = 160, 30  # mathematics_dataset.generate_settings
SOURCE = ("DeepMind mathematics_dataset 1.0.1 (pip mathematics-dataset), train-easy: "
          + ", ".join(MODULES))
_INSTALL = "pip install mathematics-dataset==1.0.1 absl-py==2.5.1"
_GLOBAL_RNGS = threading.Lock()  # the package draws from process-wide RNGs


def _easy(range_: tuple[float, float]) -> tuple[float, float]:
    """Return the first third of an entropy range: the package's `train-easy` level."""
    low, high = range_
    return low, low + (high - low) / 3


@functools.lru_cache(maxsize=1)
def _generators() -> dict[str, Callable[[], object]]:
    """Return module name -> the package's train-easy problem generator (a `Problem` factory);
    raises DatasetNotInstalledError when the package is missing."""
    diophantine = sys.modules.get("sympy.solvers.diophantine")
    if diophantine is None:
        importlib.import_module("sympy.solvers.diophantine")
        diophantine = sys.modules["sympy.solvers.diophantine"]
    if not hasattr(diophantine, "base_solution_linear"):  # moved in sympy 1.6
        inner = importlib.import_module("sympy.solvers.diophantine.diophantine")
        diophantine.base_solution_linear = inner.base_solution_linear
    try:
        from mathematics_dataset.modules import arithmetic, comparison, numbers
    except ModuleNotFoundError as exc:
        raise DatasetNotInstalledError(
            f"the math task generates its questions with the PyPI package 'mathematics-dataset', "
            f"which is not installed ({exc.name} is missing); install it with `{_INSTALL}` "
            f"(make install does)") from None
    packages = {"arithmetic": arithmetic, "comparison": comparison, "numbers": numbers}
    built = {name: package.train(_easy) for name, package in packages.items()}
    return {name: built[name.split("__")[0]][name.split("__")[1]] for name in MODULES}


@contextmanager
def _borrowed_global_rngs() -> Iterator[None]:
    """Within the block, this thread alone uses Python's and NumPy's global RNGs; their states
    are restored afterwards."""
    with _GLOBAL_RNGS:
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def make_question(rng: random.Random) -> Example:
    """Return one question (prompt) and its answer (response), drawn from a module and seed
    chosen by `rng`; call it inside `_borrowed_global_rngs()` (it reseeds the global RNGs)."""
    name = rng.choice(MODULES)
    seed = rng.getrandbits(32)
    random.seed(seed)
    np.random.seed(seed)
    generate = _generators()[name]
    while True:
        problem = generate()
        question, answer = str(problem.question), str(problem.answer)
        if len(question) <= MAX_QUESTION_LENGTH and len(answer) <= MAX_ANSWER_LENGTH:
            return Example(prompt=question, response=answer, meta={"module": name})


def score(predictions: list[str], examples: list[Example]) -> dict[str, float]:
    """Return {'exact_match': fraction of predictions whose first line equals the answer}."""
    return {"exact_match": mean([exact_match(p, e.response)
                                 for p, e in zip(predictions, examples, strict=True)])}


def build(num_train: int, num_eval: int, seed: int, num_test: int = 0) -> TaskData:
    """Return the math task with `num_train` / `num_eval` / `num_test` questions generated from
    `seed`; no question text is in two splits."""
    _generators()  # import (or fail) before taking the lock
    with _borrowed_global_rngs():
        train, evaluation, test = generate_splits(make_question, num_train, num_eval, seed,
                                                  num_test=num_test)
    return TaskData("math", "causal-lm", train, evaluation, score, max_new_tokens=16,
                    test=test, source=SOURCE)
