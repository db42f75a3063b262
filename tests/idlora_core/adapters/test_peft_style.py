"""A PEFT user's five lines (issue 20): the README's code run as written with `transformers.Trainer`
on the returned AdaptedModel; the nn.Module behaviour, print_trainable_parameters, disable_adapters,
save_pretrained / from_pretrained, the target_modules shorthand, numpy integers, selection 'id'."""

from __future__ import annotations

import copy
import inspect
import io
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from idlora_core.adapters.model import AdaptedModel, apply_adapters
from idlora_core.config import (
    AdapterConfig,
    ConfigError,
    RunConfig,
    TargetConfig,
    dumps_config,
    loads_config,
    target_for,
)
from tests.conftest import make_tiny_llama

pytestmark = pytest.mark.usefixtures("private_skeleton_cache", "one_thread")

README = Path(__file__).resolve().parents[3] / "README.md"
HEADING = "**Use it from Python (PEFT-style)**"
PRINTED = re.compile(r"^trainable params: ([\d,]+) \|\| all params: ([\d,]+) \|\| trainable%: ([\d.]+)$")
IDS = torch.randint(5, 1000, (2, 7), generator=torch.Generator().manual_seed(0))


def readme_code() -> str:
    """Return the first ```python block after the README's PEFT-style heading."""
    text = README.read_text(encoding="utf-8")
    assert HEADING in text, "the README lost its PEFT-style section"
    return re.search(r"```python\n(.*?)```", text[text.index(HEADING):], re.DOTALL).group(1)


def printed_counts(out: str) -> tuple[int, int, float]:
    (line,) = out.strip().splitlines()
    trainable, total, percent = PRINTED.match(line).groups()
    return int(trainable.replace(",", "")), int(total.replace(",", "")), float(percent)


def direct_counts(model: torch.nn.Module) -> tuple[int, int]:
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def sentiment_set(n: int = 16):
    """A tokenized datasets.Dataset of `n` short labelled sentences, with an unused text column
    (which Trainer removes: it keeps the columns the model's forward names)."""
    import datasets
    from transformers import AutoTokenizer

    from idlora_core.models import minilm_dir

    words = ["good", "great", "fine", "bad", "awful", "poor"]
    text = [f"the film was {words[i % 6]} and {words[(i * 5) % 6]}" for i in range(n)]
    enc = AutoTokenizer.from_pretrained(minilm_dir())(text, padding="max_length", max_length=16, truncation=True)
    return datasets.Dataset.from_dict({"text": text, **enc, "label": [int(i % 6 < 3) for i in range(n)]})


def test_readme_lines_train_with_transformers_trainer(tmp_path, monkeypatch, capsys):
    lines = readme_code().strip().splitlines()
    assert lines[-1] == "trainer.train()" and any("Trainer(model=adapted" in line for line in lines)
    monkeypatch.chdir(tmp_path)  # TrainingArguments("runs/peft-style") writes here
    scope = {"train_set": sentiment_set(16)}
    exec("\n".join(lines[:-1]), scope)  # the README's lines up to the training itself
    adapted = scope["adapted"]
    assert isinstance(adapted, AdaptedModel) and isinstance(adapted, torch.nn.Module)
    trainable, total, percent = printed_counts(capsys.readouterr().out)
    assert (trainable, total) == direct_counts(adapted)
    assert trainable == adapted.report.totals["trainable_total"] and total == adapted.report.total_params
    assert percent == pytest.approx(100 * trainable / total, abs=1e-4)
    before = {n: p.detach().clone() for n, p in adapted.named_parameters()}
    exec(lines[-1], scope)
    trainer = scope["trainer"]
    assert trainer.model is adapted and trainer.state.global_step == 2  # 16 examples, 8 per step
    assert math.isfinite(trainer.state.log_history[-1]["train_loss"])
    after = dict(adapted.named_parameters())
    moved = {n for n, p in after.items() if not torch.equal(p.detach(), before[n])}
    assert moved == {n for n, p in after.items() if p.requires_grad}  # every adapter and the head
    assert any(".idlora_B" in n for n in moved) and any("classifier" in n for n in moved)


@pytest.mark.parametrize("method", ["idlora", "lora", "dora", "hydralora", "full", "base"])
def test_a_module_like_any_other(method, capsys):
    base = make_tiny_llama()
    adapted = apply_adapters(base, AdapterConfig(method=method, targets=[target_for(method, pattern="q_proj", r=4, k=2, heads=2)]))
    assert isinstance(adapted, torch.nn.Module) and adapted.module is not None
    state = adapted.state_dict()
    assert state.keys() == {f"module.{k}" for k in adapted.module.state_dict()}  # as DDP's
    assert dict(adapted.named_parameters()).keys() == {f"module.{n}" for n, _ in adapted.module.named_parameters()}
    adapted.load_state_dict(state)  # strict
    assert adapted.print_trainable_parameters() is None
    trainable, total, _ = printed_counts(capsys.readouterr().out)
    assert (trainable, total) == direct_counts(adapted) == direct_counts(adapted.module)
    assert adapted.config is base.config and callable(adapted.generate)  # the model's attributes
    assert adapted.eval() is adapted and not adapted.unwrapped.training
    assert adapted.train() is adapted and adapted.unwrapped.training
    signature = inspect.signature(adapted.forward).parameters
    assert {"input_ids", "attention_mask", "labels"} <= set(signature)  # Trainer keeps these columns
    with torch.no_grad():
        assert torch.equal(adapted.eval()(input_ids=IDS).logits, adapted.module(input_ids=IDS).logits)
        labelled = adapted(input_ids=IDS, labels=IDS)
    assert torch.isfinite(labelled.loss)
    buffer = io.BytesIO()
    torch.save(adapted, buffer)
    buffer.seek(0)
    for copied in (copy.deepcopy(adapted), torch.load(buffer, weights_only=False)):
        assert copied.forward.__self__ is copied and copied.module is not adapted.module
        assert inspect.signature(copied.forward) == inspect.signature(adapted.forward)
        with torch.no_grad():
            assert torch.equal(copied.eval()(input_ids=IDS).logits, adapted(input_ids=IDS).logits)


def randomize_adapters(adapted: AdaptedModel, seed: int = 0) -> None:
    """Give every trainable tensor random values (B starts at zero: the delta would be 0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapted.parameters():
            if p.requires_grad:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))


@pytest.mark.parametrize("method", ["idlora", "hydralora", "lora", "dora"])
def test_disable_adapters_gives_the_base_output(method):
    base = make_tiny_llama()
    reference = copy.deepcopy(base)
    adapted = apply_adapters(base, AdapterConfig(method=method, targets=[target_for(method, pattern="q_proj", r=4, k=2, heads=2)]))
    randomize_adapters(adapted)
    with torch.no_grad():
        expected = reference(input_ids=IDS).logits
        adapted_out = adapted(input_ids=IDS).logits
        assert not torch.allclose(adapted_out, expected)
        with adapted.disable_adapters():
            assert torch.equal(adapted(input_ids=IDS).logits, expected)
        assert torch.equal(adapted(input_ids=IDS).logits, adapted_out)  # back on after the block
        with adapted.disable_adapter():  # PEFT's name
            assert torch.equal(adapted(input_ids=IDS).logits, expected)


def test_full_fine_tuning_has_no_adapter_to_disable():
    adapted = apply_adapters(make_tiny_llama(), AdapterConfig(method="full", targets=[TargetConfig(pattern="q_proj")]))
    with pytest.raises(ValueError, match="no adapter to disable"), adapted.disable_adapters():
        pass


@pytest.mark.parametrize("method", ["idlora", "lora", "hydralora", "full"])
def test_save_pretrained_from_pretrained_round_trip(method, tmp_path):
    adapted = apply_adapters(make_tiny_llama(), AdapterConfig(method=method, targets=[target_for(method, pattern="q_proj", r=4, k=2, heads=2)]))
    randomize_adapters(adapted, seed=1)
    assert adapted.save_pretrained(tmp_path / "a") == tmp_path / "a"
    again = AdaptedModel.from_pretrained(make_tiny_llama(), tmp_path / "a")
    assert isinstance(again, AdaptedModel) and again.adapter_config == adapted.adapter_config
    with torch.no_grad():
        assert torch.equal(again.eval()(input_ids=IDS).logits, adapted.eval()(input_ids=IDS).logits)


def test_target_modules_shorthand_equals_explicit_targets():
    short = AdapterConfig(method="idlora", r=4, k=2, alpha=8.0, target_modules=["q_proj", "v_proj"])
    explicit = AdapterConfig(method="idlora", targets=[TargetConfig(pattern="q_proj", r=4, k=2, alpha=8.0),
                                                       TargetConfig(pattern="v_proj", r=4, k=2, alpha=8.0)])
    assert short == explicit and "target_modules" not in short.model_dump()
    assert AdapterConfig(r=16).targets == AdapterConfig(target_modules=["query", "value"], r=16).targets
    run = RunConfig(adapter=short)
    text = dumps_config(run)
    assert "target_modules" not in text and loads_config(text) == run  # dumps give targets
    assert loads_config("adapter: {target_modules: [q_proj, v_proj], r: 4, k: 2, alpha: 8}").adapter == short
    a = apply_adapters(make_tiny_llama(), short)
    b = apply_adapters(make_tiny_llama(), explicit)
    assert a.adapter_config == b.adapter_config and a.report.totals == b.report.totals


@pytest.mark.parametrize("kwargs, message", [
    ({"targets": [TargetConfig(pattern="q")], "target_modules": ["q"]}, "either targets or target_modules"),
    ({"targets": [TargetConfig(pattern="q")], "r": 4}, r"not both \(got targets and r\)"),
    ({"target_modules": "query"}, "a list of module names"),
    ({"method": "lora", "k": 2, "target_modules": ["q"]}, "targets.0.k=2 does not apply"),
])
def test_target_modules_mistakes_are_one_line_errors(kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        AdapterConfig(**kwargs)
    (error,) = info.value.errors()
    assert "\n" not in error["msg"]


def test_target_modules_with_targets_in_a_file_is_one_config_error():
    with pytest.raises(ConfigError) as info:
        loads_config("adapter: {targets: [{pattern: q}], target_modules: [q]}")
    assert info.value.errors == ["adapter: Value error, give either targets or target_modules with shared "
                                 "fields, not both (got targets and target_modules)"]


@pytest.mark.parametrize("value", [np.int64(8), np.int32(8), np.uint16(8), np.intp(8), 8])
def test_numpy_integers_are_integers(value):
    t = TargetConfig(pattern="q", r=value, k=value, layers=[value], rb_splits=np.int8(2), alpha=np.float32(8))
    assert (t.r, t.k, t.layers, t.rb_splits, t.alpha) == (8, 8, [8], 2, 8.0) and type(t.r) is int
    assert AdapterConfig(seed=value).seed == 8
    assert AdapterConfig(skeletons={"q": [[value, np.int64(9)]]}).skeletons == {"q": [[8, 9]]}
    assert loads_config(dumps_config(RunConfig(adapter=AdapterConfig(r=value)))).adapter.targets[0].r == 8


@pytest.mark.parametrize("value", [True, np.bool_(True), "8", 8.5, 8.0, np.float64(8.0), None])
def test_integers_still_refuse_bools_floats_and_strings(value):
    with pytest.raises(ValueError, match="valid integer"):
        TargetConfig(pattern="q", r=value)


def test_selection_defaults_to_id():
    assert TargetConfig(pattern="q").selection == "id"
    assert all(t.selection == "id" for t in AdapterConfig().targets + RunConfig().adapter.targets)
    assert loads_config("adapter: {targets: [{pattern: q}]}").adapter.targets[0].selection == "id"
    # configs written while the default was 'centroid' spell it on every target, lora ones too
    old = loads_config("adapter: {method: lora, targets: [{pattern: q, selection: centroid}]}")
    assert old.adapter.targets[0].selection == "centroid"
    with pytest.raises(ValueError, match="selection='random' does not apply"):
        AdapterConfig(method="lora", targets=[TargetConfig(pattern="q", selection="random")])
