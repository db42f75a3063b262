"""Real-browser test: `streamlit run app/main.py` driven by headless Debian Chromium (playwright).

Runs a small sweep on the Decomposition lab, starts a tiny fine-tune and watches its loss
chart grow, checks the export page, opens every page's URL first on a fresh server (the
navigation and the model picker must be there), and saves screenshots to `test-artifacts/`.
Browsers are never downloaded here: without /usr/bin/chromium the test is skipped.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
STEPS = 6  # per fine-tune run: enough to see the live chart grow, short on 2 CPU cores
LAYER_TABLE = ".st-key-layer_table, .st-key-selected_layer_table"  # Model & layers page
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_health(url: str, timeout_s: float) -> bool:
    """Return True once GET `url`/_stcore/health answers 200 within `timeout_s` seconds."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as resp:
                if resp.status == 200:
                    return True
        except OSError:
            time.sleep(0.2)
    return False


def start_app(port: int, runs_dir: Path, log_path: Path, **extra_env: str) -> subprocess.Popen:
    """Start the Streamlit app headless on `port` (argument list, no shell), with `extra_env` added
    to its environment; return the process."""
    # One run at a time: the Fine-tune test's second run waits in the queue, so its chart is
    # certain to show the first run's points alone before it grows (two runs in parallel
    # could both finish between two polls; CI saw that).
    env = dict(os.environ, IDLORA_RUNS_DIR=str(runs_dir), IDLORA_MAX_RUNS="1", PYTHONUNBUFFERED="1",
               **extra_env)
    cmd = [sys.executable, "-m", "streamlit", "run", str(REPO / "app" / "main.py"),
           "--server.headless", "true", "--server.port", str(port),
           "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
           "--server.fileWatcherType", "none"]
    log = open(log_path, "wb")  # noqa: SIM115 - closed with the process by the fixture
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def stop_app(proc: subprocess.Popen) -> None:
    """Stop the app server (SIGTERM, then SIGKILL after 20 s)."""
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    with served_app(tmp_path_factory.mktemp("browser-runs"), "streamlit.log") as url:
        yield url


@contextlib.contextmanager
def served_app(runs_dir: Path, log_name: str, **extra_env: str) -> Iterator[str]:
    """Yield the URL of the app served on a free port (skips the test without Chromium or
    playwright; its log goes to test-artifacts/`log_name`); stop it afterwards."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} missing: install Debian's chromium (make browser-deps)")
    pytest.importorskip("playwright.sync_api", reason="playwright-python is not installed")
    ARTIFACTS.mkdir(exist_ok=True)
    port = free_port()
    proc = start_app(port, runs_dir, ARTIFACTS / log_name, **extra_env)
    url = f"http://127.0.0.1:{port}"
    try:
        assert wait_health(url, 60), (ARTIFACTS / log_name).read_text()[-2000:]
        yield url
    finally:
        stop_app(proc)


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the module (playwright allows one sync session at a time)."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} missing: install Debian's chromium (make browser-deps)")
    pytest.importorskip("playwright.sync_api", reason="playwright-python is not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def page(app_url, browser):
    context = browser.new_context(viewport={"width": 1400, "height": 2200})
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    yield pg
    context.close()


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def no_exception(page) -> None:
    assert page.locator("[data-testid='stException']").count() == 0, page.inner_text("body")[-3000:]


def goto(page, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("[data-testid='stAppViewContainer']")
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')")


def nav(page, title: str) -> None:
    """Switch page with the sidebar link (keeps the browser session and its settings)."""
    page.get_by_role("link", name=title).click()
    page.wait_for_timeout(300)


def n_points(page) -> int:
    """Number of plotted markers on the fine-tune loss chart (all runs)."""
    return page.locator(".st-key-loss_chart .scatterlayer .trace .points path").count()


@pytest.mark.slow  # 33 s; default: app/test_served_lab.py (browser) and the AppTest page tests
def test_sweep_finetune_and_export_in_a_real_browser(page, app_url):
    t0 = time.monotonic()

    def mark(what: str) -> None:  # shown with -s or on failure: where the time goes
        print(f"{time.monotonic() - t0:6.1f} s  {what}")

    goto(page, app_url)
    page.wait_for_selector(LAYER_TABLE, state="attached", timeout=90_000)
    no_exception(page)
    shot(page, "01_model_layers")
    mark("model page rendered")

    nav(page, "Decomposition lab")
    page.locator(".st-key-lab_run button").click()
    page.wait_for_selector(".st-key-lab_error_vs_rank .js-plotly-plot", timeout=120_000)
    no_exception(page)
    shot(page, "02_decomposition_lab")
    mark("sweep shown")

    nav(page, "Fine-tune")
    page.wait_for_selector(".st-key-start_runs button")
    page.get_by_text("More training settings").click()
    for key, value in (("ft_steps", STEPS), ("ft_batch_size", 2), ("ft_seq_len", 16),
                       ("ft_num_eval", 4), ("ft_num_test", 4), ("ft_num_train", 32)):
        box = page.locator(f".st-key-{key} input")
        box.fill(str(value))
        box.press("Enter")
        page.wait_for_timeout(300)
    page.wait_for_timeout(500)
    page.locator(".st-key-start_runs button").click()
    page.get_by_text("Waiting for a free slot").first.wait_for(timeout=60_000)  # run 2 queued
    page.wait_for_function(
        "() => document.querySelectorAll('.st-key-loss_chart .scatterlayer .trace .points path')"
        ".length >= 2", timeout=120_000)
    first = n_points(page)
    shot(page, "03_fine_tune_live")
    mark(f"first loss points: {first} of {2 * STEPS}")
    page.wait_for_function(  # fails (times out) unless the chart updates by itself
        f"() => document.querySelectorAll('.st-key-loss_chart .scatterlayer .trace .points path')"
        f".length > {first}", timeout=120_000)
    # reaching here means the live chart grew on its own (the fragment polls; no clicks)
    page.wait_for_function(  # both runs done: one marker per step and run, two scatter points
        "() => document.querySelectorAll('.st-key-loss_chart .scatterlayer .trace .points path')"
        f".length == {2 * STEPS} && document.querySelectorAll("
        "'.st-key-tradeoff_chart .scatterlayer .trace .points path').length == 2",
        timeout=180_000)
    no_exception(page)
    assert "idle" in page.inner_text("body")  # polling stopped once no run was active
    legend = page.evaluate("() => Array.from(document.querySelectorAll("
                           "'.st-key-loss_chart .legendtext')).map(e => e.textContent)")
    assert sorted(legend) == ["ID-LoRA r=8 k=4", "LoRA r=8"]
    shot(page, "04_fine_tune_done")
    mark("runs finished")

    nav(page, "Export / import")  # same session: the fine-tune settings must travel
    page.wait_for_selector(".st-key-download_yaml")
    page.wait_for_selector(".st-key-export_commands code")
    commands = page.locator(".st-key-export_commands").text_content()
    assert "python -m idlora_core.train idlora_config.yaml" in commands
    yaml_text = page.locator(".st-key-export_yaml").text_content()
    assert "skeletons:" in yaml_text
    train_line = yaml_text[yaml_text.index("train:"):][:60]
    assert f"steps: {STEPS}," in train_line  # the fine-tune settings travel to the export
    no_exception(page)
    shot(page, "05_export")
    mark("export checked")


def _declared_pages() -> list[tuple[str, str]]:
    """(url path, title) of every page in app/main.py's PAGES list, read without running it."""
    import ast

    tree = ast.parse((REPO / "app" / "main.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "PAGES":
            pages = ast.literal_eval(node.value)
            return [(Path(path).stem, title) for path, title, *_ in pages]
    raise AssertionError("app/main.py has no PAGES list")


# One fresh server per page (the first page is at "/"). The default suite opens the Fine-tune
# page's URL; the other pages (a server start of about 4 s each) run with `make test-slow`.
DEEP_LINK_DEFAULT = "fine_tune"


@pytest.mark.parametrize("url_path,title", [
    pytest.param(path, title, id=path, marks=() if path == DEEP_LINK_DEFAULT else pytest.mark.slow)
    for path, title in _declared_pages()[1:]])
def test_page_url_opened_first_on_a_fresh_server_keeps_the_app(browser, tmp_path, url_path, title):
    # Streamlit's legacy `pages/` discovery used to take over a deep link opened as the first
    # request: raw file names in the sidebar, no model picker. st.navigation must own every URL.
    ARTIFACTS.mkdir(exist_ok=True)
    titles = [t for _, t in _declared_pages()]
    port = free_port()
    proc = start_app(port, tmp_path / "runs", ARTIFACTS / f"deeplink-{url_path}.log")
    url = f"http://127.0.0.1:{port}"
    try:
        assert wait_health(url, 60), f"server for /{url_path} did not start"
        context = browser.new_context(viewport={"width": 1400, "height": 1200})
        pg = context.new_page()
        pg.set_default_timeout(60_000)
        goto(pg, f"{url}/{url_path}")
        sidebar = pg.locator("[data-testid='stSidebar']")
        sidebar.get_by_text("Model", exact=True).first.wait_for()
        nav_text = sidebar.locator("[data-testid='stSidebarNav']").inner_text()
        for expected in titles:
            assert expected in nav_text, (url_path, nav_text)
        assert "main" not in nav_text.split("\n"), nav_text  # no legacy file names
        assert pg.locator(".st-key-model_choice").count() == 1, url_path
        current = pg.locator("[data-testid='stSidebarNav'] a[aria-current='page']")
        assert title in current.inner_text(), (url_path, current.inner_text())
        pg.locator("[data-testid='stMain'] :is(h1, h2)").first.wait_for(timeout=120_000)
        no_exception(pg)
        shot(pg, f"deeplink_{url_path}")
        context.close()
    finally:
        stop_app(proc)


def test_deep_link_default_is_a_declared_page():
    assert DEEP_LINK_DEFAULT in [path for path, _ in _declared_pages()[1:]]


@pytest.mark.slow  # about 25 s; the default suite covers the same code through AppTest (tests/README.md)
def test_each_lab_exercise_in_a_real_browser(page, app_url):
    """One click per exercise sets its controls; its main view is saved as an artifact
    (test-artifacts/exercise_N.png); a refresh keeps the page's choices (they are in the URL)."""
    for number, ready in ((4, ".st-key-start_runs button"),  # 4: the preset only, no run
                          (2, ".st-key-lab_error_vs_rank_spectral .js-plotly-plot"),
                          (1, ".st-key-lab_summary_chart .js-plotly-plot"),
                          (3, ".st-key-explorer_scatter .js-plotly-plot")):
        goto(page, app_url)
        nav(page, "Lab exercises")
        page.locator(f".st-key-exercise_start_{number} button").click()
        page.wait_for_selector(".st-key-exercise_panel", timeout=60_000)
        if number in (1, 2):
            page.locator(".st-key-lab_run button").click()
        page.wait_for_selector(ready, timeout=240_000)
        page.wait_for_timeout(500)
        no_exception(page)
        panel = page.locator(".st-key-exercise_panel").inner_text()
        assert f"Exercise {number}" in panel
        shot(page, f"exercise_{number}")
        if number == 2:
            assert "lab_ranks=1%2C2%2C4%2C8%2C12%2C16" in page.url or \
                "lab_ranks=1,2,4,8,12,16" in page.url, page.url
            page.reload()  # a new browser session: the URL brings the choices back
            page.wait_for_selector(".st-key-lab_run button", timeout=60_000)
            chosen = page.locator(".st-key-lab_ranks").inner_text()
            assert all(str(r) in chosen for r in (1, 2, 4, 8, 12, 16)), chosen
    # the lab report (exercise 3's preset keeps exercise 1's sweep): one click downloads a zip
    nav(page, "Lab exercises")
    page.wait_for_selector(".st-key-exercise_report button", timeout=60_000)
    page.wait_for_timeout(1000)
    with page.expect_download(timeout=180_000) as download:
        page.locator(".st-key-exercise_report button").click()
    with zipfile.ZipFile(download.value.path()) as archive:
        names = {n.removeprefix("idlora-lab-report/") for n in archive.namelist()}
        summary = archive.read("idlora-lab-report/sweep_summary.csv").decode()
    assert {"README.txt", "sweep_summary.csv", "selection_means.csv", "sweep_full.csv"} <= names
    assert any(n.startswith("figures/heatmap_") for n in names), names
    assert "gain over SVD(r) (difference)" in summary.splitlines()[0]
