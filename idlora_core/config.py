"""The one YAML configuration of ID-LoRA Lab: model, adapter, tasks, training, output.

The Export page writes it, `python -m idlora_core.train CONFIG.yaml` reads it, and
`idlora_core.adapters.inject.apply_adapters` takes its `adapter` part. Loading always uses
`yaml.safe_load`; unknown keys are errors; every validation error is reported at once,
each naming the field path, the bad value and what is allowed.

This file is not the training loop nor the adapter code: it only describes and checks.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from idlora_core.cache import write_text_atomic

Method = Literal["idlora", "lora", "dora", "hydralora", "full"]
Selection = Literal["centroid", "id", "random"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
Device = Literal["auto", "cpu", "cuda"]
Schedule = Literal["constant", "linear", "cosine"]
Head = Literal["auto", "base", "causal-lm", "classification"]
BuiltinTask = Literal["arithmetic", "code", "knowledge", "refusal", "sentiment"]
DataFileTask = Literal["jsonl", "csv"]

# Every list of names elsewhere (UI choices, task registry, budgets) derives from these.
METHODS: tuple[str, ...] = get_args(Method)
SELECTIONS: tuple[str, ...] = get_args(Selection)
BUILTIN_TASKS: tuple[str, ...] = get_args(BuiltinTask)
DATA_FILE_TASKS: tuple[str, ...] = get_args(DataFileTask)


class ConfigError(ValueError):
    """A configuration that failed validation; `errors` holds one readable line per problem."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {e}" for e in errors))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Strict):
    name: str = Field(
        "minilm",
        description="'minilm', 'smollm2-135m', a local model directory, or a hub id",
    )
    head: Head = Field(
        "auto",
        description="model head: auto (from the task), base, causal-lm or classification",
    )
    trust_remote_code: bool = Field(
        False, description="run code shipped with the model; only when you trust it"
    )


class TargetConfig(_Strict):
    """Which linear layers to adapt and with which hyper-parameters."""

    pattern: str = Field(
        ...,
        min_length=1,
        description="module-name suffix (e.g. 'query', 'q_proj') or, with regex: true, a regex "
        "searched in the full module name",
    )
    regex: bool = Field(False, description="treat pattern as a regular expression")
    layers: list[int] | None = Field(
        None, description="block indices to adapt (e.g. [0, 1]); None = every block"
    )
    r: int = Field(8, ge=1, description="rank of each low-rank component")
    k: int = Field(4, ge=1, description="ID-LoRA clusters, or HydraLoRA heads N")
    selection: Selection = Field("centroid", description="ID-LoRA skeleton-row strategy")
    rb_splits: int = Field(1, ge=1, description="rank-boosting splits p (1 = plain ID-LoRA)")
    alpha: float = Field(16.0, gt=0, description="scaling numerator: dy is scaled by alpha / r")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapter input")
    normalize_rows: bool = Field(False, description="cluster L2-normalised rows (cosine)")

    @model_validator(mode="after")
    def _check(self) -> TargetConfig:
        if self.regex:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"pattern {self.pattern!r} is not a valid regex: {exc}") from exc
        if self.r % self.rb_splits:
            raise ValueError(
                f"rb_splits={self.rb_splits} must divide r={self.r} (rank boosting splits z "
                "into equal parts)"
            )
        return self


class AdapterConfig(_Strict):
    method: Method = Field("idlora", description="idlora | lora | dora | hydralora | full")
    targets: list[TargetConfig] = Field(
        default_factory=lambda: [TargetConfig(pattern="query"), TargetConfig(pattern="value")],
        min_length=1,
    )
    seed: int = Field(0, description="seed for clustering and random skeleton selection")
    skeletons: dict[str, list[list[int]]] | None = Field(
        None,
        description="resolved skeleton row indices per adapted layer name: one list of r "
        "global row indices per cluster; when present, no re-clustering happens",
    )


class TaskConfig(_Strict):
    name: str = Field(
        ...,
        description="built-in task ('arithmetic', 'code', 'knowledge', 'refusal', "
        "'sentiment') or 'jsonl' / 'csv' with a path",
    )
    path: str | None = Field(None, description="data file for 'jsonl' / 'csv' tasks")
    weight: float = Field(1.0, gt=0, description="mixing weight among the tasks")
    num_train: int = Field(512, ge=1, description="generated training examples")
    num_eval: int = Field(64, ge=1, description="held-out evaluation examples")

    @model_validator(mode="after")
    def _check(self) -> TaskConfig:
        if self.name in DATA_FILE_TASKS and not self.path:
            raise ValueError(f"task {self.name!r} needs a path to the data file")
        return self


class TrainConfig(_Strict):
    steps: int = Field(100, ge=1, description="optimiser steps")
    batch_size: int = Field(8, ge=1, description="examples per device per step")
    seq_len: int = Field(128, ge=8, description="maximum tokens per example")
    learning_rate: float = Field(2e-4, gt=0)
    schedule: Schedule = Field("linear", description="learning-rate schedule after warm-up")
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    grad_accum: int = Field(1, ge=1, description="gradient accumulation steps")
    eval_interval: int = Field(50, ge=0, description="evaluate every N steps (0 = only at end)")
    log_interval: int = Field(1, ge=1, description="write a metrics line every N steps")
    save_interval: int = Field(
        50, ge=0, description="save a checkpoint every N steps (0 = only when stopped early)"
    )
    seed: int = 0
    precision: Precision = "auto"
    device: Device = "auto"


class RunConfig(_Strict):
    """A whole run: what `python -m idlora_core.train` reads and the Export page writes."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    adapter: AdapterConfig = Field(default_factory=AdapterConfig)
    tasks: list[TaskConfig] = Field(
        default_factory=lambda: [TaskConfig(name="sentiment")], min_length=1
    )
    train: TrainConfig = Field(default_factory=TrainConfig)
    output_dir: str = Field("runs/default", description="folder for metrics, checkpoints, adapters")


def _format_errors(exc: ValidationError) -> list[str]:
    lines = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (not part of the schema)"
        value = err.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        lines.append(f"{path}: {msg}{shown}")
    return lines


def parse_config(data: dict[str, Any] | None) -> RunConfig:
    """Return the validated RunConfig for a plain dict; raises ConfigError listing every problem."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"(top level): expected a mapping of sections, got {type(data).__name__}"])
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc)) from None


def loads_config(text: str) -> RunConfig:
    """Return the RunConfig in YAML `text` (parsed with yaml.safe_load); raises ConfigError."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"not valid YAML: {exc}"]) from None
    return parse_config(data)


def load_config(path: str | Path) -> RunConfig:
    """Return the RunConfig stored in the YAML file at `path`; raises ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"config file not found: {path}"])
    return loads_config(path.read_text(encoding="utf-8"))


def dumps_config(config: RunConfig) -> str:
    """Return `config` as YAML text that `loads_config` reads back to an equal RunConfig."""
    data = config.model_dump(mode="json")
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100)


def save_config(config: RunConfig, path: str | Path) -> Path:
    """Write `config` as YAML to `path` (atomically) and return the path."""
    return write_text_atomic(path, dumps_config(config))


def apply_overrides(config: RunConfig, overrides: list[str]) -> RunConfig:
    """Return a copy of `config` with `section.key=value` overrides applied (values parsed as YAML).

    Example: ``apply_overrides(cfg, ["train.steps=50", "adapter.method=lora"])``.
    List items are addressed by index: ``adapter.targets.0.r=16``.
    """
    data = config.model_dump(mode="json")
    problems = []
    for item in overrides:
        if "=" not in item:
            problems.append(f"override {item!r}: expected KEY=VALUE, e.g. train.steps=50")
            continue
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node: Any = data
        try:
            for part in parts[:-1]:
                node = node[int(part)] if isinstance(node, list) else node[part]
            last = parts[-1]
            value = yaml.safe_load(raw)
            if isinstance(node, list):
                node[int(last)] = value
            else:
                node[last] = value
        except (KeyError, IndexError, ValueError, TypeError):
            problems.append(f"override {item!r}: no such field {key!r}")
    if problems:
        raise ConfigError(problems)
    return parse_config(data)
