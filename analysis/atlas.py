"""The layer atlas: a whole-model scan (`analysis.scan`) as block x layer-type grids.

For each layer at rank r, its best (k, selection) (`views.best_per_rank`) gives two numbers:
  gain  = svd_same_r - rel_fro_error (as `views.best_per_rank` defines it): > 0 when
          cluster-wise ID beats the best global rank-r factorisation at the same r (the
          paper's claim, same trainable budget), < 0 a loss;
  gap   = rel_fro_error - svd_same_total: how far above the optimal rank-k*r SVD it stays
          (never < 0, Eckart-Young).
No Streamlit here; the view is `app/views/layer_atlas.py`.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis.sweep import COLUMNS, tidy_table
from analysis.views import best_per_rank
from idlora_core.layers import block_index, layer_kind

MEASURES = {"gain": "gain_vs_svd", "gap": "gap_vs_total"}
KIND_ORDER = ["q", "k", "v", "o", "attn_out", "gate", "up", "down", "ffn_in", "ffn_out", "other"]


MAX_ATLAS_BYTES = 64 * 2**20  # a 70B model's scan is a few MB; a path typed on a page can be anything


def read_atlas(path_or_buffer) -> pd.DataFrame:
    """Return a scan CSV (as `python -m analysis.scan` writes it) as a sweep table.

    A path must name a regular file of at most MAX_ATLAS_BYTES (a page passes what a user
    typed: /dev/zero, a FIFO or a huge file must not hang or fill the server).
    Raises ValueError naming the missing columns when the file is not a scan."""
    if isinstance(path_or_buffer, str | Path):
        path = Path(path_or_buffer)
        if not path.is_file():
            raise ValueError(f"{path} is not a file: give the CSV that "
                             "`python -m analysis.scan ... --out atlas.csv` wrote")
        size = path.stat().st_size
        if size > MAX_ATLAS_BYTES:
            raise ValueError(f"{path} is {size / 2**20:,.0f} MB; a scan CSV is at most "
                             f"{MAX_ATLAS_BYTES // 2**20} MB")
    table = pd.read_csv(path_or_buffer)
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"not a scan table: missing columns {', '.join(missing[:4])}; "
                         "write one with `python -m analysis.scan ... --out atlas.csv`")
    try:
        return tidy_table(table)
    except (OverflowError, ValueError, TypeError) as exc:  # r = 10**30, text in a number column
        raise ValueError(f"not a scan table: a value does not fit its column ({str(exc)[:120]}); "
                         "write one with `python -m analysis.scan ... --out atlas.csv`") from None


def atlas_cells(table: pd.DataFrame, r: int) -> pd.DataFrame:
    """Return one row per layer at rank r: layer, block, type, k, selection, rel_fro_error,
    svd_same_r, svd_same_total, gain_vs_svd, gap_vs_total (block is -1 outside the blocks)."""
    best = best_per_rank(table)
    best = best[best["r"] == r].reset_index(drop=True)
    best["block"] = [b if (b := block_index(name)) is not None else -1 for name in best["layer"]]
    best["type"] = [layer_kind(name) for name in best["layer"]]
    cols = ["layer", "block", "type", "k", "selection", "rel_fro_error", "svd_same_r",
            "svd_same_total", "gain_vs_svd", "gap_vs_total"]
    return best[cols].sort_values(["block", "type"]).reset_index(drop=True)


def atlas_grid(table: pd.DataFrame, r: int, measure: str = "gain") -> pd.DataFrame:
    """Return a block x layer-type grid of `measure` ("gain" or "gap", see the module) at rank r.

    Index: block (ascending), columns: layer types in attention-then-MLP order; NaN where a
    block has no layer of that type (or the rank was infeasible). Two layers of one type in one
    block (rare) keep the first.
    """
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {', '.join(MEASURES)}, got {measure!r}")
    cells = atlas_cells(table, r)
    grid = cells.pivot_table(index="block", columns="type", values=MEASURES[measure], aggfunc="first")
    order = [k for k in KIND_ORDER if k in grid.columns]
    return grid.reindex(columns=order).sort_index()
