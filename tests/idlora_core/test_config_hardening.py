"""Hostile and careless configs (issue 8 #4, #10, #11, #15): bounded YAML, strict types,
ranges named in errors, one-line CLI errors instead of tracebacks."""

import tracemalloc

import pytest

from idlora_core.config import (
    MAX_CONFIG_BYTES,
    ConfigError,
    RunConfig,
    TrainConfig,
    apply_overrides,
    field_range,
    load_config,
    loads_config,
)
from idlora_core.safe_yaml import MAX_YAML_NODES, YAMLInputError, safe_load_bounded, shorten
from idlora_core.training import cli


def alias_bomb(levels: int, width: int = 9, key: str = "model: {name: *l%d}") -> str:
    """Return a 'billion laughs' YAML: `width ** levels` leaves from a few hundred bytes."""
    lines = ["l0: &l0 [" + ", ".join(["lol"] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n" + key % (levels - 1) + "\n"


def test_alias_bomb_refused_fast_in_bounded_memory():
    text = alias_bomb(9)  # 9**9 = 387 M leaves from ~400 bytes
    assert len(text) < 600
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError) as info:
            loads_config(text)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(info.value)
    assert f"more than {MAX_YAML_NODES:,} nodes" in message
    assert len(message) < 400
    assert peak < 50 * 2**20, f"peak {peak / 2**20:.1f} MiB"


def test_moderate_alias_bomb_error_is_short():
    # 9**6 = 531k leaves: before the bounded loader this was accepted by yaml.safe_load and the
    # schema error printed the whole expanded value (megabytes) back to the user.
    with pytest.raises(ConfigError) as info:
        loads_config(alias_bomb(7))
    assert len(str(info.value)) < 400


def test_aliases_below_the_limit_still_work():
    text = "x: &r {pattern: query, r: 4}\nadapter: {targets: [*r, {pattern: value}]}\n"
    assert safe_load_bounded(text)["adapter"]["targets"][0] == {"pattern": "query", "r": 4}
    with pytest.raises(ConfigError, match="adapter|unknown key"):
        loads_config(text)  # 'x' is not part of the schema: a schema error, not a YAML one
    cfg = loads_config("adapter: {targets: [&r {pattern: query, r: 4}, *r]}")
    assert [t.r for t in cfg.adapter.targets] == [4, 4]


@pytest.mark.parametrize("text, expect", [
    ("a: &a [*a]", "recursive alias"),
    ("[" * 500 + "]" * 500, "nested deeper"),
    ("a: !!python/object/apply:os.system ['touch /tmp/x']", "could not determine a constructor"),
    ("a: 2001-02-30", "day is out of range"),
    ("a: [1", "line"),
])
def test_loader_errors_are_one_line(text, expect):
    with pytest.raises(YAMLInputError) as info:
        safe_load_bounded(text)
    assert expect in str(info.value) and "\n" not in str(info.value)


def test_many_errors_are_counted_not_all_printed():
    text = "model:\n" + "".join(f"  k{i}: {i}\n" for i in range(10_000))
    with pytest.raises(ConfigError) as info:
        loads_config(text)
    assert len(info.value.errors) == 10_000
    assert "... and 9,950 more" in str(info.value) and len(str(info.value)) < 5000


def test_shown_values_are_capped():
    huge = "x" * 1_000_000
    assert len(shorten(huge)) < 240
    assert len(shorten(list(range(10**6)))) < 240
    with pytest.raises(ConfigError) as info:
        loads_config(f"model: {{name: minilm, trust_remote_code: {huge}}}")
    assert len(str(info.value)) < 600
    with pytest.raises(ConfigError) as info:
        loads_config(f"train: {{{huge}: 1}}")
    assert len(str(info.value)) < 600


@pytest.mark.parametrize("text, field", [
    ("train: {steps: true}", "train.steps"),
    ("train: {batch_size: 8.0}", "train.batch_size"),
    ("train: {steps: '50'}", "train.steps"),
    ("model: {trust_remote_code: 'yes'}", "model.trust_remote_code"),
    ("model: {trust_remote_code: 1}", "model.trust_remote_code"),
    ("adapter: {targets: [{pattern: q, r: true}]}", "adapter.targets.0.r"),
    ("adapter: {targets: [{pattern: q, alpha: true}]}", "adapter.targets.0.alpha"),
    ("train: {learning_rate: .inf}", "train.learning_rate"),
    ("train: {learning_rate: .nan}", "train.learning_rate"),
])
def test_strict_booleans_and_integers(text, field):
    with pytest.raises(ConfigError) as info:
        loads_config(text)
    assert any(e.startswith(field) for e in info.value.errors), info.value.errors


def test_strict_types_keep_valid_spellings():
    cfg = loads_config("train: {steps: 50, learning_rate: 1e-3, weight_decay: 0}\n"
                       "model: {trust_remote_code: false}")
    assert cfg.train.steps == 50 and cfg.train.learning_rate == 1e-3
    assert cfg.model.trust_remote_code is False


@pytest.mark.parametrize("text, field, allowed", [
    ("train: {steps: 1000000000}", "train.steps", "1 to 10,000,000"),
    ("train: {batch_size: 5000}", "train.batch_size", "1 to 4,096"),
    ("tasks: [{name: sentiment, num_train: 0}]", "tasks.0.num_train", "1 to 10,000,000"),
    ("adapter: {seed: -1}", "adapter.seed", "0 to 4,294,967,295"),
])
def test_out_of_range_names_the_allowed_range(text, field, allowed):
    with pytest.raises(ConfigError) as info:
        loads_config(text)
    (line,) = [e for e in info.value.errors if e.startswith(field)]
    assert f"allowed range {allowed}" in line


def test_field_range_reads_the_schema():
    assert field_range(TrainConfig, "steps") == (1, 10_000_000)
    assert field_range(TrainConfig, "batch_size") == (1, 4096)
    assert field_range(TrainConfig, "learning_rate") == (0, None)


@pytest.mark.parametrize("override, expect", [
    ("train.steps=[1", "the value not valid YAML"),
    ("train.steps=!!python/object/apply:os.system ['id']", "could not determine a constructor"),
    ("model.name.x=1", "no such field"),
    ("train.steps=true", "train.steps"),
])
def test_override_errors(override, expect):
    with pytest.raises(ConfigError) as info:
        apply_overrides(RunConfig(), [override])
    assert expect in str(info.value)


def test_non_utf8_and_oversized_and_folder_configs(tmp_path):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"model: {name: minilm}\ntrain: {steps: 5}  # caf\xe9\n")
    with pytest.raises(ConfigError, match=r"latin1.yaml is not UTF-8 text \(byte 0xe9 at line 2\)"):
        load_config(bad)
    big = tmp_path / "big.yaml"
    big.write_bytes(b"# " + b"x" * (MAX_CONFIG_BYTES + 10) + b"\n")
    with pytest.raises(ConfigError, match="at most 8,388,608 bytes"):
        load_config(big)
    with pytest.raises(ConfigError, match="is a folder"):
        load_config(tmp_path)


@pytest.mark.parametrize("content, args, expect", [
    (b"train: {steps: 5}\n", ["--set", "train.steps=[1"], "not valid YAML"),
    (b"train: {steps: 5}\n", ["--set", "train.steps=!!python/name:os.system"], "constructor"),
    (b"train: {steps: \xff}\n", [], "not UTF-8"),
    (alias_bomb(9).encode(), [], "nodes"),
])
def test_cli_prints_one_line_errors(tmp_path, capsys, content, args, expect):
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    assert cli.main([str(path), *args]) == 1
    err = capsys.readouterr().err
    assert expect in err and "Traceback" not in err
    assert len(err) < 1000


def test_a_nul_byte_in_output_dir_is_a_config_error():
    """Issue 18 #10: an imported output_dir with a NUL byte broke the Export page on every render."""
    with pytest.raises(ConfigError, match="NUL byte"):
        loads_config('output_dir: "runs/a\\0b"\n')
    assert loads_config("output_dir: runs/ab\n").output_dir == "runs/ab"
