"""Typed page settings (app/page_settings.py): every field of every page survives the URL and the
store, the Fine-tune / Export fields survive a YAML run config, and bad or stale URLs load the
defaults. The non-default values are generated from each field's type, so a new field is covered
(or the generator fails) without editing this file."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest
import typing_extensions
from streamlit.testing.v1 import AppTest

from app import page_settings as ps
from app import settings_io as sio
from app import url_state
from app.common import DEFAULTS
from idlora_core.config import (
    ALL_METHODS,
    METHOD_FIELDS,
    METHODS,
    TUNABLE_FIELDS,
    ModelConfig,
    TrainConfig,
    dumps_config,
    loads_config,
)

MAIN = str(Path(__file__).resolve().parents[2] / "app" / "main.py")
L0, L1 = "encoder.layer.0.attention.self.query", "encoder.layer.1.attention.self.query"
CHOICE_TARGET = {"k": "k", "heads": "heads", "r": "r", "selection": "selection", "rb_splits": "rb_splits"}


def _other(hint: Any, default: Any) -> Any:
    """Return a value of type `hint` that differs from `default` (within every widget range)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        return _other(args[0], default)
    if origin in (typing.Union, types.UnionType):
        (inner,) = [a for a in args if a is not type(None)]
        return _other(inner, default)
    if origin is Literal:
        return next(a for a in args if a != default)
    if hint is bool:
        return not default
    if hint is int:
        return (default or 0) + 3
    if hint is float:
        return (default or 0.25) * 2
    if hint is str:
        return f"{default or 'x'}-changed"
    if origin is list:
        base = list(default or [])
        if typing.get_origin(args[0]) is Literal:
            unused = [a for a in typing.get_args(args[0]) if a not in base]
            return base + unused[:1] if unused else base[:1]  # all chosen: fewer is the change
        new = _other(args[0], base[-1] if base else None)
        while new in base:
            new = _other(args[0], new)
        return base + [new]
    if origin is tuple:
        return (2, 5)
    if origin is dict and typing_extensions.is_typeddict(args[1]):
        inner = typing.get_type_hints(args[1])
        return {L1: {key: _other(h, None) if h is not int else 2 for key, h in inner.items()}}
    raise AssertionError(f"no non-default value for type {hint!r}: teach _other this type")


def _changed(cls: type, **fixed: Any) -> Any:
    """Return settings of `cls` with EVERY field away from its default (then `fixed`)."""
    hints, base = typing.get_type_hints(cls, include_extras=True), cls()
    values = {f.name: _other(hints[f.name], getattr(base, f.name)) for f in dataclasses.fields(cls)}
    settings = cls(**values | fixed)
    for f in dataclasses.fields(cls):
        if f.name not in fixed:
            assert getattr(settings, f.name) != getattr(base, f.name), f.name
    return settings


def _local(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if f.metadata.get("local")}


@pytest.mark.parametrize("cls", ps.PAGES, ids=lambda c: c.__name__)
def test_every_field_round_trips_through_the_url(cls):
    settings = _changed(cls)
    query = settings.to_query()
    keys = cls.keys()
    assert set(query) == {keys[f.name] for f in dataclasses.fields(cls)} - {keys[n] for n in _local(cls)}
    assert all(isinstance(v, str) for v in query.values())
    back = cls.from_query(query)
    for f in dataclasses.fields(cls):
        expected = getattr(cls(), f.name) if f.name in _local(cls) else getattr(settings, f.name)
        assert getattr(back, f.name) == expected, f.name
    assert cls.from_query({}) == cls() and cls().to_query() == {}  # defaults: an empty URL


@pytest.mark.parametrize("cls", ps.PAGES, ids=lambda c: c.__name__)
def test_every_field_round_trips_through_the_store_and_session_state(cls):
    settings = _changed(cls)
    back = cls.from_json(settings.to_json())
    assert {n for n in _local(cls)} == ({"trust_remote_code"} if cls is ps.SidebarSettings else set())
    assert back == dataclasses.replace(settings, **{n: getattr(cls(), n) for n in _local(cls)})
    state: dict = {}
    settings.to_state(state)
    assert cls.from_state(state) == settings and set(state) == set(cls.keys().values())


def test_every_key_has_one_page_and_the_defaults_come_from_the_dataclasses():
    keys = [key for cls in ps.PAGES for key in cls.keys().values()]
    assert len(keys) == len(set(keys)) == len(DEFAULTS) == len(sio.DEFAULTS)
    assert DEFAULTS == sio.DEFAULTS == ps.all_defaults()
    assert DEFAULTS["ft_steps"] == 150 and DEFAULTS["lab_ranks"] == [4, 8, 16, 32]
    assert "ft_learning_rate" not in DEFAULTS  # one learning rate per method instead
    fine_tune = ps.FineTuneSettings.keys().values()
    assert {f"ft_lr_{m}" for m in ALL_METHODS} <= set(fine_tune)
    assert {f"ft_{n}" for n in TrainConfig.model_fields if n != "learning_rate"} <= set(fine_tune)


def test_the_app_url_carries_each_page_with_the_sidebar():
    values = dict(DEFAULTS) | {"model_choice": "smollm2-135m", "ft_lr_lora": 0.02,
                               "ft_lr_head-only": 0.5, "lab_seed": 4, "trust_remote_code": True}
    query = url_state.params_for("finetune", values)
    assert query == {"model_choice": "smollm2-135m", "ft_lr_lora": "0.02", "ft_lr_head-only": "0.5"}
    assert url_state.params_for("exercises", values) == {"model_choice": "smollm2-135m"}
    assert ps.parse_all_query(query | {"trust_remote_code": "1"}) == {
        "model_choice": "smollm2-135m", "ft_lr_lora": 0.02, "ft_lr_head-only": 0.5}
    assert set(url_state.PAGES) == {cls.PAGE for cls in ps.PAGES} - {"shared"} | {"exercises"}


def _garbage(hint: Any) -> str | None:
    """Return URL text that no value of `hint` parses from (None for plain text fields)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        (inner,) = [a for a in args if a is not type(None)]
        return _garbage(inner)
    if hint is str or (origin is list and args[0] is str):
        return None  # any text is a name
    return {bool: "yes", int: "3.5", float: "nan"}.get(hint, "{not json" if origin is dict else "§,x-y")


def test_an_old_url_with_garbage_loads_the_defaults():
    params = {"ft_learning_rate": "0.05",  # the old link's one learning rate: no page reads it
              "ft_steps": "-5", "ft_alpha": "inf", "explorer_k": "100000", "lab_seed": "-1",
              "ft_lr_lora": "0", "ft_ranks": "8,0", "st_seeds": "12"}  # outside their ranges
    for cls in ps.PAGES:
        hints = typing.get_type_hints(cls, include_extras=True)
        for name, key in cls.keys().items():
            if (text := _garbage(hints[name])) is not None:
                params.setdefault(key, text)
    assert len(params) > 60
    for cls in ps.PAGES:
        assert cls.from_query(params) == cls(), cls.__name__
        assert cls.from_json(params) == cls(), cls.__name__  # the store is as tolerant
    assert ps.LabSettings.from_query({"lab_ks": "2,2,4", "lab_selections": "id,id"}) == ps.LabSettings(
        lab_ks=[2, 4], lab_selections=["id"])  # lists keep each value once
    assert ps.ModelLayersSettings.from_query({"block_range": "7-3"}).block_range == (3, 7)


def test_a_value_too_long_for_an_address_stays_out_of_the_url():
    choice = {"k": 2, "r": 4, "selection": "id", "rb_splits": 1}
    many = ps.ExportSettings(ex_seed=3, layer_choices={f"encoder.layer.{i}.attention.self.query": choice
                                                       for i in range(200)})
    assert many.to_query() == {"ex_seed": "3"}  # the session store keeps the overrides
    assert ps.ExportSettings.from_json(many.to_json()) == many


def _yaml(cfg):
    return loads_config(dumps_config(cfg))


def _valid_fine_tune(method: str) -> ps.FineTuneSettings:
    # every field changed; r divisible by p, and a first task without a fixed pool (its sizes
    # stay as chosen: a real dataset caps them)
    return _changed(ps.FineTuneSettings, ft_methods=[method], ft_ranks=[16], ft_ks=[2], ft_heads=[3],
                    ft_rb_splits=2, ft_tasks=["sentiment", "bbc_news"])


def test_fine_tune_settings_round_trip_through_a_yaml_run_config():
    covered: set[str] = set()
    for method in ALL_METHODS:
        settings = _valid_fine_tune(method)
        ((label, cfg),) = settings.to_run_configs(ModelConfig(name="minilm"), "encoder", [L0])
        assert cfg.train.learning_rate == settings.learning_rate(method) == 2 * DEFAULTS[f"ft_lr_{method}"]
        assert label.startswith(ps.METHOD_LABELS[method])
        back = ps.FineTuneSettings.from_run_config(_yaml(cfg))
        held = ps.FineTuneSettings.run_config_fields(method)
        for name in held:
            assert getattr(back, name) == getattr(settings, name), (method, name)
        used = METHOD_FIELDS.get(method, TUNABLE_FIELDS)  # what the targets of `method` hold
        assert ("ft_ks" in held) == ("k" in used) and ("ft_heads" in held) == ("heads" in used)
        assert ("ft_ranks" in held) == ("r" in used)
        covered |= held
    # every field is held by some method's run config (each method's learning rate included)
    assert covered == {f.name for f in dataclasses.fields(ps.FineTuneSettings)}


def test_export_settings_round_trip_through_a_yaml_run_config():
    covered: set[str] = set()
    for method in METHODS:
        settings = _changed(ps.ExportSettings, ex_method=method, adapter_r=16, adapter_rb_splits=2)
        fine_tune = _valid_fine_tune("idlora")
        cfg = settings.to_run_config(fine_tune, ModelConfig(name="minilm"), "encoder", [L0, L1],
                                     output_dir=f"runs/{settings.ex_run_name}")
        assert cfg.train.learning_rate == fine_tune.learning_rate(method)  # the export method's rate
        back = ps.ExportSettings.from_run_config(_yaml(cfg))
        held = ps.ExportSettings.run_config_fields(method)
        used = METHOD_FIELDS[method]
        for name in held - {"layer_choices"}:
            assert getattr(back, name) == getattr(settings, name), (method, name)
        for layer in (L0, L1):  # the override of L1, the page's defaults for L0
            mine, theirs = settings.layer_choice(layer), back.layer_choice(layer)
            kept = [k for k in mine if CHOICE_TARGET[k] in used]
            assert {k: theirs[k] for k in kept} == {k: mine[k] for k in kept}, (method, layer)
        assert ps.FineTuneSettings.from_run_config(_yaml(cfg)).learning_rate(method) == fine_tune.learning_rate(method)
        covered |= held
    assert covered == {f.name for f in dataclasses.fields(ps.ExportSettings)}


def test_settings_from_config_keeps_the_other_learning_rates():
    _, cfg = sio.finetune_configs(dict(DEFAULTS) | {"ft_methods": ["lora"], "ft_lr_lora": 0.02},
                                  "minilm", "encoder", [L0])[0]
    values = sio.settings_from_config(cfg, {"model_choice": "minilm", "model_path": ""})
    assert values["ft_lr_lora"] == 0.02 and "ft_lr_idlora" not in values  # left as it was
    assert values["ex_method"] == "lora" and values["layer_kinds"] == ["q"] and values["block_range"] == (0, 0)


def test_learning_rates_live_in_the_url_and_an_old_link_loads(tmp_path, monkeypatch):
    """A refresh or a shared link keeps each method's learning rate (issue 20); an old link
    with the stale ft_learning_rate and garbage loads the defaults without an error."""
    monkeypatch.setenv("IDLORA_RUNS_DIR", str(tmp_path))  # the session store goes there
    at = AppTest.from_file(MAIN, default_timeout=180)
    at.switch_page("views/fine_tune.py").run()
    assert not at.exception
    at.selectbox(key="ft_lr_idlora").set_value(2e-2).run()
    at.selectbox(key="ft_lr_lora").set_value(1e-3).run()
    at.number_input(key="ft_steps").set_value(40).run()
    url = {key: value[0] if isinstance(value, list) else value for key, value in dict(at.query_params).items()}
    assert url.pop("sid")  # the session's id (test_url_state_session.py)
    assert url == {"ft_lr_idlora": "0.02", "ft_lr_lora": "0.001", "ft_steps": "40"}
    again = AppTest.from_file(MAIN, default_timeout=180)
    again.query_params.update(url)  # a shared link without the session id: the choices alone
    again.switch_page("views/fine_tune.py").run()
    assert not again.exception
    assert again.selectbox(key="ft_lr_idlora").value == 2e-2 and again.selectbox(key="ft_lr_lora").value == 1e-3
    assert again.number_input(key="ft_steps").value == 40
    old = AppTest.from_file(MAIN, default_timeout=180)
    old.query_params.update(ft_learning_rate="0.05", ft_steps="abc", ft_lr_lora="-1",
                            ft_methods="idlora,nope", lab_ks="x")
    old.switch_page("views/fine_tune.py").run()
    assert not old.exception
    assert old.number_input(key="ft_steps").value == DEFAULTS["ft_steps"]
    assert old.selectbox(key="ft_lr_lora").value == DEFAULTS["ft_lr_lora"]
    assert old.multiselect(key="ft_methods").value == DEFAULTS["ft_methods"]
    assert "ft_learning_rate" not in dict(old.query_params)  # the page rewrote its URL


def test_retired_keys_are_read_under_the_one_name():
    """docs/VOCABULARY.md: an old link's `lab_strategies` / `atlas_strategies`, an old store's
    `adapter_strategy` / `adapter_rb` and a layer choice's `strategy` load under the new names;
    the new key wins when both are there, and only new keys are written."""
    assert ps.LabSettings.from_query({"lab_strategies": "random,id"}).lab_selections == ["random", "id"]
    assert ps.LabSettings.from_query({"lab_strategies": "random", "lab_selections": "centroid"}
                                     ).lab_selections == ["centroid"]
    assert ps.LayerAtlasSettings.from_json({"atlas_strategies": ["centroid"]}).atlas_selections == ["centroid"]
    old = {"adapter_strategy": "random", "adapter_rb": 2,
           "layer_choices": {L0: {"k": 2, "r": 4, "strategy": "centroid", "rb_splits": 2}}}
    for settings in (ps.ExportSettings.from_json(old), ps.ExportSettings.from_state(old)):
        assert (settings.adapter_selection, settings.adapter_rb_splits) == ("random", 2)
        assert settings.layer_choice(L0) == {"k": 2, "heads": 4, "r": 4, "selection": "centroid", "rb_splits": 2}
        assert settings.layer_choice(L1)["selection"] == "random"
    written = ps.ExportSettings.from_json(old).to_json()
    assert not {"adapter_strategy", "adapter_rb"} & set(written)
    assert written["layer_choices"][L0]["selection"] == "centroid" and "strategy" not in written["layer_choices"][L0]
    cfg = ps.ExportSettings.from_state(old).to_run_config(
        ps.FineTuneSettings(), ModelConfig(name="minilm"), "encoder", [L0, L1])
    assert [t.selection for t in cfg.adapter.targets] == ["centroid", "random"]
    assert [t.rb_splits for t in cfg.adapter.targets] == [2, 2]


def test_hydralora_heads_have_their_own_widgets():
    """Issue 20: HydraLoRA's heads N are ft_heads / adapter_heads / a layer choice's heads, never
    the clusters-k keys: runs labelled heads=N, and an imported config gives them back there."""
    settings = ps.FineTuneSettings(ft_methods=["idlora", "hydralora"], ft_ranks=[8], ft_ks=[8],
                                   ft_heads=[2, 3])
    runs = settings.to_run_configs(ModelConfig(name="minilm"), "encoder", [L0])
    assert [label for label, _ in runs] == ["ID-LoRA r=8 k=8", "HydraLoRA r=8 heads=2", "HydraLoRA r=8 heads=3"]
    assert runs[0][1].adapter.targets[0].k == 8
    assert [cfg.adapter.targets[0].heads for _, cfg in runs[1:]] == [2, 3]
    back = ps.FineTuneSettings.from_run_config(_yaml(runs[2][1]))
    assert back.ft_heads == [3] and back.ft_methods == ["hydralora"]
    export = ps.ExportSettings(ex_method="hydralora", adapter_k=5, adapter_heads=6,
                               layer_choices={L1: {"k": 2, "heads": 3, "r": 4, "selection": "id", "rb_splits": 1}})
    cfg = export.to_run_config(settings, ModelConfig(name="minilm"), "encoder", [L0, L1])
    assert [t.heads for t in cfg.adapter.targets] == [6, 3]
    assert [t.k for t in cfg.adapter.targets] == [4, 4]  # the schema's default: adapter_k is ID-LoRA's
    imported = ps.ExportSettings.from_run_config(_yaml(cfg))
    assert imported.adapter_heads == 6 and imported.layer_choices[L1]["heads"] == 3
    values = sio.settings_from_config(cfg, {})
    assert (values["adapter_heads"], values["ft_heads"]) == (6, [6])


def test_an_old_state_url_or_store_with_only_the_k_key_gives_the_heads():
    """Before issue 20 ft_ks / st_ks / adapter_k held HydraLoRA's heads too: without the heads
    key they still do; with it, the heads key wins. A new URL or store writes the heads key
    whenever it writes the k key, so a reload never takes k for the heads."""
    old_state = {"ft_methods": ["hydralora"], "ft_ranks": [8], "ft_ks": [3, 5]}
    runs = sio.finetune_configs(old_state, "minilm", "encoder", [L0])
    assert [cfg.adapter.targets[0].heads for _, cfg in runs] == [3, 5]
    assert ps.FineTuneSettings.from_query({"ft_ks": "3,5"}).ft_heads == [3, 5]
    assert ps.FineTuneSettings.from_json({"ft_ks": [3], "ft_heads": [2]}).ft_heads == [2]
    assert ps.StudiesSettings.from_query({"st_ks": "2,8"}).st_heads == [2, 8]
    old_export = ps.ExportSettings.from_json({"ex_method": "hydralora", "adapter_k": 5})
    assert old_export.adapter_heads == 5 and old_export.layer_choice(L0)["heads"] == 5
    cfg = old_export.to_run_config(ps.FineTuneSettings(), ModelConfig(name="minilm"), "encoder", [L0])
    assert cfg.adapter.targets[0].heads == 5
    # new settings: k changed, heads left at its default -> the heads key is written too
    new = ps.FineTuneSettings(ft_ks=[8])
    assert new.to_query() == {"ft_ks": "8", "ft_heads": "4"}
    assert ps.FineTuneSettings.from_query(new.to_query()) == new
    assert ps.FineTuneSettings.from_json(new.to_json(changed_only=True)) == new
    studies = ps.StudiesSettings(st_ks=[2])
    assert ps.StudiesSettings.from_query(studies.to_query()) == studies  # st_heads stays None
    export = ps.ExportSettings(adapter_k=7)
    assert ps.ExportSettings.from_json(export.to_json(changed_only=True)) == export
    assert ps.ExportSettings().to_query() == {} == ps.FineTuneSettings().to_json(changed_only=True)
