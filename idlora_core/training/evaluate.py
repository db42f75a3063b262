"""Evaluation on the held-out splits: greedy generation (causal LM) or argmax (classification).

Returns flat `eval_*` metrics: `eval_loss` (teacher-forced, all tasks together) and
`eval_<task>_<metric>` per task. Generated text is only compared as text, never run.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from idlora_core.tasks import TaskData
from idlora_core.training.data import PadCollator, encode, format_prompt


def _batches(items: list, size: int, check: Callable[[], None] | None = None):
    for start in range(0, len(items), size):
        if check is not None:
            check()  # raises to abandon the evaluation (a stop request)
        yield items[start:start + size]


@torch.no_grad()
def eval_loss(model: nn.Module, tokenizer, task: TaskData, seq_len: int, batch_size: int,
              device: torch.device, check: Callable[[], None] | None = None) -> tuple[float, int]:
    """Return (mean teacher-forced loss per example, number of examples) on `task`'s eval split.

    The loss is the model's own (mean cross-entropy in nats over the response tokens, or
    over the labels for classification), averaged over batches weighted by batch size.
    """
    collate = PadCollator(tokenizer.pad_token_id)
    total, count = 0.0, 0
    for batch in _batches(encode(tokenizer, task, task.eval, seq_len), batch_size, check):
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
             device: torch.device, check: Callable[[], None] | None = None) -> list[int]:
    """Return the argmax label id of every eval example of a classification task."""
    collate = PadCollator(tokenizer.pad_token_id)
    predicted: list[int] = []
    for batch in _batches(encode(tokenizer, task, task.eval, seq_len), batch_size, check):
        inputs = {k: v.to(device) for k, v in collate(batch).items() if k != "labels"}
        predicted.extend(model(**inputs).logits.argmax(dim=-1).tolist())
    return predicted


def evaluate_tasks(model: nn.Module, tokenizer, tasks: list[TaskData], *, seq_len: int,
                   batch_size: int, device: torch.device | str, generation: bool = True,
                   check: Callable[[], None] | None = None) -> dict[str, float]:
    """Return {'eval_loss', 'eval_<task>_loss', 'eval_<task>_<metric>': ...} for `tasks`.

    eval_loss averages all eval examples together; the model's train/eval mode is restored.

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
            if not task.eval:
                continue
            loss, n = eval_loss(model, tokenizer, task, seq_len, batch_size, device, check)
            metrics[f"eval_{task.name}_loss"] = loss
            total, count = total + loss * n, count + n
            if task.kind == "classification":
                predictions = classify(model, tokenizer, task, seq_len, batch_size, device, check)
            elif generation:
                predictions = generate(model, tokenizer, [e.prompt for e in task.eval],
                                       task.max_new_tokens, seq_len, batch_size, device, check)
            else:
                continue
            for key, value in task.score(predictions, task.eval).items():
                metrics[f"eval_{task.name}_{key}"] = float(value)
        metrics = {"eval_loss": total / max(count, 1), **metrics}
    finally:
        model.train(was_training)
    return metrics
