"""Command line of the one-layer sweep: `python -m analysis.sweep` (or `python -m analysis.sweep_cli`).

Parses strings into the library's sequences, loads the model, sweeps one layer through the
cache and writes the CSV / JSON files. The sweep itself is `analysis/sweep.py`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from analysis.sweep_model import sweep_layer_cached
from idlora_core.layers import get_weight, list_linear_layers
from idlora_core.linalg.randomized import RANDOMIZED_MIN_ELEMENTS
from idlora_core.models import load_model


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of `python -m analysis.sweep`."""
    parser = argparse.ArgumentParser(
        prog="python -m analysis.sweep",
        description="Reconstruction-error sweep of one linear layer: cluster-wise ID against "
        "global SVD and global ID, with the spectral ID bounds. One CSV row per (k, r, strategy).",
    )
    parser.add_argument("--model", default="minilm",
                        help="minilm, smollm2-135m, or a local model directory (default: minilm)")
    parser.add_argument("--layer", help="full module name of a linear layer (see --list-layers)")
    parser.add_argument("--list-layers", action="store_true",
                        help="print the model's linear layers with their shapes and exit")
    parser.add_argument("--ks", default="1,2,4,8", help="cluster counts, comma-separated")
    parser.add_argument("--ranks", default="4,8,16", help="ranks r per cluster, comma-separated")
    parser.add_argument("--strategies", default="id,centroid,random",
                        help="skeleton selection strategies: id, centroid, random")
    parser.add_argument("--seed", type=int, default=0, help="k-means and random-selection seed")
    parser.add_argument("--out", help="CSV file to write (one row per k, r, strategy)")
    parser.add_argument("--clusters-out", help="JSON file with the labels and skeletons of every row")
    parser.add_argument("--normalize-rows", action="store_true",
                        help="cluster L2-normalised rows (cosine geometry)")
    parser.add_argument("--randomized", choices=["auto", "on", "off"], default="auto",
                        help="randomized SVD / sketch-then-pivot ID: auto = above "
                        f"{RANDOMIZED_MIN_ELEMENTS:,} weight entries")
    parser.add_argument("--spectral", action="store_true",
                        help="also measure the spectral error of every row (slow)")
    parser.add_argument("--no-cache", action="store_true", help="recompute, do not use cached/")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="run code shipped with a local model (only if you trust it)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 bad request)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.list_layers and (not args.layer or not args.out):
        parser.error("--layer and --out are required (or use --list-layers)")
    try:
        loaded = load_model(args.model, trust_remote_code=args.trust_remote_code)
        if args.list_layers:
            for info in list_linear_layers(loaded.model):
                print(f"{info.name}\t{info.out_features} x {info.in_features}\t{info.params}")
            return 0
        W = get_weight(loaded.model, args.layer)
        start = time.perf_counter()
        result = sweep_layer_cached(
            W, args.ks, args.ranks, args.strategies, args.seed, args.layer, args.normalize_rows,
            {"auto": None, "on": True, "off": False}[args.randomized],
            cache=not args.no_cache, spectral=args.spectral,
        )
    except ValueError as exc:  # ModelNotFoundError is a ValueError too
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result.table.to_csv(out, index=False)
    if args.clusters_out:
        clusters = Path(args.clusters_out)
        clusters.parent.mkdir(parents=True, exist_ok=True)
        clusters.write_text(json.dumps(result.clusters_json()), encoding="utf-8")
    table = result.table
    how = "from cache" if result.from_cache else f"in {time.perf_counter() - start:.2f} s"
    print(f"{args.layer} ({W.shape[0]} x {W.shape[1]}): {len(table)} rows, "
          f"{int(table['feasible'].sum())} feasible, {how} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
