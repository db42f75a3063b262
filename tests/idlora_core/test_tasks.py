"""Built-in tasks: determinism, disjoint splits, correct answers, metrics on hand-made cases, user files."""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from idlora_core.config import TaskConfig
from idlora_core.tasks import BUILTIN, DataFileError, load_task, load_tasks, task_module
from idlora_core.tasks import metrics as M
from idlora_core.tasks.knowledge import FACTS


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_tasks_are_deterministic_and_splits_disjoint(name):
    cfg = TaskConfig(name=name, num_train=200, num_eval=40, num_test=30)
    a, b, c = load_task(cfg, seed=3), load_task(cfg, seed=3), load_task(cfg, seed=4)
    assert a.train == b.train and a.eval == b.eval and a.test == b.test
    packaged = hasattr(task_module(name), "DISTRIBUTION")
    if packaged:  # a real dataset's split is fixed: the seed never changes it
        assert (a.train, a.eval, a.test) == (c.train, c.eval, c.test)
    else:
        assert a.train != c.train
    assert len(a.train) == 200 and len(a.eval) == 40 and len(a.test) == 30
    train, val, test = ({e.prompt for e in s} for s in (a.train, a.eval, a.test))
    assert not train & val and not train & test and not val & test
    assert len(val) == 40
    if name != "knowledge":  # knowledge repeats questions about its held-out facts
        assert len(test) == 30


def test_a_test_split_leaves_generated_train_and_validation_disjoint_from_it():
    no_test = load_task(TaskConfig(name="sentiment", num_train=100, num_eval=20, num_test=0))
    with_test = load_task(TaskConfig(name="sentiment", num_train=100, num_eval=20, num_test=20))
    assert no_test.test == [] and no_test.eval == with_test.eval
    assert a_hashes_differ(no_test, with_test, "test")


def a_hashes_differ(a, b, split: str) -> bool:
    return a.split_hashes()[split]["sha256"] != b.split_hashes()[split]["sha256"]


def test_arithmetic_answers_are_right():
    task = load_task(TaskConfig(name="arithmetic", num_train=300, num_eval=10))
    for ex in task.train:
        work = ex.response.split("=")[0]
        assert eval(work.replace("/", "//"), {}) == ex.meta["answer"]  # noqa: S307 - our own generated arithmetic
        assert M.last_number(ex.response) == str(ex.meta["answer"])
    assert task.score([e.response for e in task.eval], task.eval) == {"exact_match": 1.0}


def test_code_reading_outputs_match_real_python():
    # Cross-check the generator's by-construction answers by running OUR generated snippets.
    task = load_task(TaskConfig(name="code", num_train=300, num_eval=20))
    for ex in task.train + task.eval:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(ex.meta["code"], {})  # noqa: S102 - generator output, never model output
        assert out.getvalue().strip() == ex.response
    assert task.score([e.response + "\nmore text" for e in task.eval], task.eval)["exact_match"] == 1.0


def test_knowledge_answers_and_held_out_facts():
    task = load_task(TaskConfig(name="knowledge", num_train=300, num_eval=30))
    for ex in task.train + task.eval:
        relation_table = [t for _, t in FACTS.values()]
        assert any(ex.meta["answer"] in t.values() for t in relation_table)
        lines = ex.prompt.splitlines()
        chosen = [ln for ln in lines if ln.startswith(ex.response + ")")]
        assert chosen == [f"{ex.response}) {ex.meta['answer']}"]
    train_q = {e.prompt.splitlines()[0] for e in task.train}
    eval_q = {e.prompt.splitlines()[0] for e in task.eval}
    assert not train_q & eval_q  # evaluation asks about facts never trained on


def test_refusal_has_both_halves_and_scores_them_apart():
    task = load_task(TaskConfig(name="refusal", num_train=100, num_eval=40))
    harmful = [e.meta["harmful"] for e in task.eval]
    assert 0 < sum(harmful) < len(harmful)
    perfect = [e.response for e in task.eval]
    assert task.score(perfect, task.eval) == {"refusal_rate_harmful": 1.0, "refusal_rate_benign": 0.0}
    always_refuse = ["I'm sorry, I can't help."] * len(task.eval)
    assert task.score(always_refuse, task.eval) == {"refusal_rate_harmful": 1.0, "refusal_rate_benign": 1.0}


def test_sentiment_labels_follow_negation():
    task = load_task(TaskConfig(name="sentiment", num_train=200, num_eval=20))
    assert task.kind == "classification" and task.num_labels == 2
    for ex in task.train:
        positive_word = any(w in ex.prompt for w in ("wonderful", "excellent", "great", "superb", "lovely"))
        negative_word = any(w in ex.prompt for w in ("terrible", "awful", "boring", "dreadful", "horrible"))
        negated = " not " in ex.prompt
        if positive_word:
            assert ex.label == (0 if negated else 1)
        if negative_word:
            assert ex.label == (1 if negated else 0)
    labels = [e.label for e in task.train]
    assert 0.35 < sum(labels) / len(labels) < 0.65


@pytest.mark.parametrize(("text", "expected"), [
    ("so 3 + 4 = 7. The answer is 7.", "7"), ("-12", "-12"), ("1,250 apples", "1250"),
    ("2.50 then 3.0", "3"), ("no digits", None),
])
def test_last_number(text, expected):
    assert M.last_number(text) == expected


def test_metric_functions_on_hand_made_cases():
    assert M.number_match("The answer is 12.", "5 + 7 = 12. The answer is 12.")
    assert not M.number_match("The answer is 13.", "The answer is 12.")
    assert not M.number_match("", "12")
    assert M.exact_match("  abab \nextra", "abab") and not M.exact_match("ab ab", "abab")
    assert M.choice_letter("B) Paris") == "B" and M.choice_letter("Answer: C") == "C"
    assert M.choice_letter("none") is None
    assert M.is_refusal("I can\u2019t help with that.") and M.is_refusal("Sorry, but no")
    assert not M.is_refusal("Sure! Here is how to bake bread.")
    assert M.accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == 0.5
    assert M.mean([]) == 0.0
    with pytest.raises(ValueError):
        M.accuracy([1], [1, 0])


def test_tasks_of_different_kinds_are_rejected():
    with pytest.raises(ValueError, match="mix causal-LM and classification"):
        load_tasks([TaskConfig(name="arithmetic"), TaskConfig(name="sentiment")])
    with pytest.raises(ValueError, match="unknown task"):
        load_task(TaskConfig(name="nope"))


def test_jsonl_user_data(tmp_path):
    path = tmp_path / "data.jsonl"
    rows = [{"prompt": f"q{i}", "response": f"a{i}"} for i in range(20)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    task = load_task(TaskConfig(name="jsonl", path=str(path), num_train=100, num_eval=3, num_test=2),
                     seed=1)
    assert task.kind == "causal-lm" and len(task.eval) == 3 and len(task.test) == 2
    assert len(task.train) == 15
    assert sorted(e.prompt for e in task.train + task.eval + task.test) == sorted(r["prompt"] for r in rows)
    assert task.score(["a" + e.prompt[1:] for e in task.eval], task.eval) == {"exact_match": 1.0}


def test_jsonl_malformed_lines_are_all_reported(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n{not json}\n\n{"prompt": "c"}\n'
                    '{"prompt": "d", "response": "e", "x": 1}\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(DataFileError) as info:
        load_task(TaskConfig(name="jsonl", path=str(path)))
    errors = info.value.errors
    assert [e.split(":")[0] for e in errors] == ["line 2", "line 4", "line 5", "line 6"]
    assert "not valid JSON" in errors[0] and "'response'" in errors[1] and "unexpected key" in errors[2]


def test_csv_text_label_and_bad_rows(tmp_path):
    good = tmp_path / "good.csv"
    good.write_text("text,label\n" + "".join(f"text {i},{'pos' if i % 2 else 'neg'}\n" for i in range(10)))
    task = load_task(TaskConfig(name="csv", path=str(good), num_eval=2))
    assert task.kind == "classification" and task.label_names == ["neg", "pos"] and task.num_labels == 2
    assert len(task.eval) == 2 and len(task.test) == 2 and len(task.train) == 6  # test: at most 1/5
    for ex in task.train + task.eval + task.test:
        assert ex.label == int(ex.prompt.split()[1]) % 2
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nok,1\n,0\nfine,\n")
    with pytest.raises(DataFileError) as info:
        load_task(TaskConfig(name="csv", path=str(bad)))
    assert [e.split(":")[0] for e in info.value.errors] == ["line 3", "line 4"]
    with pytest.raises(DataFileError, match="file not found"):
        load_task(TaskConfig(name="csv", path=str(tmp_path / "missing.csv")))
