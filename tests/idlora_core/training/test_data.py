"""Tokenisation of tasks: chat template, response-only loss, truncation, mixing weights, padding."""

from __future__ import annotations

from collections import Counter

import pytest
from transformers import AutoTokenizer

from idlora_core.config import TaskConfig
from idlora_core.models import minilm_dir, resolve_source
from idlora_core.tasks import Example, load_task
from idlora_core.training.data import (
    IGNORE_INDEX,
    PadCollator,
    encode_lm,
    format_prompt,
    mix_examples,
)


@pytest.fixture(scope="module")
def smol_tok():
    return AutoTokenizer.from_pretrained(resolve_source("smollm2-135m")[1])


def test_chat_template_and_response_only_labels(smol_tok):
    ex = Example(prompt="What is 2 + 3?", response="2 + 3 = 5. The answer is 5.")
    text = format_prompt(smol_tok, ex.prompt)
    assert "<|im_start|>user\nWhat is 2 + 3?<|im_end|>" in text and text.endswith("<|im_start|>assistant\n")
    enc = encode_lm(smol_tok, ex, seq_len=128)
    prompt_len = len(smol_tok(text, add_special_tokens=False)["input_ids"])
    assert enc["labels"][:prompt_len] == [IGNORE_INDEX] * prompt_len
    learned = enc["labels"][prompt_len:]
    assert learned == enc["input_ids"][prompt_len:]
    assert smol_tok.decode(learned) == ex.response + "<|im_end|>"


def test_long_prompts_are_cut_from_the_left(smol_tok):
    ex = Example(prompt="word " * 200, response="The answer is 7.")
    enc = encode_lm(smol_tok, ex, seq_len=32)
    assert len(enc["input_ids"]) == 32
    assert smol_tok.decode([t for t in enc["labels"] if t != IGNORE_INDEX]) == "The answer is 7.<|im_end|>"


def test_no_chat_template_falls_back_to_newline():
    tok = AutoTokenizer.from_pretrained(str(minilm_dir()))
    assert format_prompt(tok, "hello") == "hello\n"


def test_mixing_follows_weights():
    tasks = [load_task(TaskConfig(name=n, num_train=100, num_eval=4)) for n in ("arithmetic", "code")]
    mixed = mix_examples(tasks, [3.0, 1.0], seed=0)
    counts = Counter(i for i, _ in mixed)
    assert len(mixed) == 200 and counts == {0: 150, 1: 50}
    assert mixed == mix_examples(tasks, [3.0, 1.0], seed=0) and mixed != mix_examples(tasks, [3.0, 1.0], seed=1)


def test_pad_collator_right_and_left():
    batch = [{"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [-100, 6, 7]},
             {"input_ids": [8], "attention_mask": [1], "labels": [8]}]
    right = PadCollator(pad_token_id=0)(batch)
    assert right["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert right["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert right["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    left = PadCollator(pad_token_id=0, padding_side="left")([{k: v for k, v in b.items() if k != "labels"}
                                                             for b in batch])
    assert left["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]] and "labels" not in left
    cls = PadCollator(pad_token_id=0)([{"input_ids": [1, 2], "attention_mask": [1, 1], "labels": 1},
                                       {"input_ids": [3], "attention_mask": [1], "labels": 0}])
    assert cls["labels"].tolist() == [1, 0]
