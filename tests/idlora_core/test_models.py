"""The model catalog: both embedded models' linear layers against their configs, and errors."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from idlora_core.layers import get_linear, get_weight, layer_kind, list_linear_layers
from idlora_core.models import ModelNotFoundError, available_models, load_model


def test_minilm_layers_match_bert_formulas(minilm):
    cfg = minilm.model.config
    h, ffn, blocks = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    assert (h, ffn, blocks) == (384, 1536, 6)
    layers = list_linear_layers(minilm.model)
    per_block = {"q": (h, h), "k": (h, h), "v": (h, h), "attn_out": (h, h),
                 "ffn_in": (ffn, h), "ffn_out": (h, ffn)}
    assert len(layers) == 6 * blocks + 1  # + the pooler
    for b in range(blocks):
        mine = [layer for layer in layers if layer.block == b]
        assert {layer.kind: (layer.out_features, layer.in_features) for layer in mine} == per_block
        assert all(layer.has_bias for layer in mine)
    assert layers[-1].name == "pooler.dense" and layers[-1].block is None
    total = sum(layer.params for layer in layers)
    assert total == blocks * (4 * (h * h + h) + 2 * ffn * h + ffn + h) + h * h + h
    modules = dict(minilm.model.named_modules())
    assert total == sum(p.numel() for layer in layers for p in modules[layer.name].parameters())
    assert minilm.kind == "encoder" and minilm.name == "all-MiniLM-L6-v2"


def test_smollm2_layers_match_llama_formulas(smollm2):
    cfg = smollm2.model.config
    h, ffn, blocks = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    kv = cfg.num_key_value_heads * (h // cfg.num_attention_heads)
    assert (h, ffn, blocks, kv) == (576, 1536, 30, 192)
    layers = list_linear_layers(smollm2.model)
    assert len(layers) == 7 * blocks  # lm_head is tied to the embeddings and left out
    shapes = {"q": (h, h), "k": (kv, h), "v": (kv, h), "o": (h, h),
              "gate": (ffn, h), "up": (ffn, h), "down": (h, ffn)}
    for layer in layers:
        assert (layer.out_features, layer.in_features) == shapes[layer.kind]
        assert not layer.has_bias and 0 <= layer.block < blocks
    assert sum(layer.params for layer in layers) == blocks * (2 * h * h + 2 * kv * h + 3 * ffn * h)
    assert smollm2.kind == "causal-lm" and "4-bit" in smollm2.note


def test_get_weight_is_a_float64_copy(minilm):
    name = "encoder.layer.3.attention.self.value"
    W = get_weight(minilm.model, name)
    module = get_linear(minilm.model, name)
    assert W.dtype == np.float64 and W.shape == (384, 384)
    np.testing.assert_array_equal(W, module.weight.detach().to(torch.float64).numpy())
    W[0, 0] += 1.0
    assert module.weight[0, 0].item() != W[0, 0]


def test_layer_kinds():
    assert layer_kind("model.layers.3.mlp.down_proj") == "down"
    assert layer_kind("encoder.layer.1.attention.output.dense") == "attn_out"
    assert layer_kind("encoder.layer.1.output.dense") == "ffn_out"
    assert layer_kind("classifier") == "other"


def test_errors_name_what_is_available(minilm, tmp_path):
    assert available_models() == ["minilm", "smollm2-135m"]
    with pytest.raises(ModelNotFoundError, match="unknown model 'bert-huge'.*minilm, smollm2-135m"):
        load_model("bert-huge")
    with pytest.raises(ModelNotFoundError, match="does not exist.*minilm, smollm2-135m"):
        load_model(str(tmp_path / "missing-model"))
    with pytest.raises(ModelNotFoundError, match="holds no config.json"):
        load_model(str(tmp_path))
    with pytest.raises(ValueError, match="does not exist; close matches: encoder.layer.0.attention.self.query"):
        get_linear(minilm.model, "encoder.layer.0.attention.self.qurey")
    with pytest.raises(ValueError, match="is not a linear layer"):
        get_linear(minilm.model, "encoder.layer.0")


@pytest.mark.parametrize("config,kind", [
    ({"model_type": "qwen2"}, "causal-lm"),  # no architectures field: from the mappings
    ({"model_type": "gemma3_text"}, "causal-lm"),
    ({"model_type": "phi3", "architectures": ["Phi3ForCausalLM"]}, "causal-lm"),
    ({"model_type": "bert"}, "encoder"),  # BERT has an LM-head class, but is masked-LM
    ({"model_type": "bert", "architectures": ["BertModel"]}, "encoder"),
    ({"model_type": "bert", "is_decoder": True}, "causal-lm"),
    ({"model_type": "distilbert"}, "encoder"),
])
def test_model_kind_from_transformers_mappings(config, kind):
    from idlora_core.models import model_kind

    assert model_kind(config) == kind


def test_hub_defaults_set_by_entry_points_not_on_import():
    import subprocess
    import sys

    code = ("import os, idlora_core.models, idlora_core.weights; "
            "print(os.environ.get('HF_HUB_ETAG_TIMEOUT')); "
            "idlora_core.models.set_hub_defaults(); print(os.environ['HF_HUB_ETAG_TIMEOUT'])")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_HUB")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout.split()
    assert out == ["None", "5"]


def test_aliases_defined_once():
    from idlora_core.models import ALIASES, SHORT_NAMES, canonical_name, short_name

    assert available_models() == list(SHORT_NAMES) == ["minilm", "smollm2-135m"]
    for alias in ("minilm", "All-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
        assert canonical_name(alias) == "all-MiniLM-L6-v2" and short_name(alias) == "minilm"
    assert short_name("HuggingFaceTB/SmolLM2-135M-Instruct") == "smollm2-135m"
    assert short_name("/some/folder") is None and len(ALIASES) == 6
