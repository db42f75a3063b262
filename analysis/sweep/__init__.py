"""The reconstruction-error sweep of one layer: cluster-wise ID against global SVD and global ID.

`sweep_layer(W, SweepSpec(ks, ranks, selections, ...))` returns a `SweepResult` whose table
has one row per (k, r, selection). It runs k-means once per k, one spectrum per cluster and
one QR per (cluster, selection): every rank is read off the same factorisation (docs/THEORY.md),
never one solve per row. With `cache=True` (or a ResultCache) a repeated request is served
from disk. The measured spectral errors (`SPECTRAL_COLUMNS`, one residual SVD per row) are
columns of the same result: `add_spectral` fills them from the result's own labels and
skeletons and re-saves it under the same key, so asking for them after a cached sweep
clusters nothing again. `python -m analysis.sweep ...` is the command line
(`analysis/sweep_cli.py`); the multi-layer variant is `analysis/sweep_model.py`, the
whole-model scan `analysis/scan.py`.

Memory: the randomized path (large layers) works on a float32 copy of W and never makes a
float64 or transposed copy of the whole layer, so a sweep needs about 2-3x the layer's
float32 size on top of the imports; the exact path (small layers) works in float64.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import scipy.linalg as sla
from threadpoolctl import threadpool_limits

from analysis.sweep_result import (
    COLUMNS,
    ERROR_COLUMNS,
    SPECTRAL_COLUMNS,
    SweepResult,
    SweepSpec,
    add_retired_flag,
    parse_grid,
    parse_selections,
    tidy_table,
)
from idlora_core.cache import ResultCache, cache_key
from idlora_core.linalg.clustering import MinSizeKMeans, row_geometry
from idlora_core.linalg.decomposition import (
    RowID,
    cluster_id_bound,
    clusterwise_residual,
    id_bound,
    id_residual,
    ordered_row_errors,
    row_id,
    spectrum,
    sq_norm,
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
from idlora_core.linalg.validation import check_weight, rank_problem

__all__ = ["COLUMNS", "ERROR_COLUMNS", "CACHE_NAMESPACE", "SPECTRAL_COLUMNS", "Progress",
           "SweepResult", "SweepSpec", "add_retired_flag", "add_spectral", "parse_grid",
           "parse_selections",
           "sweep_key", "sweep_layer", "tidy_table"]

Progress = Callable[[int, int, str], None]
CACHE_NAMESPACE = "sweep"


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


def sweep_layer(
    W: np.ndarray,
    spec: SweepSpec,
    *,
    layer: str = "",
    cache: ResultCache | bool = False,
    progress: Progress | None = None,
    lookup_only: bool = False,
    threads: int | None = 1,
) -> SweepResult | None:
    """Return the reconstruction-error sweep of W (m x n): a `SweepResult` whose `.table` has
    one row per (k, r, selection) of `spec` (columns below) and whose `.clusterings` hold the
    labels and skeletons behind every row.

    Clustering: k-means runs ONCE per k, with minimum cluster size = the largest feasible r
    of the grid for that k (largest r with k*r <= m and r <= n), so every rank of the grid
    fits every cluster and the ranks of one k share the same clusters.

    W: weight (m = out_features rows, n = in_features columns), float32 or float64; spec: the
    grid and options (`SweepSpec`); layer: the name written into the table; cache: False (no
    cache), True (the default cache folder) or a ResultCache: an identical request (same
    weight bytes, spec and layer name) is served from disk and `result.from_cache` says so.
    The cache key leaves out `spec.spectral`: the spectral columns belong to the same entry.
    With spec.spectral and a cached entry without them, only they are computed (from the
    stored labels and skeletons, `add_spectral`) and the entry is re-saved; an entry that
    already has them is returned with them even when spec.spectral is False.
    progress(done, total, message) is called as the work advances; lookup_only=True computes
    nothing and returns None when the request (spectral columns included, if asked) is not
    cached; threads: BLAS/OpenMP threads (default 1, robust on a busy machine; None = the
    libraries' default).
    Raises ValueError for a bad W (SweepSpec checks the grid).

    Columns (errors are RELATIVE: divided by ||W||_F for Frobenius, by s_1(W) for spectral):
      layer, m, n          the layer name passed in and its shape
      k, r, selection      clusters, skeleton rows per cluster (rank), skeleton-row selection
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
      global_id_spec_same_r  measured ||W - W_hat||_2 / s_1(W) of the global row ID at rank r
                           (only with spec.spectral / `add_spectral`, else NaN)
      bound_cluster        sqrt(sum_c (1 + r(m_c - r)) s_{r+1}(W_c)^2) / s_1(W): spectral
                           bound of cluster-wise ID (attainable by strong RRQR; a bound, not
                           a measurement)
      bound_global         sqrt(1 + r(m - r)) s_{r+1}(W) / s_1(W): same for the global ID
      rel_spec_error       measured ||W - W_hat||_2 / s_1(W) of cluster-wise ID (only with
                           spec.spectral / `add_spectral`, else NaN)
      trainable_idlora     m*r + k*r trainable parameters of ID-LoRA (B and router)
      trainable_lora       r*(m + n) trainable parameters of LoRA at the same r
      seconds              wall-clock seconds of this row, amortised: (k-means and cluster
                           spectra of this k) / #selections + this selection's QRs, divided
                           by the feasible ranks of k; the global spectrum/ID time is in
                           `table.attrs["global_seconds"]`
      randomized           True when the randomized path computed the row
    """
    if not isinstance(spec, SweepSpec):
        raise TypeError(f"spec must be a SweepSpec, got {type(spec).__name__}")
    W = check_weight(W)

    def compute() -> SweepResult:
        # Many small LAPACK calls: on a shared, busy machine BLAS threads spin and contend
        # (measured 10-100x slower); one thread is the robust default.
        with threadpool_limits(limits=threads):
            result = _sweep(W, spec, layer, progress)
            return _add_spectral(W, spec, result, progress) if spec.spectral else result

    if cache is False or cache is None:
        return None if lookup_only else compute()
    store = cache if isinstance(cache, ResultCache) else ResultCache()
    key = sweep_key(W, spec, layer)
    if lookup_only:
        payload = store.load(key, validate=_check_payload)
        if payload is None:
            return None
        hit = True
    else:
        payload, hit = store.get_or_compute(key, lambda: compute().to_payload(), _check_payload)
    result = SweepResult.from_payload(payload)
    result.from_cache = hit
    if spec.spectral and not result.has_spectral:
        if lookup_only:
            return None
        result = add_spectral(W, result, spec, cache=store, progress=progress, threads=threads)
    return result


def sweep_key(W: np.ndarray, spec: SweepSpec, layer: str = "") -> str:
    """Return the cache key of the sweep of W with `spec` named `layer`: the weight's bytes,
    every field of the spec except `spectral` (the spectral columns extend the same entry),
    and the layer name; fields under the names the key was first made with (`cache_params`:
    entries cached before `strategies` became `selections` are found)."""
    return cache_key(CACHE_NAMESPACE, [W], dict(replace(spec, spectral=False).cache_params(), layer=layer))


def add_spectral(
    W: np.ndarray,
    result: SweepResult,
    spec: SweepSpec,
    *,
    cache: ResultCache | bool = False,
    progress: Progress | None = None,
    threads: int | None = 1,
) -> SweepResult:
    """Return `result` with its measured spectral columns (`SPECTRAL_COLUMNS`) filled in.

    Only the missing values are computed, from what the result holds: each feasible row's
    residual W - W_hat is built from the stored labels and skeleton (each cluster's rows
    least-squares projected on its skeleton rows) and its largest singular value divided by
    s_1(W); the global ID's from its stored row order. No k-means, no QR of a cluster. An
    older result without s_1 or the global order gets them recomputed (one spectrum, one
    global QR). W and spec must be the sweep's own (ValueError when W's shape differs);
    cache: False, True or a ResultCache: the extended result is saved atomically under the
    same key as the sweep (`sweep_key`). The input result is not modified.
    progress(done, total, message); threads: as in `sweep_layer`.
    """
    if not isinstance(spec, SweepSpec):
        raise TypeError(f"spec must be a SweepSpec, got {type(spec).__name__}")
    W = check_weight(W)
    shape = (int(result.table["m"].iloc[0]), int(result.table["n"].iloc[0])) if len(result.table) else None
    if shape != W.shape:
        raise ValueError(f"the weight is {W.shape[0]} x {W.shape[1]} but the sweep result of "
                         f"{result.layer!r} is for {shape}: pass the weight that was swept")
    if result.has_spectral:
        return result
    with threadpool_limits(limits=threads):
        extended = _add_spectral(W, spec, result, progress)
    if cache is not False and cache is not None:
        store = cache if isinstance(cache, ResultCache) else ResultCache()
        store.save(sweep_key(W, spec, result.layer), extended.to_payload())
    return extended


def _check_payload(payload: dict) -> None:
    # a cache entry with the right key but an unusable payload is recomputed, not trusted
    SweepResult.from_payload(payload).check()


def _plan(m: int, n: int, spec: SweepSpec) -> tuple[bool, dict[int, list[int]], int, int]:
    # (randomized?, feasible ranks per k, largest feasible r, largest feasible k*r)
    feasible = {k: [r for r in spec.ranks if rank_problem(m, n, k, r) is None] for k in spec.ks}
    r_top = max((max(rs) for rs in feasible.values() if rs), default=0)
    total_top = max((k * max(rs) for k, rs in feasible.items() if rs), default=0)
    return use_randomized(m, n, spec.randomized), feasible, r_top, total_top


def _global_spectrum(W: np.ndarray, rand: bool, r_top: int, total_top: int, seed: int) -> np.ndarray:
    # All singular values (exact path) or the top ones the table needs (randomized path).
    return randomized_spectrum(W, max(total_top, r_top + 1), seed=seed) if rand else spectrum(W)


def _sigma_1(s: np.ndarray) -> float:
    return float(s[0]) if len(s) and s[0] > 0 else 1.0


def _sweep(W: np.ndarray, spec: SweepSpec, layer: str, progress: Progress | None) -> SweepResult:
    m, n = W.shape
    ks, ranks, selections, seed = spec.ks, spec.ranks, spec.selections, spec.seed
    rand, feasible, r_top, total_top = _plan(m, n, spec)
    W = _working_copy(W, rand)
    n_init = spec.n_init if spec.n_init is not None else (1 if rand else 4)
    total_steps = 1 + sum(len(selections) for k in ks if feasible[k])
    done = 0

    def tick(message: str) -> None:
        if progress is not None:
            progress(done, total_steps, message)

    tick("global spectrum and ID")
    t0 = time.perf_counter()
    fro = float(np.sqrt(sq_norm(W)))
    s = _global_spectrum(W, rand, r_top, total_top, seed)
    svd_fro = svd_tail_errors(s, fro_norm=fro) if rand else svd_tail_errors(s)
    s1 = _sigma_1(s)
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
    Z = row_geometry(W, spec.normalize_rows)  # the clustering geometry (centroid distances)
    for k in ks:
        rs = feasible[k]
        base = dict(layer=layer, m=m, n=n, k=k, randomized=rand)
        if not rs:
            rows += [dict(base, r=r, selection=sel, feasible=False, total_rank=k * r,
                          trainable_idlora=m * r + k * r, trainable_lora=r * (m + n))
                     for sel in selections for r in ranks]
            continue
        r_max = max(rs)
        tick(f"k={k}: k-means with minimum cluster size {r_max}")
        t_k = time.perf_counter()
        labels = MinSizeKMeans(k, min_size=r_max, normalize_rows=spec.normalize_rows,
                               random_state=seed, n_init=n_init).fit(W).labels_
        members = [np.flatnonzero(labels == c) for c in range(k)]
        sizes = [len(idx) for idx in members]
        spectra: list[np.ndarray] = []  # for bound_cluster
        fits: dict[str, list[RowID]] = {sel: [] for sel in selections}
        sel_seconds = dict.fromkeys(selections, 0.0)
        # Cluster by cluster: one block of rows alive at a time (one cluster = W itself, no copy).
        for c, idx in enumerate(members):
            block = W if len(idx) == m else W[idx]
            spectra.append(randomized_spectrum(block, r_max + 1, seed=seed) if rand
                           else top_spectrum(block, r_max + 1))
            for sel in selections:
                t_s = time.perf_counter()
                if sel == "id" and k == 1 and global_id is not None:
                    fits[sel].append(global_id)  # one cluster: the global ID itself
                else:
                    fits[sel].append(_order_errors(block, _order(Z, idx, sel, seed, c), r_max,
                                                  rand, seed + c))
                sel_seconds[sel] += time.perf_counter() - t_s
            del block
        shared = (time.perf_counter() - t_k - sum(sel_seconds.values())) / len(selections)
        chosen: list[dict] = []
        for sel in selections:
            total_sq = sum(_padded(f.sq_errors, r_max) for f in fits[sel])
            seconds = (sel_seconds[sel] + shared) / len(rs)
            for r in ranks:
                row = dict(base, r=r, selection=sel, feasible=r in rs, total_rank=k * r,
                           trainable_idlora=m * r + k * r, trainable_lora=r * (m + n))
                if r in rs:
                    skeleton = [idx[f.order[:r]] for idx, f in zip(members, fits[sel], strict=True)]
                    row.update(
                        min_cluster_size=r_max,
                        rel_fro_error=float(np.sqrt(total_sq[r])) / fro if fro else 0.0,
                        svd_same_r=at(svd_fro, r),
                        svd_same_total=at(svd_fro, k * r),
                        global_id_same_r=float(np.sqrt(global_id.sq_errors[r])) / fro if fro else 0.0,
                        svd_spec_same_r=at(svd_spec, r),
                        bound_cluster=cluster_id_bound(spectra, sizes, r) / s1,
                        bound_global=id_bound(s, r, m) / s1,
                        seconds=seconds,
                    )
                    chosen.append(dict(r=r, selection=sel,
                                      skeleton=[sk.tolist() for sk in skeleton]))
                rows.append(row)
            done += 1
            tick(f"k={k}, selection={sel}")
        clusterings.append(dict(k=k, labels=labels.tolist(), selections=chosen))
    table = tidy_table(rows)
    table.attrs.update(global_seconds=global_seconds, randomized=rand, sigma_1=s1)
    tick("done")
    order = None if global_id is None else [int(i) for i in global_id.order[:r_top]]
    return SweepResult(table=table, layer=layer, clusterings=clusterings, global_order=order)


def _working_copy(W: np.ndarray, rand: bool) -> np.ndarray:
    # float32 on the randomized path (large layers: half the memory, errors within its
    # tolerance), float64 on the exact path; no copy when W already has that dtype.
    return np.asarray(W, dtype=np.float32 if rand else np.float64)


def _add_spectral(W: np.ndarray, spec: SweepSpec, result: SweepResult,
                  progress: Progress | None) -> SweepResult:
    # The spectral columns of the rows that lack them, from the result's labels and skeletons.
    m, n = W.shape
    rand, _, r_top, total_top = _plan(m, n, spec)
    W = _working_copy(W, rand)
    table = result.table.copy()
    table.attrs = dict(result.table.attrs)
    todo = table.index[table["feasible"] & table[SPECTRAL_COLUMNS].isna().any(axis=1)]
    s1 = table.attrs.get("sigma_1")
    if s1 is None:  # an entry cached before s_1 was stored: the sweep's own spectrum again
        s1 = _sigma_1(_global_spectrum(W, rand, r_top, total_top, spec.seed))
        table.attrs["sigma_1"] = s1
    order = result.global_order
    if order is None and r_top:  # likewise the global ID's row order (one pivoted QR)
        order = [int(i) for i in _order_errors(W, None, r_top, rand, spec.seed).order[:r_top]]
    ranks = sorted({int(r) for r in table.loc[todo, "r"]})
    total, done = len(todo) + len(ranks), 0
    t0 = time.perf_counter()
    global_spec: dict[int, float] = {}
    for r in ranks:
        if progress is not None:
            progress(done, total, f"spectral error of the global ID, r={r}")
        res = id_residual(W, np.asarray(order[:r], dtype=np.int64))
        global_spec[r] = float(sla.svdvals(res, check_finite=False)[0]) / s1
        done += 1
    for i in todo:
        k, r, selection = (table.at[i, c] for c in ("k", "r", "selection"))
        if progress is not None:
            progress(done, total, f"spectral error k={k}, r={r}, {selection}")
        table.at[i, "global_id_spec_same_r"] = global_spec[int(r)]
        table.at[i, "rel_spec_error"] = _spectral(W, result.labels(int(k)),
                                                  result.skeleton(int(k), int(r), selection), s1)
        done += 1
    table.attrs["spectral_seconds"] = table.attrs.get("spectral_seconds", 0.0) + time.perf_counter() - t0
    if progress is not None:
        progress(total, total, "done")
    return replace(result, table=table, global_order=order)


def _order(Z: np.ndarray, idx: np.ndarray, selection: str, seed: int, c: int) -> np.ndarray | None:
    # A selection's row order within one cluster, as positions in the cluster (as in
    # selection.cluster_orders); None for "id": the pivoted-QR order of the factorisation.
    if selection == "centroid":
        return np.searchsorted(idx, centroid_order(Z, idx))
    if selection == "random":
        return np.searchsorted(idx, random_order(idx, seed, c))
    return None


def _spectral(W: np.ndarray, labels: np.ndarray, skeleton: list[np.ndarray], s1: float) -> float:
    # Explicit residual: no identity gives the spectral norm of every rank at once.
    return float(sla.svdvals(clusterwise_residual(W, labels, skeleton), check_finite=False)[0]) / s1
