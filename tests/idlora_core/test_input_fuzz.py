"""Fuzz the readers of user input (issue 8): the YAML config loader, the `--set` parser and the
user-data readers. Whatever the bytes, only the project's own error types may escape, and
alias-heavy YAML stays within bounded memory."""

from __future__ import annotations

import tracemalloc

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from idlora_core.config import ConfigError, RunConfig, apply_overrides, loads_config
from idlora_core.safe_yaml import YAMLInputError, safe_load_bounded
from idlora_core.tasks.user_data import DataFileError, build, read_records

OURS = (ConfigError, YAMLInputError, DataFileError)
FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# YAML-ish text: the characters that drive the scanner, parser and constructors.
yaml_alphabet = st.sampled_from(list("abcrkstep01239.-+e_:,[]{}&*!<>|\"'#%@`?\n\t ") + [
    "!!python/object/apply:os.system", "!!binary", "!!int", "!!float", "!!timestamp", "!!set",
    "&a ", "*a", "<<: *a", "train", "steps", "model", "adapter", "targets", "true", "null",
    ".inf", ".nan", "2001-02-30", "0x1F", "0o17", "1e400", "~", "---", "...", "\ufeff", "\x00",
])
yaml_text = st.lists(yaml_alphabet, max_size=60).map("".join)


def _only_ours(fn, *args):
    try:
        fn(*args)
    except OURS:
        pass


@FUZZ
@given(yaml_text)
def test_config_loader_raises_only_our_errors(text):
    _only_ours(loads_config, text)


@FUZZ
@given(st.binary(max_size=200))
def test_config_loader_on_raw_bytes(data):
    _only_ours(loads_config, data)


@FUZZ
@given(st.lists(st.tuples(
    st.sampled_from(["train.steps", "train", "adapter.targets.0.r", "adapter.targets.9.r",
                     "model.name.x", "", "train.steps.0", "tasks.-1.name", "a.b.c", "output_dir"]),
    yaml_text), max_size=4))
def test_override_parser_raises_only_our_errors(pairs):
    _only_ours(apply_overrides, RunConfig(), [f"{key}={value}" for key, value in pairs])


@FUZZ
@given(st.text(max_size=80))
def test_override_without_structure(item):
    _only_ours(apply_overrides, RunConfig(), [item])


def _alias_heavy(levels: list[int]) -> str:
    lines = ["a0: &a0 [x]"]
    for i, width in enumerate(levels, start=1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + f"\nmodel: {{name: *a{len(levels)}}}\n"


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 12), min_size=1, max_size=12))
def test_alias_heavy_yaml_stays_in_bounded_memory(levels):
    text = _alias_heavy(levels)
    tracemalloc.start()
    try:
        _only_ours(loads_config, text)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 200 * 2**20, f"{peak / 2**20:.0f} MiB for {len(text)} bytes"


@FUZZ
@given(yaml_text)
def test_bounded_loader_alone(text):
    _only_ours(safe_load_bounded, text)


json_line = st.one_of(
    st.sampled_from(['{"prompt": "a", "response": "b"}', '{"text": "t", "label": 1}',
                     '{"text": "t", "label": "1"}', '{"text": "t", "label": true}',
                     '{"text": "t", "label": 1.0}', '{"text": "t", "label": [1]}',
                     '{"text": "t", "label": NaN}', '{"text": "t", "label": 1e999}',
                     '{"prompt": 1, "response": null}', "[]", "{}", "", "[[[[[[", '"x"']),
    st.text(max_size=30),
)


@FUZZ
@given(st.lists(json_line, max_size=12), st.sampled_from([".jsonl", ".csv"]),
       st.binary(max_size=8))
def test_user_data_readers_raise_only_our_errors(tmp_path_factory, lines, suffix, junk):
    path = tmp_path_factory.mktemp("fuzz") / f"data{suffix}"
    body = "\n".join(lines).encode("utf-8", "surrogatepass") if suffix == ".jsonl" else (
        b"text,label\n" + b"\n".join(line.encode("utf-8", "surrogatepass") for line in lines))
    path.write_bytes(body + junk)
    _only_ours(read_records, path)
    _only_ours(build, path, 4, 2, 0)


def test_study_files_use_the_bounded_loader(tmp_path):
    from idlora_core.study.config import apply_study_overrides, load_study

    path = tmp_path / "study.yaml"
    path.write_text(_alias_heavy([9] * 9))  # 9**9 leaves
    try:
        load_study(path)
    except ConfigError as exc:
        assert "nodes" in str(exc) and len(str(exc)) < 600
    else:
        raise AssertionError("an alias bomb was accepted as a study file")
    try:
        apply_study_overrides({}, ["grid.seed=[1"])
    except ConfigError as exc:
        assert "not valid YAML" in str(exc)
    else:
        raise AssertionError("a broken override value was accepted")
