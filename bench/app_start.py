"""Benchmark the Streamlit lab in a real browser: cold start and page switching.

Cold start: from launching `streamlit run app/main.py` (a fresh process, nothing loaded) until
`/_stcore/health` answers AND the Model & layers page shows its layer table with MiniLM loaded
(headless Debian Chromium, started beforehand so its own start-up is not counted).
Page switching: clicking a sidebar link until the new page's main control is drawn, with the
model and data already cached (one warm-up tour first, then the median of `--rounds` tours).
Prints one table; targets: cold start < 20 s, page switch < 1 s.

    .venv/bin/python bench/app_start.py [--rounds 3] [--port 0]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LAYER_TABLE = ".st-key-layer_table, .st-key-selected_layer_table"
# sidebar link text -> a selector drawn by that page once it has rendered
PAGES = {
    "Model & layers": LAYER_TABLE,
    "Decomposition lab": ".st-key-lab_run",
    "Cluster explorer": ".st-key-explorer_k",
    "Fine-tune": ".st-key-start_runs",
    "Export / import": ".st-key-download_yaml",
}


def free_port() -> int:
    """Return a free local TCP port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def health_ok(url: str) -> bool:
    """Return True when the app's health endpoint answers 200."""
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def start_app(port: int, log_path: Path) -> subprocess.Popen:
    """Launch the app headless on `port` (argument list, no shell); return the process."""
    cmd = [sys.executable, "-m", "streamlit", "run", str(REPO / "app" / "main.py"),
           "--server.headless", "true", "--server.port", str(port),
           "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
           "--server.fileWatcherType", "none"]
    env = dict(os.environ, IDLORA_RUNS_DIR=tempfile.mkdtemp(prefix="bench-runs-"))
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=open(log_path, "wb"),  # noqa: SIM115
                            stderr=subprocess.STDOUT)


def switch(page, title: str, timeout_ms: int = 120_000) -> float:
    """Click the sidebar link `title`; return seconds until its page's control is visible."""
    t0 = time.perf_counter()
    page.get_by_role("link", name=title).click()
    page.wait_for_selector(PAGES[title], state="attached", timeout=timeout_ms)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="timed tours of all pages")
    parser.add_argument("--port", type=int, default=0, help="0 = a free port")
    args = parser.parse_args()
    if not Path(CHROMIUM).exists():
        sys.exit(f"{CHROMIUM} missing: apt-get install -y chromium (make browser-deps)")
    from playwright.sync_api import sync_playwright

    port = args.port or free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = Path(tempfile.gettempdir()) / f"bench-app-start-{port}.log"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        t0 = time.perf_counter()
        proc = start_app(port, log_path)
        try:
            while not health_ok(url):
                if proc.poll() is not None or time.perf_counter() - t0 > 120:
                    sys.exit(f"app did not start; see {log_path}")
                time.sleep(0.05)
            t_health = time.perf_counter() - t0
            page.goto(url)
            page.wait_for_selector(LAYER_TABLE, state="attached", timeout=120_000)
            t_table = time.perf_counter() - t0
            tour = list(PAGES)[1:] + [list(PAGES)[0]]
            for title in tour:  # warm-up: first visits fill the caches
                switch(page, title)
            times: dict[str, list[float]] = {t: [] for t in tour}
            for _ in range(args.rounds):
                for title in tour:
                    times[title].append(switch(page, title))
        finally:
            browser.close()
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()

    rows = [("cold start: health endpoint answers", t_health, None),
            ("cold start: layer table shown (MiniLM loaded)", t_table, 20.0)]
    rows += [(f"switch to {t} (median of {args.rounds})", statistics.median(v), 1.0)
             for t, v in times.items()]
    print(f"{'measurement':<52} {'seconds':>8} {'target':>8}  ok")
    for name, value, target in rows:
        ok = "" if target is None else ("yes" if value < target else "NO")
        tgt = "" if target is None else f"< {target:g}"
        print(f"{name:<52} {value:8.2f} {tgt:>8}  {ok}")
    print(f"(cpu count {os.cpu_count()}, load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
