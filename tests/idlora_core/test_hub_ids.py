"""A hub id (owner/name) where the hub is unreachable, silent or has no such model: a one-line
ModelNotFoundError within seconds, never a hang (the machines here have no internet)."""

from __future__ import annotations

import http.server
import socket
import threading
import time

import pytest

from idlora_core.models import ModelNotFoundError, load_model, resolve_source
from idlora_core.weights import open_weights


def _direct(monkeypatch) -> None:
    """Talk to the local test hub directly (no proxy from the environment), on a new client."""
    from huggingface_hub import close_session

    for key in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(key, "*")
    close_session()  # the shared client is made again, with this environment


@pytest.fixture
def silent_hub(monkeypatch):
    """A host that accepts connections and never answers (a firewall that swallows packets)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held = []
    threading.Thread(target=lambda: [held.append(server.accept()) for _ in iter(int, 1)],
                     daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    _direct(monkeypatch)
    yield
    server.close()


@pytest.fixture
def empty_hub(monkeypatch):
    """A hub that answers 404 to every question."""

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the stdlib's name
            self.send_response(404)
            self.end_headers()

        do_HEAD = do_GET

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    _direct(monkeypatch)
    yield
    server.shutdown()


def _error_within(call, seconds: float) -> str:
    """Run `call` in a thread; return its ModelNotFoundError's text, failing if it takes longer."""
    outcome: dict = {}

    def target():
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - the test checks the type below
            outcome["error"] = exc

    start = time.monotonic()
    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"still waiting on the hub after {seconds} s"
    assert isinstance(outcome.get("error"), ModelNotFoundError), outcome
    message = str(outcome["error"])
    assert "\n" not in message and "owner/name" in message, message
    outcome["seconds"] = time.monotonic() - start
    return message


@pytest.mark.parametrize("call", [open_weights, load_model, resolve_source])
def test_a_silent_hub_fails_after_the_timeout_not_never(silent_hub, call):
    message = _error_within(lambda: call("owner/name"), 60)  # hung forever before the fix
    assert "no answer within 1 s" in message and "local model directory" in message


def test_a_hub_without_the_model_names_it_in_one_line(empty_hub):
    message = _error_within(lambda: open_weights("owner/name"), 60)
    assert "could not be found on the Hugging Face hub" in message and "404" in message


def test_offline_mode_is_said_without_asking_the_hub(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    message = _error_within(lambda: resolve_source("owner/name"), 10)
    assert "not reachable from here" in message and "minilm" in message
