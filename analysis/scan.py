"""Whole-model scan: the sweep of every linear layer of a checkpoint (or those matching a
pattern), each read, swept, cached and released in turn.

    python -m analysis.scan --model DIR --ks 1,4 --ranks 16,64 --selections id \
        [--layers PATTERN] [--workers N] [--dask tcp://HOST:8786] --out atlas.csv

Memory is one layer per worker (`idlora_core.weights` reads one tensor; the sweep frees it).
Resumable: every layer's result goes to the cache as soon as it is done, so a stopped scan
started again recomputes only the missing layers. Locally, `--workers N` runs N joblib
processes; `--dask ADDRESS` sends the layers to an existing Dask distributed cluster whose
workers read the same path (a shared or copied folder) and the same cache folder
(IDLORA_CACHE_DIR). The atlas is the concatenated sweep table (columns of `analysis.sweep`).
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pandas as pd

from analysis.sweep import (
    SweepSpec,
    add_retired_flag,
    parse_grid,
    parse_selections,
    sweep_layer,
    tidy_table,
)
from analysis.sweep_cli import output_problem
from analysis.sweep_model import resolve_layers
from idlora_core.cache import ResultCache
from idlora_core.weights import open_weights

ScanProgress = Callable[[int, int, str, bool], None]  # (done, total, layer, from_cache)


@functools.lru_cache(maxsize=4)
def _reader(source: str):
    # One reader per process and checkpoint (workers sweep many layers of it).
    return open_weights(source)


def scan_layer(source: str, layer: str, spec: SweepSpec, cache_root: str | None = None
               ) -> tuple[pd.DataFrame, bool]:
    """Return (sweep table, served_from_cache) of one layer of the checkpoint `source`.

    The unit of work a local or Dask worker runs: it reads only this layer's weight.
    cache_root: the cache folder (None: the worker's own `cache_dir()`).
    """
    cache = ResultCache(Path(cache_root) / "results" if cache_root else None)
    result = sweep_layer(_reader(source).weight(layer), spec, layer=layer, cache=cache)
    return result.table, result.from_cache


def scan(
    source: str,
    spec: SweepSpec,
    *,
    layers: Sequence[str] | str | None = None,
    workers: int = 1,
    dask: str | object | None = None,
    cache_root: str | None = None,
    progress: ScanProgress | None = None,
) -> pd.DataFrame:
    """Return the sweep tables of the checkpoint's linear layers, in module order.

    source: what `open_weights` takes (alias, folder, .gguf file; workers open it again);
    layers: None (every linear layer), a regex searched in the names, or a list of names;
    workers: local processes (joblib, loky backend); dask: a scheduler address or a
    `distributed.Client` (then `workers` is ignored); cache_root: the cache folder every
    worker uses (None: IDLORA_CACHE_DIR / the repo's cached/); progress(done, total, layer,
    from_cache) after each layer, in completion order.
    """
    names = resolve_layers(_reader(source), "" if layers is None else layers)
    tables: dict[str, pd.DataFrame] = {}
    for done, (name, table, hit) in enumerate(_run(source, names, spec, workers, dask, cache_root), 1):
        tables[name] = table
        if progress is not None:
            progress(done, len(names), name, hit)
    return tidy_table(pd.concat([tables[name] for name in names], ignore_index=True))


def _run(source, names, spec, workers, dask, cache_root) -> Iterator[tuple[str, pd.DataFrame, bool]]:
    if dask is not None:
        yield from _run_dask(source, names, spec, dask, cache_root)
        return
    if workers <= 1 or len(names) == 1:
        for name in names:
            yield (name, *scan_layer(source, name, spec, cache_root))
        return
    from joblib import Parallel, delayed

    jobs = Parallel(n_jobs=workers, backend="loky", return_as="generator_unordered")
    tagged = functools.partial(_tagged, source, spec=spec, cache_root=cache_root)
    yield from jobs(delayed(tagged)(name) for name in names)


def _tagged(source: str, layer: str, *, spec: SweepSpec, cache_root: str | None):
    return (layer, *scan_layer(source, layer, spec, cache_root))


def _run_dask(source, names, spec, dask, cache_root) -> Iterator[tuple[str, pd.DataFrame, bool]]:
    try:
        from distributed import Client, as_completed
    except ImportError as exc:  # pragma: no cover - pinned in requirements.txt
        raise ValueError("--dask needs the package dask[distributed]") from exc
    client = dask if isinstance(dask, Client) else Client(dask, timeout="10s")
    try:
        futures = client.map(_tagged, [source] * len(names), names, spec=spec,
                             cache_root=cache_root, pure=False)
        for future in as_completed(futures):
            yield future.result()
    finally:
        if client is not dask:
            client.close()


class ProgressPrinter:
    """A one-line progress report with ETA for the command line (written to `stream`)."""

    def __init__(self, stream=None) -> None:
        self.stream = stream  # None: sys.stderr at the time of each line
        self.start = time.perf_counter()
        self.computed = 0

    def __call__(self, done: int, total: int, layer: str, from_cache: bool) -> None:
        """Print `[done/total] layer (cached|swept) elapsed, ETA` on one line."""
        elapsed = time.perf_counter() - self.start
        self.computed += not from_cache
        # the cached layers cost ~nothing: estimate from the computed ones
        rate = elapsed / max(self.computed, 1)
        eta = rate * (total - done) if self.computed else 0.0
        how = "cached" if from_cache else "swept"
        print(f"\r[{done}/{total}] {layer} ({how}) {_clock(elapsed)} elapsed, ETA {_clock(eta)}",
              end="\n" if done == total else "", file=self.stream or sys.stderr, flush=True)


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of `python -m analysis.scan`."""
    parser = argparse.ArgumentParser(
        prog="python -m analysis.scan",
        description="Sweep every linear layer of a checkpoint (one weight in memory per worker); "
        "resumable through the cache; one CSV (the layer atlas).")
    parser.add_argument("--model", required=True,
                        help="minilm, smollm2-135m, a local model folder or .gguf file")
    parser.add_argument("--ks", default="1,4", help="cluster counts, comma-separated")
    parser.add_argument("--ranks", default="16,64", help="ranks r per cluster, comma-separated")
    parser.add_argument("--selections", default="id",
                        help="skeleton-row selections: id, centroid, random (comma-separated)")
    add_retired_flag(parser, "--strategies", "--selections")
    parser.add_argument("--seed", type=int, default=0, help="k-means and random-selection seed")
    parser.add_argument("--normalize-rows", action="store_true", help="cosine clustering geometry")
    parser.add_argument("--layers", help="regex searched in the layer names (default: every layer)")
    parser.add_argument("--workers", type=int, default=1, help="local worker processes (joblib)")
    parser.add_argument("--dask", metavar="ADDRESS",
                        help="scheduler of an existing Dask cluster, e.g. tcp://host:8786")
    parser.add_argument("--out", required=True, help="CSV file to write (the layer atlas)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 bad request)."""
    from idlora_core.models import set_hub_defaults

    set_hub_defaults()
    args = build_parser().parse_args(argv)
    try:
        if args.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {args.workers}")
        spec = SweepSpec(parse_grid(args.ks, "ks"), parse_grid(args.ranks, "ranks"),
                         parse_selections(args.selections), seed=args.seed,
                         normalize_rows=args.normalize_rows)
        problem = output_problem(args.out, "--out")  # before the scan, not after its hours
        if problem:
            raise ValueError(problem)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        atlas = scan(args.model, spec, layers=args.layers, workers=args.workers, dask=args.dask,
                     progress=ProgressPrinter())
    except (ValueError, OSError) as exc:  # ModelNotFoundError / WeightFileError are ValueErrors
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        atlas.to_csv(out, index=False)
    except OSError as exc:  # the place changed during the scan; every layer is in the cache
        print(f"error: cannot write {out}: {exc.strerror or exc} (the layers are cached: run "
              "the command again with another --out)", file=sys.stderr)
        return 2
    print(f"{atlas['layer'].nunique()} layers, {len(atlas)} rows -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
