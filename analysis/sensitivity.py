"""How much a layer's clustering, and the errors built on it, depend on the k-means seed.

The paper notes that ID-LoRA "relies on effective clustering of pretrained weights, which may
be sensitive to the choice of cluster number and initialization". For one layer this module
repeats the clustering over S seeds and measures:

  agreement   the adjusted Rand index (scikit-learn `adjusted_rand_score`) of every pair of
              seeds: 1 = the same partition of the rows, ~0 = no more alike than chance;
  moved rows  which rows change cluster: each seed's cluster ids are matched to the first
              (reference) seed's by the Hungarian algorithm on their contingency table
              (SciPy `linear_sum_assignment`, most shared rows), then a row moves when its
              matched cluster differs from its reference cluster;
  spread      the cluster-wise ID error of every (k, r, selection) over the seeds: one
              `analysis.sweep.sweep_layer` per seed (spec.seed = s, same cache), mean and
              sample standard deviation (`DDOF`).

`spec.seed` seeds k-means and the random skeleton selection alike, so the spread of the
"random" selection holds both; "id" and "centroid" depend on the seed only through the
clusters (and, for layers on the randomized path, its sketches). No Streamlit here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score

from analysis.sweep import SweepResult, SweepSpec, sweep_layer
from idlora_core.cache import ResultCache
from idlora_core.linalg.clustering import MinSizeKMeans

__all__ = ["DDOF", "MAX_SEEDS", "SPREAD_COLUMNS", "SensitivityResult", "ari_matrix",
           "clustering_sensitivity", "match_labels", "seed_sweeps", "sensitivity_from_labels",
           "spread_reading", "spread_table", "sweep_sensitivity", "sweep_spread"]

Progress = Callable[[int, int, str], None]
DDOF = 1  # sample standard deviation over seeds, as the study summary's std
MAX_SEEDS = 50  # a guard against a typo (each seed is a whole sweep)
# Columns `spread_table` adds to the reference seed's sweep table.
SPREAD_COLUMNS = ["n_cluster_seeds", "rel_error_mean", "rel_error_std", "rel_error_min",
                  "rel_error_max"]


def _labels(values: object, name: str) -> np.ndarray:
    labels = np.asarray(values)
    if labels.ndim != 1 or labels.size == 0 or labels.dtype.kind not in "iu" or labels.min() < 0:
        raise ValueError(f"{name} must be a non-empty 1-D array of cluster ids >= 0, got "
                         f"shape {labels.shape} dtype {labels.dtype}")
    return labels.astype(np.int64)


def match_labels(reference: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Return `labels` with its cluster ids renamed to best match `reference` (int64, (m,)).

    The renaming maximises the rows the two share (Hungarian algorithm on the contingency
    table, SciPy `linear_sum_assignment`); a cluster left without a partner (more clusters
    than the reference has) keeps an id above the reference's. A pure renaming of
    `reference` comes back equal to it.
    """
    ref, lab = _labels(reference, "reference"), _labels(labels, "labels")
    if ref.shape != lab.shape:
        raise ValueError(f"the labelings have {ref.size} and {lab.size} rows: compare clusterings "
                         "of the same rows")
    size = int(max(ref.max(), lab.max())) + 1
    table = np.zeros((size, size), dtype=np.int64)  # table[a, b]: rows in ref a and lab b
    np.add.at(table, (ref, lab), 1)
    ref_ids, lab_ids = linear_sum_assignment(table, maximize=True)
    rename = np.empty(size, dtype=np.int64)
    rename[lab_ids] = ref_ids
    return rename[lab]


def ari_matrix(labelings: Sequence[np.ndarray]) -> np.ndarray:
    """Return the (S, S) adjusted Rand index of every pair of labelings (scikit-learn
    `adjusted_rand_score`; symmetric, 1 on the diagonal)."""
    n = len(labelings)
    out = np.eye(n)
    for i in range(n):
        for j in range(i + 1, n):
            out[i, j] = out[j, i] = adjusted_rand_score(labelings[i], labelings[j])
    return out


@dataclass(frozen=True)
class SensitivityResult:
    """One layer's clustering repeated over seeds.

    seeds: the k-means seeds, the first the reference; labels: (S, m) int64, each seed's own
    cluster ids; aligned: (S, m) the same clusters renamed to match the reference
    (`match_labels`); ari: DataFrame (S x S, index and columns the seeds) of adjusted Rand
    indices; moved: (S, m) bool, row i changes cluster under seed s (after matching).
    """

    k: int
    seeds: tuple[int, ...]
    labels: np.ndarray
    aligned: np.ndarray
    ari: pd.DataFrame
    moved: np.ndarray

    @property
    def moved_rows(self) -> np.ndarray:
        """Return a bool (m,) mask: the rows that change cluster under at least one seed."""
        return self.moved.any(axis=0)

    @property
    def n_moved(self) -> int:
        """Return how many rows change cluster under at least one seed."""
        return int(self.moved_rows.sum())

    @property
    def share_moved(self) -> float:
        """Return the share (0..1) of the rows that change cluster under at least one seed."""
        return self.n_moved / self.labels.shape[1]

    @property
    def mean_ari(self) -> float:
        """Return the mean adjusted Rand index over the S(S-1)/2 distinct seed pairs (NaN for
        one seed)."""
        a = self.ari.to_numpy()
        upper = a[np.triu_indices(len(a), k=1)]
        return float(upper.mean()) if upper.size else float("nan")

    def per_seed(self) -> pd.DataFrame:
        """Return one row per seed: seed, ari_vs_reference, rows_moved, share_moved (0..1)."""
        moved = self.moved.sum(axis=1)
        return pd.DataFrame({"seed": list(self.seeds), "ari_vs_reference": self.ari.iloc[0].to_numpy(),
                             "rows_moved": moved.astype(np.int64),
                             "share_moved": moved / self.labels.shape[1]})

    def rows(self) -> pd.DataFrame:
        """Return one row per moving row of W: row, reference_cluster, seeds_moved (how many
        seeds put it elsewhere), clusters (its matched cluster under each seed, as text)."""
        idx = np.flatnonzero(self.moved_rows)
        return pd.DataFrame({
            "row": idx.astype(np.int64),
            "reference_cluster": self.aligned[0, idx],
            "seeds_moved": self.moved[:, idx].sum(axis=0).astype(np.int64),
            "clusters": [" ".join(str(c) for c in self.aligned[:, i]) for i in idx],
        })

    def reading(self) -> str:
        """Return a one-line reading of the agreement and the moving rows."""
        m = self.labels.shape[1]
        ari = self.mean_ari
        verdict = ("the same partition" if ari >= 0.999 else "nearly the same clusters" if ari >= 0.9
                   else "mostly the same clusters" if ari >= 0.6 else "partly different clusters"
                   if ari >= 0.3 else "largely different clusters")
        return (f"ARI {ari:.2f} on average over {len(self.seeds)} k-means seeds at k = {self.k} "
                f"({verdict}; 1 = identical, 0 = chance): {self.n_moved} of {m} rows "
                f"({100 * self.share_moved:.1f} %) change cluster under at least one seed.")


def sensitivity_from_labels(labelings: Mapping[int, np.ndarray], k: int | None = None) -> SensitivityResult:
    """Return the `SensitivityResult` of given clusterings ({seed: labels (m,)}, the first
    entry the reference): pairwise ARI, labels matched to the reference, moved rows. k: the
    number of clusters asked for (None: the largest label + 1). Raises ValueError for no
    labelings or labelings of different lengths."""
    if not labelings:
        raise ValueError("give at least one clustering")
    seeds = tuple(int(s) for s in labelings)
    labels = [_labels(v, f"the labels of seed {s}") for s, v in labelings.items()]
    if len({v.size for v in labels}) > 1:
        raise ValueError(f"the clusterings have different numbers of rows ({sorted({v.size for v in labels})}): "
                         "compare clusterings of the same layer")
    stack = np.stack(labels)
    aligned = np.stack([match_labels(stack[0], v) for v in stack])
    ari = pd.DataFrame(ari_matrix(list(stack)), index=pd.Index(seeds, name="seed"),
                       columns=pd.Index(seeds, name="seed"))
    return SensitivityResult(k=int(stack.max()) + 1 if k is None else int(k), seeds=seeds, labels=stack, aligned=aligned,
                             ari=ari, moved=aligned != aligned[0])


def _seeds(seeds: Sequence[int]) -> list[int]:
    out = list(dict.fromkeys(int(s) for s in seeds))
    if not out:
        raise ValueError("give at least one seed, e.g. seeds=[0, 1, 2, 3, 4]")
    if len(out) > MAX_SEEDS:
        raise ValueError(f"{len(out)} seeds: at most {MAX_SEEDS} (each seed is a whole clustering)")
    if min(out) < 0:
        raise ValueError(f"seeds must be >= 0, got {min(out)}")
    return out


def clustering_sensitivity(
    W: np.ndarray,
    k: int,
    seeds: Sequence[int],
    *,
    min_size: int = 1,
    normalize_rows: bool = False,
    n_init: int = 4,
    progress: Progress | None = None,
) -> SensitivityResult:
    """Return the `SensitivityResult` of clustering W's rows into k clusters once per seed
    (`MinSizeKMeans(k, min_size, normalize_rows, random_state=seed, n_init)`; duplicate seeds
    dropped, the first the reference). To get a sweep's own clusters pass its minimum cluster
    size (the largest feasible r of its grid at k) and its n_init, or use `sweep_sensitivity`.
    progress(done, total, message) after each seed. Raises ValueError (bad k, min_size, seeds).
    """
    seeds = _seeds(seeds)
    labelings = {}
    for i, seed in enumerate(seeds):
        if progress is not None:
            progress(i, len(seeds), f"k-means with seed {seed}")
        labelings[seed] = MinSizeKMeans(k, min_size=min_size, normalize_rows=normalize_rows,
                                        random_state=seed, n_init=n_init).fit(W).labels_
    if progress is not None:
        progress(len(seeds), len(seeds), "done")
    return sensitivity_from_labels(labelings, k)


def seed_sweeps(
    W: np.ndarray,
    spec: SweepSpec,
    seeds: Sequence[int],
    *,
    layer: str = "",
    cache: ResultCache | bool = False,
    progress: Progress | None = None,
    threads: int | None = 1,
    lookup_only: bool = False,
) -> dict[int, SweepResult] | None:
    """Return {seed: SweepResult}: `sweep_layer(W, spec with seed = s, ...)` for every seed
    (duplicates dropped, order kept). With a cache a seed swept before costs one lookup;
    lookup_only=True computes nothing and returns None unless every seed is cached.
    progress(done, total, message) over all seeds; threads as in `sweep_layer`."""
    seeds = _seeds(seeds)
    results: dict[int, SweepResult] = {}
    if lookup_only:
        for seed in seeds:
            found = sweep_layer(W, replace(spec, seed=seed), layer=layer, cache=cache, lookup_only=True)
            if found is None:
                return None
            results[seed] = found
        return results
    for i, seed in enumerate(seeds):

        def tick(done: int, total: int, message: str, i: int = i, seed: int = seed) -> None:
            if progress is not None:
                progress(i * total + done, len(seeds) * total, f"seed {seed} ({i + 1}/{len(seeds)}): {message}")

        results[seed] = sweep_layer(W, replace(spec, seed=seed), layer=layer, cache=cache,
                                    progress=tick, threads=threads)
    if progress is not None:
        progress(1, 1, "done")
    return results


def spread_table(results: Mapping[int, SweepResult]) -> pd.DataFrame:
    """Return the first seed's sweep table with the spread over all seeds added
    (`SPREAD_COLUMNS`): per (k, r, selection), the number of seeds and the mean, sample
    standard deviation (ddof = `DDOF`; NaN for one seed), min and max of `rel_fro_error`.
    Infeasible rows get NaN. results: {seed: SweepResult} of the same layer and grid."""
    if not results:
        raise ValueError("give at least one sweep result")
    keys = ["k", "r", "selection"]
    tables = [r.table.set_index(keys)["rel_fro_error"] for r in results.values()]
    if any(not t.index.equals(tables[0].index) for t in tables):
        raise ValueError("the sweeps have different grids: sweep every seed with the same spec")
    errors = pd.concat(tables, axis=1)
    stats = pd.DataFrame({
        "n_cluster_seeds": errors.notna().sum(axis=1).astype(np.int64),
        "rel_error_mean": errors.mean(axis=1),
        "rel_error_std": errors.std(axis=1, ddof=DDOF),
        "rel_error_min": errors.min(axis=1),
        "rel_error_max": errors.max(axis=1),
    })
    first = next(iter(results.values())).table
    out = first.join(stats, on=keys)
    out.attrs = dict(first.attrs, cluster_seeds=[int(s) for s in results])
    return out


def sweep_spread(
    W: np.ndarray,
    spec: SweepSpec,
    seeds: Sequence[int],
    *,
    layer: str = "",
    cache: ResultCache | bool = False,
    progress: Progress | None = None,
    threads: int | None = 1,
) -> pd.DataFrame:
    """Return the sweep of W with the spread of the cluster-wise ID error over the k-means
    seeds: `spread_table(seed_sweeps(W, spec, seeds, ...))`, i.e. the first seed's table
    plus n_cluster_seeds, rel_error_mean, rel_error_std, rel_error_min, rel_error_max per
    (k, r, selection) (relative Frobenius errors)."""
    return spread_table(seed_sweeps(W, spec, seeds, layer=layer, cache=cache, progress=progress,
                                    threads=threads))


def sweep_sensitivity(results: Mapping[int, SweepResult], k: int) -> SensitivityResult:
    """Return the `SensitivityResult` of the sweeps' own clusters at k ({seed: SweepResult},
    the first seed the reference). Raises ValueError when k was not clustered (not swept, or
    no feasible rank at k)."""
    labelings = {}
    for seed, result in results.items():
        labels = result.labels(int(k))
        if labels is None:
            raise ValueError(f"the sweep has no clusters at k = {k} (not swept, or no feasible "
                             "rank): pick a swept k with a feasible rank")
        labelings[seed] = labels
    return sensitivity_from_labels(labelings, k)


def spread_reading(spread: pd.DataFrame, k: int, r: int, selection: str) -> str:
    """Return one line on the error spread at (k, r, selection) of a `spread_table`: mean ±
    std, min and max over the seeds, and whether cluster-wise ID beats global SVD at the same
    r (the sweep's headline) under every seed, under none, or only under some."""
    row = spread[(spread["k"] == k) & (spread["r"] == r) & (spread["selection"] == selection)]
    if row.empty or not bool(row["feasible"].iloc[0]):
        return f"No feasible configuration at k = {k}, r = {r} ({selection})."
    row = row.iloc[0]
    mean, std, svd = float(row["rel_error_mean"]), float(row["rel_error_std"]), float(row["svd_same_r"])
    lo, hi, n = float(row["rel_error_min"]), float(row["rel_error_max"]), int(row["n_cluster_seeds"])
    if hi < svd:
        verdict = "beats it under every seed"
    elif lo > svd:
        verdict = "loses to it under every seed"
    else:
        verdict = "beats it under some seeds only: here the seed decides"
    gain = svd - mean
    sigmas = f" = {abs(gain) / std:.1f} std" if std > 0 else ""
    return (f"Error at k = {k}, r = {r} ({selection}): {mean:.4f} ± {std:.4f} (std over {n} seeds; "
            f"min {lo:.4f}, max {hi:.4f}); global SVD at r = {r}: {svd:.4f}, so cluster-wise ID "
            f"{verdict} (mean gain {gain:+.4f}{sigmas}).")
