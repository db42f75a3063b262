"""The sweep across many layers of one model, served from the on-disk cache when it can be.

`sweep_model(model, layers, ks, ranks, ...)` runs `analysis.sweep` on every layer named in a
list, or matched by a regular expression (searched in the full module name), and
concatenates the tables. Each layer's result is cached in `cache_dir()/results/` under a key made
from the weight's bytes and every sweep parameter (`idlora_core.cache`), so asking twice costs
one computation.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd
from torch import nn

from analysis.sweep import Progress, SweepResult, parse_grid, sweep_layer_result, tidy_table
from idlora_core.cache import ResultCache, cache_key
from idlora_core.layers import get_linear, get_weight, list_linear_layers
from idlora_core.linalg.validation import STRATEGIES, check_strategy, check_weight

CACHE_NAMESPACE = "sweep"


def resolve_layers(model: nn.Module, layers: Sequence[str] | str) -> list[str]:
    """Return the linear-layer names selected by a list of names or by a regex pattern.

    Raises ValueError for an unknown name (with close matches), a bad regex, or no match.
    """
    if isinstance(layers, str):
        try:
            pattern = re.compile(layers)
        except re.error as exc:
            raise ValueError(f"layer pattern {layers!r} is not a valid regex: {exc}") from exc
        names = [layer.name for layer in list_linear_layers(model) if pattern.search(layer.name)]
        if not names:
            raise ValueError(f"no linear layer matches {layers!r}")
        return names
    names = list(layers)
    if not names:
        raise ValueError("layers must name at least one layer")
    for name in names:
        get_linear(model, name)  # ValueError with close matches when missing
    return names


def _check_payload(payload: dict) -> None:
    # a cache entry with the right key but an unusable payload is recomputed, not trusted
    if SweepResult.from_payload(payload).table.empty:
        raise ValueError("cached sweep has no rows")


def sweep_layer_cached(
    W: np.ndarray,
    ks: Sequence[int] | str,
    ranks: Sequence[int] | str,
    strategies: Sequence[str] | str = STRATEGIES,
    seed: int = 0,
    layer: str = "",
    normalize_rows: bool = False,
    randomized: bool | None = None,
    progress: Progress | None = None,
    *,
    cache: ResultCache | bool = True,
    spectral: bool = False,
    n_init: int | None = None,
    lookup_only: bool = False,
) -> SweepResult | None:
    """Return `sweep_layer_result(...)` for W, from the cache when an identical request was made.

    cache: a ResultCache, True (the default cache in `cached/results/`) or False (no cache).
    The result's `from_cache` says whether it was served from disk. With `lookup_only=True`
    nothing is computed: a request that is not in the cache returns None.
    """
    W = check_weight(W)
    strategies = [check_strategy(s.strip()) for s in (
        strategies.split(",") if isinstance(strategies, str) else strategies)]
    params = dict(ks=parse_grid(ks, "ks"), ranks=parse_grid(ranks, "ranks"), strategies=strategies,
                  seed=int(seed), layer=layer, normalize_rows=bool(normalize_rows),
                  randomized=randomized, spectral=bool(spectral), n_init=n_init)

    def compute() -> dict:
        return sweep_layer_result(
            W, params["ks"], params["ranks"], strategies, seed, layer, normalize_rows,
            randomized, progress, spectral=spectral, n_init=n_init,
        ).to_payload()

    if cache is False:
        return None if lookup_only else SweepResult.from_payload(compute())
    store = cache if isinstance(cache, ResultCache) else ResultCache()
    key = cache_key(CACHE_NAMESPACE, [W], params)
    if lookup_only:
        payload = store.load(key, validate=_check_payload)
        if payload is None:
            return None
        result = SweepResult.from_payload(payload)
        result.from_cache = True
        return result
    payload, hit = store.get_or_compute(key, compute, validate=_check_payload)
    result = SweepResult.from_payload(payload)
    result.from_cache = hit
    return result


def sweep_model(
    model: nn.Module,
    layers: Sequence[str] | str,
    ks: Sequence[int] | str,
    ranks: Sequence[int] | str,
    strategies: Sequence[str] | str = STRATEGIES,
    seed: int = 0,
    normalize_rows: bool = False,
    randomized: bool | None = None,
    progress: Progress | None = None,
    *,
    cache: ResultCache | bool = True,
    spectral: bool = False,
    n_init: int | None = None,
) -> pd.DataFrame:
    """Return the sweep tables of several layers of `model`, concatenated (columns of `sweep_layer`).

    layers: a list of full module names, or a regex searched in every linear layer's name.
    progress(done_layers, total_layers, message) is called before each layer and at the end.
    """
    names = resolve_layers(model, layers)
    tables = []
    for i, name in enumerate(names):
        if progress is not None:
            progress(i, len(names), f"layer {name}")
        result = sweep_layer_cached(
            get_weight(model, name), ks, ranks, strategies, seed, name, normalize_rows,
            randomized, cache=cache, spectral=spectral, n_init=n_init,
        )
        tables.append(result.table)
    if progress is not None:
        progress(len(names), len(names), "done")
    return tidy_table(pd.concat(tables, ignore_index=True))
