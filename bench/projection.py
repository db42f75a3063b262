"""Benchmark the Cluster explorer's projections of a 1536-row layer (MiniLM intermediate.dense).

Measures in one process: PCA; UMAP's one-off compilation (`warm_umap`); UMAP with the exact
kNN graph precomputed (what the app does) and, for reference, UMAP computing its own graph.
Target: after warm-up, the 1536-row layer projects in seconds.

    .venv/bin/python bench/projection.py
"""

from __future__ import annotations

import os
import time
import warnings

from analysis.projection import pca_2d, umap_2d, warm_umap
from idlora_core.layers import get_weight
from idlora_core.models import load_model

LAYER = "encoder.layer.0.intermediate.dense"


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    W = get_weight(load_model("minilm").model, LAYER)
    rows = [("PCA (first two axes)", timed(lambda: pca_2d(W)))]
    rows.append(("UMAP compile once (warm_umap)", timed(warm_umap)))
    rows.append(("UMAP, precomputed exact kNN (app path)", timed(lambda: umap_2d(W))))

    def own_graph() -> None:
        import umap

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            umap.UMAP(n_neighbors=15, random_state=0).fit_transform(W)

    rows.append(("UMAP, own NN-descent graph (+ its compile)", timed(own_graph)))
    print(f"layer {LAYER}: {W.shape[0]} rows x {W.shape[1]}")
    print(f"{'measurement':45s} {'seconds':>8s}")
    for name, seconds in rows:
        print(f"{name:45s} {seconds:8.2f}")
    print(f"(cpu count {os.cpu_count()}, load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
