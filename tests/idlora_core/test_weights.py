"""The weight reader: layers and weights from the files equal a full transformers load; bad
files give one clear error; a sweep reads only its own tensor."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from idlora_core.layers import list_linear_layers
from idlora_core.weights import WeightFileError, WeightReader, open_weights


def as_table(layers) -> dict:
    return {layer.name: (layer.out_features, layer.in_features, layer.has_bias) for layer in layers}


def assert_equal_to_model(reader: WeightReader, model: torch.nn.Module) -> None:
    """Every listed layer and every weight equals the loaded model's, bit for bit."""
    assert as_table(reader.layers()) == as_table(list_linear_layers(model))
    assert list(reader.linear) == [layer.name for layer in list_linear_layers(model)]  # module order
    params = dict(model.named_parameters())
    for name in reader.linear:
        expected = params[f"{name}.weight"].detach().to(torch.float64).numpy()
        got = reader.weight(name, dtype=np.float64)
        assert got.dtype == np.float64 and got.flags.c_contiguous
        np.testing.assert_array_equal(got, expected, err_msg=name)
        assert reader.weight(name).dtype == np.float32


def test_minilm_equals_full_load(minilm, minilm_weights):
    assert_equal_to_model(minilm_weights, minilm.model)
    info = minilm_weights.summary()
    assert info["params"] - 512 == sum(p.numel() for p in minilm.model.parameters())  # + position_ids
    assert (info["architecture"], info["dtype"], info["blocks"]) == ("BertModel", "float32", 6)


def test_smollm2_gguf_equals_full_load(smollm2):
    # GGUF tensors dequantised one at a time, Llama q/k un-permuted as transformers does.
    reader = open_weights("smollm2-135m")
    assert reader.format == "gguf" and reader.source.endswith(".gguf")
    assert as_table(reader.layers()) == as_table(list_linear_layers(smollm2.model))
    info = reader.summary()  # Model & layers shows these: no "?" for a GGUF file
    assert (info["architecture"], info["blocks"]) == (type(smollm2.model).__name__, 30)
    params = dict(smollm2.model.named_parameters())
    for name in ["model.layers.0.self_attn.q_proj", "model.layers.7.self_attn.k_proj",
                 "model.layers.29.mlp.down_proj", "model.layers.12.self_attn.v_proj"]:
        np.testing.assert_array_equal(reader.weight(name), params[f"{name}.weight"].detach().numpy())


@pytest.mark.parametrize("dtype", ["bf16", "fp16", "fp32"])
def test_sharded_tiny_llama_equals_full_load(tmp_path, sharded_llama, dtype):
    from transformers import AutoModelForCausalLM

    folder = sharded_llama(tmp_path / dtype, dtype)
    assert (folder / "model.safetensors.index.json").is_file()
    assert not list(folder.glob("tokenizer*"))  # a weight-only folder works for analysis
    reader = WeightReader(folder)
    assert len({info.file for info in reader.linear.values()}) > 1  # really sharded
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert_equal_to_model(reader, model)
    assert "model.layers.1.mlp.down_proj" in reader.linear and "lm_head" in reader.linear  # untied
    assert not any("embed" in name for name in reader.linear)
    assert reader.summary()["dtype"] == {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[dtype]


def test_truncated_shard_and_missing_shard_give_one_clear_error(tmp_path, sharded_llama):
    folder = sharded_llama(tmp_path / "t", "bf16")
    shard = sorted(folder.glob("model-*.safetensors"))[-1]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 100])
    with pytest.raises(WeightFileError, match=rf"{shard.name}.*truncated.*download it again") as info:
        WeightReader(folder)
    assert "\n" not in str(info.value)
    shard.write_bytes(data)
    WeightReader(folder)  # whole again
    index = folder / "model.safetensors.index.json"
    doc = json.loads(index.read_text())
    doc["weight_map"]["model.layers.0.mlp.up_proj.weight"] = "model-00009-of-00009.safetensors"
    index.write_text(json.dumps(doc))
    with pytest.raises(WeightFileError, match="names 1 missing shard.*model-00009-of-00009") as info:
        WeightReader(folder)
    assert "\n" not in str(info.value)


def test_folder_errors_are_clear(tmp_path):
    from idlora_core.models import ModelNotFoundError

    with pytest.raises(ModelNotFoundError, match="no config.json"):
        open_weights(str(tmp_path))
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(WeightFileError, match="only pytorch_model.bin.*safetensors"):
        open_weights(str(tmp_path))
    with pytest.raises(ValueError, match="does not exist"):
        open_weights(str(tmp_path / "nope"))


def test_layer_sweep_reads_no_other_tensor(tmp_path, sharded_llama, monkeypatch):
    from analysis.sweep import SweepSpec
    from analysis.sweep_model import sweep_model

    reader = WeightReader(sharded_llama(tmp_path / "spy", "fp16"))
    real, read = reader._read, []
    monkeypatch.setattr(reader, "_read", lambda info: read.append(info.key) or real(info))
    table = sweep_model(reader, ["model.layers.1.mlp.down_proj"], SweepSpec([1, 2], [4]), cache=False)
    assert read == ["model.layers.1.mlp.down_proj.weight"]
    assert set(table["layer"]) == {"model.layers.1.mlp.down_proj"} and table["feasible"].all()


def test_bad_layer_name_lists_close_matches(minilm_weights):
    with pytest.raises(ValueError, match="close matches: encoder.layer.0.attention.self.query"):
        minilm_weights.weight("encoder.layer.0.attention.self.qury")
    with pytest.raises(ValueError, match="dtype"):
        minilm_weights.weight("encoder.layer.0.attention.self.query", dtype=np.float16)
