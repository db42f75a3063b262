"""Command line of the one-layer sweep: `python -m analysis.sweep` (or `python -m analysis.sweep_cli`).

Parses strings into the library's sequences, opens the checkpoint's weights (no model is
loaded: one tensor is read), sweeps one layer through the cache and writes the CSV / JSON
files. The sweep itself is `analysis/sweep/__init__.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from analysis.sweep import SweepSpec, add_retired_flag, parse_grid, parse_selections, sweep_layer
from idlora_core.linalg.randomized import RANDOMIZED_MIN_ELEMENTS
from idlora_core.models import set_hub_defaults
from idlora_core.weights import open_weights

MAX_GRID_VALUE = 1_000_000  # no layer has more rows than this: a larger k or r is a typo
MAX_GRID = 10_000  # configurations (k x r x selection) before --force is needed


def _grid(name: str) -> Callable[[str], list[int]]:
    def parse(text: str) -> list[int]:
        try:
            values = parse_grid(text, name)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{exc}; e.g. --{name} 1,2,4,8") from None
        too_big = [v for v in values if v > MAX_GRID_VALUE]
        if too_big:
            raise argparse.ArgumentTypeError(
                f"{name} must be at most {MAX_GRID_VALUE:,}, got {too_big[0]:,}")
        return values

    parse.__name__ = name  # argparse names the type in its message
    return parse


def _selections(text: str) -> tuple[str, ...]:
    try:
        return parse_selections(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def output_problem(path: str | None, flag: str) -> str | None:
    """Return why `path` cannot be written (a folder, or no writable parent), or None if it can."""
    if not path:
        return None
    target = Path(path).expanduser()
    if target.is_dir():
        return f"{flag} {path} is a folder; give a file name, e.g. {Path(path) / 'results.csv'}"
    parent = target.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"{flag} {path}: {parent} is a file, not a folder"
    try:  # a real probe: os.access says yes to root even on a read-only file system
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".write-probe-")
        os.close(fd)
        os.unlink(probe)
        if target.exists():
            with open(target, "ab"):
                pass
    except OSError as exc:
        return f"{flag} {path}: cannot write there ({exc.strerror or exc}); choose another place"
    return None


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of `python -m analysis.sweep`."""
    parser = argparse.ArgumentParser(
        prog="python -m analysis.sweep",
        description="Reconstruction-error sweep of one linear layer: cluster-wise ID against "
        "global SVD and global ID, with the spectral ID bounds. One CSV row per (k, r, selection).",
    )
    parser.add_argument("--model", default="minilm",
                        help="minilm, smollm2-135m, a local model directory or .gguf file "
                        "(default: minilm); only the swept layer's weight is read")
    parser.add_argument("--layer", help="full module name of a linear layer (see --list-layers)")
    parser.add_argument("--list-layers", action="store_true",
                        help="print the model's linear layers with their shapes and exit")
    parser.add_argument("--ks", default="1,2,4,8", type=_grid("ks"),
                        help="cluster counts, comma-separated")
    parser.add_argument("--ranks", default="4,8,16", type=_grid("ranks"),
                        help="ranks r per cluster, comma-separated")
    parser.add_argument("--selections", default="id,centroid,random", type=_selections,
                        help="skeleton-row selections: id, centroid, random")
    add_retired_flag(parser, "--strategies", "--selections", type=_selections)
    parser.add_argument("--force", action="store_true",
                        help=f"run a grid of more than {MAX_GRID:,} configurations")
    parser.add_argument("--seed", type=int, default=0, help="k-means and random-selection seed")
    parser.add_argument("--out", help="CSV file to write (one row per k, r, selection)")
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
                        help="accepted for compatibility: the sweep reads weights only and runs "
                        "no model code")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 bad request)."""
    set_hub_defaults()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.list_layers and (not args.layer or not args.out):
        parser.error("--layer and --out are required (or use --list-layers)")
    size = len(args.ks) * len(args.ranks) * len(args.selections)
    if size > MAX_GRID and not args.force:
        parser.error(f"the grid has {size:,} configurations (ks x ranks x selections), more than "
                     f"{MAX_GRID:,}; narrow it or add --force")
    for path, flag in ((args.out, "--out"), (args.clusters_out, "--clusters-out")):
        if not args.list_layers and (problem := output_problem(path, flag)):
            parser.error(problem)  # before the model loads and the sweep computes
    try:
        spec = SweepSpec(  # the grid arrives parsed and checked by argparse (the types above)
            ks=args.ks, ranks=args.ranks, selections=args.selections, seed=args.seed,
            normalize_rows=args.normalize_rows,
            randomized={"auto": None, "on": True, "off": False}[args.randomized],
            spectral=args.spectral,
        )
        weights = open_weights(args.model)
        if args.list_layers:
            for info in weights.layers():
                print(f"{info.name}\t{info.out_features} x {info.in_features}\t{info.params}")
            return 0
        W = weights.weight(args.layer)
        start = time.perf_counter()
        result = sweep_layer(W, spec, layer=args.layer, cache=not args.no_cache)
    except ValueError as exc:  # ModelNotFoundError is a ValueError too
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        result.table.to_csv(out, index=False)
        if args.clusters_out:
            clusters = Path(args.clusters_out)
            clusters.parent.mkdir(parents=True, exist_ok=True)
            clusters.write_text(json.dumps(result.clusters_json()), encoding="utf-8")
    except OSError as exc:
        print(f"error: cannot write {exc.filename or out}: {exc.strerror or exc} "
              "(the sweep itself is cached: rerun with another --out)", file=sys.stderr)
        return 2
    table = result.table
    how = "from cache" if result.from_cache else f"in {time.perf_counter() - start:.2f} s"
    print(f"{args.layer} ({W.shape[0]} x {W.shape[1]}): {len(table)} rows, "
          f"{int(table['feasible'].sum())} feasible, {how} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
