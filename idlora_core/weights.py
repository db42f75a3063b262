"""Weights without the model: list a checkpoint's linear layers and read ONE weight at a time.

`open_weights(name)` takes what `models.load_model` takes (an alias, a local folder, a
`.gguf` file) and returns a `WeightReader`:
  - safetensors folders (`model.safetensors`, or shards listed in
    `model.safetensors.index.json`): the layers come from `config.json` and the files'
    headers (`safetensors.safe_open`, memory-mapped; no tensor data is read), and
    `weight(name)` reads only that tensor. float16 / float32 / float64 tensors come through
    `safe_open`; bfloat16, which NumPy cannot hold, is read from the same memory map at the
    header's offsets and widened to float32 exactly (a bf16 value is the top half of a float32).
  - GGUF files (SmolLM2 ships as one): the `gguf` package memory-maps the file and
    `weight(name)` dequantises only that tensor (with transformers' own name mapping and
    Llama q/k un-permutation, so values equal a full transformers load).
Names are full module names as a transformers load of the checkpoint gives them (e.g.
`model.layers.1.mlp.down_proj`), the names the adapters and the YAML use. A folder needs
no tokenizer files. The memory of an analysis is one layer, not the model.

This file loads no model for training (see `models.py`).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from idlora_core.layers import LinearLayer, block_index, layer_kind

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
_FLOATS = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8}
# 2-D "*.weight" tensors that are not linear layers: embedding tables (and GPT-2's Conv1D,
# whose weights are stored transposed; such models are refused for analysis, as before).
_NOT_LINEAR = re.compile(r"(?:^|\.)(?:\w*embed\w*|wte|wpe|shared|embeddings)$")
_CONV1D_MODELS = {"gpt2", "openai-gpt", "imagegpt", "decision_transformer"}
_KIND_ORDER = ["q", "k", "v", "o", "attn_out", "gate", "up", "down", "ffn_in", "ffn_out", "other"]


class WeightFileError(ValueError):
    """A checkpoint whose files cannot be listed or read (missing, truncated, unsupported)."""


@dataclass(frozen=True)
class TensorInfo:
    """Where one weight lives: its file, its key there, shape (m, n) and stored dtype."""

    file: str
    key: str
    shape: tuple[int, ...]
    dtype: str  # safetensors dtype ("BF16", "F16", "F32", "F64") or the GGUF type name


class WeightReader:
    """The linear layers of one checkpoint, each weight read alone on request.

    Attributes: `source` (folder or file), `format` ("safetensors" | "gguf"), `config`
    (the config.json dict, or the one transformers derives from the GGUF metadata),
    `tensors` (every tensor's TensorInfo by key), `linear` (TensorInfo of each linear
    layer's weight, by module name, in module order).
    """

    def __init__(self, source: str | Path) -> None:
        path = Path(source).expanduser()
        if path.is_file() and path.suffix == ".gguf":
            self.format = "gguf"
            self.source = str(path)
            self._gguf = _GGUF(path)
            self.config = self._gguf.config
            self.tensors = self._gguf.tensors
            self.linear = self._gguf.linear
            return
        if not path.is_dir():
            raise WeightFileError(f"{path} is neither a model folder nor a .gguf file")
        self.format = "safetensors"
        self.source = str(path.resolve())
        self._gguf = None
        self.config = _read_json(path / "config.json", "config.json")
        self.tensors = _safetensors_tensors(path)
        self.linear = _linear_tensors(self.tensors, self.config)

    def layers(self) -> list[LinearLayer]:
        """Return every linear layer (name, block, kind, out_features m, in_features n, bias)."""
        return [
            LinearLayer(name=name, block=block_index(name), kind=layer_kind(name),
                        out_features=info.shape[0], in_features=info.shape[1],
                        has_bias=f"{name}.bias" in self.tensors)
            for name, info in self.linear.items()
        ]

    def check_layer(self, name: str) -> TensorInfo:
        """Return the TensorInfo of linear layer `name`; ValueError naming close matches otherwise."""
        info = self.linear.get(name)
        if info is None:
            import difflib

            names = list(self.linear)
            close = difflib.get_close_matches(name, names, n=5, cutoff=0.4) or names[:5]
            raise ValueError(f"layer {name!r} is not a linear layer of {self.source}; "
                             f"close matches: {', '.join(close)}")
        return info

    def weight(self, name: str, dtype: type = np.float32) -> np.ndarray:
        """Return the weight (m = out_features, n = in_features) of linear layer `name` as a new
        C-contiguous array of `dtype` (np.float32 or np.float64), reading only that tensor."""
        if dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be np.float32 or np.float64, got {dtype!r}")
        info = self.check_layer(name)
        arr = self._read(info)
        return np.ascontiguousarray(arr, dtype=dtype)

    def _read(self, info: TensorInfo) -> np.ndarray:
        # The one place tensor data is read (tests spy on it).
        if self._gguf is not None:
            return self._gguf.read(info)
        return _read_safetensors(info)

    def summary(self) -> dict[str, object]:
        """Return architecture, model_type, params (count of every tensor), linear_params,
        dtype (stored, e.g. "bfloat16"), blocks, format and source — from headers only."""
        cfg = self.config
        params = sum(int(np.prod(t.shape)) for t in self.tensors.values())
        linear = sum(layer.params for layer in self.layers())
        dtypes = sorted({t.dtype for t in self.linear.values()})
        return {
            "architecture": (cfg.get("architectures") or ["?"])[0],
            "model_type": cfg.get("model_type", "") or "",
            "params": params,
            "linear_params": linear,
            "dtype": ", ".join(_DTYPE_NAMES.get(d, d.lower()) for d in dtypes),
            "blocks": cfg.get("num_hidden_layers") or cfg.get("n_layer"),
            "format": self.format,
            "source": self.source,
        }


_DTYPE_NAMES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64"}


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise WeightFileError(f"{path.parent} holds no {what} (not a Hugging Face model folder)") from exc
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise WeightFileError(f"{path} is not readable JSON ({exc}); restore the file") from exc
    if not isinstance(data, dict):
        raise WeightFileError(f"{path} must hold a JSON object")
    return data


def _safetensors_tensors(folder: Path) -> dict[str, TensorInfo]:
    from safetensors import safe_open

    index = folder / INDEX_FILE
    if index.is_file():
        weight_map = _read_json(index, INDEX_FILE).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise WeightFileError(f"{index} has no weight_map; restore the index file")
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not (folder / f).is_file()]
        if missing:
            raise WeightFileError(f"{INDEX_FILE} in {folder} names {len(missing)} missing shard(s): "
                                  f"{', '.join(missing[:3])}; download the complete checkpoint")
    elif (folder / SINGLE_FILE).is_file():
        weight_map, files = None, [SINGLE_FILE]
    else:
        found = sorted(p.name for p in folder.glob("*.safetensors"))
        if len(found) == 1:
            weight_map, files = None, found
        else:
            other = sorted(p.name for p in folder.glob("*.bin"))
            hint = (f" (only {', '.join(other[:2])}: convert it to safetensors with "
                    "`model.save_pretrained(folder)`)" if other else "")
            raise WeightFileError(f"{folder} holds no {SINGLE_FILE} or {INDEX_FILE}{hint}")
    tensors: dict[str, TensorInfo] = {}
    for name in files:
        path = folder / name
        size = path.stat().st_size
        try:
            with safe_open(str(path), framework="numpy") as handle:
                keys = list(handle.keys())
                shapes = {k: handle.get_slice(k) for k in keys}
                infos = {k: (tuple(int(d) for d in s.get_shape()), s.get_dtype()) for k, s in shapes.items()}
        except Exception as exc:  # safetensors raises its own SafetensorError
            raise WeightFileError(f"{path} is truncated or not a safetensors file ({exc}); "
                                  "download it again") from exc
        end = _data_end(path)
        if end > size:
            raise WeightFileError(f"{path} is truncated ({size:,} of {end:,} bytes); download it again")
        for key, (shape, dtype) in infos.items():
            tensors[key] = TensorInfo(file=str(path), key=key, shape=shape, dtype=dtype)
    if weight_map is not None:
        absent = [k for k, f in weight_map.items() if k not in tensors]
        if absent:
            raise WeightFileError(f"{INDEX_FILE} in {folder} lists {len(absent)} tensor(s) its "
                                  f"shards do not hold (e.g. {absent[0]!r}); download the checkpoint again")
    return tensors


def _header(path: Path) -> tuple[int, dict]:
    # (offset of the data section, header dict) of a safetensors file.
    with open(path, "rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(length))
    return 8 + length, header


def _data_end(path: Path) -> int:
    start, header = _header(path)
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    return start + max(ends, default=0)


def _linear_tensors(tensors: dict[str, TensorInfo], config: dict) -> dict[str, TensorInfo]:
    conv1d = config.get("model_type") in _CONV1D_MODELS
    tied = bool(config.get("tie_word_embeddings", config.get("model_type") != "t5"))
    found = {}
    for key, info in tensors.items():
        if not key.endswith(".weight") or len(info.shape) != 2 or info.dtype not in _FLOATS:
            continue
        name = key[: -len(".weight")]
        if _NOT_LINEAR.search(name) or conv1d or (tied and name.endswith("lm_head")):
            continue
        found[name] = info
    return dict(sorted(found.items(), key=lambda item: _module_order(item[0])))


def _module_order(name: str) -> tuple:
    block = block_index(name)
    parts = [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]
    return (block is None, -1 if block is None else block, _KIND_ORDER.index(layer_kind(name)),
            [(isinstance(p, int), p) for p in parts])


def _read_safetensors(info: TensorInfo) -> np.ndarray:
    if info.dtype == "BF16":
        # NumPy has no bfloat16: the bits, memory-mapped at the header's offsets, shifted
        # into the top half of a float32 (exact).
        start, header = _header(Path(info.file))
        begin, end = header[info.key]["data_offsets"]
        count = (end - begin) // 2
        raw = np.memmap(info.file, dtype="<u2", mode="r", offset=start + begin, shape=(count,))
        out = np.empty(count, dtype=np.uint32)
        np.left_shift(raw, 16, out=out, dtype=np.uint32)
        del raw
        return out.view(np.float32).reshape(info.shape)
    from safetensors import safe_open

    with safe_open(info.file, framework="numpy") as handle:
        return handle.get_tensor(info.key)


class _GGUF:
    """One GGUF file: tensor names mapped to transformers' module names, one tensor dequantised at a time."""

    def __init__(self, path: Path) -> None:
        try:
            import torch
            from gguf import GGUFReader
            from transformers import AutoConfig, AutoModelForCausalLM
            from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor
        except ImportError as exc:  # pragma: no cover - both are in requirements.txt
            raise WeightFileError(f"reading {path.name} needs the gguf and transformers packages") from exc
        try:
            self.reader = GGUFReader(str(path))
        except Exception as exc:
            raise WeightFileError(f"{path} is truncated or not a readable GGUF file ({exc})") from exc
        architecture, raw = _gguf_config(self.reader, path)
        config = AutoConfig.for_model(**raw)
        self.config = config.to_dict()
        with torch.device("meta"):  # module names and shapes only: no memory, no weights
            skeleton = AutoModelForCausalLM.from_config(config)
        # a GGUF header names no transformers class; the one its tensors load into does
        self.config["architectures"] = self.config.get("architectures") or [type(skeleton).__name__]
        # transformers' own per-architecture fix-ups (e.g. Llama's q/k un-permutation)
        self.processor = TENSOR_PROCESSORS.get(architecture, TensorProcessor)(config=raw)
        to_hf = _gguf_names(architecture, config.num_hidden_layers, skeleton.state_dict())
        shapes = {name: tuple(p.shape) for name, p in skeleton.state_dict().items()}
        linear_modules = {n for n, m in skeleton.named_modules() if isinstance(m, torch.nn.Linear)}
        tied = bool(self.config.get("tie_word_embeddings"))
        self.by_key = {}
        self.tensors: dict[str, TensorInfo] = {}
        for tensor in self.reader.tensors:
            hf = to_hf.get(tensor.name)
            if hf is None:
                continue
            info = TensorInfo(file=str(path), key=tensor.name,
                              shape=shapes.get(hf, tuple(int(d) for d in reversed(tensor.shape))),
                              dtype=tensor.tensor_type.name)
            self.tensors[hf] = info
            self.by_key[tensor.name] = tensor
        self.linear = {}
        for name in sorted(linear_modules, key=_module_order):
            info = self.tensors.get(f"{name}.weight")
            if info is not None and not (tied and name.endswith("lm_head")):
                self.linear[name] = info

    def read(self, info: TensorInfo) -> np.ndarray:
        from gguf import dequantize

        tensor = self.by_key[info.key]
        weights = dequantize(tensor.data, tensor.tensor_type)
        weights = self.processor.process(weights=weights, name=info.key, tensor_key_mapping={},
                                         parsed_parameters={}).weights
        return np.asarray(weights).reshape(info.shape)


def _gguf_names(arch: str, blocks: int, state_dict: dict) -> dict[str, str]:
    # GGUF tensor name -> transformers parameter name: the loop of transformers'
    # get_gguf_hf_weights_map with gguf's name table built once (it rebuilds it per submodule).
    from gguf import MODEL_ARCH_NAMES, get_tensor_name_map

    arch_id = next((key for key, value in MODEL_ARCH_NAMES.items() if value == arch), None)
    if arch_id is None:
        raise WeightFileError(f"GGUF architecture {arch!r} is unknown to the gguf package")
    table = get_tensor_name_map(arch_id, blocks)
    out = {}
    for hf_name in state_dict:
        base, dot, suffix = hf_name.rpartition(".")
        gguf_name = table.get_name(base) if suffix in ("weight", "bias") else table.get_name(hf_name)
        if gguf_name is not None:
            out[gguf_name + (dot + suffix if suffix in ("weight", "bias") else "")] = hf_name
    return out


def _gguf_config(reader, path: Path) -> tuple[str, dict]:
    # The model config from the GGUF metadata, as transformers' load_gguf_checkpoint builds
    # it (its mapping tables), from the reader already open (that function opens another).
    from transformers.integrations.ggml import (
        GGUF_CONFIG_DEFAULTS_MAPPING,
        GGUF_CONFIG_MAPPING,
        _gguf_parse_value,
    )

    def value(field):
        parts = [_gguf_parse_value(field.parts[i], field.types) for i in field.data]
        return parts[0] if len(parts) == 1 else parts

    arch = value(reader.fields["general.architecture"])
    mapping = GGUF_CONFIG_MAPPING.get(arch)
    if mapping is None:
        raise WeightFileError(f"{path.name}: GGUF architecture {arch!r} is not supported by transformers")
    config: dict = {"model_type": arch}
    for key, field in reader.fields.items():
        if key.startswith(f"{arch}.") and mapping.get(key[len(arch) + 1:]):
            config[mapping[key[len(arch) + 1:]]] = value(field)
    config["tie_word_embeddings"] = all(t.name != "output.weight" for t in reader.tensors)
    for key, default in GGUF_CONFIG_DEFAULTS_MAPPING.get(arch, {}).items():
        config.setdefault(key, default)
    if "vocab_size" not in config and "tokenizer.ggml.tokens" in reader.fields:
        config["vocab_size"] = len(reader.fields["tokenizer.ggml.tokens"].data)
    return arch, config


def open_weights(name: str) -> WeightReader:
    """Return a WeightReader for a model name as `models.load_model` takes it: "minilm",
    "smollm2-135m" (its GGUF file, dequantised tensor by tensor), a local folder or .gguf file.

    Raises models.ModelNotFoundError (a ValueError) with a one-line reason when the name does
    not resolve, and WeightFileError when the files cannot be read.
    """
    from idlora_core.models import ModelNotFoundError, canonical_name, minilm_dir, smollm2_gguf

    canon = canonical_name(name)
    if canon == "all-MiniLM-L6-v2":
        return WeightReader(minilm_dir())
    if canon == "SmolLM2-135M-Instruct":
        return WeightReader(smollm2_gguf())
    path = Path(os.path.expanduser(name.strip()))
    if path.is_file() and path.suffix == ".gguf":
        return WeightReader(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} is a folder but holds no config.json (not a model directory)")
        return WeightReader(path)
    from idlora_core.models import error_line, resolve_source

    _, source, local = resolve_source(name)  # raises a clear error for anything else
    if not local:  # a hub id, where the hub is reachable: headers and weights, no code
        from huggingface_hub import snapshot_download

        try:
            source = snapshot_download(source, allow_patterns=["*.json", "*.safetensors"])
        except Exception as exc:  # huggingface_hub raises many kinds (HTTP, offline, gated, ...)
            raise ModelNotFoundError(
                f"could not download model {name!r} from the Hugging Face hub: {error_line(exc)}; "
                "give a local model directory instead") from None
    return WeightReader(source)
