"""Sentiment of short generated reviews (sequence classification, 2 labels); metric: accuracy.

Reviews mix a positive or negative judgement with neutral filler, and one in four is
negated ("not great" is negative), so a model has to read the phrase, not count words.
"""

from __future__ import annotations

import random

from .base import Example, TaskData, generate_splits
from .metrics import accuracy_score

_SUBJECTS = ("The movie", "This phone", "The hotel", "Our dinner", "The concert", "This book",
             "The service", "The new album", "That game", "The tour", "This laptop", "The class")
_POSITIVE = ("wonderful", "excellent", "delightful", "great", "superb", "charming", "brilliant",
             "enjoyable", "fantastic", "lovely", "impressive", "pleasant")
_NEGATIVE = ("terrible", "awful", "boring", "disappointing", "dreadful", "poor", "horrible",
             "annoying", "mediocre", "painful", "weak", "unpleasant")
_FILLER = ("", " from start to finish", " overall", " if you ask me", " this time",
           " for the price", " to be honest")
_ENDINGS = (".", "!", ", I would say.", ", honestly.")
LABELS = ["negative", "positive"]


def make_review(rng: random.Random) -> Example:
    """Return one review text with label 1 (positive) or 0 (negative)."""
    positive = rng.random() < 0.5
    negated = rng.random() < 0.25
    word = rng.choice(_POSITIVE if positive != negated else _NEGATIVE)
    verb = "was not" if negated else "was"
    text = f"{rng.choice(_SUBJECTS)} {verb} {word}{rng.choice(_FILLER)}{rng.choice(_ENDINGS)}"
    return Example(prompt=text, label=int(positive))


def build(num_train: int, num_eval: int, seed: int, num_test: int = 0) -> TaskData:
    """Return the sentiment task with `num_train` / `num_eval` reviews generated from `seed`."""
    train, evaluation, test = generate_splits(make_review, num_train, num_eval, seed,
                                             num_test=num_test)
    return TaskData("sentiment", "classification", train, evaluation, accuracy_score,
                    num_labels=2, label_names=list(LABELS), test=test,
                    source="synthetic templates, saturates (idlora_core/tasks/sentiment.py)")
