"""Page settings <-> RunConfig for a session-state mapping, plus the server settings.

Thin wrappers over the typed page settings (`app/page_settings.py`, the one home of every
setting's type and default: `FineTuneSettings`, `ExportSettings`, ...) for callers that hold a
mapping (st.session_state in the app, a dict in tests): no Streamlit calls, no maths. The
Fine-tune keys (prefix `ft_`, one learning rate per method in `ft_lr_<method>`; the Export page
writes the rate of its own method) and the Export keys (prefix `ex_`, `adapter_*`,
`layer_choices`) are kept across page switches by `common.init_state()`. A plan sent by the Budget planner is
`ft_plan` ({"model", "adapter" (AdapterConfig JSON), "summary"}); the Fine-tune page starts it.

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

# re-exported: the pages read these tables from here
from app.page_settings import CAUSAL_TASKS as CAUSAL_TASKS
from app.page_settings import ENCODER_TASKS as ENCODER_TASKS
from app.page_settings import LR_KEYS as LR_KEYS
from app.page_settings import METHOD_LABELS as METHOD_LABELS
from app.page_settings import TRAIN_FIELDS as TRAIN_FIELDS
from app.page_settings import (
    WIDGET_LIMITS,
    ExportSettings,
    FineTuneSettings,
    ModelLayersSettings,
    all_defaults,
)
from app.page_settings import task_options as task_options
from idlora_core.config import (
    AdapterConfig,
    ModelConfig,
    RunConfig,
    TargetConfig,
    TaskConfig,
    TrainConfig,
)
from idlora_core.tasks import BUILTIN, CLASSIFICATION_TASKS, task_module

REPO_ROOT = Path(__file__).resolve().parents[1]
TASK_LABELS: dict[str, str] = {
    "rotten_tomatoes": "Rotten Tomatoes (real movie reviews)",
    "bbc_news": "BBC News (real articles, 5 topics)",
    "sentiment": "Sentiment (synthetic, saturates — 30-s smoke task)",
    "math": "Maths questions (DeepMind mathematics_dataset)",
}
DEFAULTS: dict[str, Any] = all_defaults()  # every page's settings (app/page_settings.py)


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


def task_label(name: str) -> str:
    """Return the readable label of a task name (the name itself when it has none)."""
    return TASK_LABELS.get(name, name)


def num_labels(task: str) -> int | None:
    """Return the number of labels of a built-in classification task (None for any other)."""
    if task not in CLASSIFICATION_TASKS or task not in BUILTIN:
        return None
    labels = getattr(task_module(task), "LABELS", None)  # each module's label names
    return len(labels) if labels else None


# Thin wrappers over app/page_settings.py for the callers that hold a session-state mapping.

def chosen_tasks(state: Mapping[str, Any], model_kind: str) -> list[str]:
    """Return the chosen task names valid for `model_kind`, or the model's default task."""
    return FineTuneSettings.from_state(state).chosen_tasks(model_kind)


def train_config(state: Mapping[str, Any], method: str = "idlora") -> TrainConfig:
    """Return the TrainConfig of a run of `method` held in the `ft_<field>` keys, at that
    method's learning rate `ft_lr_<method>` (raises pydantic errors if invalid)."""
    return FineTuneSettings.from_state(state).train_config(method)


def task_configs(state: Mapping[str, Any], model_kind: str) -> list[TaskConfig]:
    """Return one TaskConfig per chosen task (equal weights; `ft_num_train`, `ft_num_eval` and
    `ft_num_test` examples each, at most what a real dataset holds)."""
    return FineTuneSettings.from_state(state).task_configs(model_kind)


def finetune_targets(layers: list[str], state: Mapping[str, Any], r: int, k: int,
                     method: str = "idlora") -> list[TargetConfig]:
    """Return one target per layer name with the Fine-tune page's r, k, selection, RB, alpha;
    only the fields `method` uses (any other, set, would be a config error)."""
    return FineTuneSettings.from_state(state).targets(layers, r, k, method)


def _model(state: Mapping[str, Any], model_name: str) -> ModelConfig:
    return ModelConfig(name=model_name, trust_remote_code=trust_remote_code(state))


def finetune_configs(
    state: Mapping[str, Any], model_name: str, model_kind: str, layers: list[str]
) -> list[tuple[str, RunConfig]]:
    """Return (label, RunConfig) for every run the Fine-tune page would start.

    One run per method x r x k; k only varies for methods that use it (ID-LoRA, HydraLoRA),
    and full fine-tuning ignores r and k. `output_dir` is filled in by `idlora_core.jobs.runs.start_run`.
    """
    return FineTuneSettings.from_state(state).to_run_configs(_model(state, model_name), model_kind, layers)


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
    k, r, selection and RB (`choices[layer]`), the training keys at the export method's learning
    rate, and resolved skeletons."""
    return ExportSettings.from_state(state).to_run_config(
        FineTuneSettings.from_state(state), _model(state, model_name), model_kind, layers, choices,
        skeletons=skeletons, output_dir=output_dir)


def settings_from_config(cfg: RunConfig, model_settings: dict[str, Any]) -> dict[str, Any]:
    """Return the session-state values that show `cfg` on every page (only what `cfg` holds:
    the learning rates of other methods are kept).

    `model_settings` is `common.set_model_name(cfg.model.name)` (model_choice, model_path).
    Layer kinds and block range come from the target patterns; per-layer k/r/selection/RB
    become `layer_choices` keyed by the pattern (a full layer name for exported files).
    """
    values: dict[str, Any] = dict(model_settings) | {
        # shown, never applied: only the sidebar tick enables remote code
        "trust_remote_code": False,
        "ex_import_trust_requested": cfg.model.trust_remote_code,
    }
    for cls in (ModelLayersSettings, FineTuneSettings, ExportSettings):
        keys = cls.keys()
        values |= {keys[name]: value for name, value in cls.run_config_values(cfg).items()}
    return values
