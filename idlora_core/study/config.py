"""The study YAML: a base run config, a grid of values to vary, and the metric to compare.

    name: minilm-sentiment            # optional; default: the output folder's name
    base: configs/minilm_sentiment_idlora.yaml   # or an inline run config (a mapping)
    grid:
      method: [idlora, lora, head-only, base]
      r: [4, 8, 16]
      k: [4]                                     # ID-LoRA's clusters
      heads: [2, 4]                              # optional: HydraLoRA's heads N (default: k)
      learning_rate: [1.0e-3, 3.0e-3, 1.0e-2]    # or {low: 1e-4, high: 1e-2, trials: 8} (TPE)
      learning_rates: {head-only: [1.0e-2]}      # optional per-method lists (override the above)
      ranks: {idlora: [8], lora: [4, 8]}         # optional per-method ranks (override r)
      seed: [0, 1, 2]
      cluster_seed: [0, 1, 2]                    # optional: ID-LoRA's k-means seed as its own axis
      variants: {planned: configs/plan.yaml}   # optional named arms with their own adapter section
    metric: eval_sentiment_accuracy
    direction: maximize

Loaded with `yaml.safe_load`, validated with pydantic (unknown keys are errors) and every
problem reported at once, like the run config. This file only describes and checks; the
grid is expanded in `grid.py` and run in `runner.py`.

`seed` is the training seed (and, without `cluster_seed`, also the adapter seed: ID-LoRA's
k-means and random skeleton selection, HydraLoRA's head init). `cluster_seed` makes ID-LoRA's
adapter seed an axis of its own, crossed with `seed`, so that the summary can separate the
two sources of variance (`summary.py`: seed_std, cluster_std).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from idlora_core.config import (
    MAX_CONFIG_BYTES,
    MAX_SEED,
    AdapterConfig,
    ConfigError,
    Method,
    RunConfig,
    Selection,
    _format_errors,
    load_config,
)
from idlora_core.safe_yaml import YAMLInputError, cut, decode_utf8, safe_load_bounded, shorten

VARIANT_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LearningRateRange(_Strict):
    """A log-uniform learning-rate range searched by Optuna's TPE sampler, `trials` per budget."""

    low: float = Field(..., gt=0, allow_inf_nan=False)
    high: float = Field(..., gt=0, allow_inf_nan=False)
    trials: int = Field(..., ge=1, description="TPE trials per (method, r, k, ...) budget")

    @model_validator(mode="after")
    def _check(self) -> LearningRateRange:
        if self.low >= self.high:
            raise ValueError(f"learning_rate low={self.low} must be below high={self.high}")
        return self


class Grid(_Strict):
    """Lists of values to combine; a parameter a method does not use collapses for that method."""

    method: list[Method] = Field(["idlora", "lora"], min_length=1)
    r: list[int] | None = Field(None, min_length=1, description="ranks (None: the base config's)")
    k: list[int] | None = Field(None, min_length=1, description="ID-LoRA clusters (and HydraLoRA heads "
                                "when `heads` is not given)")
    heads: list[int] | None = Field(None, min_length=1, description="HydraLoRA heads N (None: the k list, "
                                    "as before heads had their own axis)")
    learning_rate: list[float] | LearningRateRange | None = Field(
        None, description="a list (grid) or {low, high, trials} (TPE search)")
    learning_rates: dict[Method, list[float]] | None = Field(
        None, description="per-method learning-rate lists, overriding learning_rate for that method")
    ranks: dict[Method, list[int]] | None = Field(
        None, description="per-method rank lists, overriding r for that method (e.g. ID-LoRA at r=8 "
        "against LoRA at r=4 and r=8: equal and twice the trainable parameters)")
    seed: list[int] = Field([0], min_length=1)
    cluster_seed: list[int] | None = Field(
        None, min_length=1, description="ID-LoRA's k-means / skeleton seeds (adapter.seed), crossed "
        "with the training `seed`s; None: adapter.seed = the training seed")
    steps: list[int] | None = Field(None, min_length=1)
    selection: list[Selection] | None = Field(None, min_length=1)
    rb_splits: list[int] | None = Field(None, min_length=1)
    variants: dict[str, AdapterConfig] | None = Field(
        None, description="named arms with an adapter section of their own (e.g. a per-layer plan "
        "of python -m analysis.plan): the path of a run config (its adapter section is taken) or "
        "an inline adapter section; model, tasks and training stay the base's. Each runs at every "
        "seed and steps value and at its method's learning rates")

    @field_validator("variants")
    @classmethod
    def _variant_names(cls, table):
        bad = [name for name in table or {} if not VARIANT_NAME.fullmatch(name)]
        if bad:
            raise ValueError(f"variant names are letters, digits, '_' and '-' (they name run "
                             f"folders and budgets such as idlora@planned), got {bad}")
        return table

    @field_validator("r", "k", "heads", "steps", "rb_splits")
    @classmethod
    def _positive(cls, values: list[int] | None) -> list[int] | None:
        bad = [v for v in values or [] if v < 1]
        if bad:
            raise ValueError(f"values must be positive integers, got {bad}")
        return values

    @field_validator("cluster_seed")
    @classmethod
    def _seed_range(cls, values: list[int] | None) -> list[int] | None:
        bad = [v for v in values or [] if not 0 <= v <= MAX_SEED]
        if bad:
            raise ValueError(f"cluster seeds must be integers in 0..{MAX_SEED}, got {bad}")
        return values

    @field_validator("learning_rate")
    @classmethod
    def _positive_lr(cls, values):
        if isinstance(values, list):
            bad = [v for v in values if not (math.isfinite(v) and v > 0)]
            if bad:
                raise ValueError(f"learning rates must be finite and > 0, got {bad}")
            if not values:
                raise ValueError("give at least one learning rate")
        return values

    @field_validator("ranks")
    @classmethod
    def _positive_ranks(cls, table):
        for method, values in (table or {}).items():
            if not values or any(v < 1 for v in values):
                raise ValueError(f"{method}: give ranks >= 1, got {values}")
        return table

    @field_validator("learning_rates")
    @classmethod
    def _positive_lrs(cls, table):
        for method, values in (table or {}).items():
            if not values or not all(math.isfinite(v) and v > 0 for v in values):
                raise ValueError(f"{method}: give finite learning rates > 0, got {values}")
        return table

    @property
    def tpe(self) -> bool:
        """True when the learning rate is searched by TPE instead of listed."""
        return isinstance(self.learning_rate, LearningRateRange)


class StudyConfig(_Strict):
    """A whole study: what `python -m idlora_core.study` reads and the Studies page writes."""

    name: str | None = Field(None, description="Optuna study name (default: the output folder name)")
    base: RunConfig
    grid: Grid = Field(default_factory=Grid)
    metric: str = Field(..., min_length=1, description="a final-metrics key, e.g. eval_sentiment_accuracy")
    direction: Literal["maximize", "minimize"] = "maximize"

    @model_validator(mode="after")
    def _check(self) -> StudyConfig:
        variant_methods = {v.method for v in (self.grid.variants or {}).values()}
        for field in ("learning_rates", "ranks"):
            known = set(self.grid.method) | (variant_methods if field == "learning_rates" else set())
            unknown = set(getattr(self.grid, field) or {}) - known
            if unknown:
                raise ValueError(f"grid.{field} names methods not in grid.method: {sorted(unknown)}")
        if self.grid.tpe and self.grid.learning_rates:
            raise ValueError("grid.learning_rates (lists) cannot be combined with a TPE range in "
                             "grid.learning_rate; use one or the other")
        if self.grid.tpe and self.grid.cluster_seed:
            raise ValueError("grid.cluster_seed cannot be combined with a TPE range in "
                             "grid.learning_rate (TPE would tune each cluster seed apart); list "
                             "the learning rates instead")
        return self


def _resolve_base(data: dict[str, Any], where: Path | None) -> tuple[dict[str, Any], list[str]]:
    """Replace a `base:` path by the run config it names; return (data, problems)."""
    base = data.get("base")
    if isinstance(base, str):
        path = Path(base)
        if not path.is_absolute() and where is not None and not path.exists():
            path = where / path
        try:
            data = {**data, "base": load_config(path).model_dump(mode="json")}
        except ConfigError as exc:
            return data, [f"base ({base}): {e}" for e in exc.errors]
    elif base is None:
        return data, ["base: missing; give a run config inline or the path of a run YAML"]
    return data, []


def _resolve_variants(data: dict[str, Any], where: Path | None) -> tuple[dict[str, Any], list[str]]:
    """Replace each `grid.variants` value that is a path by the adapter section of the run config
    it names (inline, so the stored study needs no file); return (data, problems)."""
    grid = data.get("grid")
    variants = grid.get("variants") if isinstance(grid, dict) else None
    if not isinstance(variants, dict):
        return data, []
    problems, resolved = [], {}
    for name, value in variants.items():
        if isinstance(value, str):
            path = Path(value)
            if not path.is_absolute() and where is not None and not path.exists():
                path = where / path
            try:
                value = load_config(path).adapter.model_dump(mode="json")
            except ConfigError as exc:
                problems += [f"grid.variants.{name} ({cut(value)}): {e}" for e in exc.errors]
                continue  # reported once, not again as "not a mapping"
        resolved[name] = value
    return {**data, "grid": {**grid, "variants": resolved}}, problems


def parse_study(data: dict[str, Any] | None, where: str | Path | None = None) -> StudyConfig:
    """Return the validated StudyConfig of a plain dict; raises ConfigError listing every problem.

    `where`: the folder relative `base:` and `grid.variants` paths are looked up in (besides
    the working folder).
    """
    if not isinstance(data, dict):
        raise ConfigError([f"(top level): expected a mapping with base, grid and metric, got "
                           f"{type(data).__name__}"])
    data, problems = _resolve_base(data, Path(where) if where else None)
    data, variant_problems = _resolve_variants(data, Path(where) if where else None)
    problems += variant_problems
    try:
        study = StudyConfig.model_validate(data)
    except ValidationError as exc:
        problems += [e for e in _format_errors(exc) if not (problems and e.startswith("base"))]
        raise ConfigError(problems) from None
    if problems:
        raise ConfigError(problems)
    return study


def load_study(path: str | Path, overrides: list[str] | None = None) -> StudyConfig:
    """Return the StudyConfig in the YAML file at `path` with `KEY=VALUE` overrides applied
    (e.g. `grid.seed=[0,1]`, `base.train.steps=20`); raises ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"study file not found: {path}"])
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError([f"{path} is over {MAX_CONFIG_BYTES:,} bytes: not a study file"])
    try:  # bounded: alias bombs, python tags, non-UTF-8 are one-line errors
        data = safe_load_bounded(decode_utf8(path.read_bytes(), str(path)))
    except YAMLInputError as exc:
        raise ConfigError([str(exc)]) from None
    if overrides and isinstance(data, dict):
        data, _ = _resolve_base(data, path.parent)
        data = apply_study_overrides(data, overrides)
    return parse_study(data, path.parent)


def apply_study_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of the study mapping `data` with `a.b.c=VALUE` overrides (values as YAML)."""
    import copy

    data = copy.deepcopy(data)
    problems = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            problems.append(f"override {item!r}: expected KEY=VALUE, e.g. grid.seed=[0,1]")
            continue
        try:
            value = safe_load_bounded(raw)
        except YAMLInputError as exc:
            problems.append(f"override {shorten(item)}: the value {exc}")
            continue
        node = data
        parts = key.strip().split(".")
        try:
            for part in parts[:-1]:
                node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
            if isinstance(node, list):
                node[int(parts[-1])] = value
            else:
                node[parts[-1]] = value
        except (KeyError, IndexError, ValueError, TypeError, AttributeError):
            problems.append(f"override {item!r}: no such field {key!r}")
    if problems:
        raise ConfigError(problems)
    return data


def dumps_study(study: StudyConfig) -> str:
    """Return `study` as YAML text that `parse_study(yaml.safe_load(text))` reads back equal."""
    return yaml.safe_dump(study.model_dump(mode="json", exclude_none=True), sort_keys=False,
                          default_flow_style=None, width=100)

