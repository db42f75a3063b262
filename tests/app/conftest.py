"""Fixtures of the app tests: running a page until the background jobs it started have ended."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import pytest
from streamlit.testing.v1 import AppTest

from app import background


class AlivePopen:
    """A stand-in for `subprocess.Popen` of a training run that never starts and never ends: its
    pid is the test's own, so every "is it alive" check says yes."""

    pid = os.getpid()

    def __init__(self, cmd, **kwargs) -> None:
        pass

    def poll(self) -> None:
        return None


def run_until_idle(at: AppTest, timeout: float = 300.0) -> AppTest:
    """Run `at` as the page's polling fragment would: again after every run during which a
    background job (the page's sweep, its spectral errors, ...) was waiting or running, or was
    submitted, once that job has ended; return `at` after the first run that started with every
    job ended and submitted none. (A job submitted and finished within one run still needs the
    rerun that shows its result: the run drew only its progress.)"""
    deadline = time.monotonic() + timeout
    while True:
        ended = {j.id for j in background.pool().jobs() if j.done()}
        at.run()
        pending = [j for j in background.pool().jobs() if j.id not in ended]
        if not pending:
            return at
        for job in pending:
            left = deadline - time.monotonic()
            assert left > 0, f"background jobs still running after {timeout:.0f} s: {[j.label for j in pending]}"
            try:
                job.exception(timeout=left)  # waits; an error shows on the page, not here
            except Exception:  # noqa: BLE001 - cancelled, or the timeout (asserted above next turn)
                pass


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
