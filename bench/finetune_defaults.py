"""Do the Fine-tune page's defaults hold on every seed? Run them as the page would, seed by seed.

Builds every run of the page's default settings (`app.settings_io.finetune_configs` on the
default session state, the default layer selection of Model & layers, all-MiniLM-L6-v2, the
real-data default task), then, for each seed, runs them one after another through
`python -m idlora_core.train` (the global run limit on a 2-core machine is one run at a time)
with `train.seed` and `adapter.seed` set to that seed. Prints per run the wall time and the
validation and test accuracy, and per method the success rate (test accuracy >= THRESHOLD),
the median and worst wall time and the mean test accuracy.

The seeds are ones the defaults were NOT tuned on (tuning used seeds 0-2). Targets (issue 16):
every default method succeeds on every seed, each run within MAX_SECONDS on an idle 2-core CPU.
`--head-only` also runs the linear probe on the same seeds, the reference THRESHOLD must clear.

    python bench/finetune_defaults.py [--seeds 10] [--head-only] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from analysis.layers import filter_layers, layer_table  # noqa: E402
from app.common import DEFAULTS as PAGE_DEFAULTS  # noqa: E402
from app.settings_io import finetune_configs, init_defaults  # noqa: E402
from idlora_core.config import save_config  # noqa: E402
from idlora_core.training.run_files import read_run_json  # noqa: E402
from idlora_core.weights import open_weights  # noqa: E402

# Seeds never used to choose the defaults (the unlucky seeds first).
SEEDS = (3, 5, 7, 11, 13, 23, 42, 99, 123, 2026)
# Test accuracy a default run must reach: always answering "fresh" scores 0.574 on the 1,000 test
# snippets, and the linear probe (head-only, the page's settings) averaged 0.633 over these 10
# seeds (best seed 0.651); 0.70 is 7 points above its mean and above every one of its seeds.
THRESHOLD = 0.70
MAX_SECONDS = 120.0  # per run, process start to exit, on an idle 2-core CPU


def default_runs() -> list[tuple[str, object]]:
    """Return (label, RunConfig) of every run the Fine-tune page starts with its defaults."""
    state: dict = {}
    init_defaults(state)
    reader = open_weights("minilm")
    layers = list(filter_layers(layer_table(reader), kinds=PAGE_DEFAULTS["layer_kinds"],
                                blocks=PAGE_DEFAULTS["block_range"])["name"])
    return finetune_configs(state, "minilm", "encoder", layers)


def head_only_run() -> tuple[str, object]:
    """Return the page's head-only (linear probe) run with the default settings."""
    state: dict = {}
    init_defaults(state)
    state["ft_methods"] = ["head-only"]
    reader = open_weights("minilm")
    layers = list(filter_layers(layer_table(reader), kinds=PAGE_DEFAULTS["layer_kinds"],
                                blocks=PAGE_DEFAULTS["block_range"])["name"])
    return finetune_configs(state, "minilm", "encoder", layers)[0]


def accuracy_keys(cfg) -> tuple[str, str]:
    """Return the (validation, test) accuracy keys of a run's first task."""
    task = cfg.tasks[0].name
    return f"eval_{task}_accuracy", f"test_{task}_accuracy"


def run_one(cfg, seed: int, folder: Path) -> dict:
    """Run `cfg` with `seed` in a fresh process; return its figures."""
    cfg = cfg.model_copy(update={
        "output_dir": str(folder / "run"),
        "train": cfg.train.model_copy(update={"seed": seed}),
        "adapter": cfg.adapter.model_copy(update={"seed": seed}),
    })
    path = save_config(cfg, folder / "run.yaml")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "idlora_core.train", str(path), "--no-progress"],
                   cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - t0
    final = read_run_json(folder / "run").get("final_metrics", {})
    val_key, test_key = accuracy_keys(cfg)
    return {"seed": seed, "seconds": round(seconds, 1), "validation": final.get(val_key),
            "test": final.get(test_key), "learning_rate": cfg.train.learning_rate}


def summarise(label: str, rows: list[dict], gate: bool) -> dict:
    """Return the per-method figures of `rows` (success rate only for gated methods)."""
    tests = [r["test"] or 0.0 for r in rows]
    times = [r["seconds"] for r in rows]
    out = {"run": label, "runs": len(rows), "test_mean": round(statistics.fmean(tests), 4),
           "test_min": round(min(tests), 4), "median_seconds": round(statistics.median(times), 1),
           "max_seconds": round(max(times), 1)}
    if gate:
        out["successes"] = sum(t >= THRESHOLD for t in tests)
    return out


def main() -> int:
    """Run the defaults on the seeds; return 0 when every target is met, else 1."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=len(SEEDS),
                        help=f"how many of the seeds {SEEDS} to run (default: all)")
    parser.add_argument("--head-only", action="store_true",
                        help="also run the linear probe (the reference) on the same seeds")
    parser.add_argument("--json", help="write every figure to this JSON file")
    args = parser.parse_args()
    seeds = SEEDS[: max(1, min(args.seeds, len(SEEDS)))]
    runs = default_runs() + ([head_only_run()] if args.head_only else [])
    per_run: dict[str, list[dict]] = {label: [] for label, _ in runs}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            for i, (label, cfg) in enumerate(runs):
                folder = Path(tmp) / f"s{seed}-{i}"
                folder.mkdir()
                row = run_one(cfg, seed, folder)
                per_run[label].append(row)
                print(f"seed {seed:5d}  {label:26s} lr {row['learning_rate']:g}: validation "
                      f"{row['validation']:.3f}, test {row['test']:.3f} in {row['seconds']:.1f} s",
                      flush=True)
    gated = {label for label, cfg in runs if cfg.adapter.method != "head-only"}
    table = [summarise(label, rows, label in gated) for label, rows in per_run.items()]
    print(f"\n{len(seeds)} seeds {list(seeds)}; success = test accuracy >= {THRESHOLD}")
    for row in table:
        rate = f"{row['successes']}/{row['runs']} succeed, " if "successes" in row else "reference, "
        print(f"{row['run']:26s} {rate}test mean {row['test_mean']:.3f} (min {row['test_min']:.3f}), "
              f"median {row['median_seconds']:.1f} s, worst {row['max_seconds']:.1f} s")
    ok = all(r["successes"] == r["runs"] and r["max_seconds"] <= MAX_SECONDS
             for r in table if "successes" in r)
    print(f"total {time.perf_counter() - start:.0f} s; targets (every default run succeeds, each "
          f"<= {MAX_SECONDS:.0f} s): {'met' if ok else 'NOT met'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"seeds": list(seeds), "threshold": THRESHOLD,
                                               "methods": table, "runs": per_run, "met": ok},
                                              indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
