"""apply_adapters on tiny and real transformers models: init equivalence, counts against the
docs/ADAPTERS.md formulas and against requires_grad, what an optimiser step changes, skeleton rows,
target errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from idlora_core.adapters import inject
from idlora_core.adapters import skeletons as skeleton_module
from idlora_core.adapters.budget import trainable_params
from idlora_core.adapters.idlora import IDLoRALinear
from idlora_core.adapters.inject import resolve_targets
from idlora_core.adapters.model import apply_adapters
from idlora_core.config import AdapterConfig, TargetConfig, target_for
from tests.conftest import make_tiny_bert, make_tiny_llama, shared_weight_copy

pytestmark = pytest.mark.usefixtures("private_skeleton_cache", "one_thread")


METHODS = ["idlora", "lora", "dora", "hydralora", "full"]
ZERO_INIT = ["idlora", "lora", "dora", "hydralora"]

# model factory, targets, layer names (block 0) expected for the first target
TINY = {
    "bert": (lambda: make_tiny_bert(num_labels=3), ["query", "value", "intermediate.dense"]),
    "llama": (make_tiny_llama, ["q_proj", "v_proj", "down_proj"]),
}


def _config(method, patterns, r=4, k=2, **extra):
    # k: ID-LoRA's clusters and HydraLoRA's heads (target_for keeps the one the method uses)
    return AdapterConfig(
        method=method, targets=[target_for(method, pattern=p, r=r, k=k, heads=k, **extra) for p in patterns]
    )


def _counts(method, k):
    # trainable_params' keyword for the method's parallel parts: heads for HydraLoRA, else k
    return {"heads": k} if method == "hydralora" else {"k": k}


def _ids(vocab=1000, shape=(2, 9), seed=0):
    return torch.randint(5, vocab, shape, generator=torch.Generator().manual_seed(seed))


def _logits(model, ids):
    with torch.no_grad():
        out = model(input_ids=ids)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def _requires_grad_total(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("arch", sorted(TINY))
@pytest.mark.parametrize("method", METHODS)
def test_tiny_init_equal_and_counts_match_formulas(arch, method):
    factory, patterns = TINY[arch]
    model = factory()
    ids = _ids()
    before = _logits(model, ids)
    adapted = apply_adapters(model, _config(method, patterns))
    report = adapted.report
    assert torch.equal(_logits(adapted, ids), before)
    assert len(report.rows) == 2 * len(patterns)  # two blocks
    for row in report.rows:
        expected = trainable_params(
            method, row.m, row.n, 4, p=1, bias=row.bias, **_counts(method, 2)
        )
        assert row.trainable == row.formula == expected, row.name
        assert row.method == method
        assert row.frozen_adapter_elements == 0  # ID-LoRA gathers A_c x, no copied rows
        if method == "idlora":  # adapter bytes: T and B (fp32) plus the (k, r) int64 skeleton
            assert row.adapter_bytes == 4 * row.trainable + 8 * 2 * 4
    totals = report.totals
    assert totals["trainable_total"] == _requires_grad_total(adapted)
    head = 32 * 3 + 3 if arch == "bert" else 0  # BERT's classifier; the Llama LM head is frozen
    assert report.head_trainable == head and totals["head_trainable"] == head
    assert totals["trainable"] == sum(r.formula for r in report.rows)
    assert totals["base_params"] == sum(p.numel() for p in factory().parameters())
    assert type(adapted).__name__ == "AdaptedModel" and adapted.method == method
    assert (method in ("lora", "dora")) == (type(adapted.module).__name__ == "PeftModel")
    assert adapted.unwrapped is model  # the transformers model, adapted in place


@pytest.mark.parametrize("method", METHODS)
def test_step_changes_only_intended_tensors(method):
    model = make_tiny_bert(num_labels=2)
    adapted = apply_adapters(model, _config(method, ["query", "value"]))
    adapted.train()
    named = dict(adapted.named_parameters())
    before = {n: t.detach().clone() for n, t in adapted.state_dict().items()}
    opt = torch.optim.AdamW([p for p in adapted.parameters() if p.requires_grad], lr=1e-2)
    ids, labels = _ids(), torch.tensor([0, 1])
    for _ in range(2):  # routers / lora_A get no gradient while B = 0: the second step moves them
        opt.zero_grad()
        adapted(input_ids=ids, labels=labels).loss.backward()
        opt.step()
    after = adapted.state_dict()
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed == {n for n, p in named.items() if p.requires_grad}
    body = {n for n in changed if "classifier" not in n}
    if method == "idlora":
        assert body and all(n.endswith(("idlora_B", "idlora_T")) for n in body)
        assert not any(n.endswith("idlora_skeleton") for n in changed)  # the rows J_c fixed
    elif method == "full":
        assert body and all(n.endswith(("query.weight", "query.bias", "value.weight", "value.bias")) for n in body)
    else:
        assert body and all(("lora_" in n or "hydralora_" in n) for n in body), body
    assert not any(("base_layer" in n or "embeddings" in n) for n in changed)


def test_idlora_count_independent_of_k_except_router():
    totals = {}
    for k in (1, 2, 4):
        adapted = apply_adapters(make_tiny_llama(), _config("idlora", ["q_proj"], r=4, k=k))
        report = adapted.report
        totals[k] = report.totals["trainable"]
        assert report.totals["frozen_adapter_elements"] == 0
    assert totals[2] - totals[1] == 2 * 4 and totals[4] - totals[1] == 2 * 3 * 4  # 2 layers


@pytest.mark.parametrize("p", [1, 2, 4])
def test_rank_boosting_counts(p):
    adapted = apply_adapters(make_tiny_llama(), _config("idlora", ["down_proj"], r=4, k=2, rb_splits=p))
    report = adapted.report
    for row in report.rows:
        assert row.p == p and row.trainable == 32 * 4 // p**2 + 2 * 4 == row.formula
    assert report.totals["trainable_total"] == _requires_grad_total(adapted)


def test_rank_boosting_indivisible_m_is_clear_error():
    cfg = AdapterConfig(method="idlora", targets=[TargetConfig(pattern="score", r=3, k=1, rb_splits=3)])
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    model = LlamaForSequenceClassification(
        LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                    num_attention_heads=4, num_key_value_heads=2, num_labels=4)
    )
    cfg = cfg.model_copy(update={"skeletons": {"score": [[0, 1, 2]]}})
    with pytest.raises(ValueError, match="m=4 .*p=3"):
        apply_adapters(model, cfg)


def test_layers_filter_and_model_order():
    cfg = AdapterConfig(method="lora", targets=[TargetConfig(pattern="v_proj", layers=[1]), TargetConfig(pattern="q_proj")])
    names = [n for n, _ in resolve_targets(make_tiny_llama(), cfg)]
    assert names == ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj",
                     "model.layers.1.self_attn.v_proj"]
    cfg = AdapterConfig(method="lora", targets=[TargetConfig(pattern=r"layers\.1\..*(gate|up)_proj", regex=True)])
    assert [n for n, _ in resolve_targets(make_tiny_llama(), cfg)] == [
        "model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj"]


@pytest.mark.parametrize(
    "target,message",
    [
        (TargetConfig(pattern="qproj"), r"'qproj' matches no linear layer; close matches: .*q_proj"),
        (TargetConfig(pattern="self_attn"), r"'self_attn'.*LlamaAttention, not an nn.Linear"),
        (TargetConfig(pattern="q_proj", layers=[7]), r"no linear layer in blocks \[7\]"),
        (TargetConfig(pattern="attn", regex=True), r"regex 'attn' matches 'model.layers.0.self_attn'"),
    ],
)
def test_bad_targets_are_clear_errors(target, message):
    with pytest.raises(ValueError, match=message):
        apply_adapters(make_tiny_llama(), AdapterConfig(method="lora", targets=[target]))


def test_minilm_six_targets_longer_suffix_wins():
    patterns = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]
    cfg = AdapterConfig(method="lora", targets=[TargetConfig(pattern=p) for p in patterns])
    got = resolve_targets(make_tiny_bert(), cfg)
    assert len(got) == 12
    by_pattern = {}
    for name, target in got:
        by_pattern.setdefault(target.pattern, []).append(name)
    assert by_pattern["output.dense"] == ["encoder.layer.0.output.dense", "encoder.layer.1.output.dense"]
    assert by_pattern["attention.output.dense"] == [
        "encoder.layer.0.attention.output.dense", "encoder.layer.1.attention.output.dense"]


def test_two_targets_claiming_one_layer():
    cfg = AdapterConfig(method="idlora", targets=[TargetConfig(pattern="q_proj"), TargetConfig(pattern="proj", regex=True)])
    with pytest.raises(ValueError, match="matched by targets 0 and 1"):
        apply_adapters(make_tiny_llama(), cfg)


def test_k_times_r_above_m_is_clear_error():
    with pytest.raises(ValueError, match="k\\*r <= m"):
        apply_adapters(make_tiny_llama(), _config("idlora", ["k_proj"], r=8, k=4))  # m = 16


def test_saved_skeletons_are_used_without_clustering(monkeypatch):
    names = ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"]
    skeletons = {names[0]: [[0, 1, 2, 3], [9, 8, 7, 6]], names[1]: [[31, 0, 5, 6], [1, 2, 3, 4]]}

    def boom(*args, **kwargs):
        raise AssertionError("clustering ran although skeletons were given")

    monkeypatch.setattr(skeleton_module, "compute_skeleton", boom)
    cfg = _config("idlora", ["q_proj"]).model_copy(update={"skeletons": skeletons})
    model = apply_adapters(make_tiny_llama(), cfg)
    report = model.report
    assert report.resolved_skeletons == skeletons
    w0 = make_tiny_llama().model.layers[1].self_attn.q_proj.weight
    layer = model.model.layers[1].self_attn.q_proj
    assert layer.skeleton == skeletons[names[1]]
    x = torch.randn(3, 32)
    with torch.no_grad():  # z_c read from the base output equals the saved rows of W0 times x
        torch.testing.assert_close(layer.gather(layer.base_layer(x)),
                                   torch.einsum("krn,bn->bkr", w0[torch.tensor(skeletons[names[1]])], x))
    assert torch.equal(layer.idlora_skeleton, torch.tensor(skeletons[names[1]]))
    bad = cfg.model_copy(update={"skeletons": {names[0]: [[0, 1, 2]]}})
    with pytest.raises(ValueError, match="k=2, r=4"):
        apply_adapters(make_tiny_llama(), bad)


def test_gradient_of_b_matches_finite_differences_through_model():
    model = make_tiny_bert(num_labels=2).double()
    adapted = apply_adapters(model, _config("idlora", ["value"], r=4, k=2))
    layer = adapted.bert.encoder.layer[1].attention.self.value
    with torch.no_grad():
        for m in adapted.modules():
            if isinstance(m, IDLoRALinear):
                m.idlora_B.normal_(std=0.5)
                m.idlora_T.normal_(std=0.5)
    ids, labels = _ids(), torch.tensor([1, 0])

    def loss():
        return adapted(input_ids=ids, labels=labels).loss

    loss().backward()
    grad = layer.idlora_B.grad
    rng = np.random.default_rng(0)
    eps = 1e-6
    with torch.no_grad():
        for idx in [tuple(rng.integers(0, s) for s in grad.shape) for _ in range(8)]:
            layer.idlora_B[idx] += eps
            up = loss().item()
            layer.idlora_B[idx] -= 2 * eps
            down = loss().item()
            layer.idlora_B[idx] += eps
            assert (up - down) / (2 * eps) == pytest.approx(grad[idx].item(), rel=1e-5, abs=1e-9)


# ---- real models: a few layers each keeps the runtime down ----------------------------------

REAL = {
    "minilm": (["query", "intermediate.dense"], [0, 5], "The movie was surprisingly good."),
    "smollm2": (["q_proj", "down_proj"], [0, 29], "Write a haiku about low-rank adapters."),
}


@pytest.mark.parametrize("which", sorted(REAL))
def test_real_models_init_equal_and_counts(which, request):
    loaded = request.getfixturevalue(which)
    patterns, blocks, text = REAL[which]
    ids = loaded.tokenizer(text, return_tensors="pt")["input_ids"]
    base = _logits(loaded.model, ids)
    for method in ZERO_INIT:
        cfg = AdapterConfig(
            method=method, targets=[TargetConfig(pattern=p, layers=blocks, r=8, k=4) for p in patterns]
        )
        with shared_weight_copy(loaded.model) as copied:
            adapted = apply_adapters(copied, cfg)
            report = adapted.report
            assert torch.equal(_logits(adapted, ids), base), method
            assert len(report.rows) == 4
            for row in report.rows:
                assert row.trainable == row.formula == trainable_params(method, row.m, row.n, 8, **_counts(method, 4))
            assert report.totals["trainable_total"] == _requires_grad_total(adapted)
            if method != "idlora":
                continue
            for row in report.rows:
                skeleton = np.asarray(report.resolved_skeletons[row.name])
                assert skeleton.shape == (4, 8) and len(set(skeleton.ravel())) == 32
                w0 = loaded.model.get_submodule(row.name).weight
                layer = adapted.get_submodule(row.name)
                assert torch.equal(layer.idlora_skeleton.cpu(), torch.from_numpy(skeleton))
                x = torch.randn(3, row.n)  # z_c gathered from the output = the rows W0[J_c] times x
                with torch.no_grad():
                    zc = layer.gather(layer.base_layer(x))
                    torch.testing.assert_close(zc, torch.einsum("krn,bn->bkr", w0[torch.from_numpy(skeleton)], x),
                                               rtol=1e-4, atol=1e-4)
    assert torch.equal(_logits(loaded.model, ids), base)  # the session model is intact


def test_real_selections_differ_and_seeds_repeat(minilm):
    name = "encoder.layer.0.attention.self.query"
    weight = minilm.model.get_submodule(name).weight

    def skeleton(selection, seed=0):
        return inject.compute_skeleton(weight, TargetConfig(pattern="query", r=8, k=4, selection=selection), seed)

    got = {s: skeleton(s) for s in ("centroid", "id", "random")}
    assert got["centroid"] != got["id"] and got["centroid"] != got["random"] and got["id"] != got["random"]
    for s in got:
        assert skeleton(s) == got[s]
    assert skeleton("random", seed=1) != got["random"]
    # centroid: each cluster's chosen rows are the ones nearest its mean (k-means labels)
    from idlora_core.linalg.clustering import MinSizeKMeans

    w = weight.detach().double().numpy()
    labels = MinSizeKMeans(n_clusters=4, min_size=8, random_state=0).fit(w).labels_
    for rows in got["centroid"]:
        c = labels[rows[0]]
        members = np.flatnonzero(labels == c)
        dist = np.linalg.norm(w[members] - w[members].mean(0), axis=1)
        assert set(rows) == set(members[np.argsort(dist)[:8]])


def test_config_error_leaves_model_untouched_and_progress_is_reported():
    model = make_tiny_llama()
    state = {n: t.clone() for n, t in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    bad = AdapterConfig(method="idlora", targets=[TargetConfig(pattern="q_proj", r=4, k=2),
                                                  TargetConfig(pattern="k_proj", r=8, k=4)])
    with pytest.raises(ValueError, match="k\\*r <= m"):
        apply_adapters(model, bad)
    assert not any(isinstance(m, IDLoRALinear) for m in model.modules())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(torch.equal(t, state[n]) for n, t in model.state_dict().items())
    calls = []
    apply_adapters(model, _config("idlora", ["q_proj"]), progress=lambda d, t, msg: calls.append((d, t, msg)))
    assert calls == [(1, 2, "model.layers.0.self_attn.q_proj"), (2, 2, "model.layers.1.self_attn.q_proj")]


@pytest.mark.parametrize("method", METHODS)
def test_per_target_hyperparameters_and_llama_score_head(method):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    model = LlamaForSequenceClassification(LlamaConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, num_labels=3, pad_token_id=0,
    ))
    cfg = AdapterConfig(method=method, targets=[
        target_for(method, pattern="q_proj", r=2, k=2, heads=2, alpha=8.0),
        target_for(method, pattern="up_proj", r=8, k=3, heads=3, layers=[1]),
    ])
    adapted = apply_adapters(model, cfg)
    report = adapted.report
    by_name = {row.name: row for row in report.rows}
    assert sorted(by_name) == ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.up_proj",
                               "model.layers.1.self_attn.q_proj"]
    up = by_name["model.layers.1.mlp.up_proj"]
    assert up.trainable == trainable_params(method, 64, 32, 8, **_counts(method, 3))
    assert by_name["model.layers.0.self_attn.q_proj"].trainable == trainable_params(
        method, 32, 32, 2, **_counts(method, 2))
    assert report.head_trainable == 3 * 32  # the score head, no bias, counted apart
    inner = adapted.unwrapped
    if method != "full":
        for name, scaling in [("model.layers.0.self_attn.q_proj", 4.0), ("model.layers.1.mlp.up_proj", 2.0)]:
            got = inner.get_submodule(name).scaling
            assert (got["default"] if isinstance(got, dict) else got) == scaling
    assert report.totals["trainable_total"] == _requires_grad_total(adapted)
    assert json.loads(json.dumps(report.to_dict()))["totals"] == report.totals
