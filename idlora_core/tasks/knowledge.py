"""Multiple-choice knowledge from a fact table (a miniature MMLU); metric: accuracy.

Facts are split between training and evaluation, so evaluation asks about facts the
fine-tune never showed: it measures the answer format plus what the model already knows.
"""

from __future__ import annotations

import random

from .base import Example, TaskData
from .metrics import choice_letter, mean

# (relation, question template, table of subject -> answer)
FACTS: dict[str, tuple[str, dict[str, str]]] = {
    "capital": ("What is the capital of {}?", {
        "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid",
        "Japan": "Tokyo", "China": "Beijing", "Russia": "Moscow", "Egypt": "Cairo",
        "Canada": "Ottawa", "Australia": "Canberra", "Brazil": "Brasilia", "India": "New Delhi",
        "Mexico": "Mexico City", "Greece": "Athens", "Portugal": "Lisbon", "Norway": "Oslo",
        "Sweden": "Stockholm", "Poland": "Warsaw", "Austria": "Vienna", "Ireland": "Dublin",
        "Kenya": "Nairobi", "Peru": "Lima", "Argentina": "Buenos Aires", "Turkey": "Ankara",
    }),
    "symbol": ("What is the chemical symbol of {}?", {
        "hydrogen": "H", "oxygen": "O", "carbon": "C", "nitrogen": "N", "iron": "Fe",
        "gold": "Au", "silver": "Ag", "sodium": "Na", "potassium": "K", "copper": "Cu",
        "helium": "He", "calcium": "Ca", "lead": "Pb", "tin": "Sn", "zinc": "Zn", "neon": "Ne",
    }),
    "class": ("Which group of animals does the {} belong to?", {
        "dolphin": "mammals", "whale": "mammals", "bat": "mammals", "eagle": "birds",
        "penguin": "birds", "owl": "birds", "shark": "fish", "salmon": "fish", "trout": "fish",
        "frog": "amphibians", "salamander": "amphibians", "snake": "reptiles",
        "lizard": "reptiles", "crocodile": "reptiles", "ant": "insects", "bee": "insects",
    }),
    "opposite": ("What is the opposite of '{}'?", {
        "hot": "cold", "big": "small", "fast": "slow", "up": "down", "early": "late",
        "light": "dark", "open": "closed", "full": "empty", "strong": "weak", "old": "young",
        "wet": "dry", "high": "low", "hard": "soft", "rich": "poor", "happy": "sad",
    }),
}
LETTERS = "ABCD"


def fact_list() -> list[tuple[str, str, str]]:
    """Return every (relation, subject, answer) of the fact table, in a fixed order."""
    return [(rel, subj, ans) for rel, (_, table) in FACTS.items() for subj, ans in table.items()]


def make_question(rng: random.Random, relation: str, subject: str, answer: str) -> Example:
    """Return a 4-option question about one fact; the response is the right letter."""
    template, table = FACTS[relation]
    distractors = rng.sample(sorted({a for a in table.values() if a != answer}), 3)
    options = [answer, *distractors]
    rng.shuffle(options)
    letter = LETTERS[options.index(answer)]
    lines = [template.format(subject)] + [f"{L}) {o}" for L, o in zip(LETTERS, options, strict=True)]
    prompt = "\n".join(lines) + "\nAnswer with the letter only."
    return Example(prompt=prompt, response=letter, meta={"answer": answer, "options": options})


def score(predictions: list[str], examples: list[Example]) -> dict[str, float]:
    """Return {'accuracy': fraction of predictions whose first option letter is the right one}."""
    return {"accuracy": mean([choice_letter(p) == e.response for p, e in zip(predictions, examples, strict=True)])}


def build(num_train: int, num_eval: int, seed: int, num_test: int = 0) -> TaskData:
    """Return the knowledge task; evaluation facts (about a quarter) and, when `num_test` > 0,
    test facts (another quarter) never appear in training."""
    facts = fact_list()
    rng = random.Random(f"{seed}-facts")
    rng.shuffle(facts)
    n_eval_facts = max(1, len(facts) // 4)
    n_test_facts = n_eval_facts if num_test else 0
    eval_facts = facts[:n_eval_facts]
    test_facts = facts[n_eval_facts:n_eval_facts + n_test_facts]
    train_facts = facts[n_eval_facts + n_test_facts:]
    rng_eval, rng_train = random.Random(f"{seed}-eval"), random.Random(f"{seed}-train")
    rng_test = random.Random(f"{seed}-test")
    evaluation = [make_question(rng_eval, *eval_facts[i % len(eval_facts)]) for i in range(num_eval)]
    test = [make_question(rng_test, *test_facts[i % len(test_facts)]) for i in range(num_test)]
    train = [make_question(rng_train, *rng_train.choice(train_facts)) for _ in range(num_train)]
    return TaskData("knowledge", "causal-lm", train, evaluation, score, max_new_tokens=4, test=test,
                    source="generated questions on a fixed fact table (idlora_core/tasks/knowledge.py)")
