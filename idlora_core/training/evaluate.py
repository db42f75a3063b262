"""Evaluation on the held-out splits: greedy generation (causal LM) or argmax (classification).

Returns flat metrics named after the split: `eval_loss` (teacher-forced, all tasks together)
and `eval_<task>_<metric>` per task on the validation split, `test_loss` and
`test_<task>_<metric>` on the test split. Generated text is only compared as text, never run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import torch
from torch import nn

from idlora_core.tasks import Example, TaskData
from idlora_core.training.data import PadCollator, encode, format_prompt

TOP_CLASS_SHARE = "top_class_share"  # metric suffix: the share of the most predicted label
COLLAPSE_SHARE = 0.99  # a classifier predicting one label for this share of examples has collapsed


def top_class_share(predictions: list[int]) -> float:
    """Return the fraction of predictions equal to the most frequent predicted label (1.0 = the
    model predicts one class for every example: it has collapsed to a constant)."""
    if not predictions:
        return float("nan")
    return Counter(predictions).most_common(1)[0][1] / len(predictions)


def collapsed(metrics: dict, split: str = "eval") -> list[str]:
    """Return the names of the classification tasks whose `split` predictions are one class
    (top-class share >= COLLAPSE_SHARE) in a run's metrics dict."""
    prefix, suffix = f"{split}_", f"_{TOP_CLASS_SHARE}"
    return [key[len(prefix):-len(suffix)] for key, value in metrics.items()
            if key.startswith(prefix) and key.endswith(suffix)
            and isinstance(value, (int, float)) and value >= COLLAPSE_SHARE]


def _batches(items: list, size: int, check: Callable[[], None] | None = None):
    for start in range(0, len(items), size):
        if check is not None:
            check()  # raises to abandon the evaluation (a stop request)
        yield items[start:start + size]


@torch.no_grad()
def eval_loss(model: nn.Module, tokenizer, task: TaskData, seq_len: int, batch_size: int,
              device: torch.device, check: Callable[[], None] | None = None,
              examples: list[Example] | None = None) -> tuple[float, int]:
    """Return (mean teacher-forced loss per example, number of examples) on `examples`
    (default: `task`'s validation split).

    The loss is the model's own (mean cross-entropy in nats over the response tokens, or
    over the labels for classification), averaged over batches weighted by batch size.
    """
    collate = PadCollator(tokenizer.pad_token_id)
    total, count = 0.0, 0
    examples = task.eval if examples is None else examples
    for batch in _batches(encode(tokenizer, task, examples, seq_len), batch_size, check):
        inputs = {k: v.to(device) for k, v in collate(batch).items()}
        total += float(model(**inputs).loss) * len(batch)
        count += len(batch)
    return total / max(count, 1), count


@torch.no_grad()
def generate(model: nn.Module, tokenizer, prompts: list[str], max_new_tokens: int, seq_len: int,
             batch_size: int, device: torch.device, check: Callable[[], None] | None = None) -> list[str]:
    """Return the greedy continuation (decoded text, special tokens removed) of every prompt."""
    collate = PadCollator(tokenizer.pad_token_id, padding_side="left")
    outputs: list[str] = []
    for chunk in _batches(prompts, batch_size, check):
        items = []
        for prompt in chunk:
            ids = tokenizer(format_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"][-seq_len:]
            items.append({"input_ids": ids, "attention_mask": [1] * len(ids)})
        inputs = {k: v.to(device) for k, v in collate(items).items()}
        out = model.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=False,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        )
        new = out[:, inputs["input_ids"].shape[1]:]
        outputs.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
    return outputs


@torch.no_grad()
def classify(model: nn.Module, tokenizer, task: TaskData, seq_len: int, batch_size: int,
             device: torch.device, check: Callable[[], None] | None = None,
             examples: list[Example] | None = None) -> list[int]:
    """Return the argmax label id of every example in `examples` (default: the validation
    split) of a classification task."""
    collate = PadCollator(tokenizer.pad_token_id)
    predicted: list[int] = []
    examples = task.eval if examples is None else examples
    for batch in _batches(encode(tokenizer, task, examples, seq_len), batch_size, check):
        inputs = {k: v.to(device) for k, v in collate(batch).items() if k != "labels"}
        predicted.extend(model(**inputs).logits.argmax(dim=-1).tolist())
    return predicted


def evaluate_tasks(model: nn.Module, tokenizer, tasks: list[TaskData], *, seq_len: int,
                   batch_size: int, device: torch.device | str, generation: bool = True,
                   check: Callable[[], None] | None = None, split: str = "eval") -> dict[str, float]:
    """Return {'eval_loss', 'eval_<task>_loss', 'eval_<task>_<metric>': ...} for `tasks` on the
    validation split (split='eval'), or the same keys with the prefix `test_` on the test split
    (split='test'; tasks without test examples are left out, and {} when none has any).

    eval_loss averages all examples together; the model's train/eval mode is restored.

    generation=False skips the generated-answer metrics of causal-LM tasks (loss only).
    check() is called before every batch; whatever it raises (a stop request) ends the evaluation.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    try:
        metrics: dict[str, float] = {}
        total, count = 0.0, 0
        for task in tasks:
            examples = task.split(split)
            if not examples:
                continue
            loss, n = eval_loss(model, tokenizer, task, seq_len, batch_size, device, check, examples)
            metrics[f"{split}_{task.name}_loss"] = loss
            total, count = total + loss * n, count + n
            if task.kind == "classification":
                predictions = classify(model, tokenizer, task, seq_len, batch_size, device, check,
                                       examples)
            elif generation:
                predictions = generate(model, tokenizer, [e.prompt for e in examples],
                                       task.max_new_tokens, seq_len, batch_size, device, check)
            else:
                continue
            for key, value in task.score(predictions, examples).items():
                metrics[f"{split}_{task.name}_{key}"] = float(value)
            if task.kind == "classification":
                metrics[f"{split}_{task.name}_{TOP_CLASS_SHARE}"] = top_class_share(predictions)
        if count:
            metrics = {f"{split}_loss": total / count, **metrics}
        elif split == "eval":
            metrics = {"eval_loss": 0.0, **metrics}
    finally:
        model.train(was_training)
    return metrics
