"""The YAML schema: round trip, unknown keys, readable errors, overrides."""

import pytest

from idlora_core.config import (
    ConfigError,
    RunConfig,
    apply_overrides,
    dumps_config,
    load_config,
    loads_config,
    save_config,
)


def test_round_trip_is_identity(tmp_path):
    cfg = RunConfig()
    cfg.adapter.skeletons = {"encoder.layer.0.attention.self.query": [[1, 2], [5, 9]]}
    path = save_config(cfg, tmp_path / "c.yaml")
    again = load_config(path)
    assert again == cfg
    assert loads_config(dumps_config(again)) == again


def test_every_error_reported_at_once_with_path_and_value():
    text = """
model: {name: minilm, colour: red}
adapter: {method: qlora, targets: [{pattern: query, r: 0}]}
train: {steps: -3}
"""
    with pytest.raises(ConfigError) as info:
        loads_config(text)
    errors = info.value.errors
    assert len(errors) == 4, errors
    joined = "\n".join(errors)
    assert "model.colour: unknown key" in joined
    assert "adapter.method" in joined and "'qlora'" in joined and "idlora" in joined
    assert "adapter.targets.0.r" in joined
    assert "train.steps" in joined and "-3" in joined


def test_rb_splits_must_divide_r():
    with pytest.raises(ConfigError, match="rb_splits=3 must divide r=8"):
        loads_config("adapter: {targets: [{pattern: q_proj, r: 8, rb_splits: 3}]}")


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        loads_config("a: [1, 2")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="expected a mapping"):
        loads_config("- 1\n- 2\n")


def test_yaml_tags_are_not_executed():
    with pytest.raises(ConfigError, match="not valid YAML"):
        loads_config("model: !!python/object/apply:os.system ['echo hi']")


def test_overrides():
    cfg = apply_overrides(RunConfig(), ["train.steps=50", "adapter.targets.0.r=16", "adapter.method=lora"])
    assert cfg.train.steps == 50 and cfg.adapter.targets[0].r == 16 and cfg.adapter.method == "lora"
    with pytest.raises(ConfigError, match="no such field"):
        apply_overrides(RunConfig(), ["train.nope.x=1"])
    with pytest.raises(ConfigError, match="unknown key"):
        apply_overrides(RunConfig(), ["train.nope=1"])


def test_name_lists_derive_from_the_schema_literals():
    from typing import get_args

    from idlora_core import config
    from idlora_core.tasks import BUILTIN, CAUSAL_LM_TASKS, CLASSIFICATION_TASKS

    assert config.METHODS == get_args(config.AdapterMethod)
    assert config.ALL_METHODS == config.METHODS + config.BASELINE_METHODS
    assert config.ALL_METHODS == get_args(config.Method)
    assert set(BUILTIN) == set(config.BUILTIN_TASKS)
    assert sorted(CAUSAL_LM_TASKS + CLASSIFICATION_TASKS) == sorted(config.BUILTIN_TASKS)


@pytest.mark.parametrize("method,field,value", [
    ("lora", "k", 8), ("lora", "selection", "random"), ("lora", "rb_splits", 2), ("dora", "normalize_rows", True),
    ("hydralora", "selection", "random"), ("hydralora", "rb_splits", 2), ("full", "r", 4), ("full", "alpha", 8.0),
])
def test_target_field_that_does_not_apply_is_an_error(method, field, value):
    from idlora_core.config import AdapterConfig, TargetConfig

    target = TargetConfig(pattern="q_proj", **{field: value})
    with pytest.raises(ValueError, match=f"targets.0.{field}=.*does not apply to method '{method}'"):
        AdapterConfig(method=method, targets=[target])
    AdapterConfig(method="idlora", targets=[target])  # ID-LoRA uses every field
    AdapterConfig(method=method, targets=[TargetConfig(pattern="q_proj")])  # defaults are fine


def test_compile_and_skeletons_only_for_idlora():
    from idlora_core.config import AdapterConfig, target_for

    with pytest.raises(ValueError, match="compile_adapters applies to method 'idlora' only"):
        AdapterConfig(method="lora", compile_adapters=True)
    with pytest.raises(ValueError, match="skeletons apply to method 'idlora' only"):
        AdapterConfig(method="hydralora", skeletons={"q_proj": [[0, 1]]})
    t = target_for("lora", pattern="q", r=4, k=9, selection="random", rb_splits=2, alpha=8.0)
    assert (t.r, t.alpha, t.k, t.selection, t.rb_splits) == (4, 8.0, 4, "id", 1)
    assert AdapterConfig(method="lora", targets=[t]).targets[0] == t
