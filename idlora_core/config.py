"""The one YAML configuration of ID-LoRA Lab: model, adapter, tasks, training, output.

The Export page writes it, `python -m idlora_core.train CONFIG.yaml` reads it, and
`idlora_core.adapters.model.apply_adapters` takes its `adapter` part. Loading always uses
`yaml.safe_load` semantics with bounded alias expansion (`idlora_core.safe_yaml`); strict
booleans and integers, documented ranges; unknown keys are errors; every validation error is reported at once,
each naming the field path, the bad value and what is allowed.

This file is not the training loop nor the adapter code: it only describes and checks.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import annotated_types
import numpy as np
import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from idlora_core.cache import write_text_atomic
from idlora_core.patterns import compile_pattern
from idlora_core.safe_yaml import YAMLInputError, cut, decode_utf8, safe_load_bounded, shorten

AdapterMethod = Literal["idlora", "lora", "dora", "adalora", "hydralora", "full"]
BaselineMethod = Literal["head-only", "base"]
Method = Literal[AdapterMethod, BaselineMethod]
Selection = Literal["id", "centroid", "random"]  # skeleton-row selection rules, in display order
Precision = Literal["auto", "fp32", "bf16", "fp16"]
Device = Literal["auto", "cpu", "cuda"]
Schedule = Literal["constant", "linear", "cosine"]
Head = Literal["auto", "base", "causal-lm", "classification"]
BuiltinTask = Literal["arithmetic", "code", "knowledge", "refusal", "sentiment", "rotten_tomatoes",
                      "bbc_news", "math"]
DataFileTask = Literal["jsonl", "csv"]

# Every list of names elsewhere (UI choices, task registry, budgets) derives from these.
METHODS: tuple[str, ...] = get_args(AdapterMethod)  # adapter methods
# Reference points of every comparison: `head-only` trains only the task head (the linear
# probe, classification tasks), `base` trains nothing (the model as it is, 0 trainable).
BASELINE_METHODS: tuple[str, ...] = get_args(BaselineMethod)
ALL_METHODS: tuple[str, ...] = METHODS + BASELINE_METHODS
SELECTIONS: tuple[str, ...] = get_args(Selection)
BUILTIN_TASKS: tuple[str, ...] = get_args(BuiltinTask)
DATA_FILE_TASKS: tuple[str, ...] = get_args(DataFileTask)
MAX_CONFIG_BYTES = 8 * 1024 * 1024  # the CLI's limit on a config file (the app's is smaller)
MAX_SEED = 2**32 - 1  # numpy's seed range


def _refuse_bool(value: Any) -> Any:
    if isinstance(value, (bool, np.bool_)):
        raise ValueError("expected a number, not a boolean")
    return value


def _plain_int(value: Any) -> Any:
    return int(value) if isinstance(value, np.integer) else value  # np.int64(8) from an array


# Numbers: booleans are refused (`steps: true` is not 1), ints are never coerced from strings
# or floats ("8", 8.0, 8.5), but numpy integers given from Python are ints (YAML makes none);
# floats accept ints, numpy floats and YAML-1.1 strings like "1e-3", never inf/nan.
Int = Annotated[StrictInt, BeforeValidator(_plain_int)]
Number = Annotated[float, BeforeValidator(_refuse_bool), Field(allow_inf_nan=False)]


class ConfigDeprecationWarning(FutureWarning):
    """A config spelled with a retired key that still loads (docs/VOCABULARY.md, "old names").

    A FutureWarning, so that the one-line note shows by default to whoever runs the config
    (Python hides DeprecationWarning outside `__main__`)."""


class ConfigError(ValueError):
    """A configuration that failed validation; `errors` holds one readable line per problem."""

    MAX_SHOWN = 50  # lines in the message; `errors` keeps them all

    def __init__(self, errors: list[str]):
        self.errors = errors
        shown = errors[: self.MAX_SHOWN] + (
            [f"... and {len(errors) - self.MAX_SHOWN:,} more"] if len(errors) > self.MAX_SHOWN else [])
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {e}" for e in shown))


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
    trust_remote_code: StrictBool = Field(
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
    regex: StrictBool = Field(False, description="treat pattern as a regular expression")
    layers: list[Annotated[Int, Field(ge=0, le=100_000)]] | None = Field(
        None, description="block indices to adapt (e.g. [0, 1]); None = every block"
    )
    r: Int = Field(8, ge=1, le=65_536, description="rank of each low-rank component")
    target_r: Int | None = Field(
        None, ge=1, le=65_536, description="AdaLoRA: the average rank kept after pruning (r is the "
        "rank each layer starts with and trains); None = 2/3 of r, rounded (PEFT's 8 of 12)")
    k: Int = Field(4, ge=1, le=4096, description="ID-LoRA clusters of the weight's rows")
    heads: Int = Field(4, ge=1, le=4096, description="HydraLoRA heads N (B matrices the router mixes)")
    selection: Selection = Field(
        "id", description="ID-LoRA skeleton-row selection: id (pivoted QR, the recommended one), "
        "centroid (the paper's) or random")
    rb_splits: Int = Field(
        1, ge=1, le=1024, description="rank-boosting splits p (1 = plain ID-LoRA)"
    )
    alpha: Number = Field(
        16.0, gt=0, le=1e6, description="scaling numerator: dy is scaled by alpha / r"
    )
    dropout: Number = Field(0.0, ge=0, lt=1, description="dropout on the adapter input")
    normalize_rows: StrictBool = Field(False, description="cluster L2-normalised rows (cosine)")

    @model_validator(mode="after")
    def _check(self) -> TargetConfig:
        if self.regex:
            compile_pattern(self.pattern)  # PatternError (a ValueError): invalid or too large
        if self.target_r is not None and self.target_r > self.r:
            raise ValueError(f"target_r={self.target_r} must not exceed r={self.r} (AdaLoRA prunes "
                             "from r down to target_r)")
        if self.r % self.rb_splits:
            raise ValueError(
                f"rb_splits={self.rb_splits} must divide r={self.r} (rank boosting splits z "
                "into equal parts)"
            )
        return self


# The TargetConfig fields each method uses (pattern, regex and layers apply to all): the one
# table of "which method uses r / k / heads"; the study grid and the app pages read it through
# uses_rank / uses_clusters / uses_heads. Baselines (head-only, base) are not in it: they train
# no adapter and ignore their targets.
METHOD_FIELDS: dict[str, frozenset[str]] = {
    "idlora": frozenset({"r", "k", "selection", "rb_splits", "alpha", "dropout", "normalize_rows"}),
    "hydralora": frozenset({"r", "heads", "alpha", "dropout"}),
    "lora": frozenset({"r", "alpha", "dropout"}),
    "dora": frozenset({"r", "alpha", "dropout"}),
    "adalora": frozenset({"r", "target_r", "alpha", "dropout"}),
    "full": frozenset(),
}
# Every method-specific TargetConfig field (the ones some method does not use).
TUNABLE_FIELDS: frozenset[str] = frozenset().union(*METHOD_FIELDS.values())


def uses_rank(method: str) -> bool:
    """Return True when `method` trains a rank-r adapter (its targets' `r` matters)."""
    return "r" in METHOD_FIELDS.get(method, ())


def uses_clusters(method: str) -> bool:
    """Return True when `method` clusters the weight's rows into `k` clusters (ID-LoRA)."""
    return "k" in METHOD_FIELDS.get(method, ())


def uses_heads(method: str) -> bool:
    """Return True when `method` mixes `heads` B matrices (HydraLoRA)."""
    return "heads" in METHOD_FIELDS.get(method, ())


# Configs written while selection defaulted to 'centroid' spell it on every target, lora ones too.
_EARLIER_DEFAULTS: dict[str, object] = {"selection": "centroid"}
# The TargetConfig fields AdapterConfig takes once for all `target_modules` (PEFT's shorthand).
SHARED_TARGET_FIELDS: tuple[str, ...] = tuple(n for n in TargetConfig.model_fields if n != "pattern")


# Target keys older configs spelled for one method: method -> {old key: the one name now}.
# HydraLoRA's heads were `k`, the name of ID-LoRA's clusters (docs/VOCABULARY.md).
RENAMED_TARGET_KEYS: dict[str, dict[str, str]] = {"hydralora": {"k": "heads"}}


def _rename_target_keys(data: dict[str, Any]) -> dict[str, Any]:
    """Return the adapter mapping `data` with its targets' retired keys renamed for its method
    (a key whose new name is given as well is left for validation to judge); warns once,
    one line, when it renamed any."""
    renames = RENAMED_TARGET_KEYS.get(data.get("method"))  # type: ignore[arg-type]
    targets = data.get("targets")
    if not renames or not isinstance(targets, list):
        return data
    moved: dict[str, list[int]] = {}
    out = []
    for i, target in enumerate(targets):
        if isinstance(target, dict):
            for old, new in renames.items():
                if old in target and new not in target:
                    target = {new if key == old else key: value for key, value in target.items()}
                    moved.setdefault(f"{old} -> {new}", []).append(i)
        out.append(target)
    if moved:
        what = "; ".join(f"{change} on targets {', '.join(map(str, idx))}" for change, idx in moved.items())
        warnings.warn(f"adapter method {data['method']!r}: renamed retired key(s) {what} "
                      "(docs/VOCABULARY.md); write the new name to silence this note",
                      ConfigDeprecationWarning, stacklevel=2)
    return {**data, "targets": out}


def target_for(method: str, **values: Any) -> TargetConfig:
    """Return a TargetConfig for `method` from `values`, dropping the fields the method does not
    use (a UI that holds every field for every method builds its targets with this)."""
    keep = METHOD_FIELDS.get(method, TUNABLE_FIELDS) | {"pattern", "regex", "layers"}
    return TargetConfig(**{name: value for name, value in values.items() if name in keep})


class AdapterConfig(_Strict):
    """The adapter part of a run: the method, one TargetConfig per layer pattern, the seed.

    PEFT's shorthand is accepted when building one: ``AdapterConfig(method="idlora", r=8, k=4,
    target_modules=["query", "value"])`` is one TargetConfig per name, each with the shared
    fields given (any TargetConfig field but `pattern`); shared fields without target_modules
    apply to the default targets. It expands into `targets` (what a dump holds); giving
    `targets` as well is an error.
    """

    method: Method = Field(
        "idlora",
        description="idlora | lora | dora | adalora | hydralora | full, or the baselines head-only "
        "(only the task head trains; targets ignored) and base (no training)",
    )
    targets: list[TargetConfig] = Field(
        default_factory=lambda: [TargetConfig(pattern="query"), TargetConfig(pattern="value")],
        min_length=1,
    )
    seed: Int = Field(
        0, ge=0, le=MAX_SEED, description="seed for clustering and random skeleton selection"
    )
    skeletons: dict[str, list[list[Annotated[Int, Field(ge=0)]]]] | None = Field(
        None,
        description="resolved skeleton row indices per adapted layer name: one list of r "
        "global row indices per cluster; when present, no re-clustering happens",
    )
    compile_adapters: StrictBool = Field(
        False,
        description="ID-LoRA only: torch.compile the adapter update (router, mix, B); "
        "measured in docs/ADAPTERS.md",
    )

    @model_validator(mode="before")
    @classmethod
    def _before(cls, data: Any) -> Any:
        # one before-validator, so the order is fixed: expand the shorthand, then rename
        if not isinstance(data, dict):
            return data
        return _rename_target_keys(cls._expand_target_modules(data))

    @classmethod
    def _expand_target_modules(cls, data: dict[str, Any]) -> dict[str, Any]:
        shared = {name: data[name] for name in SHARED_TARGET_FIELDS if name in data}
        if "target_modules" not in data and not shared:
            return data
        given = ", ".join(["target_modules"] * ("target_modules" in data) + sorted(shared))
        if "targets" in data:
            raise ValueError(f"give either targets or target_modules with shared fields, not both "
                             f"(got targets and {given})")
        names = data.get("target_modules")
        if names is None:
            names = [t.pattern for t in cls.model_fields["targets"].default_factory()]
        if isinstance(names, str) or not isinstance(names, (list, tuple)):
            raise ValueError(f"target_modules takes a list of module names, e.g. ['query', 'value'], "
                             f"got {shorten(names)}")
        rest = {k: v for k, v in data.items() if k != "target_modules" and k not in shared}
        return {**rest, "targets": [{"pattern": name, **shared} for name in names]}

    @model_validator(mode="after")
    def _fields_apply(self) -> AdapterConfig:
        """A target field that the method does not use, set away from its default, is an error
        (it would be silently ignored otherwise); so is compile_adapters off ID-LoRA."""
        if self.method not in METHOD_FIELDS:  # baselines (head-only, base) ignore their targets
            return self
        used = METHOD_FIELDS[self.method]
        problems = []
        for i, target in enumerate(self.targets):
            for name in sorted(TUNABLE_FIELDS - used):
                default = TargetConfig.model_fields[name].default
                if getattr(target, name) not in (default, _EARLIER_DEFAULTS.get(name, default)):
                    users = [m for m in METHOD_FIELDS if name in METHOD_FIELDS[m]]
                    renamed = RENAMED_TARGET_KEYS.get(self.method, {}).get(name)
                    hint = f" ({self.method}'s is {renamed!r})" if renamed else ""
                    problems.append(
                        f"targets.{i}.{name}={getattr(target, name)!r} does not apply to method "
                        f"{self.method!r} (only to {', '.join(users)}){hint}; remove it or set "
                        f"{default!r}"
                    )
        if self.compile_adapters and self.method != "idlora":
            problems.append(f"compile_adapters applies to method 'idlora' only, not {self.method!r}")
        if self.skeletons and self.method != "idlora":
            problems.append(f"skeletons apply to method 'idlora' only, not {self.method!r}")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class TaskConfig(_Strict):
    name: str = Field(
        ...,
        description="built-in task (generated: 'arithmetic', 'code', 'knowledge', 'refusal', "
        "'sentiment', 'math' (DeepMind mathematics_dataset); real data from an installed package: "
        "'rotten_tomatoes', 'bbc_news'; see docs/DATA.md) "
        "or 'jsonl' / 'csv' with a path",
    )
    path: str | None = Field(None, description="data file for 'jsonl' / 'csv' tasks")
    weight: Number = Field(1.0, gt=0, le=1e6, description="mixing weight among the tasks")
    num_train: Int = Field(
        512, ge=1, le=10_000_000, description="training examples (generated, or the first N of a "
        "dataset's fixed training split)"
    )
    num_eval: Int = Field(
        64, ge=1, le=1_000_000,
        description="validation examples: scored during and after training, they choose "
        "hyper-parameters")
    num_test: Int | None = Field(
        None, ge=0, le=1_000_000,
        description="test examples: scored once at the end (test_* metrics), never used to choose "
        "anything; None = as many as num_eval, 0 = no test split")

    @property
    def test_count(self) -> int:
        """Return the number of test examples asked for (num_test, or num_eval when unset)."""
        return self.num_eval if self.num_test is None else self.num_test

    @model_validator(mode="after")
    def _check(self) -> TaskConfig:
        if self.name in DATA_FILE_TASKS and not self.path:
            raise ValueError(f"task {self.name!r} needs a path to the data file")
        return self


class TrainConfig(_Strict):
    steps: Int = Field(100, ge=1, le=10_000_000, description="optimiser steps")
    batch_size: Int = Field(8, ge=1, le=4096, description="examples per device per step")
    seq_len: Int = Field(128, ge=8, le=131_072, description="maximum tokens per example")
    learning_rate: Number = Field(2e-4, gt=0)  # huge values are allowed: NaN tests
    schedule: Schedule = Field("linear", description="learning-rate schedule after warm-up")
    warmup_steps: Int = Field(0, ge=0, le=10_000_000)
    weight_decay: Number = Field(0.0, ge=0, le=10)
    grad_accum: Int = Field(1, ge=1, le=4096, description="gradient accumulation steps")
    eval_interval: Int = Field(
        50, ge=0, le=10_000_000, description="evaluate every N steps (0 = only at end)"
    )
    log_interval: Int = Field(
        1, ge=1, le=10_000_000, description="write a metrics line every N steps"
    )
    save_interval: Int = Field(
        50, ge=0, le=10_000_000,
        description="save a checkpoint every N steps (0 = only when stopped early)",
    )
    seed: Int = Field(0, ge=0, le=MAX_SEED)
    precision: Precision = "auto"
    device: Device = "auto"
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in the backward pass: less memory, ~30 % more "
        "compute (for long sequences and big models)")


class RunConfig(_Strict):
    """A whole run: what `python -m idlora_core.train` reads and the Export page writes."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    adapter: AdapterConfig = Field(default_factory=AdapterConfig)
    tasks: list[TaskConfig] = Field(
        default_factory=lambda: [TaskConfig(name="sentiment")], min_length=1
    )
    train: TrainConfig = Field(default_factory=TrainConfig)
    output_dir: str = Field("runs/default", description="folder for metrics, checkpoints, adapters")

    @field_validator("output_dir", mode="before")
    @classmethod
    def _output_dir_named(cls, value: object) -> object:
        # an empty value would put the run's files into the working directory
        if value is None or (isinstance(value, str) and not value.strip()):
            raise ValueError("output_dir is empty: name a folder for the run's files, e.g. runs/my-run")
        if isinstance(value, str) and "\x00" in value:  # no file system takes it; paths raise later
            raise ValueError("output_dir holds a NUL byte: name a folder, e.g. runs/my-run")
        return value


_SECTIONS: dict[str, type[BaseModel]] = {
    "model": ModelConfig, "adapter": AdapterConfig, "targets": TargetConfig,
    "tasks": TaskConfig, "train": TrainConfig,
}
_RANGE_ERRORS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal")


def field_range(section: type[BaseModel], name: str) -> tuple[float | None, float | None]:
    """Return the (lowest, highest) value the schema allows for `section.name` (None = open).

    Exclusive bounds (gt / lt) are returned as they are; the app uses these for its widgets,
    so every value a valid config holds is shown unclamped.
    """
    lo = hi = None
    for meta in section.model_fields[name].metadata:
        if isinstance(meta, (annotated_types.Ge, annotated_types.Gt)):
            lo = getattr(meta, "ge", None) if isinstance(meta, annotated_types.Ge) else meta.gt
        elif isinstance(meta, (annotated_types.Le, annotated_types.Lt)):
            hi = getattr(meta, "le", None) if isinstance(meta, annotated_types.Le) else meta.lt
    return lo, hi


def _range_text(loc: tuple) -> str:
    names = [p for p in loc if isinstance(p, str)]
    section = _SECTIONS.get(names[-2]) if len(names) >= 2 else None
    if section is None or names[-1] not in section.model_fields:
        return ""
    lo, hi = field_range(section, names[-1])
    if lo is not None and hi is not None:
        return f"; allowed range {_fmt(lo)} to {_fmt(hi)}"
    return ""


def _fmt(value: float) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:g}"


def _format_errors(exc: ValidationError) -> list[str]:
    lines = []
    for err in exc.errors():
        path = cut(".".join(str(p) for p in err["loc"]) or "(top level)")
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (not part of the schema)"
        elif err["type"] in _RANGE_ERRORS:
            msg += _range_text(err["loc"])
        value = err.get("input")
        shown = "" if isinstance(value, dict) else f" (got {shorten(value)})"
        lines.append(f"{path}: {cut(msg, 400)}{shown}")
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
    except RecursionError:
        raise ConfigError(["(top level): nested too deeply"]) from None


def loads_config(text: str | bytes) -> RunConfig:
    """Return the RunConfig in YAML `text` (safe tags only, alias expansion bounded by
    `idlora_core.safe_yaml.MAX_YAML_NODES`); raises ConfigError with one line per problem."""
    try:
        data = safe_load_bounded(text)
    except YAMLInputError as exc:
        raise ConfigError([str(exc)]) from None
    return parse_config(data)


def load_config(path: str | Path, max_bytes: int = MAX_CONFIG_BYTES) -> RunConfig:
    """Return the RunConfig stored in the YAML file at `path` (at most `max_bytes` bytes);
    raises ConfigError naming the file for a missing, oversized, non-UTF-8 or invalid file."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError([f"{path} is a folder, not a config file"])
    if not path.is_file():
        raise ConfigError([f"config file not found: {path}"])
    size = path.stat().st_size
    if size > max_bytes:
        raise ConfigError([f"{path} is {size:,} bytes; a config is at most {max_bytes:,} bytes "
                           "(keep data in a data file that a task's `path` names)"])
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError([f"cannot read {path}: {exc.strerror or exc}"]) from None
    try:
        return loads_config(decode_utf8(data, str(path)))
    except YAMLInputError as exc:
        raise ConfigError([str(exc)]) from None


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
            problems.append(f"override {shorten(item)}: expected KEY=VALUE, e.g. train.steps=50")
            continue
        key, raw = item.split("=", 1)
        try:
            value = safe_load_bounded(raw)
        except YAMLInputError as exc:
            problems.append(f"override {shorten(item)}: the value {exc}")
            continue
        parts = key.strip().split(".")
        node: Any = data
        try:
            for part in parts[:-1]:
                node = node[int(part)] if isinstance(node, list) else node[part]
            last = parts[-1]
            if isinstance(node, list):
                node[int(last)] = value
            elif isinstance(node, dict):
                node[last] = value
            else:
                raise TypeError(last)
        except (KeyError, IndexError, ValueError, TypeError):
            problems.append(f"override {shorten(item)}: no such field {cut(key)!r}")
    if problems:
        raise ConfigError(problems)
    return parse_config(data)
