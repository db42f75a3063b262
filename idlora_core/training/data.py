"""From task examples to token tensors: prompt formatting, loss masks, task mixing, padding.

Causal-LM examples are formatted with the tokenizer's chat template when it has one
(otherwise `prompt\\n`), and the loss covers the response tokens only (prompt labels are
-100). Classification examples are plain tokenised texts with an integer label.
This file does not know what the tasks contain, nor how training runs.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import torch

from idlora_core.tasks import Example, TaskData

IGNORE_INDEX = -100


def format_prompt(tokenizer, prompt: str) -> str:
    """Return the text the model sees before its answer (chat template + generation prompt if any)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    return prompt + "\n"


def response_suffix(tokenizer) -> str:
    """Return the text that ends a response: the EOS token (the chat template's end-of-turn)."""
    return tokenizer.eos_token or ""


def encode_lm(tokenizer, example: Example, seq_len: int) -> dict[str, list[int]]:
    """Return input_ids / attention_mask / labels for one prompt+response, at most `seq_len` tokens.

    Labels are -100 on the prompt; when too long, the prompt is cut from the left so the
    response (the part that is learned) survives.
    """
    prompt_ids = tokenizer(format_prompt(tokenizer, example.prompt), add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(example.response + response_suffix(tokenizer), add_special_tokens=False)["input_ids"]
    answer_ids = answer_ids[: seq_len - 1]
    prompt_ids = prompt_ids[-(seq_len - len(answer_ids)):]
    ids = prompt_ids + answer_ids
    labels = [IGNORE_INDEX] * len(prompt_ids) + answer_ids
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


def encode_classification(tokenizer, example: Example, seq_len: int) -> dict[str, list[int] | int]:
    """Return input_ids / attention_mask / labels (an int) for one text, truncated to `seq_len`."""
    enc = tokenizer(example.prompt, truncation=True, max_length=seq_len)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": int(example.label)}


def encode(tokenizer, task: TaskData, examples: list[Example], seq_len: int) -> list[dict]:
    """Return the encoded examples of `task` (causal-LM or classification)."""
    fn = encode_lm if task.kind == "causal-lm" else encode_classification
    return [fn(tokenizer, ex, seq_len) for ex in examples]


def mix_examples(tasks: list[TaskData], weights: list[float], seed: int) -> list[tuple[int, Example]]:
    """Return (task index, example) pairs mixing the training splits in proportion to `weights`.

    The mixture has as many examples as all training splits together; task i contributes
    round(total * w_i / sum(w)) examples (at least one), drawn without replacement while
    its split lasts. The order is shuffled with `seed`.
    """
    rng = random.Random(f"{seed}-mix")
    total = sum(len(t.train) for t in tasks)
    wsum = sum(weights)
    mixed: list[tuple[int, Example]] = []
    for i, (task, w) in enumerate(zip(tasks, weights, strict=True)):
        count = max(1, round(total * w / wsum))
        pool = list(task.train)
        rng.shuffle(pool)
        mixed.extend((i, pool[j % len(pool)]) for j in range(count))
    rng.shuffle(mixed)
    return mixed


class EncodedDataset(torch.utils.data.Dataset):
    """A list of encoded examples (dicts of python lists) as a torch Dataset."""

    def __init__(self, items: list[dict]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.items[index]


@dataclass
class PadCollator:
    """Pads a batch on the right (left for generation prompts) and returns torch tensors."""

    pad_token_id: int
    padding_side: str = "right"

    def __call__(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(b["input_ids"]) for b in batch)
        out: dict[str, list] = {"input_ids": [], "attention_mask": []}
        seq_labels = "labels" in batch[0] and isinstance(batch[0]["labels"], list)
        if "labels" in batch[0]:
            out["labels"] = []
        for b in batch:
            pad = width - len(b["input_ids"])
            out["input_ids"].append(self._pad(b["input_ids"], pad, self.pad_token_id))
            out["attention_mask"].append(self._pad(b["attention_mask"], pad, 0))
            if seq_labels:
                out["labels"].append(self._pad(b["labels"], pad, IGNORE_INDEX))
            elif "labels" in b:
                out["labels"].append(b["labels"])
        return {k: torch.tensor(v, dtype=torch.long) for k, v in out.items()}

    def _pad(self, values: list[int], pad: int, fill: int) -> list[int]:
        return values + [fill] * pad if self.padding_side == "right" else [fill] * pad + values


def build_train_dataset(tokenizer, tasks: list[TaskData], weights: list[float], seq_len: int,
                        seed: int, check: Callable[[], None] | None = None) -> EncodedDataset:
    """Return the mixed, encoded training set of all tasks.

    check() is called every 256 examples; whatever it raises (a stop request) ends the work.
    """
    mixed = mix_examples(tasks, weights, seed)
    items = []
    for n, (i, ex) in enumerate(mixed):
        if check is not None and n % 256 == 0:
            check()
        items.extend(encode(tokenizer, tasks[i], [ex], seq_len))
    return EncodedDataset(items)
