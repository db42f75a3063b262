"""The reconstruction-error sweep of one layer: cluster-wise ID against global SVD and global ID.

`sweep_layer(W, ks, ranks, strategies)` returns a tidy DataFrame, one row per (k, r, strategy).
It runs k-means once per k, one spectrum per cluster and one QR per (cluster, strategy):
every rank is read off the same factorisation (DESIGN §2), never one solve per row.
`python -m analysis.sweep ...` is the command line for the same (`main` below; run it with
--help). The multi-layer and cached variant is `analysis/layer_sweep.py`.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.linalg as sla
from threadpoolctl import threadpool_limits

from idlora_core.linalg.clustering import MinSizeKMeans, row_geometry
from idlora_core.linalg.decomposition import (
    RowID,
    cluster_id_bound,
    clusterwise_residual,
    id_bound,
    ordered_row_errors,
    row_id,
    spectrum,
    svd_spectral_errors,
    svd_tail_errors,
    top_spectrum,
)
from idlora_core.linalg.randomized import (
    prefix_row_errors,
    randomized_row_id,
    randomized_spectrum,
    use_randomized,
)
from idlora_core.linalg.selection import centroid_order, random_order
from idlora_core.linalg.validation import STRATEGIES, check_strategy, check_weight, rank_problem

Progress = Callable[[int, int, str], None]

COLUMNS = [
    "layer", "m", "n", "k", "r", "strategy", "feasible", "total_rank", "min_cluster_size",
    "rel_fro_error", "svd_same_r", "svd_same_total", "global_id_same_r",
    "svd_spec_same_r", "bound_cluster", "bound_global", "rel_spec_error",
    "trainable_idlora", "trainable_lora", "seconds", "randomized",
]
ERROR_COLUMNS = [
    "rel_fro_error", "svd_same_r", "svd_same_total", "global_id_same_r",
    "svd_spec_same_r", "bound_cluster", "bound_global", "rel_spec_error",
]


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


def parse_grid(values: Sequence[int] | str, name: str) -> list[int]:
    """Return the distinct integers >= 1 of `values` ("1,2,4" or a sequence), in the order given."""
    items = values.split(",") if isinstance(values, str) else list(values)
    out: list[int] = []
    for item in items:
        try:
            value = int(str(item).strip())
        except ValueError as exc:
            raise ValueError(f"{name} must be integers, got {item!r}") from exc
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
        if value not in out:
            out.append(value)
    if not out:
        raise ValueError(f"{name} must not be empty")
    return out


def _order_errors(M: np.ndarray, order: np.ndarray | None, r_max: int, rand: bool, seed: int) -> RowID:
    # Errors of every prefix of `order` (None: the pivoted-QR order) on the rows of M.
    if order is None:
        return randomized_row_id(M, r_max, seed=seed) if rand else row_id(M)
    return prefix_row_errors(M, order[:r_max]) if rand else ordered_row_errors(M, order)


def _padded(sq: np.ndarray, r_max: int) -> np.ndarray:
    # Squared errors for r = 0..r_max (an exhausted order has error 0 beyond its length).
    out = np.zeros(r_max + 1)
    out[: min(len(sq), r_max + 1)] = sq[: r_max + 1]
    return out


def sweep_layer_result(
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
    spectral: bool = False,
    n_init: int | None = None,
    threads: int | None = 1,
) -> SweepResult:
    """Run the sweep and return the table together with the clusterings (see `sweep_layer`)."""
    W = check_weight(W)
    # Many small LAPACK calls: on a shared, busy machine BLAS threads spin and contend
    # (measured 10-100x slower); one thread is the robust default.
    with threadpool_limits(limits=threads):
        return _sweep(W, ks, ranks, strategies, seed, layer, normalize_rows, randomized,
                      progress, spectral, n_init)


def _sweep(W, ks, ranks, strategies, seed, layer, normalize_rows, randomized, progress,
           spectral, n_init) -> SweepResult:
    W = check_weight(W)
    m, n = W.shape
    ks, ranks = parse_grid(ks, "ks"), parse_grid(ranks, "ranks")
    strategies = [check_strategy(s.strip()) for s in (
        strategies.split(",") if isinstance(strategies, str) else strategies)]
    rand = use_randomized(m, n, randomized)
    n_init = n_init if n_init is not None else (1 if rand else 4)
    feasible = {k: [r for r in ranks if rank_problem(m, n, k, r) is None] for k in ks}
    r_top = max((max(rs) for rs in feasible.values() if rs), default=0)
    total_top = max((k * max(rs) for k, rs in feasible.items() if rs), default=0)
    total_steps = 1 + sum(len(strategies) for k in ks if feasible[k])
    done = 0

    def tick(message: str) -> None:
        if progress is not None:
            progress(done, total_steps, message)

    tick("global spectrum and ID")
    t0 = time.perf_counter()
    fro = float(np.linalg.norm(W))
    if rand:
        s = randomized_spectrum(W, max(total_top, r_top + 1), seed=seed)
        svd_fro = svd_tail_errors(s, fro_norm=fro)
    else:
        s = spectrum(W)
        svd_fro = svd_tail_errors(s)
    s1 = float(s[0]) if len(s) and s[0] > 0 else 1.0
    svd_spec = svd_spectral_errors(s)
    global_id = _order_errors(W, None, r_top, rand, seed) if r_top else None
    global_seconds = time.perf_counter() - t0
    done += 1

    def at(arr: np.ndarray, i: int) -> float:
        # Ranks >= min(m, n) reproduce W exactly; a truncated spectrum knows nothing further.
        if i >= min(m, n):
            return 0.0
        return float(arr[i]) if i < len(arr) else float("nan")

    rows: list[dict] = []
    clusterings: list[dict] = []
    Z = row_geometry(W, normalize_rows)  # the clustering geometry (centroid distances)
    for k in ks:
        rs = feasible[k]
        base = dict(layer=layer, m=m, n=n, k=k, randomized=rand)
        if not rs:
            rows += [dict(base, r=r, strategy=st, feasible=False, total_rank=k * r,
                          trainable_idlora=m * r + k * r, trainable_lora=r * (m + n))
                     for st in strategies for r in ranks]
            continue
        r_max = max(rs)
        tick(f"k={k}: k-means with minimum cluster size {r_max}")
        t_k = time.perf_counter()
        labels = MinSizeKMeans(k, min_size=r_max, normalize_rows=normalize_rows,
                               random_state=seed, n_init=n_init).fit(W).labels_
        members = [np.flatnonzero(labels == c) for c in range(k)]
        blocks = [W[idx] for idx in members]
        sizes = [len(idx) for idx in members]
        spectra = [randomized_spectrum(b, r_max + 1, seed=seed) if rand
                   else top_spectrum(b, r_max + 1) for b in blocks]  # for bound_cluster
        shared = (time.perf_counter() - t_k) / len(strategies)
        selections: list[dict] = []
        for st in strategies:
            t_s = time.perf_counter()
            if st == "id" and k == 1 and global_id is not None:
                fits = [global_id]  # one cluster: the global ID itself
            else:
                fits = _strategy_fits(Z, members, blocks, st, r_max, rand, seed)
            total_sq = sum(_padded(f.sq_errors, r_max) for f in fits)
            seconds = (time.perf_counter() - t_s + shared) / len(rs)
            for r in ranks:
                row = dict(base, r=r, strategy=st, feasible=r in rs, total_rank=k * r,
                           trainable_idlora=m * r + k * r, trainable_lora=r * (m + n))
                if r in rs:
                    skeleton = [idx[f.order[:r]] for idx, f in zip(members, fits, strict=True)]
                    row.update(
                        min_cluster_size=r_max,
                        rel_fro_error=float(np.sqrt(total_sq[r])) / fro if fro else 0.0,
                        svd_same_r=at(svd_fro, r),
                        svd_same_total=at(svd_fro, k * r),
                        global_id_same_r=float(np.sqrt(global_id.sq_errors[r])) / fro if fro else 0.0,
                        svd_spec_same_r=at(svd_spec, r),
                        bound_cluster=cluster_id_bound(spectra, sizes, r) / s1,
                        bound_global=id_bound(s, r, m) / s1,
                        rel_spec_error=_spectral(W, labels, skeleton, s1) if spectral else np.nan,
                        seconds=seconds,
                    )
                    selections.append(dict(r=r, strategy=st,
                                           skeleton=[sk.tolist() for sk in skeleton]))
                rows.append(row)
            done += 1
            tick(f"k={k}, strategy={st}")
        clusterings.append(dict(k=k, labels=labels.tolist(), selections=selections))
    table = tidy_table(rows)
    table.attrs.update(global_seconds=global_seconds, randomized=rand)
    tick("done")
    return SweepResult(table=table, layer=layer, clusterings=clusterings)


def _strategy_fits(Z: np.ndarray, members: list[np.ndarray], blocks: list[np.ndarray],
                   strategy: str, r_max: int, rand: bool, seed: int) -> list[RowID]:
    # One order and its all-ranks errors per cluster (orders as in selection.cluster_orders).
    fits = []
    for c, idx in enumerate(members):
        order = None  # "id": the pivoted-QR order, found by the factorisation itself
        if strategy == "centroid":
            order = np.searchsorted(idx, centroid_order(Z, idx))
        elif strategy == "random":
            order = np.searchsorted(idx, random_order(idx, seed, c))
        fits.append(_order_errors(blocks[c], order, r_max, rand, seed + c))
    return fits


def _spectral(W: np.ndarray, labels: np.ndarray, skeleton: list[np.ndarray], s1: float) -> float:
    # Explicit residual: no identity gives the spectral norm of every rank at once.
    return float(sla.svdvals(clusterwise_residual(W, labels, skeleton), check_finite=False)[0]) / s1


def sweep_layer(
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
    spectral: bool = False,
    n_init: int | None = None,
    threads: int | None = 1,
) -> pd.DataFrame:
    """Return the reconstruction-error sweep of W (m x n), one row per (k, r, strategy).

    Clustering: k-means runs ONCE per k, with minimum cluster size = the largest feasible r
    of the grid for that k (largest r with k*r <= m and r <= n), so every rank of the grid
    fits every cluster and the ranks of one k share the same clusters.

    W: weight (m = out_features rows, n = in_features columns); ks, ranks: lists or "1,2,4";
    strategies: "id" | "centroid" | "random" (selection.py); seed: k-means and random seed;
    normalize_rows: cluster (and pick centroid rows) in cosine geometry; randomized: True /
    False force the randomized path (randomized.py), None picks it above
    RANDOMIZED_MIN_ELEMENTS weight entries; progress(done, total, message) is called as the
    work advances; spectral=True also measures the spectral error (one explicit residual per
    row: slow); n_init: k-means restarts (default 4 exact, 1 randomized); threads: BLAS/OpenMP
    threads (default 1, robust on a busy machine; None = the libraries' default).
    Raises ValueError for ks/ranks < 1, unknown strategies, or a bad W.

    Columns (errors are RELATIVE: divided by ||W||_F for Frobenius, by s_1(W) for spectral):
      layer, m, n          the layer name passed in and its shape
      k, r, strategy       clusters, skeleton rows per cluster (rank), selection strategy
      feasible             False when the pair cannot be built (k*r > m or r > n); the error
                           columns of such rows are empty (NaN) and the sweep goes on
      total_rank           k*r, the most the cluster-wise ID can span
      min_cluster_size     minimum cluster size used by k-means at this k
      rel_fro_error        ||W - W_hat||_F / ||W||_F of cluster-wise ID (each cluster's rows
                           least-squares projected on its r skeleton rows) — measured
      svd_same_r           best rank-r error (global SVD, Eckart-Young), Frobenius
      svd_same_total       best rank-k*r error (global SVD); no cluster-wise ID can go below it
      global_id_same_r     global row ID at rank r (first r pivots of a pivoted QR of W.T)
      svd_spec_same_r      s_{r+1}(W) / s_1(W), the best rank-r spectral error
      bound_cluster        sqrt(sum_c (1 + r(m_c - r)) s_{r+1}(W_c)^2) / s_1(W): spectral
                           bound of cluster-wise ID (attainable by strong RRQR; a bound, not
                           a measurement)
      bound_global         sqrt(1 + r(m - r)) s_{r+1}(W) / s_1(W): same for the global ID
      rel_spec_error       measured ||W - W_hat||_2 / s_1(W) (only with spectral=True)
      trainable_idlora     m*r + k*r trainable parameters of ID-LoRA (B and router)
      trainable_lora       r*(m + n) trainable parameters of LoRA at the same r
      seconds              wall-clock seconds of this row, amortised: (k-means and cluster
                           spectra of this k) / #strategies + this strategy's QRs, divided
                           by the feasible ranks of k; the global spectrum/ID time is in
                           `table.attrs["global_seconds"]`
      randomized           True when the randomized path computed the row
    """
    return sweep_layer_result(
        W, ks, ranks, strategies, seed, layer, normalize_rows, randomized, progress,
        spectral=spectral, n_init=n_init, threads=threads,
    ).table


if __name__ == "__main__":  # `python -m analysis.sweep`: the CLI lives in sweep_cli.py
    from analysis.sweep_cli import main

    sys.exit(main())
