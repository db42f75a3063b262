"""A served lab (`IDLORA_LAB=1`, `streamlit run`) under the hostile layer patterns of issue 18.

`^(.|\\w)*!` backtracks without end on every layer name. With Python's `re` it held the GIL: the
server's health check stopped answering for over 100 s and no other student got a page. Here a
real browser runs it on the Layer atlas, then a pattern that backtracks for the `regex` engine
too. Meanwhile a thread asks `/_stcore/health` every 0.1 s, and a second browser context
(another student) opens a page. The test asserts:
- every health answer comes within 1 s;
- the other student's page renders;
- the first page says in one line that nothing matches the first pattern, and that the second
  ran past the time limit.
"""

from __future__ import annotations

import threading
import time
import urllib.parse
import urllib.request

import pytest

from tests.app.test_browser import (
    browser,  # noqa: F401 - the module's headless Chromium
    goto,
    no_exception,
    served_app,
    shot,
)

pytestmark = pytest.mark.browser

HOSTILE = r"^(.|\w)*!"  # finding 1: exponential for `re`; `regex` sees at once that nothing matches
BACKTRACKS = r"^(\w|[a-z]|\.)*\d\d\d"  # exponential on MiniLM's names for `regex` too: the time limit
HEALTH_LIMIT_S = 1.0


@pytest.fixture(scope="module")
def lab_url(tmp_path_factory):
    with served_app(tmp_path_factory.mktemp("served-runs"), "streamlit-served.log", IDLORA_LAB="1") as url:
        yield url


class HealthProbe(threading.Thread):
    """Asks `/_stcore/health` every 0.1 s until stopped; keeps each answer's latency (s), and
    inf for one that failed or took over 5 s."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.latencies, self.halt = url, [], threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            t0 = time.monotonic()
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=5) as resp:
                    ok = resp.status == 200
            except OSError:
                ok = False
            self.latencies.append(time.monotonic() - t0 if ok else float("inf"))
            self.halt.wait(0.1)


def test_hostile_layer_pattern_never_blocks_the_served_lab(lab_url, browser):  # noqa: F811
    query = urllib.parse.urlencode({"atlas_source": "Scan the current model here", "atlas_layers": HOSTILE})
    student = browser.new_context(viewport={"width": 1400, "height": 1600})
    other = browser.new_context(viewport={"width": 1400, "height": 1600})
    probe = HealthProbe(lab_url)
    try:
        page = student.new_page()
        page.set_default_timeout(120_000)
        goto(page, f"{lab_url}/layer_atlas?{query}")
        assert page.locator(".st-key-atlas_layers input").input_value() == HOSTILE
        probe.start()
        page.locator(".st-key-atlas_run button").click()
        second = other.new_page()  # another student opens a page while the pattern runs
        second.goto(f"{lab_url}/model_layers")
        second.locator("[data-testid='stMain'] h1").first.wait_for(timeout=30_000)
        found = page.get_by_text("No linear layer matches").first
        found.wait_for(timeout=30_000)
        nothing = found.inner_text()
        box = page.locator(".st-key-atlas_layers input")
        box.fill(BACKTRACKS)
        box.press("Enter")
        page.wait_for_timeout(500)
        page.locator(".st-key-atlas_run button").click()
        message = page.get_by_text("took longer than").first
        message.wait_for(timeout=30_000)
        time.sleep(2.0)  # the matcher's own timeout has ended the search by now; keep probing
        probe.halt.set()
        probe.join(10)
        text = message.inner_text()
        shot(page, "served_lab_hostile_pattern")
        no_exception(page)
        no_exception(second)
    finally:
        probe.halt.set()
        student.close()
        other.close()
    print(f"health answers: {len(probe.latencies)}, slowest {max(probe.latencies):.3f} s")
    assert len(probe.latencies) >= 10
    assert max(probe.latencies) < HEALTH_LIMIT_S, sorted(probe.latencies)[-5:]
    assert f"No linear layer matches {HOSTILE!r}" in nothing, nothing  # shown as typed (escaped Markdown)
    assert f"{BACKTRACKS!r} took longer than 0.5 s: simplify it" in text, text
