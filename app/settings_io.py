"""Page settings <-> RunConfig: what the Fine-tune and Export/Import pages build and restore.

Works on any mapping of session-state values (st.session_state in the app, a dict in tests):
no Streamlit calls, no maths. Keys of the Model/Decomposition pages are defined in
`app/common.py`; the training keys below (prefix `ft_`) and export keys (prefix `ex_`) are
kept across page switches by `common.init_state()`.

  key                 default            meaning
  ------------------  -----------------  ----------------------------------------------------
  ft_methods          ["idlora","lora"]  Fine-tune: methods to run side by side
  ft_lr_<method>      study preset (a)   Fine-tune: that method's learning rate (idlora_core/
                                         study/defaults.py); ft_learning_rate is the Export one
  ft_ranks            [8]                Fine-tune: ranks r (one run per method x r x k)
  ft_ks               [4]                Fine-tune: clusters k (ID-LoRA) / heads N (HydraLoRA)
  ft_selection        "id"               Fine-tune: ID-LoRA skeleton strategy (pivoted QR)
  ft_rb_splits        1                  Fine-tune: rank-boosting splits p
  ft_normalize_rows   False              Fine-tune: cluster L2-normalised rows (ID-LoRA)
  ft_adapter_seed     0                  Fine-tune: adapter seed (k-means, random skeletons)
  ft_alpha, ft_dropout 16.0, 0.0         adapter scaling numerator and input dropout
  ft_tasks            ["rotten_tomatoes"]
                                         task names (the first encoder task); names the model
                                         cannot run are dropped, [] = its first task_options
  ft_num_train        2000 / 512         training examples per task (encoder / causal LM)
  ft_num_eval         500 / 32           validation examples per task (choose hyper-parameters)
  ft_num_test         1000 / 32          test examples per task (scored once at the end)
  ft_<train field>    TrainConfig        every field of idlora_core.config.TrainConfig
                                         (ft_steps, ft_batch_size, ft_learning_rate, ...)
  ft_plan             None               a plan sent by the Budget planner: {"model", "adapter"
                                         (AdapterConfig JSON), "summary"}; Fine-tune starts it
  ex_method           "idlora"           Export: the method written to the YAML
  ex_run_name         "my-run"           Export: output folder name inside the runs folder
  ex_normalize_rows   False              Export: cluster L2-normalised rows
  ex_seed             0                  Export: adapter seed

The runs folder is a server setting, not a page setting: `runs_root()` (IDLORA_RUNS_DIR,
default `runs/` in the repo). Users only name runs inside it. An imported YAML never turns on
`trust_remote_code` (only the sidebar tick does, for an existing local folder), and values
outside a widget's range are refused with the range, never clamped (`check_ranges`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from idlora_core.config import (
    ALL_METHODS,
    AdapterConfig,
    ModelConfig,
    RunConfig,
    TargetConfig,
    TaskConfig,
    TrainConfig,
    field_range,
    target_for,
)
from idlora_core.layers import block_index, layer_kind
from idlora_core.study.defaults import DEFAULT_LEARNING_RATES
from idlora_core.tasks import (
    BUILTIN,
    CAUSAL_LM_TASKS,
    CLASSIFICATION_TASKS,
    pool_sizes,
    task_module,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
# Built-in tasks by model kind, the default first: real data before the synthetic sentiment task
# (it saturates: the 30-s smoke task). Only registered names are offered.
_ENCODER_ORDER = ("rotten_tomatoes", "bbc_news", "sentiment")
_CLASSIFIERS = [t for t in CLASSIFICATION_TASKS if t in BUILTIN]
ENCODER_TASKS: tuple[str, ...] = tuple(
    [t for t in _ENCODER_ORDER if t in _CLASSIFIERS] + [t for t in _CLASSIFIERS if t not in _ENCODER_ORDER])
CAUSAL_TASKS: tuple[str, ...] = tuple(t for t in CAUSAL_LM_TASKS if t in BUILTIN)
TASK_LABELS: dict[str, str] = {
    "rotten_tomatoes": "Rotten Tomatoes (real movie reviews)",
    "bbc_news": "BBC News (real articles, 5 topics)",
    "sentiment": "Sentiment (synthetic, saturates — 30-s smoke task)",
    "math": "Maths questions (DeepMind mathematics_dataset)",
}
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
# of batch 16 on real text, 15 warm-up steps, gradient clipping at norm 1 (transformers' default),
# each method at the learning rate study preset (a) chose on validation (ft_lr_<method>, below the
# rate at which some seeds collapse). Preset (a) trains 80 steps to fit 30 minutes; the page
# trains 150 for margin on unlucky seeds. bench/finetune_defaults.py runs them on 10 new seeds.
_TRAIN_DEFAULTS = TrainConfig().model_dump() | {
    "steps": 150, "batch_size": 16, "seq_len": 48, "learning_rate": 3e-3, "warmup_steps": 15,
    "eval_interval": 0,
}
LR_KEYS: dict[str, str] = {m: f"ft_lr_{m}" for m in ALL_METHODS}
DEFAULTS: dict[str, Any] = {
    "ft_methods": ["idlora", "lora"],
    "ft_ranks": [8],
    "ft_ks": [4],
    "ft_selection": "id",
    "ft_rb_splits": 1,
    "ft_alpha": 16.0,
    "ft_dropout": 0.0,
    "ft_tasks": list(ENCODER_TASKS[:1]),  # the default model (MiniLM) is an encoder
    "ft_num_train": 2000,  # SIZE_DEFAULTS["encoder"]
    "ft_num_eval": 500,
    "ft_num_test": 1000,
    "ex_method": "idlora",
    "ex_run_name": "my-run",
    "ft_normalize_rows": False,
    "ft_adapter_seed": 0,
    "ex_normalize_rows": False,
    "ex_seed": 0,
} | {f"ft_{name}": value for name, value in _TRAIN_DEFAULTS.items()} | {
    key: DEFAULT_LEARNING_RATES[m] for m, key in LR_KEYS.items()}


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
    for name in ("steps", "batch_size", "seq_len", "learning_rate", "warmup_steps",
                 "eval_interval", "weight_decay")
} | {
    "ft_num_train": _limits(TaskConfig, "num_train"),
    "ft_num_eval": _limits(TaskConfig, "num_eval"),
    "ft_num_test": _limits(TaskConfig, "num_test"),
    "ft_rb_splits": _limits(TargetConfig, "rb_splits"),
    "ft_alpha": _limits(TargetConfig, "alpha"),
    "adapter_k": _limits(TargetConfig, "k"),
    "adapter_r": _limits(TargetConfig, "r"),
    "adapter_rb": _limits(TargetConfig, "rb_splits"),
    "ft_adapter_seed": _limits(AdapterConfig, "seed"),
    "ex_seed": _limits(AdapterConfig, "seed"),
}


def bounds(key: str) -> dict[str, Any]:
    """Return `min_value` / `max_value` for the number widget of session key `key`."""
    lo, hi = WIDGET_LIMITS[key]
    return {"min_value": lo, "max_value": hi}


def check_ranges(values: Mapping[str, Any]) -> list[str]:
    """Return one line per value in `values` outside its widget's range ([] when all fit)."""
    problems = []
    for key, (lo, hi) in WIDGET_LIMITS.items():
        value = values.get(key)
        if isinstance(value, (int, float)) and not (lo <= value and (hi is None or value <= hi)):
            problems.append(f"{key.removeprefix('ft_')} = {_fmt(value)}: allowed range "
                            f"{_fmt(lo)} to {'any' if hi is None else _fmt(hi)}")
    return problems


def _fmt(value: float) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:g}"


def runs_root() -> Path:
    """Return the server's runs folder (absolute): IDLORA_RUNS_DIR, else `runs/` in the repo.

    A server setting read at each call: pages never take a folder from the user, only a run
    name checked by `idlora_core.jobs.runs.safe_run_dir`.
    """
    raw = os.environ.get("IDLORA_RUNS_DIR", "").strip() or "runs"
    path = Path(raw).expanduser()
    return (path if path.is_absolute() else REPO_ROOT / path).resolve()


def lab_mode() -> bool:
    """Return True when the app serves a room (`make app-lab` sets IDLORA_LAB=1)."""
    return os.environ.get("IDLORA_LAB", "").strip() not in ("", "0", "false", "False")


def lab_read_path(raw: str, what: str) -> Path:
    """Return the typed path `raw` resolved (links followed); on a lab server (`lab_mode()`)
    raise ValueError unless it lies inside the runs folder or IDLORA_MODELS_DIR.

    A lab server reads typed paths only from folders its operator chose, so a student cannot
    make it read /etc or another user's home. Outside lab mode (one user on 127.0.0.1) every
    path is allowed. `what` names the box in the message ("model folder", "scan CSV").
    """
    path = Path(raw).expanduser().resolve()  # relative to the server's folder, as it is read
    if not lab_mode():
        return path
    models = os.environ.get("IDLORA_MODELS_DIR", "").strip()
    roots = [runs_root()] + ([Path(models).expanduser().resolve()] if models else [])
    if any(path.is_relative_to(root) for root in roots):
        return path
    allowed = " or ".join(str(r) for r in roots)
    hint = "" if models else "; IDLORA_MODELS_DIR is not set"
    raise ValueError(f"{what} {str(raw)[:200]!r} is outside the folders this lab server reads "
                     f"({allowed}{hint}): ask whoever runs the server to put it there")


def trust_remote_code(state: Mapping[str, Any]) -> bool:
    """Return True only when the sidebar tick is on AND the model is an existing local folder.

    A hub id (`owner/name`) or an embedded model never runs remote code from the app, and a
    lab server (`lab_mode()`) never runs it at all.
    """
    if lab_mode() or not state.get("trust_remote_code") or state.get("model_choice") != "local":
        return False
    path = str(state.get("model_path", "")).strip()
    return bool(path) and Path(path).expanduser().is_dir()


def init_defaults(state: Any) -> None:
    """Fill the Fine-tune/Export keys missing from `state` (a MutableMapping) with defaults."""
    for key, value in DEFAULTS.items():
        if key not in state:
            state[key] = list(value) if isinstance(value, list) else value


def _get(state: Mapping[str, Any], key: str) -> Any:
    return state.get(key, DEFAULTS[key])


# Task sizes per model kind: an encoder classifies 500 + 1,000 held-out texts in seconds, a causal
# LM generates an answer for each held-out prompt (minutes on a CPU), so it starts smaller.
SIZE_DEFAULTS: dict[str, dict[str, int]] = {
    "encoder": {"ft_num_train": 2000, "ft_num_eval": 500, "ft_num_test": 1000},
    "causal-lm": {"ft_num_train": 512, "ft_num_eval": 32, "ft_num_test": 32},
}


def sizes_for_kind(state: Any, model_kind: str) -> bool:
    """Set the task sizes to `model_kind`'s defaults when they still hold another kind's
    defaults (sizes the user chose are kept); return True when they changed."""
    target = SIZE_DEFAULTS.get(model_kind)
    if target is None:
        return False
    current = {key: state.get(key, DEFAULTS[key]) for key in target}
    if current != target and current in SIZE_DEFAULTS.values():
        state.update(target)
        return True
    return False


def task_options(model_kind: str) -> tuple[str, ...]:
    """Return the built-in task names that fit a model kind ("encoder" or "causal-lm"), the
    default first."""
    return ENCODER_TASKS if model_kind == "encoder" else CAUSAL_TASKS


def task_label(name: str) -> str:
    """Return the readable label of a task name (the name itself when it has none)."""
    return TASK_LABELS.get(name, name)


def num_labels(task: str) -> int | None:
    """Return the number of labels of a built-in classification task (None for any other)."""
    if task not in CLASSIFICATION_TASKS or task not in BUILTIN:
        return None
    labels = getattr(task_module(task), "LABELS", None)  # each module's label names
    return len(labels) if labels else None


def chosen_tasks(state: Mapping[str, Any], model_kind: str) -> list[str]:
    """Return the chosen task names valid for `model_kind`, or the model's default task."""
    options = task_options(model_kind)
    tasks = [t for t in _get(state, "ft_tasks") or [] if t in options]
    return tasks or [options[0]]


def train_config(state: Mapping[str, Any]) -> TrainConfig:
    """Return the TrainConfig held in the `ft_<field>` keys (raises pydantic errors if invalid)."""
    return TrainConfig(**{name: _get(state, f"ft_{name}") for name in TRAIN_FIELDS})


def task_configs(state: Mapping[str, Any], model_kind: str) -> list[TaskConfig]:
    """Return one TaskConfig per chosen task (equal weights; `ft_num_train`, `ft_num_eval` and
    `ft_num_test` examples each)."""
    n, n_eval = int(_get(state, "ft_num_train")), int(_get(state, "ft_num_eval"))
    n_test = int(_get(state, "ft_num_test"))
    out = []
    for name in chosen_tasks(state, model_kind):
        pools = pool_sizes(name)  # a real dataset holds a fixed number: use at most that
        sizes = (n, n_eval, n_test) if pools is None else tuple(
            min(want, have) for want, have in zip((n, n_eval, n_test), pools, strict=True))
        out.append(TaskConfig(name=name, num_train=max(1, sizes[0]), num_eval=max(1, sizes[1]),
                              num_test=sizes[2]))
    return out


def finetune_targets(layers: list[str], state: Mapping[str, Any], r: int, k: int,
                     method: str = "idlora") -> list[TargetConfig]:
    """Return one target per layer name with the Fine-tune page's r, k, strategy, RB, alpha;
    only the fields `method` uses (any other, set, would be a config error)."""
    return [
        target_for(
            method, pattern=name, r=r, k=k, selection=_get(state, "ft_selection"),
            rb_splits=int(_get(state, "ft_rb_splits")), alpha=float(_get(state, "ft_alpha")),
            dropout=float(_get(state, "ft_dropout")),
            normalize_rows=bool(_get(state, "ft_normalize_rows")),
        )
        for name in layers
    ]


def finetune_configs(
    state: Mapping[str, Any], model_name: str, model_kind: str, layers: list[str]
) -> list[tuple[str, RunConfig]]:
    """Return (label, RunConfig) for every run the Fine-tune page would start.

    One run per method x r x k; k only varies for methods that use it (ID-LoRA, HydraLoRA),
    and full fine-tuning ignores r and k. `output_dir` is filled in by `idlora_core.jobs.runs.start_run`.
    """
    if not layers:
        raise ValueError("no target layers: pick layer types on the Model & layers page")
    ranks = sorted({int(r) for r in _get(state, "ft_ranks")}) or [8]
    ks = sorted({int(k) for k in _get(state, "ft_ks")}) or [4]
    train = train_config(state)
    tasks = task_configs(state, model_kind)
    model = ModelConfig(name=model_name, trust_remote_code=trust_remote_code(state))
    out = []
    methods = [m for m in ALL_METHODS if m in _get(state, "ft_methods")]
    if "head-only" in methods and model_kind != "encoder":  # else every such run fails once queued
        raise ValueError("Head only (linear probe) trains a classification head; this model's "
                         "tasks are causal-LM: deselect it (Base is the reference here)")
    for method in methods:
        lr = float(state.get(LR_KEYS[method], train.learning_rate))
        grid = [(ranks[0], ks[0])] if method in ("full", "head-only", "base") else [
            (r, k) for r in ranks for k in (ks if method in ("idlora", "hydralora") else ks[:1])
        ]
        for r, k in grid:
            label = METHOD_LABELS[method] + ("" if method in ("full", "head-only", "base") else f" r={r}")
            label += f" k={k}" if method in ("idlora", "hydralora") else ""
            adapter = AdapterConfig(
                method=method, targets=finetune_targets(layers, state, r, k, method),
                seed=int(_get(state, "ft_adapter_seed")),
            )
            out.append((label, RunConfig(model=model, adapter=adapter, tasks=tasks,
                                         train=train.model_copy(update={"learning_rate": lr}))))
    return out


def plan_run_config(state: Mapping[str, Any], adapter: AdapterConfig, model_name: str,
                    model_kind: str, output_dir: str = "runs/budget-plan") -> RunConfig:
    """Return the RunConfig of a Budget planner plan (`adapter`: its per-layer ID-LoRA targets)
    with the Fine-tune page's tasks and training at ID-LoRA's learning rate."""
    train = train_config(state).model_copy(
        update={"learning_rate": float(_get(state, LR_KEYS["idlora"]))})
    return RunConfig(model=ModelConfig(name=model_name, trust_remote_code=trust_remote_code(state)),
                     adapter=adapter, tasks=task_configs(state, model_kind), train=train,
                     output_dir=output_dir)


def export_config(
    state: Mapping[str, Any],
    model_name: str,
    model_kind: str,
    layers: list[str],
    choices: Mapping[str, Mapping[str, Any]],
    skeletons: dict[str, list[list[int]]] | None = None,
    output_dir: str = "runs/my-run",
) -> RunConfig:
    """Return the RunConfig of the current choices: one target per layer with its own
    k, r, strategy and RB (`choices[layer]`), the training keys, and resolved skeletons."""
    if not layers:
        raise ValueError("no layers selected: pick layer types on the Model & layers page")
    method = _get(state, "ex_method")
    targets = [
        target_for(
            method, pattern=name, r=int(choices[name]["r"]), k=int(choices[name]["k"]),
            selection=choices[name]["strategy"], rb_splits=int(choices[name]["rb_splits"]),
            alpha=float(_get(state, "ft_alpha")), dropout=float(_get(state, "ft_dropout")),
            normalize_rows=bool(_get(state, "ex_normalize_rows")),
        )
        for name in layers
    ]
    adapter = AdapterConfig(
        method=method, targets=targets, seed=int(_get(state, "ex_seed")),
        skeletons=skeletons if method == "idlora" and skeletons else None,
    )
    return RunConfig(
        model=ModelConfig(name=model_name, trust_remote_code=trust_remote_code(state)),
        adapter=adapter,
        tasks=task_configs(state, model_kind),
        train=train_config(state),
        output_dir=output_dir,
    )


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


def settings_from_config(cfg: RunConfig, model_settings: dict[str, Any]) -> dict[str, Any]:
    """Return the session-state values that show `cfg` on every page.

    `model_settings` is `common.set_model_name(cfg.model.name)` (model_choice, model_path).
    Layer kinds and block range come from the target patterns; per-layer k/r/strategy/RB
    become `layer_choices` keyed by the pattern (a full layer name for exported files).
    """
    first = cfg.adapter.targets[0]
    kinds = []
    for target in cfg.adapter.targets:
        kind = layer_kind(target.pattern)
        if kind not in kinds and kind != "other":
            kinds.append(kind)
    values: dict[str, Any] = dict(model_settings) | {
        # shown, never applied: only the sidebar tick enables remote code
        "trust_remote_code": False,
        "ex_import_trust_requested": cfg.model.trust_remote_code,
        "ex_seed": cfg.adapter.seed,
        "ex_normalize_rows": first.normalize_rows,
        "ft_adapter_seed": cfg.adapter.seed,
        "ft_normalize_rows": first.normalize_rows,
        "adapter_k": first.k,
        "adapter_r": first.r,
        "adapter_strategy": first.selection,
        "adapter_rb": first.rb_splits,
        "layer_choices": {
            t.pattern: {"k": t.k, "r": t.r, "strategy": t.selection, "rb_splits": t.rb_splits}
            for t in cfg.adapter.targets
        },
        "ex_method": cfg.adapter.method,
        "ft_methods": [cfg.adapter.method],
        LR_KEYS[cfg.adapter.method]: cfg.train.learning_rate,
        "ft_ranks": [first.r],
        "ft_ks": [first.k],
        "ft_selection": first.selection,
        "ft_rb_splits": first.rb_splits,
        "ft_alpha": first.alpha,
        "ft_dropout": first.dropout,
        "ft_tasks": [t.name for t in cfg.tasks],
        "ft_num_train": cfg.tasks[0].num_train,
        "ft_num_eval": cfg.tasks[0].num_eval,
        "ft_num_test": cfg.tasks[0].test_count,
    }
    if kinds:
        values["layer_kinds"] = kinds
    values["block_range"] = _blocks(cfg)
    values |= {f"ft_{name}": value for name, value in cfg.train.model_dump().items()}
    out = Path(cfg.output_dir)
    if out.name and not out.is_absolute() and ".." not in out.parts:
        values["ex_run_name"] = out.name  # the folder above is the server's runs folder
    return values
