"""What a sweep is asked (`SweepSpec`) and what it returns (`SweepResult`, the table's columns).

The library takes sequences; only the command lines parse strings like "1,2,4"
(`parse_grid`, `parse_strategies`). The sweep itself is `analysis/sweep/__init__.py`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from idlora_core.linalg.validation import STRATEGIES, check_strategy

COLUMNS = [
    "layer", "m", "n", "k", "r", "strategy", "feasible", "total_rank", "min_cluster_size",
    "rel_fro_error", "svd_same_r", "svd_same_total", "global_id_same_r",
    "svd_spec_same_r", "bound_cluster", "bound_global", "rel_spec_error",
    "trainable_idlora", "trainable_lora", "seconds", "randomized",
]
# The relative-error columns (measured errors and bounds), in table order: defined only here.
ERROR_COLUMNS = COLUMNS[COLUMNS.index("rel_fro_error"): COLUMNS.index("rel_spec_error") + 1]


def _grid(values: Sequence[int], name: str) -> tuple[int, ...]:
    if isinstance(values, str | bytes):
        raise TypeError(f"{name} must be a sequence of integers (parse strings with parse_grid)")
    out: list[int] = []
    for item in values:
        if isinstance(item, bool) or not isinstance(item, int | np.integer):
            raise ValueError(f"{name} must be integers, got {item!r}")
        if item < 1:
            raise ValueError(f"{name} must be >= 1, got {int(item)}")
        if int(item) not in out:
            out.append(int(item))
    if not out:
        raise ValueError(f"{name} must not be empty")
    return tuple(out)


@dataclass(frozen=True)
class SweepSpec:
    """One sweep request: the grid and every option that changes its numbers.

    ks, ranks: distinct integers >= 1 (duplicates dropped, order kept); strategies: names of
    `STRATEGIES`; seed: k-means and random-selection seed; normalize_rows: cluster in cosine
    geometry; randomized: True / False force the randomized path, None picks it by size;
    spectral: also measure the spectral error (slow); n_init: k-means restarts (None: 4 on
    the exact path, 1 on the randomized path). Raises ValueError on a bad value.
    """

    ks: tuple[int, ...]
    ranks: tuple[int, ...]
    strategies: tuple[str, ...] = STRATEGIES
    seed: int = 0
    normalize_rows: bool = False
    randomized: bool | None = None
    spectral: bool = False
    n_init: int | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise the fields once, here
        set_(self, "ks", _grid(self.ks, "ks"))
        set_(self, "ranks", _grid(self.ranks, "ranks"))
        if isinstance(self.strategies, str):
            raise TypeError("strategies must be a sequence of names (parse strings with parse_strategies)")
        strategies = tuple(dict.fromkeys(check_strategy(s) for s in self.strategies))
        if not strategies:
            raise ValueError(f"strategies must name at least one of {', '.join(STRATEGIES)}")
        set_(self, "strategies", strategies)
        set_(self, "seed", int(self.seed))
        set_(self, "normalize_rows", bool(self.normalize_rows))
        if self.randomized is not None:
            set_(self, "randomized", bool(self.randomized))
        set_(self, "spectral", bool(self.spectral))
        if self.n_init is not None and int(self.n_init) < 1:
            raise ValueError(f"n_init must be >= 1, got {self.n_init}")

    def params(self) -> dict:
        """Return the spec as a JSON-ready dict (lists for tuples), e.g. for cache keys."""
        return {key: list(v) if isinstance(v, tuple) else v for key, v in asdict(self).items()}


def parse_grid(text: str, name: str) -> tuple[int, ...]:
    """Return the distinct integers >= 1 of a comma-separated string such as "1,2,4" (CLIs only)."""
    items = [item.strip() for item in str(text).split(",") if item.strip()]
    values = []
    for item in items:
        try:
            values.append(int(item))
        except ValueError as exc:
            raise ValueError(f"{name} must be integers, got {item!r}") from exc
    return _grid(values, name)


def parse_strategies(text: str) -> tuple[str, ...]:
    """Return the strategy names of a comma-separated string such as "id,centroid" (CLIs only)."""
    names = tuple(check_strategy(s.strip()) for s in str(text).split(",") if s.strip())
    if not names:
        raise ValueError(f"strategies must name at least one of {', '.join(STRATEGIES)}")
    return names


@dataclass
class SweepResult:
    """A sweep's table and, per k, the labels and skeletons behind every row (for --clusters-out)."""

    table: pd.DataFrame
    layer: str
    clusterings: list[dict] = field(default_factory=list)
    from_cache: bool = False

    def clusters_json(self) -> dict:
        """Return {"layer", "clusterings": [{"k", "labels", "selections": [{"r", "strategy",
        "skeleton": [[global rows of cluster 0], ...]}]}]} — enough to recompute every error."""
        return {"layer": self.layer, "clusterings": self.clusterings}

    def to_payload(self) -> dict:
        """Return a JSON-serialisable dict of the whole result (for the cache)."""
        return {
            "table": json.loads(json.dumps(self.table.to_dict(orient="split"), default=_plain)),
            "attrs": dict(self.table.attrs),
            **self.clusters_json(),
        }

    @classmethod
    def from_payload(cls, payload: dict) -> SweepResult:
        """Rebuild a result written by `to_payload`."""
        data = payload["table"]
        table = tidy_table(pd.DataFrame(data["data"], columns=data["columns"]))
        table.attrs.update(payload.get("attrs", {}))
        return cls(table=table, layer=payload["layer"], clusterings=payload["clusterings"])


def _plain(value: object) -> object:
    # numpy scalars -> Python numbers (exact round trip), pandas NA -> null
    return value.item() if hasattr(value, "item") else None


def tidy_table(table: pd.DataFrame | list[dict]) -> pd.DataFrame:
    """Return the rows as a DataFrame with the sweep's columns, in order, with their dtypes."""
    table = pd.DataFrame(table).reindex(columns=COLUMNS)
    for col in ERROR_COLUMNS + ["seconds"]:
        table[col] = pd.to_numeric(table[col]).astype(float)
    for col in ("m", "n", "k", "r", "total_rank"):
        table[col] = table[col].astype(np.int64)
    for col in ("min_cluster_size", "trainable_idlora", "trainable_lora"):
        table[col] = table[col].astype("Int64")
    for col in ("feasible", "randomized"):
        table[col] = table[col].astype(bool)
    table["layer"] = table["layer"].astype(str)
    table["strategy"] = table["strategy"].astype(str)
    return table
