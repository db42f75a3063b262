"""AdaLoRA through PEFT: counts against PEFT's own and the formula, the orthogonal regulariser,
one optimiser step on MiniLM and the tiny Llama, the rank allocation inside run_training, the
schedule, save / load, and the config fields."""

from __future__ import annotations

import json

import pytest
import torch
from peft.tuners.adalora import AdaLoraModel

from idlora_core.adapters import adalora
from idlora_core.adapters.budget import frozen_adapter_elements, trainable_params
from idlora_core.adapters.io import read_adapter_config, save_adapters
from idlora_core.adapters.model import apply_adapters, load_adapters
from idlora_core.config import AdapterConfig, ConfigError, TargetConfig, parse_config, target_for
from idlora_core.training.callbacks import AdaLoraCallback
from idlora_core.training.trainer import run_training
from tests.conftest import make_tiny_bert, make_tiny_llama, shared_weight_copy

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"bert": (lambda: make_tiny_bert(num_labels=2), ["query", "value"], 32 * 2 + 2),
        "llama": (make_tiny_llama, ["q_proj", "down_proj"], 0)}


def _config(patterns, r=4, **extra) -> AdapterConfig:
    return AdapterConfig(method="adalora", targets=[TargetConfig(pattern=p, r=r, **extra) for p in patterns])


def _orth_reg(model) -> torch.Tensor:
    """PEFT's AdaLoRA regulariser, recomputed: the mean over every lora_A of ||A A^T - I||_F and
    every lora_B of ||B^T B - I||_F."""
    terms = []
    for name, p in model.named_parameters():
        if "lora_A" in name:
            terms.append(torch.linalg.matrix_norm(p @ p.T - torch.eye(p.shape[0])))
        elif "lora_B" in name:
            terms.append(torch.linalg.matrix_norm(p.T @ p - torch.eye(p.shape[1])))
    return torch.stack(terms).mean()


@pytest.mark.parametrize("arch", sorted(TINY))
def test_counts_equal_peft_and_the_formula(arch):
    factory, patterns, head = TINY[arch]
    base = factory()
    base_total = sum(p.numel() for p in base.parameters())
    adapted = apply_adapters(base, _config(patterns, r=3))
    report = adapted.report
    peft_trainable, peft_total = adapted.module.get_nb_trainable_parameters()
    assert report.totals["trainable_total"] == peft_trainable
    assert report.totals["total_params"] == peft_total
    assert report.head_trainable == head
    shapes = [(row.m, row.n) for row in report.rows]
    assert len(shapes) == 2 * len(patterns)  # two blocks
    by_hand = sum(3 * m + 3 * n + 3 for m, n in shapes)  # A (r x n), E (r x 1), B (m x r)
    assert report.totals["trainable"] == by_hand == peft_trainable - head
    for row in report.rows:
        assert row.trainable == row.formula == trainable_params("adalora", row.m, row.n, 3)
        assert row.r == 3 and row.k is None and row.method == "adalora"
        assert row.frozen_adapter_elements == 1 == frozen_adapter_elements("adalora", row.m, row.n, 3)
    # the model's parameters: the base, the adapters, one ranknum per layer, PEFT's head copy
    assert peft_total == base_total + by_hand + len(shapes) + head
    assert isinstance(adapted.module.base_model, AdaLoraModel)


def test_schedule_config_and_one_config_for_all_targets():
    adapted = apply_adapters(make_tiny_llama(), _config(["q_proj", "v_proj"], r=6, alpha=8.0, dropout=0.1))
    cfg = adapted.module.peft_config["default"]
    assert (cfg.init_r, cfg.target_r, cfg.lora_alpha, cfg.lora_dropout) == (6, 4, 8.0, 0.1)
    assert (cfg.total_step, cfg.tinit, cfg.tfinal, cfg.deltaT) == (1000, 100, 200, 1)
    assert adalora.set_total_step(adapted, 80) == {"total_step": 80, "tinit": 8, "tfinal": 16, "deltaT": 1}
    assert (cfg.total_step, cfg.tinit, cfg.tfinal) == (80, 8, 16)
    for steps in (1, 2, 3, 7, 80, 10_000):  # always a pruning phase: PEFT refuses a schedule without
        s = adalora.adalora_schedule(steps)
        assert s["tinit"] < s["total_step"] - s["tfinal"]
    with pytest.raises(ValueError, match="optimiser steps"):
        adalora.adalora_schedule(0)
    explicit = apply_adapters(make_tiny_llama(), _config(["q_proj"], r=6, target_r=2))
    assert explicit.module.peft_config["default"].target_r == 2
    mixed = AdapterConfig(method="adalora", targets=[TargetConfig(pattern="q_proj", r=4),
                                                     TargetConfig(pattern="v_proj", r=8)])
    with pytest.raises(ValueError, match=r"one r, target_r, alpha and dropout.*r \[4, 8\]"):
        apply_adapters(make_tiny_llama(), mixed)
    assert [adalora.default_target_r(r) for r in (1, 2, 3, 4, 6, 12)] == [1, 1, 2, 3, 4, 8]
    with pytest.raises(ValueError, match="holds no AdaLoRA"):
        adalora.update_and_allocate(apply_adapters(make_tiny_llama(), AdapterConfig(
            method="lora", target_modules=["q_proj"])), 0)


def test_training_loss_adds_the_orthogonal_regulariser_evaluation_does_not():
    adapted = apply_adapters(make_tiny_bert(num_labels=2), _config(["query", "value"]))
    ids, labels = torch.randint(5, 1000, (2, 9), generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1])
    with torch.no_grad():
        adapted.eval()
        assert torch.equal(adapted(input_ids=ids, labels=labels).loss,
                           adapted.module(input_ids=ids, labels=labels).loss)  # no regulariser
        adapted.train()  # BERT's dropout: the same seed for both
        torch.manual_seed(5)
        plain = adapted.module(input_ids=ids, labels=labels).loss  # PeftModel.forward skips it
        torch.manual_seed(5)
        regularised = adapted(input_ids=ids, labels=labels).loss
        reg = _orth_reg(adapted.unwrapped)
    assert reg > 1.0  # at init A A^T is near 0: ||-I||_F = sqrt(r) = 2
    assert regularised == pytest.approx(float(plain + 0.5 * reg), rel=1e-5)


def _one_step(adapted, batch) -> tuple[float, set[str]]:
    """One AdamW step plus AdaLoRA's allocation; return (loss, names of the tensors it changed)."""
    adapted.train()
    named = {n: p for n, p in adapted.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in named.items()}
    opt = torch.optim.AdamW(list(named.values()), lr=1e-2)
    loss = adapted(**batch).loss
    loss.backward()
    opt.step()
    adalora.update_and_allocate(adapted, 0)
    opt.zero_grad()
    return float(loss.detach()), {n for n, p in named.items() if not torch.equal(before[n], p.detach())}


def test_one_step_on_minilm(minilm):
    with shared_weight_copy(minilm.model) as model:
        adapted = apply_adapters(model, _config(["query", "value"], r=4))
        assert adapted.report.totals["trainable"] == 12 * 4 * (384 + 384 + 1)  # 36,912
        tokens = minilm.tokenizer(["a fine film", "a dull, tired film"], return_tensors="pt", padding=True)
        # the encoder has no loss of its own: a tiny objective on its output
        adapted.train()
        named = {n: p for n, p in adapted.named_parameters() if p.requires_grad}
        before = {n: p.detach().clone() for n, p in named.items()}
        opt = torch.optim.AdamW(list(named.values()), lr=1e-2)
        hidden = adapted(**tokens).last_hidden_state
        loss = hidden[:, 0].pow(2).mean() + 0.5 * _orth_reg(adapted.unwrapped)
        loss.backward()
        opt.step()
        adalora.update_and_allocate(adapted, 0)
        changed = {n for n, p in named.items() if not torch.equal(before[n], p.detach())}
    assert torch.isfinite(loss)
    assert len(named) == 36 and changed == set(named)  # A, E and B of all 12 layers
    assert all("lora_" in n for n in changed)


def test_one_step_on_the_tiny_llama():
    adapted = apply_adapters(make_tiny_llama(), _config(["q_proj", "v_proj"], r=4))
    ids = torch.randint(5, 1000, (2, 12), generator=torch.Generator().manual_seed(1))
    loss, changed = _one_step(adapted, {"input_ids": ids, "labels": ids})
    assert torch.isfinite(torch.tensor(loss)) and loss > 0
    trainable = {n for n, p in adapted.named_parameters() if p.requires_grad}
    assert changed == trainable and len(trainable) == 4 * 3  # A, E, B per layer
    assert not any("base_layer" in n for n in changed)


def _lm_run(model_dir: str, out, steps: int = 10) -> dict:
    return {
        "model": {"name": model_dir},
        "adapter": {"method": "adalora", "targets": [{"pattern": p, "r": 4} for p in ("q_proj", "v_proj")]},
        "tasks": [{"name": "arithmetic", "num_train": 16, "num_eval": 4}],
        "train": {"steps": steps, "batch_size": 4, "seq_len": 48, "learning_rate": 0.02, "schedule": "constant",
                  "eval_interval": 0, "save_interval": 0},
        "output_dir": str(out),
    }


def test_run_training_allocates_after_every_step_and_saves_the_pruned_adapter(tiny_llama_dir, tmp_path,
                                                                                 monkeypatch):
    steps = []
    original = AdaLoraModel.update_and_allocate

    def spy(self, global_step):
        steps.append(global_step)
        return original(self, global_step)

    monkeypatch.setattr(AdaLoraModel, "update_and_allocate", spy)
    cfg = parse_config(_lm_run(tiny_llama_dir, tmp_path / "run"))
    seen = {}

    class Keep(AdaLoraCallback):  # an extra observer: the trained model at the end
        def on_optimizer_step(self, args, state, control, model=None, **kwargs):
            seen["model"] = model

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            pass

    result = run_training(cfg, progress=False, callbacks=[Keep()])
    assert result.state == "finished" and result.steps == 10
    assert steps == list(range(10))  # once per optimiser step, 0-based, in order
    model = seen["model"]
    config = model.module.peft_config["default"]
    assert (config.total_step, config.tinit, config.tfinal) == (10, 1, 2)  # the run's own length
    # 4 layers start at rank 4 (16 triplets); the budget ends at target_r 3 per layer: 12 kept
    kept = {name: sum(mask) for name, mask in config.rank_pattern.items()}
    assert len(kept) == 4 and sum(kept.values()) == 12
    params = dict(model.unwrapped.named_parameters())
    for layer_name, mask in config.rank_pattern.items():  # the pruned singular values are zero
        # (saving rewrote the keys without the adapter name: PEFT edits the live config)
        e = params[layer_name if layer_name in params else f"{layer_name}.default"].detach().reshape(-1)
        assert torch.all(e[~torch.tensor(mask)] == 0)
    saved = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert saved["peft_type"] == "ADALORA" and saved["total_step"] == 10 and saved["init_r"] == 4
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    # counted at init_r: q_proj 32 x 32, v_proj 16 x 32 (2 key-value heads of 8), two blocks
    assert run["final_metrics"]["trainable_params"] == 2 * 4 * ((32 + 32 + 1) + (16 + 32 + 1))

    # loading keeps only the kept triplets (PEFT drops the pruned ones on save) and computes the same
    from transformers import AutoModelForCausalLM

    ids = torch.randint(5, 1000, (2, 9), generator=torch.Generator().manual_seed(2))
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    loaded = load_adapters(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), tmp_path / "run" / "adapter")
    loaded.eval()
    with torch.no_grad():
        got = loaded(input_ids=ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    rows = loaded.report.rows
    assert len(rows) == 4
    for row in rows:  # each layer holds its kept triplets only
        assert row.trainable == kept[f"{row.name}.lora_E"] * (row.m + row.n + 1), row.name


def test_save_load_round_trip_reproduces_outputs(tmp_path):
    adapted = apply_adapters(make_tiny_bert(num_labels=2), _config(["query", "value"], r=4, target_r=2))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # move every trainable tensor away from its init (E starts at 0)
        for p in adapted.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
    ids = torch.randint(5, 1000, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = adapted(input_ids=ids).logits
    save_adapters(adapted, tmp_path / "a")
    assert read_adapter_config(tmp_path / "a") == adapted.adapter_config
    loaded = load_adapters(make_tiny_bert(num_labels=2), tmp_path / "a")
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, expected)
    assert loaded.report.totals == adapted.report.totals  # nothing pruned yet: every triplet saved
    assert loaded.module.peft_config["default"].target_r == 2
    frozen = load_adapters(make_tiny_bert(num_labels=2), tmp_path / "a", is_trainable=False)
    assert not any(p.requires_grad for p in frozen.parameters())
    frozen.train()  # an inference-only load has no allocator: the plain loss, no error
    torch.manual_seed(3)
    plain = frozen.module(input_ids=ids, labels=torch.tensor([0, 1])).loss
    torch.manual_seed(3)
    assert torch.equal(frozen(input_ids=ids, labels=torch.tensor([0, 1])).loss, plain)


def test_config_fields():
    cfg = _config(["q_proj"], r=6, target_r=3, alpha=8.0, dropout=0.1)
    assert cfg.targets[0].target_r == 3
    assert target_for("adalora", pattern="q", r=4, k=3, selection="centroid", target_r=2).target_r == 2
    for bad, field in ((dict(k=2), "k"), (dict(selection="random"), "selection"), (dict(rb_splits=2), "rb_splits"),
                       (dict(normalize_rows=True), "normalize_rows")):
        with pytest.raises(ValueError, match=f"targets.0.{field}=.* does not apply to method 'adalora'"):
            AdapterConfig(method="adalora", targets=[TargetConfig(pattern="q", r=4, **bad)])
    for method in ("idlora", "lora", "dora", "hydralora", "full"):  # target_r is AdaLoRA's own
        with pytest.raises(ValueError, match=r"target_r=2 does not apply to method .*\(only to adalora\)"):
            AdapterConfig(method=method, targets=[TargetConfig(pattern="q", r=4, target_r=2)])
    with pytest.raises(ValueError, match="target_r=8 must not exceed r=4"):
        TargetConfig(pattern="q", r=4, target_r=8)
    with pytest.raises(ConfigError, match="target_r"):
        parse_config({"adapter": {"method": "adalora", "targets": [{"pattern": "q", "target_r": 0}]}})
    run = parse_config({"adapter": {"method": "adalora", "r": 4, "target_r": 3, "target_modules": ["q", "v"]}})
    assert [(t.pattern, t.r, t.target_r) for t in run.adapter.targets] == [("q", 4, 3), ("v", 4, 3)]
