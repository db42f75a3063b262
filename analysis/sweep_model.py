"""The sweep across many layers of one checkpoint, each weight read alone from disk.

`sweep_model(weights, layers, spec)` runs `analysis.sweep.sweep_layer` on every layer named
in a list, or matched by a regular expression (searched in the full module name), reading
each weight with the `idlora_core.weights.WeightReader` only when it is swept and releasing
it afterwards, and concatenates the tables. Each layer's result is cached (`cache=True`)
under a key made from the weight's bytes, the spec and the layer name, so asking twice costs
one computation. The whole-model scan with parallel workers is `analysis/scan.py`.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from analysis.sweep import Progress, SweepSpec, sweep_layer, tidy_table
from idlora_core.cache import ResultCache
from idlora_core.patterns import matching
from idlora_core.weights import WeightReader


def resolve_layers(weights: WeightReader, layers: Sequence[str] | str) -> list[str]:
    """Return the linear-layer names selected by a list of names or by a regex pattern.

    Raises ValueError for an unknown name (with close matches), a bad regex, a pattern slower
    than `idlora_core.patterns.MATCH_SECONDS` (one line: "simplify it"), or no match.
    """
    if isinstance(layers, str):
        names = matching(layers, weights.linear)  # under a time limit: PatternError (ValueError)
        if not names:
            raise ValueError(f"no linear layer matches {layers!r}")
        return names
    names = list(layers)
    if not names:
        raise ValueError("layers must name at least one layer")
    for name in names:
        weights.check_layer(name)  # ValueError with close matches when missing
    return names


def sweep_model(
    weights: WeightReader,
    layers: Sequence[str] | str,
    spec: SweepSpec,
    *,
    cache: ResultCache | bool = True,
    progress: Progress | None = None,
) -> pd.DataFrame:
    """Return the sweep tables of several layers, concatenated (columns of `sweep_layer`).

    weights: the checkpoint's reader (`idlora_core.weights.open_weights(name)`); layers: a
    list of full module names, or a regex searched in every linear layer's name.
    progress(done_layers, total_layers, message) is called before each layer and at the end.
    """
    names = resolve_layers(weights, layers)
    tables = []
    for i, name in enumerate(names):
        if progress is not None:
            progress(i, len(names), f"layer {name}")
        result = sweep_layer(weights.weight(name), spec, layer=name, cache=cache)
        tables.append(result.table)
    if progress is not None:
        progress(len(names), len(names), "done")
    return tidy_table(pd.concat(tables, ignore_index=True))
