"""Every page's settings as one typed dataclass: the single home of their defaults.

Each field is a session-state key (its name, except `ft_lr_head_only` -> "ft_lr_head-only")
with its type and default. Each class (base `app/settings_codec.PageSettings`) converts between
its values and
  - session state: `from_state(state)` / `to_state(state)` (any mapping, st.session_state in the app);
  - the URL: `to_query()` (the values that differ from the defaults, as text) / `from_query(params)`
    (tolerant: a value that does not parse, or lies outside its widget's range (LIMITS), keeps
    the default; lists keep each value once);
  - JSON for the per-browser session store: `to_json()` / `from_json(data)` (same tolerance);
  - a RunConfig, for the Fine-tune and Export pages: `FineTuneSettings.to_run_configs` /
    `ExportSettings.to_run_config` and `from_run_config` on both (plus `run_config_fields(method)`:
    what a run config of that method holds).
Fields marked LOCAL (trust_remote_code) never leave the session: not in the URL, not stored.
Keys retired by the one vocabulary (docs/VOCABULARY.md: `lab_strategies`, `atlas_strategies`,
`adapter_strategy`, `adapter_rb`, a layer choice's `strategy`) are still read from URLs, the
store and session state, under the one name (`RETIRED` of each class).
ID-LoRA's clusters k and HydraLoRA's heads N have widgets of their own (`ft_ks` / `ft_heads`,
`st_ks` / `st_heads`, `adapter_k` / `adapter_heads`, a layer choice's `k` / `heads`): a run
config gets them as `TargetConfig.k` / `TargetConfig.heads`. The k keys held both counts
before, so an old URL, store or session without a heads key reads it from the k key (`FALLBACK`
of each class); a layer choice without `heads` takes the page's `adapter_heads`.
UI-level only: no Streamlit calls and no maths; `app/common.py` and `app/settings_io.py` derive
their DEFAULTS from `all_defaults()`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, NotRequired, Self

from pydantic import BeforeValidator, Field
from typing_extensions import TypedDict  # pydantic validates this one on Python < 3.12

from app.settings_codec import LOCAL, PageSettings
from idlora_core.config import (
    ALL_METHODS,
    METHOD_FIELDS,
    METHODS,
    SELECTIONS,
    TUNABLE_FIELDS,
    AdapterConfig,
    AdapterMethod,
    Device,
    Method,
    ModelConfig,
    Precision,
    RunConfig,
    Schedule,
    Selection,
    TargetConfig,
    TaskConfig,
    TrainConfig,
    field_range,
    target_for,
    uses_clusters,
    uses_heads,
    uses_rank,
)
from idlora_core.layers import block_index, layer_kind
from idlora_core.study.defaults import DEFAULT_LEARNING_RATES
from idlora_core.tasks import BUILTIN, CAUSAL_LM_TASKS, CLASSIFICATION_TASKS, pool_sizes

# Built-in tasks by model kind, the default first: real data before the synthetic sentiment task
# (it saturates: the 30-s smoke task). Only registered names are offered.
_ENCODER_ORDER = ("rotten_tomatoes", "bbc_news", "sentiment")
_CLASSIFIERS = [t for t in CLASSIFICATION_TASKS if t in BUILTIN]
ENCODER_TASKS: tuple[str, ...] = tuple(
    [t for t in _ENCODER_ORDER if t in _CLASSIFIERS] + [t for t in _CLASSIFIERS if t not in _ENCODER_ORDER])
CAUSAL_TASKS: tuple[str, ...] = tuple(t for t in CAUSAL_LM_TASKS if t in BUILTIN)
METHOD_LABELS: dict[str, str] = {
    "idlora": "ID-LoRA",
    "lora": "LoRA",
    "dora": "DoRA",
    "adalora": "AdaLoRA",
    "hydralora": "HydraLoRA",
    "full": "Full fine-tuning",
    "head-only": "Head only (linear probe)",
    "base": "Base (no training)",
}
TRAIN_FIELDS: tuple[str, ...] = tuple(TrainConfig.model_fields)
# Short demo-sized training by default (the schema's defaults are sized for real runs): 150 steps
# of batch 16 on real text, 15 warm-up steps, each method at the learning rate study preset (a)
# chose on validation (ft_lr_<method>). bench/finetune_defaults.py runs them on 10 new seeds.
_TRAIN = TrainConfig().model_dump() | {
    "steps": 150, "batch_size": 16, "seq_len": 48, "warmup_steps": 15, "eval_interval": 0}
LR_KEYS: dict[str, str] = {m: f"ft_lr_{m}" for m in ALL_METHODS}  # method -> session key

# Number widgets: (min, max) from the schema, so every valid config shows unclamped.
_TINY = 1e-12  # the widget minimum of a float the schema only requires to be > 0


def _limits(section: type, name: str) -> tuple[float, float | None]:
    lo, hi = field_range(section, name)
    info = section.model_fields[name]
    if info.annotation is not float:
        return lo, hi
    exclusive = any(hasattr(m, "gt") for m in info.metadata)
    return (_TINY if exclusive and lo == 0 else float(lo)), (None if hi is None else float(hi))


WIDGET_LIMITS: dict[str, tuple[float, float | None]] = {
    f"ft_{name}": _limits(TrainConfig, name)
    for name in ("steps", "batch_size", "seq_len", "warmup_steps", "eval_interval", "weight_decay")
} | {key: _limits(TrainConfig, "learning_rate") for key in LR_KEYS.values()} | {
    "ft_num_train": _limits(TaskConfig, "num_train"),
    "ft_num_eval": _limits(TaskConfig, "num_eval"),
    "ft_num_test": _limits(TaskConfig, "num_test"),
    "ft_rb_splits": _limits(TargetConfig, "rb_splits"),
    "ft_alpha": _limits(TargetConfig, "alpha"),
    "adapter_k": _limits(TargetConfig, "k"),
    "adapter_heads": _limits(TargetConfig, "heads"),
    "adapter_r": _limits(TargetConfig, "r"),
    "adapter_rb_splits": _limits(TargetConfig, "rb_splits"),
    "ft_adapter_seed": _limits(AdapterConfig, "seed"),
    "ex_seed": _limits(AdapterConfig, "seed"),
}
_SEED = (0, 2**31 - 1)  # the lab and explorer seed boxes
# Every range a value from a URL or the store must lie in (each item of a list); outside, the
# default is kept (a widget would refuse it).
LIMITS: dict[str, tuple[float, float | None]] = WIDGET_LIMITS | {
    f"ft_{name}": _limits(TrainConfig, name)
    for name in ("grad_accum", "log_interval", "save_interval", "seed")
} | {
    "ft_dropout": _limits(TargetConfig, "dropout"),
    "ft_ranks": _limits(TargetConfig, "r"), "ft_ks": _limits(TargetConfig, "k"),
    "ft_heads": _limits(TargetConfig, "heads"), "st_heads": (1, None),
    "lab_ks": (1, None), "lab_ranks": (1, None), "lab_seed": _SEED, "lab_focus_k": (1, None),
    "lab_summary_r": (1, None), "explorer_k": (1, 256), "explorer_r": (1, 512),
    "explorer_seed": _SEED, "st_ranks": (1, None), "st_ks": (1, None), "st_seeds": (0, 9),
    "atlas_ks": (1, None), "atlas_ranks": (1, None), "atlas_r": (1, None),
}


RETIRED_CHOICE_KEYS = {"strategy": "selection"}  # a layer choice's old key -> the one name


def renamed_choice(choice: Any) -> Any:
    """Return a layer choice (dict) with its retired keys (`strategy`) under the one name
    (`selection`); the new key wins when both are there. Anything else is returned as it is."""
    if not isinstance(choice, Mapping):
        return choice
    out = dict(choice)
    for old, new in RETIRED_CHOICE_KEYS.items():
        if old in out:
            value = out.pop(old)
            out.setdefault(new, value)
    return out


def renamed_choices(choices: Any) -> Any:
    """Return {layer: choice} with each choice's retired keys under the one name
    (`renamed_choice`); anything but a mapping is returned as it is."""
    if not isinstance(choices, Mapping):
        return choices
    return {layer: renamed_choice(choice) for layer, choice in choices.items()}


class LayerChoice(TypedDict):
    """The Export page's adapter choice for one layer (k: ID-LoRA's clusters; heads: HydraLoRA's
    heads N, absent in a choice written before it had its own key: the page's `adapter_heads`)."""

    k: Annotated[int, Field(ge=1)]
    heads: NotRequired[Annotated[int, Field(ge=1)]]
    r: Annotated[int, Field(ge=1)]
    selection: Selection
    rb_splits: Annotated[int, Field(ge=1)]


def lr_text(method: str) -> str:
    """Return the Studies page's default learning-rate box of `method`: rate/3, rate, 3*rate."""
    rate = DEFAULT_LEARNING_RATES.get(method, 1e-3)
    return f"{rate / 3:.3g}, {rate:.3g}, {rate * 3:.3g}"


def _list(*values: Any) -> Any:
    return field(default_factory=lambda: list(values))


class _Page(PageSettings):
    LIMITS: ClassVar[Mapping[str, tuple[float, float | None]]] = LIMITS

    @classmethod
    def from_run_config(cls, cfg: RunConfig, base: Self | None = None) -> Self:
        """Return `base` (default: the defaults) with what `cfg` holds (`run_config_values`, which
        the pages that a run config fills define: Model & layers, Fine-tune, Export)."""
        return dataclasses.replace(base or cls(), **cls.run_config_values(cfg))


# ---- the pages ----------------------------------------------------------------------------------

@dataclass
class SidebarSettings(_Page):
    """The sidebar: model picker and the open lab exercise (in every page's URL)."""

    PAGE: ClassVar[str] = "shared"
    model_choice: str = "minilm"  # "minilm" | "smollm2-135m" | "local"
    model_path: str = ""  # local model directory (when "local")
    trust_remote_code: bool = field(default=False, metadata=LOCAL)  # ticked by hand, each session
    lab_exercise: int | None = None  # the exercise shown in the sidebar panel


@dataclass
class ModelLayersSettings(_Page):
    """Model & layers: the layers every other page starts from."""

    PAGE: ClassVar[str] = "model"
    layer_kinds: list[str] = _list("q", "v")  # layer types; [] = every type
    block_range: tuple[int, int] | None = None  # first and last block, inclusive; None = all

    @classmethod
    def run_config_values(cls, cfg: RunConfig) -> dict[str, Any]:
        """Return {field: value} of `cfg`'s target patterns: the block range, and the layer kinds
        when a pattern names one."""
        kinds = list(dict.fromkeys(k for t in cfg.adapter.targets
                                   if (k := layer_kind(t.pattern)) != "other"))
        return {"block_range": _blocks(cfg)} | ({"layer_kinds": kinds} if kinds else {})


def _blocks(cfg: RunConfig) -> tuple[int, int] | None:
    blocks: list[int] = []
    for target in cfg.adapter.targets:
        if target.layers:
            blocks += target.layers
        elif (b := block_index(target.pattern)) is not None:
            blocks.append(b)
        else:
            return None  # a target on every block
    return (min(blocks), max(blocks)) if blocks else None


@dataclass
class LabSettings(_Page):
    """Decomposition lab: the sweep grid and what the plots inspect."""

    PAGE: ClassVar[str] = "lab"
    RETIRED: ClassVar[dict[str, str]] = {"lab_strategies": "lab_selections"}
    lab_layers: list[str] = _list()  # [] = the first layer selected on Model & layers
    lab_ks: list[int] = _list(1, 2, 4, 8)
    lab_ranks: list[int] = _list(4, 8, 16, 32)
    lab_selections: list[Selection] = _list(*SELECTIONS)
    lab_normalize_rows: bool = False
    lab_seed: int = 0
    lab_focus_layer: str | None = None  # None = the first swept layer
    lab_focus_k: int | None = None  # None = the largest k
    lab_summary_r: int | None = None  # None = the middle r


@dataclass
class ExplorerSettings(_Page):
    """Cluster explorer: one layer's clusters and skeleton rows."""

    PAGE: ClassVar[str] = "explorer"
    explorer_layer: str | None = None  # None = the first selected layer
    explorer_k: int = 8
    explorer_r: int = 8
    explorer_projection: Literal["PCA", "UMAP"] = "PCA"
    explorer_normalize_rows: bool = False
    explorer_seed: int = 0
    explorer_skeleton: Selection = "id"


@dataclass
class FineTuneSettings(_Page):
    """Fine-tune: methods x ranks x clusters / heads, tasks and training, one learning rate per
    method."""

    PAGE: ClassVar[str] = "finetune"
    KEYS: ClassVar[dict[str, str]] = {key.replace("-", "_"): key for key in LR_KEYS.values()}
    FALLBACK: ClassVar[dict[str, str]] = {"ft_heads": "ft_ks"}  # ft_ks held the heads before
    ft_methods: list[Method] = _list("idlora", "lora")
    ft_tasks: list[str] = _list(*ENCODER_TASKS[:1])  # the default model (MiniLM) is an encoder
    ft_ranks: list[int] = _list(8)
    ft_ks: list[int] = _list(4)  # clusters k (ID-LoRA)
    ft_heads: list[int] = _list(4)  # heads N (HydraLoRA)
    ft_selection: Selection = "id"
    ft_rb_splits: int = 1
    ft_normalize_rows: bool = False
    ft_adapter_seed: int = 0
    ft_alpha: float = 16.0
    ft_dropout: float = 0.0
    ft_num_train: int = 2000  # settings_io.SIZE_DEFAULTS["encoder"]
    ft_num_eval: int = 500
    ft_num_test: int = 1000
    # every TrainConfig field but learning_rate (one per method, below)
    ft_steps: int = _TRAIN["steps"]
    ft_batch_size: int = _TRAIN["batch_size"]
    ft_seq_len: int = _TRAIN["seq_len"]
    ft_schedule: Schedule = _TRAIN["schedule"]
    ft_warmup_steps: int = _TRAIN["warmup_steps"]
    ft_weight_decay: float = _TRAIN["weight_decay"]
    ft_grad_accum: int = _TRAIN["grad_accum"]
    ft_eval_interval: int = _TRAIN["eval_interval"]
    ft_log_interval: int = _TRAIN["log_interval"]
    ft_save_interval: int = _TRAIN["save_interval"]
    ft_seed: int = _TRAIN["seed"]
    ft_precision: Precision = _TRAIN["precision"]
    ft_device: Device = _TRAIN["device"]
    ft_gradient_checkpointing: bool = _TRAIN["gradient_checkpointing"]
    # each method's learning rate (study preset (a), idlora_core/study/defaults.py)
    ft_lr_idlora: float = DEFAULT_LEARNING_RATES["idlora"]
    ft_lr_lora: float = DEFAULT_LEARNING_RATES["lora"]
    ft_lr_dora: float = DEFAULT_LEARNING_RATES["dora"]
    ft_lr_adalora: float = DEFAULT_LEARNING_RATES["adalora"]
    ft_lr_hydralora: float = DEFAULT_LEARNING_RATES["hydralora"]
    ft_lr_full: float = DEFAULT_LEARNING_RATES["full"]
    ft_lr_head_only: float = DEFAULT_LEARNING_RATES["head-only"]
    ft_lr_base: float = DEFAULT_LEARNING_RATES["base"]

    # field -> the TargetConfig field it becomes (lists: one run per value)
    TARGET_FIELDS: ClassVar[dict[str, str]] = {
        "ft_ranks": "r", "ft_ks": "k", "ft_heads": "heads", "ft_selection": "selection",
        "ft_rb_splits": "rb_splits", "ft_alpha": "alpha", "ft_dropout": "dropout",
        "ft_normalize_rows": "normalize_rows"}
    LIST_FIELDS: ClassVar[tuple[str, ...]] = ("ft_ranks", "ft_ks", "ft_heads")  # one run per value

    def learning_rate(self, method: str) -> float:
        """Return the learning rate of `method` (its ft_lr_<method> field)."""
        return float(getattr(self, LR_KEYS[method].replace("-", "_")))

    def train_config(self, method: str) -> TrainConfig:
        """Return the TrainConfig of a run of `method` (raises pydantic errors if invalid)."""
        values = {name: getattr(self, f"ft_{name}") for name in TRAIN_FIELDS if name != "learning_rate"}
        return TrainConfig(learning_rate=self.learning_rate(method), **values)

    def chosen_tasks(self, model_kind: str) -> list[str]:
        """Return the chosen task names valid for `model_kind`, or the model's default task."""
        options = task_options(model_kind)
        return [t for t in self.ft_tasks or [] if t in options] or [options[0]]

    def task_configs(self, model_kind: str) -> list[TaskConfig]:
        """Return one TaskConfig per chosen task (equal weights; a real dataset's pools cap the
        ft_num_* sizes)."""
        wanted = (int(self.ft_num_train), int(self.ft_num_eval), int(self.ft_num_test))
        out = []
        for name in self.chosen_tasks(model_kind):
            pools = pool_sizes(name)  # a real dataset holds a fixed number: use at most that
            n, n_eval, n_test = wanted if pools is None else tuple(
                min(want, have) for want, have in zip(wanted, pools, strict=True))
            out.append(TaskConfig(name=name, num_train=max(1, n), num_eval=max(1, n_eval),
                                  num_test=n_test))
        return out

    def targets(self, layers: list[str], r: int, k: int, method: str = "idlora",
                heads: int | None = None) -> list[TargetConfig]:
        """Return one target per layer name with this page's r, clusters k, heads N (default:
        the first of ft_heads), selection, RB, alpha; only the fields `method` uses (any other,
        set, would be a config error)."""
        heads = int(heads) if heads is not None else (sorted({int(n) for n in self.ft_heads}) or [4])[0]
        return [target_for(method, pattern=name, r=r, k=k, heads=heads, selection=self.ft_selection,
                           rb_splits=int(self.ft_rb_splits), alpha=float(self.ft_alpha),
                           dropout=float(self.ft_dropout), normalize_rows=bool(self.ft_normalize_rows))
                for name in layers]

    def to_run_configs(self, model: ModelConfig, model_kind: str,
                       layers: list[str]) -> list[tuple[str, RunConfig]]:
        """Return (label, RunConfig) for every run the Fine-tune page would start: one per
        method x r x count, r only for the methods that use a rank, the count only for those
        with clusters (ID-LoRA: ft_ks, label `k=K`) or heads (HydraLoRA: ft_heads, label
        `heads=N`), one run for full / head-only / base. `output_dir` is filled in by
        `idlora_core.jobs.runs.start_run`."""
        if not layers:
            raise ValueError("no target layers: pick layer types on the Model & layers page")
        ranks = sorted({int(r) for r in self.ft_ranks}) or [8]
        ks = sorted({int(k) for k in self.ft_ks}) or [4]
        heads = sorted({int(n) for n in self.ft_heads}) or [4]
        tasks = self.task_configs(model_kind)
        methods = [m for m in ALL_METHODS if m in self.ft_methods]
        if "head-only" in methods and model_kind != "encoder":  # else every such run fails once queued
            raise ValueError("Head only (linear probe) trains a classification head; this model's "
                             "tasks are causal-LM: deselect it (Base is the reference here)")
        out = []
        for method in methods:
            train = self.train_config(method)
            grid = [(r, k, n) for r in (ranks if uses_rank(method) else ranks[:1])
                    for k in (ks if uses_clusters(method) else ks[:1])
                    for n in (heads if uses_heads(method) else heads[:1])]
            for r, k, n in grid:
                label = METHOD_LABELS[method] + (f" r={r}" if uses_rank(method) else "")
                label += (f" k={k}" if uses_clusters(method) else "") + (f" heads={n}" if uses_heads(method) else "")
                adapter = AdapterConfig(method=method, targets=self.targets(layers, r, k, method, heads=n),
                                        seed=int(self.ft_adapter_seed))
                out.append((label, RunConfig(model=model, adapter=adapter, tasks=tasks, train=train)))
        return out

    @classmethod
    def run_config_values(cls, cfg: RunConfig) -> dict[str, Any]:
        """Return {field: value} of what `cfg` holds: its method (and that method's learning
        rate), the first target's r, clusters k, heads N, selection, RB, alpha, dropout,
        normalisation, the seed, tasks and sizes, and every training field."""
        first = cfg.adapter.targets[0]
        values: dict[str, Any] = {
            "ft_methods": [cfg.adapter.method], "ft_adapter_seed": cfg.adapter.seed,
            LR_KEYS[cfg.adapter.method].replace("-", "_"): cfg.train.learning_rate,
            "ft_tasks": [t.name for t in cfg.tasks], "ft_num_train": cfg.tasks[0].num_train,
            "ft_num_eval": cfg.tasks[0].num_eval, "ft_num_test": cfg.tasks[0].test_count,
        } | {name: ([getattr(first, t)] if name in cls.LIST_FIELDS else getattr(first, t))
             for name, t in cls.TARGET_FIELDS.items()}
        return values | {f"ft_{n}": v for n, v in cfg.train.model_dump().items() if n != "learning_rate"}

    @classmethod
    def run_config_fields(cls, method: str) -> frozenset[str]:
        """Return the fields a RunConfig of `method` holds (what `from_run_config` gets back)."""
        used = METHOD_FIELDS.get(method, TUNABLE_FIELDS)
        always = {"ft_methods", LR_KEYS[method].replace("-", "_"), "ft_adapter_seed", "ft_tasks",
                  "ft_num_train", "ft_num_eval", "ft_num_test"}
        train = {f"ft_{n}" for n in TRAIN_FIELDS if n != "learning_rate"}
        return frozenset(always | train | {f for f, t in cls.TARGET_FIELDS.items() if t in used})


def task_options(model_kind: str) -> tuple[str, ...]:
    """Return the built-in task names that fit a model kind ("encoder" or "causal-lm"), the
    default first."""
    return ENCODER_TASKS if model_kind == "encoder" else CAUSAL_TASKS


@dataclass
class ExportSettings(_Page):
    """Export / import: the adapter written to the YAML (its training part is Fine-tune's)."""

    PAGE: ClassVar[str] = "export"
    ex_method: AdapterMethod = "idlora"
    ex_run_name: str = "my-run"  # output folder inside the runs folder
    ex_normalize_rows: bool = False
    ex_seed: int = 0
    adapter_k: int = 4  # defaults for every layer: ID-LoRA's clusters k ...
    adapter_heads: int = 4  # ... HydraLoRA's heads N ...
    adapter_r: int = 8
    adapter_selection: Selection = "id"
    adapter_rb_splits: int = 1
    # ... and per-layer overrides (an old entry's `strategy` is read as `selection`)
    layer_choices: Annotated[dict[str, LayerChoice], BeforeValidator(renamed_choices)] = field(
        default_factory=dict)

    RETIRED: ClassVar[dict[str, str]] = {"adapter_strategy": "adapter_selection",
                                         "adapter_rb": "adapter_rb_splits"}
    FALLBACK: ClassVar[dict[str, str]] = {"adapter_heads": "adapter_k"}  # adapter_k held the heads before
    CHOICE_FIELDS: ClassVar[dict[str, str]] = {  # field -> its LayerChoice key (= TargetConfig field)
        "adapter_k": "k", "adapter_heads": "heads", "adapter_r": "r",
        "adapter_selection": "selection", "adapter_rb_splits": "rb_splits"}

    def layer_choice(self, layer: str) -> dict[str, Any]:
        """Return {"k", "heads", "r", "selection", "rb_splits"} of `layer`: its override, each
        key it lacks from the page's defaults."""
        return self.filled(dict((self.layer_choices or {}).get(layer, {})))

    def filled(self, choice: Mapping[str, Any]) -> dict[str, Any]:
        """Return layer choice `choice` under the one names (`renamed_choice`) with each missing
        key (`heads` in a choice written before it had its own key) from the page's defaults."""
        defaults = {key: getattr(self, name) for name, key in self.CHOICE_FIELDS.items()}
        return defaults | renamed_choice(dict(choice))

    def to_run_config(self, finetune: FineTuneSettings, model: ModelConfig, model_kind: str,
                      layers: list[str], choices: Mapping[str, Mapping[str, Any]] | None = None,
                      skeletons: dict[str, list[list[int]]] | None = None,
                      output_dir: str = "runs/my-run") -> RunConfig:
        """Return the RunConfig of the Export page: one target per layer with its own clusters k,
        heads N, r, selection and RB (`choices[layer]`, default `layer_choice(layer)`; an old
        choice's `strategy` is read as `selection`, a missing key is the page's default),
        Fine-tune's alpha, dropout, tasks and training at the learning rate of this method,
        resolved skeletons."""
        if not layers:
            raise ValueError("no layers selected: pick layer types on the Model & layers page")
        method = self.ex_method
        choices = {name: self.filled(c) for name, c in (
            choices or {name: self.layer_choice(name) for name in layers}).items()}
        targets = [
            target_for(method, pattern=name, r=int(choices[name]["r"]), k=int(choices[name]["k"]),
                       heads=int(choices[name]["heads"]), selection=choices[name]["selection"],
                       rb_splits=int(choices[name]["rb_splits"]),
                       alpha=float(finetune.ft_alpha), dropout=float(finetune.ft_dropout),
                       normalize_rows=bool(self.ex_normalize_rows))
            for name in layers
        ]
        adapter = AdapterConfig(method=method, targets=targets, seed=int(self.ex_seed),
                                skeletons=skeletons if method == "idlora" and skeletons else None)
        return RunConfig(model=model, adapter=adapter, tasks=finetune.task_configs(model_kind),
                         train=finetune.train_config(method), output_dir=output_dir)

    @classmethod
    def run_config_values(cls, cfg: RunConfig) -> dict[str, Any]:
        """Return {field: value} of what `cfg` holds: its method (an adapter method only: the page
        offers no baseline), seed, normalisation, the first target's clusters k / heads N / r /
        selection / RB as the defaults, every target as a per-layer choice (keyed by its
        pattern) and the run name (when `output_dir` is a plain relative path)."""
        first = cfg.adapter.targets[0]
        keys = cls.CHOICE_FIELDS.values()
        values: dict[str, Any] = {
            "ex_seed": cfg.adapter.seed, "ex_normalize_rows": first.normalize_rows,
            "layer_choices": {t.pattern: {key: getattr(t, key) for key in keys}
                              for t in cfg.adapter.targets},
        } | {name: getattr(first, key) for name, key in cls.CHOICE_FIELDS.items()}
        if cfg.adapter.method in METHODS:
            values["ex_method"] = cfg.adapter.method
        out = Path(cfg.output_dir)
        if out.name and not out.is_absolute() and ".." not in out.parts:
            values["ex_run_name"] = out.name  # the folder above is the server's runs folder
        return values

    @classmethod
    def run_config_fields(cls, method: str) -> frozenset[str]:
        """Return the fields a RunConfig of `method` holds (what `from_run_config` gets back)."""
        used = METHOD_FIELDS.get(method, TUNABLE_FIELDS)
        held = {f for f, key in cls.CHOICE_FIELDS.items() if key in used}
        return frozenset({"ex_method", "ex_run_name", "ex_seed", "layer_choices"} | held
                         | ({"ex_normalize_rows"} if "normalize_rows" in used else set()))


@dataclass
class StudiesSettings(_Page):
    """Studies: the preset or the grid built from the Fine-tune choices, and the study shown."""

    PAGE: ClassVar[str] = "studies"
    KEYS: ClassVar[dict[str, str]] = {"st_lr_head_only": "st_lr_head-only"}
    FALLBACK: ClassVar[dict[str, str]] = {"st_heads": "st_ks"}  # st_ks held the heads before
    st_source: Literal["Preset", "Build from the Fine-tune choices"] = "Preset"
    st_preset: str | None = None  # None = the first preset
    st_methods: list[Method] | None = None  # None = the Fine-tune methods plus the baselines
    st_ranks: list[int] | None = None  # None = from the Fine-tune ranks (r/2, r, 2r for one)
    st_ks: list[int] | None = None  # ID-LoRA's clusters k; None = the Fine-tune ks
    st_heads: list[int] | None = None  # HydraLoRA's heads N; None = the Fine-tune heads
    st_seeds: list[int] = _list(0, 1, 2)
    # each method's learning rates, the text of its box (comma-separated)
    st_lr_idlora: str = lr_text("idlora")
    st_lr_lora: str = lr_text("lora")
    st_lr_dora: str = lr_text("dora")
    st_lr_hydralora: str = lr_text("hydralora")
    st_lr_full: str = lr_text("full")
    st_lr_head_only: str = lr_text("head-only")
    st_current: str | None = None  # the study folder shown; None = the newest


@dataclass
class LayerAtlasSettings(_Page):
    """Layer atlas: where the scan comes from, its grid, and the rank shown."""

    PAGE: ClassVar[str] = "atlas"
    RETIRED: ClassVar[dict[str, str]] = {"atlas_strategies": "atlas_selections"}
    atlas_source: Literal["Load a scan CSV", "Scan the current model here"] = "Load a scan CSV"
    atlas_path: str = ""  # a scan CSV on the server
    atlas_ks: list[int] = _list(1, 4)
    atlas_ranks: list[int] = _list(16, 64)
    atlas_selections: list[Selection] = _list("id")
    atlas_layers: str = ""  # regex of the layers to scan; "" = all
    atlas_r: int | None = None  # None = the largest rank of the scan


PAGES: tuple[type[PageSettings], ...] = (
    SidebarSettings, ModelLayersSettings, LabSettings, ExplorerSettings, FineTuneSettings,
    ExportSettings, StudiesSettings, LayerAtlasSettings)
BY_PAGE: dict[str, type[PageSettings]] = {cls.PAGE: cls for cls in PAGES}


def all_defaults() -> dict[str, Any]:
    """Return {session key: default} of every page's every setting (fresh copies)."""
    out: dict[str, Any] = {}
    for cls in PAGES:
        out |= cls().values()
    return out


def parse_all_query(params: Mapping[str, str]) -> dict[str, Any]:
    """Return {key: value} of every known setting in URL `params` that parses (others ignored)."""
    out: dict[str, Any] = {}
    for cls in PAGES:
        out |= cls.parse_query(params)
    return out


def parse_all_json(data: Mapping[str, Any]) -> dict[str, Any]:
    """Return {key: value} of every known setting in store `data` that validates (others ignored)."""
    out: dict[str, Any] = {}
    for cls in PAGES:
        out |= cls.parse_json(data)
    return out


def all_json(state: Mapping[str, Any], changed_only: bool = False) -> dict[str, Any]:
    """Return {key: JSON value} of every page's settings in `state` (LOCAL ones left out; only
    those that differ from their defaults with `changed_only`)."""
    out: dict[str, Any] = {}
    for cls in PAGES:
        out |= cls.from_state(state).to_json(changed_only)
    return out
