"""Built-in offline tasks and user data files, each with a held-out eval split and a metric.

`load_task(task_config, seed)` returns a TaskData; `load_tasks(run_config)` returns all the
tasks of a run and checks that they agree on the model head they need.
Causal-LM tasks: arithmetic, code, knowledge, refusal, math (DeepMind mathematics_dataset
questions). Classification: rotten_tomatoes (real movie-review snippets) and bbc_news (real news
articles in 5 topics), both from installed packages with a fixed split; sentiment (synthetic
templates, saturates: a smoke task); or a user file with text/label. User files: name 'jsonl'
or 'csv' with a path. Every task has train, eval (validation) and test splits.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import ModuleType

from idlora_core.config import BUILTIN_TASKS, DATA_FILE_TASKS, TaskConfig

from . import (
    arithmetic,
    bbc_news,
    code_reading,
    knowledge,
    math_questions,
    refusal,
    rotten_tomatoes,
    sentiment,
    user_data,
)
from .base import Example, TaskData, TaskKind
from .packaged import DatasetNotInstalledError
from .user_data import DataFileError

BUILTIN: dict[str, Callable[[int, int, int], TaskData]] = {
    "arithmetic": arithmetic.build,
    "code": code_reading.build,
    "knowledge": knowledge.build,
    "refusal": refusal.build,
    "sentiment": sentiment.build,
    "rotten_tomatoes": rotten_tomatoes.build,
    "bbc_news": bbc_news.build,
    "math": math_questions.build,
}
CLASSIFICATION_TASKS = ("sentiment", "rotten_tomatoes", "bbc_news")
CAUSAL_LM_TASKS = tuple(name for name in BUILTIN_TASKS if name not in CLASSIFICATION_TASKS)

__all__ = [
    "BUILTIN", "CAUSAL_LM_TASKS", "CLASSIFICATION_TASKS", "DataFileError", "DatasetNotInstalledError",
    "Example", "TaskData",
    "TaskKind", "load_task", "load_tasks", "pool_sizes", "task_module",
]


def load_task(task: TaskConfig, seed: int = 0) -> TaskData:
    """Return the TaskData for one task configuration; raises ValueError / DataFileError."""
    if task.name in DATA_FILE_TASKS:
        return user_data.build(task.path or "", task.num_train, task.num_eval, seed,
                               name=_stem(task.path or "") or task.name, num_test=task.test_count)
    if task.name not in BUILTIN:
        raise ValueError(f"unknown task {task.name!r}; built-in: {', '.join(BUILTIN)}, or jsonl / csv with a path")
    return BUILTIN[task.name](task.num_train, task.num_eval, seed, num_test=task.test_count)


def task_module(name: str) -> ModuleType | None:
    """Return the module of built-in task `name` (its LABELS, its data), None for any other name."""
    return sys.modules[BUILTIN[name].__module__] if name in BUILTIN else None


def pool_sizes(name: str) -> tuple[int, int, int] | None:
    """Return the (train, validation, test) example counts a packaged real dataset holds (its
    fixed split), or None for a generated task or a user file (no fixed pool)."""
    module = task_module(name)
    if module is None or not hasattr(module, "load_splits"):
        return None
    train, validation, test = module.load_splits()
    return len(train), len(validation), len(test)


def load_tasks(tasks: list[TaskConfig], seed: int = 0) -> list[TaskData]:
    """Return the TaskData of every task; raises ValueError when they need different model heads."""
    loaded = [load_task(t, seed) for t in tasks]
    kinds = {t.kind for t in loaded}
    if len(kinds) > 1:
        listing = ", ".join(f"{t.name} ({t.kind})" for t in loaded)
        raise ValueError(f"tasks mix causal-LM and classification tasks ({listing}); use one kind per run")
    if kinds == {"classification"} and len({t.num_labels for t in loaded}) > 1:
        raise ValueError("classification tasks in one run must have the same number of labels")
    return loaded


def _stem(path: str) -> str:
    """Return the file's stem as a metric-key-safe name ('my-data.jsonl' -> 'my_data')."""
    import re
    from pathlib import Path

    return re.sub(r"\W+", "_", Path(path).stem).strip("_")
