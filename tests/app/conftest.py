"""Fixtures of the app tests: running a page until the background jobs it started have ended."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from streamlit.testing.v1 import AppTest

from app import background


def run_until_idle(at: AppTest, timeout: float = 300.0) -> AppTest:
    """Run `at`, then, while the app's background pool holds an unfinished job (the page's
    sweep, its spectral errors, ...), wait for it and run again (as the page's polling fragment
    does); return `at` after the first run that leaves no job waiting or running."""
    deadline = time.monotonic() + timeout
    at.run()
    while busy := [j for j in background.pool().jobs() if not j.done()]:
        for job in busy:
            left = deadline - time.monotonic()
            assert left > 0, f"background jobs still running after {timeout:.0f} s: {[j.label for j in busy]}"
            try:
                job.exception(timeout=left)  # waits; an error shows on the page, not here
            except Exception:  # noqa: BLE001 - cancelled, or the timeout (asserted above next turn)
                pass
        at.run()
    return at


@pytest.fixture
def settle() -> Callable[..., AppTest]:
    """The function `run_until_idle(at, timeout=300)`."""
    return run_until_idle


@pytest.fixture
def fresh_pool():
    """A new background pool for the test (no job of an earlier test in it), shut down after."""
    background.reset_pool()
    yield background.pool()
    background.reset_pool()
