"""ID-LoRA skeleton rows for a model: clustered and selected once, cached on disk, checked.

`compute_skeleton` clusters one weight's rows (`MinSizeKMeans`, clusters of at least r rows) and
picks r rows per cluster (`select_skeleton`). `resolve_skeletons` does it for every target of an
adapter config, taking saved skeletons (`adapter.skeletons`) as they are and everything else
through the content-addressed cache (`idlora_core.cache.cached_skeleton`). `layer_skeletons`
is the same resolution for a list of single-layer targets, from a loaded model or a checkpoint
read one weight at a time (the Export page: the YAML then carries the very rows the student
looked at). No Streamlit here.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from idlora_core.cache import cached_skeleton
from idlora_core.config import AdapterConfig, TargetConfig
from idlora_core.layers import get_linear
from idlora_core.weights import WeightReader


def compute_skeleton(weight: torch.Tensor, target: TargetConfig, seed: int = 0) -> list[list[int]]:
    """Return k lists of r global row indices of `weight` (m, n): k-means with clusters of at least
    r rows (`MinSizeKMeans`), then `select_skeleton` with the target's selection."""
    m = weight.shape[0]
    if m < target.k * target.r:
        raise ValueError(
            f"ID-LoRA needs k*r <= m rows: k={target.k}, r={target.r}, m={m} (pattern {target.pattern!r})"
        )
    from idlora_core.linalg.clustering import MinSizeKMeans
    from idlora_core.linalg.selection import select_skeleton

    w = weight.detach().to("cpu", torch.float64).numpy()
    km = MinSizeKMeans(
        n_clusters=target.k, min_size=target.r, normalize_rows=target.normalize_rows, random_state=seed
    ).fit(w)
    chosen = select_skeleton(
        w, km.labels_, target.r, target.selection, normalize_rows=target.normalize_rows, seed=seed
    )
    return [[int(i) for i in rows] for rows in chosen]


def check_skeleton(name: str, skeleton: list[list[int]], target: TargetConfig, m: int) -> None:
    """Raise ValueError unless `skeleton` is k lists of r distinct row indices in [0, m)."""
    shape = (len(skeleton), len(skeleton[0]) if skeleton else 0)
    if shape != (target.k, target.r) or any(len(rows) != target.r for rows in skeleton):
        raise ValueError(
            f"saved skeleton for {name!r} has {shape[0]} clusters of {shape[1]} rows, but the target "
            f"asks for k={target.k}, r={target.r}"
        )
    if any(not 0 <= i < m for rows in skeleton for i in rows):
        raise ValueError(f"saved skeleton for {name!r} has row indices outside [0, {m})")
    flat = [i for rows in skeleton for i in rows]
    if len(set(flat)) != len(flat):
        raise ValueError(f"saved skeleton for {name!r} repeats row indices; each row belongs to one cluster")


def cached_layer_skeleton(name: str, weight: torch.Tensor, target: TargetConfig, seed: int,
                          cache: bool = True) -> list[list[int]]:
    """Return the skeleton of one layer's `weight` (m, n): from the on-disk cache (keyed by the
    float64 weight and k, r, selection, normalize_rows, seed; bad entries are recomputed) or
    clustered and selected now; checked either way."""
    m = weight.shape[0]
    if not cache:
        skeleton = compute_skeleton(weight, target, seed)
    else:
        params = {"k": target.k, "r": target.r, "selection": target.selection,
                  "normalize_rows": target.normalize_rows, "seed": seed}
        w64 = weight.detach().to("cpu", torch.float64).numpy()
        skeleton = cached_skeleton(
            w64, params, lambda: compute_skeleton(weight, target, seed),
            check=lambda s: check_skeleton(name, s, target, m),
        )
    check_skeleton(name, skeleton, target, m)
    return skeleton


def resolve_skeletons(
    model: nn.Module,
    targets: list[tuple[str, TargetConfig]],
    adapter_config: AdapterConfig,
    progress: Callable[[int, int, str], None] | None = None,
    cache: bool = True,
) -> dict[str, list[list[int]]]:
    """Return the skeleton row indices (k lists of r) of every ID-LoRA target: the saved ones in
    `adapter_config.skeletons` where present, else `cached_layer_skeleton`. Also checks that
    rank boosting divides each layer."""
    saved = adapter_config.skeletons or {}
    skeletons = {}
    for done, (name, target) in enumerate(targets, start=1):
        base = model.get_submodule(name)
        m = base.out_features
        if m % target.rb_splits:
            raise ValueError(
                f"rank boosting needs p to divide m and r: m={m} (out_features of {name!r}), "
                f"r={target.r}, p={target.rb_splits}"
            )
        skeleton = saved.get(name)
        if skeleton is None:  # saved on the base model: "encoder.x" names "bert.encoder.x" here
            skeleton = next((v for k, v in saved.items() if name.endswith("." + k)), None)
        if skeleton is None:
            skeleton = cached_layer_skeleton(name, base.weight, target, adapter_config.seed, cache)
        check_skeleton(name, skeleton, target, m)
        skeletons[name] = skeleton
        if progress is not None:
            progress(done, len(targets), name)
    return skeletons


def layer_skeletons(
    source: WeightReader | nn.Module, targets: list[TargetConfig], seed: int = 0, cache: bool = True
) -> dict[str, list[list[int]]]:
    """Return {layer name: k lists of r global row indices} for targets naming single layers.

    source: the checkpoint's WeightReader (reads only the targets' weights) or a loaded model.
    Each target's `pattern` must be a full linear-layer name; raises ValueError (with close
    matches) for an unknown name or when k*r exceeds the layer's rows. Uses the same cache as
    `apply_adapters`, so adapting the model later does not cluster again.
    """
    def weight(name: str) -> torch.Tensor:
        if isinstance(source, WeightReader):
            return torch.from_numpy(source.weight(name, dtype=np.float64))
        return get_linear(source, name).weight

    return {t.pattern: cached_layer_skeleton(t.pattern, weight(t.pattern), t, seed, cache) for t in targets}
