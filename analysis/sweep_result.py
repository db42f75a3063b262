"""What a sweep is asked (`SweepSpec`) and what it returns (`SweepResult`, the table's columns).

The library takes sequences; only the command lines parse strings like "1,2,4"
(`parse_grid`, `parse_selections`, `add_retired_flag`). The sweep itself is `analysis/sweep/__init__.py`.
A `SweepResult` keeps, besides its table, the labels and skeletons behind every row and the
global ID's row order, so the measured spectral columns (`SPECTRAL_COLUMNS`) can be added
to it later without clustering again (`analysis.sweep.add_spectral`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from idlora_core.linalg.validation import SELECTIONS, check_selection

COLUMNS = [
    "layer", "m", "n", "k", "r", "selection", "feasible", "total_rank", "min_cluster_size",
    "rel_fro_error", "svd_same_r", "svd_same_total", "global_id_same_r",
    "svd_spec_same_r", "global_id_spec_same_r", "bound_cluster", "bound_global", "rel_spec_error",
    "trainable_idlora", "trainable_lora", "seconds", "randomized",
]
# The relative-error columns (measured errors and bounds), in table order: defined only here.
ERROR_COLUMNS = COLUMNS[COLUMNS.index("rel_fro_error"): COLUMNS.index("rel_spec_error") + 1]
# The measured spectral errors: one residual SVD per row, filled only when asked for
# (`SweepSpec.spectral`, `analysis.sweep.add_spectral`); NaN until then.
SPECTRAL_COLUMNS = ["global_id_spec_same_r", "rel_spec_error"]


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

    ks, ranks: distinct integers >= 1 (duplicates dropped, order kept); selections: names of
    `SELECTIONS`; seed: k-means and random-selection seed; normalize_rows: cluster in cosine
    geometry; randomized: True / False force the randomized path, None picks it by size;
    spectral: also measure the spectral errors (`SPECTRAL_COLUMNS`; one residual SVD per row,
    added to the same cached result, not a separate request); n_init: k-means restarts (None: 4 on
    the exact path, 1 on the randomized path). Raises ValueError on a bad value.
    """

    ks: tuple[int, ...]
    ranks: tuple[int, ...]
    selections: tuple[str, ...] = SELECTIONS
    seed: int = 0
    normalize_rows: bool = False
    randomized: bool | None = None
    spectral: bool = False
    n_init: int | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise the fields once, here
        set_(self, "ks", _grid(self.ks, "ks"))
        set_(self, "ranks", _grid(self.ranks, "ranks"))
        if isinstance(self.selections, str):
            raise TypeError("selections must be a sequence of names (parse strings with parse_selections)")
        selections = tuple(dict.fromkeys(check_selection(s) for s in self.selections))
        if not selections:
            raise ValueError(f"selections must name at least one of {', '.join(SELECTIONS)}")
        set_(self, "selections", selections)
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

    def cache_params(self) -> dict:
        """Return `params()` under the names the cache keys were first made with (`selections`
        was `strategies`), so entries cached before the rename are still found."""
        return {_KEY_NAMES.get(key, key): v for key, v in self.params().items()}


# SweepSpec fields whose cache-key name is their retired name (docs/VOCABULARY.md)
_KEY_NAMES = {"selections": "strategies"}
# Names sweep tables and payloads were written with before the one vocabulary: column / key
# `strategy` is `selection` (old cache entries and scan CSVs are read through `tidy_table`).
RETIRED_COLUMNS = {"strategy": "selection"}


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


def parse_selections(text: str) -> tuple[str, ...]:
    """Return the selection names of a comma-separated string such as "id,centroid" (CLIs only)."""
    names = tuple(check_selection(s.strip()) for s in str(text).split(",") if s.strip())
    if not names:
        raise ValueError(f"selections must name at least one of {', '.join(SELECTIONS)}")
    return names


def add_retired_flag(parser: argparse.ArgumentParser, old: str, new: str, **kwargs) -> None:
    """Accept the retired option `old` as a hidden alias of `new` (same destination; give the
    same `type` / `choices` in kwargs); using it prints a one-line note on stderr (CLIs only)."""

    class Retired(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            print(f"note: {old} is now {new} (docs/VOCABULARY.md); the old name still works",
                  file=sys.stderr)
            setattr(namespace, self.dest, values)

    parser.add_argument(old, dest=new.lstrip("-").replace("-", "_"), action=Retired,
                        default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)


@dataclass
class SweepResult:
    """A sweep's table and what lies behind its rows.

    table: one row per (k, r, selection) (`COLUMNS`); attrs: global_seconds, randomized,
    sigma_1 (s_1(W) the relative spectral errors divide by; absent in entries cached before
    it was stored); layer: the name in the table; clusterings: per swept k, {"k", "labels"
    (cluster of every row of W), "selections": [{"r", "selection", "skeleton": [[global rows
    of cluster 0], ...]}]}; global_order: the global row ID's first r_max rows (pivot order;
    None in older cache entries); from_cache: the clusterings were read from the cache.
    """

    table: pd.DataFrame
    layer: str
    clusterings: list[dict] = field(default_factory=list)
    from_cache: bool = False
    global_order: list[int] | None = None

    def clusters_json(self) -> dict:
        """Return {"layer", "clusterings": [{"k", "labels", "selections": [{"r", "selection",
        "skeleton": [[global rows of cluster 0], ...]}]}]} — enough to recompute every error."""
        return {"layer": self.layer, "clusterings": self.clusterings}

    def labels(self, k: int) -> np.ndarray | None:
        """Return the sweep's cluster of every row of W at `k` (int64, (m,)), or None when k
        was not clustered (not swept, or no feasible rank at k)."""
        for clustering in self.clusterings:
            if clustering["k"] == k:
                return np.asarray(clustering["labels"], dtype=np.int64)
        return None

    def skeleton(self, k: int, r: int, selection: str) -> list[np.ndarray] | None:
        """Return the skeleton of (k, r, selection): one int64 array of r GLOBAL row indices per
        cluster, or None when the sweep has no such feasible configuration."""
        for clustering in self.clusterings:
            if clustering["k"] != k:
                continue
            for sel in clustering["selections"]:
                if sel["r"] == r and sel["selection"] == selection:
                    return [np.asarray(rows, dtype=np.int64) for rows in sel["skeleton"]]
        return None

    @property
    def has_spectral(self) -> bool:
        """True when every feasible row has its measured spectral errors (`SPECTRAL_COLUMNS`)."""
        feasible = self.table[self.table["feasible"]]
        return bool(feasible[SPECTRAL_COLUMNS].notna().all().all())

    def check(self) -> None:
        """Raise ValueError unless the result can be used: rows, labels of every row of W in
        range for each clustered k, a skeleton of r rows of the right cluster per cluster for
        every feasible row, and global-order rows in range (a cache entry failing it is
        recomputed)."""
        table = self.table
        if table.empty:
            raise ValueError("the sweep has no rows")
        m = int(table["m"].iloc[0])
        for clustering in self.clusterings:
            k = int(clustering["k"])
            labels = np.asarray(clustering["labels"])
            if labels.shape != (m,) or labels.dtype.kind not in "iu" or labels.min() < 0 \
                    or labels.max() >= k:
                raise ValueError(f"the labels at k={k} are not {m} cluster ids in [0, {k})")
        for row in table[table["feasible"]].itertuples():
            skeleton, labels = self.skeleton(row.k, row.r, row.selection), self.labels(row.k)
            if skeleton is None or labels is None or len(skeleton) != row.k:
                raise ValueError(f"no skeleton for k={row.k}, r={row.r}, {row.selection}")
            for c, rows in enumerate(skeleton):
                if rows.shape != (row.r,) or rows.min() < 0 or rows.max() >= m \
                        or not (labels[rows] == c).all():
                    raise ValueError(f"skeleton of cluster {c} at k={row.k}, r={row.r} is not "
                                     f"{row.r} rows of that cluster")
        order = np.asarray(self.global_order if self.global_order is not None else [], dtype=np.int64)
        if order.size and (order.min() < 0 or order.max() >= m):
            raise ValueError("global order rows out of range")

    def to_payload(self) -> dict:
        """Return a JSON-serialisable dict of the whole result (for the cache)."""
        return {
            "table": json.loads(json.dumps(self.table.to_dict(orient="split"), default=_plain)),
            "attrs": json.loads(json.dumps(dict(self.table.attrs), default=_plain)),
            **self.clusters_json(),
            "global_order": self.global_order,
        }

    @classmethod
    def from_payload(cls, payload: dict) -> SweepResult:
        """Rebuild a result written by `to_payload` (older entries: missing columns are NaN,
        a missing global order is None)."""
        data = payload["table"]
        table = tidy_table(pd.DataFrame(data["data"], columns=data["columns"]))
        table.attrs.update(payload.get("attrs", {}))
        order = payload.get("global_order")
        clusterings = [{**c, "selections": [_renamed(sel) for sel in c.get("selections", [])]}
                       for c in payload["clusterings"]]
        return cls(table=table, layer=payload["layer"], clusterings=clusterings,
                   global_order=None if order is None else [int(i) for i in order])


def _renamed(row: dict) -> dict:
    # a dict written with retired key names (RETIRED_COLUMNS) -> the one name
    return {RETIRED_COLUMNS.get(key, key): value for key, value in row.items()}


def _plain(value: object) -> object:
    # numpy scalars -> Python numbers (exact round trip), pandas NA -> null
    return value.item() if hasattr(value, "item") else None


def tidy_table(table: pd.DataFrame | list[dict]) -> pd.DataFrame:
    """Return the rows as a DataFrame with the sweep's columns, in order, with their dtypes
    (a table written before the one vocabulary has its `strategy` column read as `selection`)."""
    table = pd.DataFrame(table)
    table = table.rename(columns={old: new for old, new in RETIRED_COLUMNS.items()
                                  if old in table.columns and new not in table.columns})
    table = table.reindex(columns=COLUMNS)
    for col in ERROR_COLUMNS + ["seconds"]:
        table[col] = pd.to_numeric(table[col]).astype(float)
    for col in ("m", "n", "k", "r", "total_rank"):
        table[col] = table[col].astype(np.int64)
    for col in ("min_cluster_size", "trainable_idlora", "trainable_lora"):
        table[col] = table[col].astype("Int64")
    for col in ("feasible", "randomized"):
        table[col] = table[col].astype(bool)
    table["layer"] = table["layer"].astype(str)
    table["selection"] = table["selection"].astype(str)
    return table
