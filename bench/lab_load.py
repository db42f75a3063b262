"""Benchmark a served lab under load: N sessions rendering a mix of pages while one runs a scan.

N headless sessions (Streamlit AppTest instances, each in its own thread, sharing this process
as a server shares its caches, background pool and run queue) render a mix of pages `--rounds`
times each: Model & layers, Fine-tune, Studies, Layer atlas, Cluster explorer. Session 0 starts
a whole-model scan on the Layer atlas (the background pool, `app/background.py`); the others'
warm renders wait until it has started, so they run beside it. The run queue holds `--queued` waiting tickets
of other users (nothing starts: a fake study holds every slot). A ticker thread samples how long
the process fails to schedule a 10 ms sleep: the stall a health check (/_stcore/health) would see.

Reports, per N: median and worst warm render time (every render after a session's first), the
median first render, the worst ticker stall, the process's peak RSS, and how far the scan got.
Results and caches go to a temporary folder; the repo's cached/ is not touched.

    .venv/bin/python bench/lab_load.py [--sessions 5 10 30] [--rounds 3] [--queued 120] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
VIEWS = REPO / "app" / "views"
MIX = ["model_layers.py", "fine_tune.py", "studies.py", "layer_atlas.py", "cluster_explorer.py"]


class Sampler(threading.Thread):
    """Samples the process RSS and the worst overshoot of a 10 ms sleep until stopped."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.halt = threading.Event()
        self.rss_peak = 0
        self.worst_stall = 0.0

    def run(self) -> None:
        proc = psutil.Process()
        while not self.halt.is_set():
            start = time.perf_counter()
            time.sleep(0.01)
            self.worst_stall = max(self.worst_stall, time.perf_counter() - start - 0.01)
            self.rss_peak = max(self.rss_peak, proc.memory_info().rss)


def _prepare(root: Path, queued: int) -> None:
    """Fill the queue with `queued` waiting tickets of other users; a fake running study holds
    every run slot so that none of them starts."""
    from idlora_core.config import parse_config
    from idlora_core.jobs.run_queue import RunQueue
    from idlora_core.jobs.studies import LAUNCH_FILE, STUDIES_DIR

    hold = root / STUDIES_DIR / "bench-holds-every-slot"
    hold.mkdir(parents=True, exist_ok=True)
    (hold / LAUNCH_FILE).write_text(json.dumps({"pid": os.getpid(), "workers": 10_000, "owner": "bench"}))
    config = parse_config({"adapter": {"method": "lora"}})
    queue = RunQueue(root, ttl_s=10**9)
    for user in range(max(1, queued // 6)):
        batch = min(6, queued - 6 * user)
        if batch > 0:
            queue.submit_many([(f"u{user}-{i}", config) for i in range(batch)], owner=f"user:bench-{user}")


scan_running = threading.Event()  # set by session 0 once its scan has started


def _session(page: str, rounds: int, scan: bool) -> dict:
    """Render `page` `rounds` + 1 times in one AppTest session; return its timings."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(VIEWS / page), default_timeout=300)
    times, errors = [], []
    for i in range(rounds + 1):
        start = time.perf_counter()
        at.run()
        times.append(time.perf_counter() - start)
        if at.exception:
            errors.append(str(at.exception[0].value)[:200])
        if scan and i == 0:  # session 0: start the whole-model scan, then keep rendering
            at.radio(key="atlas_source").set_value("Scan the current model here").run()
            at.text_input(key="atlas_layers").set_value("")
            at.button(key="atlas_run").click().run()
            job = at.session_state["atlas_job"]
            while job is not None and job.started is None and not job.done():
                time.sleep(0.05)  # the others render while the scan runs, not while it waits
            scan_running.set()
        elif not scan:
            scan_running.wait(120)
    job = at.session_state["atlas_job"] if scan and "atlas_job" in at.session_state else None
    return {"page": page, "first": times[0], "warm": times[1:], "errors": errors, "job": job}


def measure(n: int, rounds: int) -> dict:
    """Run `n` sessions at once; return the summary for this N."""
    from app import background

    background.reset_pool()  # the previous N's cancelled scan finishes its layer elsewhere
    scan_running.clear()
    pages = [("layer_atlas.py", True)] + [(MIX[i % len(MIX)], False) for i in range(n - 1)]
    sampler = Sampler()
    sampler.start()
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=n) as pool:
        results = list(pool.map(lambda p: _session(p[0], rounds, p[1]), pages))
    wall = time.perf_counter() - start
    sampler.halt.set()
    sampler.join()
    warm = [t for r in results for t in r["warm"]]
    job = results[0]["job"]
    if job is not None:
        job.cancel()  # the next N starts from an idle pool
    return {
        "sessions": n, "rounds": rounds, "renders": len(warm) + n, "wall_s": round(wall, 2),
        "render_median_s": round(statistics.median(warm), 3), "render_worst_s": round(max(warm), 3),
        "first_render_median_s": round(statistics.median(r["first"] for r in results), 3),
        "worst_stall_s": round(sampler.worst_stall, 3), "rss_peak_mb": round(sampler.rss_peak / 2**20),
        "scan": None if job is None else {"state": job.state, "progress": round(job.fraction, 3),
                                          "message": job.message},
        "errors": sorted({e for r in results for e in r["errors"]})[:5],
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print one line per N and write `--json` when given."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[5, 10, 30])
    parser.add_argument("--rounds", type=int, default=3, help="warm renders per session (after the first)")
    parser.add_argument("--queued", type=int, default=120, help="waiting tickets of other users")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    from bench.lab_room import share_apptest_globals

    share_apptest_globals()  # sessions in threads at once, as a server runs them (see there)
    with tempfile.TemporaryDirectory(prefix="lab-load-") as tmp:
        os.environ.update(IDLORA_RUNS_DIR=str(Path(tmp) / "runs"), IDLORA_CACHE_DIR=str(Path(tmp) / "cache"),
                          IDLORA_NO_UMAP_WARM="1")
        _prepare(Path(tmp) / "runs", args.queued)
        rows = []
        for n in args.sessions:
            row = measure(n, args.rounds)
            rows.append(row)
            print(f"N={n:>3}: render median {row['render_median_s']:.2f} s, worst {row['render_worst_s']:.2f} s, "
                  f"first {row['first_render_median_s']:.2f} s, worst stall {row['worst_stall_s']:.3f} s, "
                  f"peak RSS {row['rss_peak_mb']} MB, scan {row['scan'] and row['scan']['progress']}"
                  + (f", errors: {row['errors']}" if row["errors"] else ""), flush=True)
        from app import background
        from idlora_core.jobs import run_queue

        background.reset_pool()
        run_queue.stop_workers()
    result = {"bench": "lab_load", "cpus": os.cpu_count(), "queued": args.queued, "results": rows}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
