"""save_adapters -> load_adapters on a fresh base model reproduces the outputs exactly (fp32)."""

from __future__ import annotations

import pytest
import torch
import yaml

from idlora_core.adapters import inject
from idlora_core.adapters.io import load_adapters, read_adapter_config, save_adapters
from idlora_core.config import AdapterConfig, RunConfig, TargetConfig
from tests.conftest import make_tiny_bert, make_tiny_llama, shared_weight_copy

pytestmark = pytest.mark.usefixtures("private_skeleton_cache", "one_thread")


METHODS = ["idlora", "lora", "dora", "hydralora", "full"]


def _perturb(model, seed=0):
    """Move every trainable tensor away from its init so that a lost tensor would show."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def _out(model, ids):
    with torch.no_grad():
        out = model(input_ids=ids)
    return out.logits


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("factory", [lambda: make_tiny_bert(num_labels=2), make_tiny_llama], ids=["bert", "llama"])
def test_roundtrip_reproduces_outputs_exactly(method, factory, tmp_path, monkeypatch):
    patterns = ["query", "value"] if factory().__class__.__name__.startswith("Bert") else ["q_proj", "down_proj"]
    cfg = AdapterConfig(method=method, targets=[TargetConfig(pattern=p, r=4, k=2) for p in patterns], seed=3)
    model, report = inject.apply_adapters(factory(), cfg)
    _perturb(model)
    ids = torch.randint(5, 1000, (2, 7), generator=torch.Generator().manual_seed(1))
    expected = _out(model, ids)
    save_adapters(model, cfg, tmp_path / "adapter")

    def no_clustering(*args, **kwargs):
        raise AssertionError("loading must reuse the saved skeleton indices")

    monkeypatch.setattr(inject, "compute_skeleton", no_clustering)
    loaded, loaded_report = load_adapters(factory(), tmp_path / "adapter")
    assert torch.equal(_out(loaded, ids), expected)
    assert loaded_report.to_rows() == report.to_rows()
    assert loaded_report.totals == report.totals
    saved = read_adapter_config(tmp_path / "adapter")
    assert saved.method == method
    if method == "idlora":
        assert saved.skeletons == report.resolved_skeletons and len(saved.skeletons) == 4
    else:
        assert saved.skeletons is None


def test_run_config_is_saved_whole_with_skeletons(tmp_path):
    run = RunConfig(adapter=AdapterConfig(method="idlora", targets=[TargetConfig(pattern="q_proj", r=4, k=2)]),
                    output_dir=str(tmp_path / "run"))
    model, report = inject.apply_adapters(make_tiny_llama(), run.adapter)
    save_adapters(model, run, tmp_path / "a")
    data = yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())
    assert data["output_dir"] == str(tmp_path / "run") and data["train"]["steps"] == run.train.steps
    assert data["adapter"]["skeletons"] == report.resolved_skeletons
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["adapter_model.safetensors", "config.yaml"]


def test_real_minilm_roundtrip(minilm, tmp_path):
    cfg = AdapterConfig(method="idlora", targets=[TargetConfig(pattern="value", layers=[0, 3], r=8, k=4, rb_splits=2)])
    ids = minilm.tokenizer("Low-rank adapters, reloaded.", return_tensors="pt")["input_ids"]
    with shared_weight_copy(minilm.model) as copied:
        model, _ = inject.apply_adapters(copied, cfg)
        _perturb(model)  # adapter tensors only: the shared base weights stay as they are
        with torch.no_grad():
            expected = model(input_ids=ids).last_hidden_state
        save_adapters(model, cfg, tmp_path)
    with shared_weight_copy(minilm.model) as fresh:
        loaded, report = load_adapters(fresh, tmp_path)
        with torch.no_grad():
            assert torch.equal(loaded(input_ids=ids).last_hidden_state, expected)
    assert report.totals["trainable"] == 2 * (384 * 8 // 4 + 4 * 8)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an adapter folder"):
        load_adapters(make_tiny_llama(), tmp_path)
    cfg = AdapterConfig(method="hydralora", targets=[TargetConfig(pattern="q_proj", r=4, k=2)])
    model, _ = inject.apply_adapters(make_tiny_llama(), cfg)
    save_adapters(model, cfg, tmp_path)
    other = cfg.model_copy(update={"targets": [TargetConfig(pattern="q_proj", r=2, k=2)]})
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"adapter": other.model_dump(mode="json")}))
    with pytest.raises(ValueError, match="saved shape"):
        load_adapters(make_tiny_llama(), tmp_path)


def test_peft_adapter_with_its_own_name(tmp_path):
    cfg = AdapterConfig(method="lora", targets=[TargetConfig(pattern="v_proj", r=4)])
    model, _ = inject.apply_adapters(make_tiny_llama(), cfg, adapter_name="mine")
    _perturb(model)
    ids = torch.randint(5, 1000, (1, 6), generator=torch.Generator().manual_seed(2))
    expected = _out(model, ids)
    save_adapters(model, cfg, tmp_path)
    loaded, report = load_adapters(make_tiny_llama(), tmp_path)
    assert torch.equal(_out(loaded, ids), expected)
    assert loaded.active_adapter == "mine" and report.totals["trainable"] == 2 * 4 * (16 + 32)
