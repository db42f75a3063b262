"""User layer patterns cannot hang the server (issue 18 #1): a time limit, the GIL released,
one-line errors; the same matches as `re` for ordinary patterns."""

from __future__ import annotations

import re
import threading
import time

import pytest

from analysis.sweep_model import resolve_layers
from idlora_core.config import ConfigError, parse_config
from idlora_core.patterns import MATCH_SECONDS, PatternError, compile_pattern, matching

FINDING_1 = r"^(.|\w)*!"  # froze a served lab's health check for > 100 s under `re`
BACKTRACKS = r"^(\w|[a-z]|\.)*\d\d\d"  # exponential on MiniLM's names, also for `regex`


def test_the_regex_of_finding_1_returns_at_once_with_one_line(minilm_weights):
    start = time.monotonic()
    with pytest.raises(ValueError) as info:
        resolve_layers(minilm_weights, FINDING_1)
    assert time.monotonic() - start < 1.0
    assert str(info.value) == f"no linear layer matches {FINDING_1!r}"


def test_a_backtracking_pattern_stops_within_its_budget_and_keeps_the_gil_free(minilm_weights):
    ticks = []
    stop = threading.Event()

    def ticker():  # stands in for the server's other threads (health check, other sessions)
        while not stop.is_set():
            ticks.append(time.monotonic())
            time.sleep(0.01)

    thread = threading.Thread(target=ticker)
    thread.start()
    start = time.monotonic()
    try:
        with pytest.raises(PatternError) as info:
            resolve_layers(minilm_weights, BACKTRACKS)
        took = time.monotonic() - start
    finally:
        stop.set()
        thread.join()
    message = str(info.value)
    assert took < MATCH_SECONDS + 0.5, took
    assert f"took longer than {MATCH_SECONDS:g} s: simplify it" in message and "\n" not in message
    during = [t for t in ticks if start <= t <= start + took]
    gaps = [b - a for a, b in zip(during, during[1:], strict=False)]
    assert len(during) >= 10 and max(gaps) < 0.25, (len(during), max(gaps, default=None))


@pytest.mark.parametrize("pattern, words", [
    ("x{4294967294}", "repeats up to 4,294,967,294 times"),
    ("((a{100}){100}){100}", "repeats up to 1,000,000 times"),
    ("(", "is not a valid regex"),
    ("a" * 501, "keep it under 500"),
])
def test_patterns_too_large_or_invalid_are_refused_before_compiling(pattern, words):
    start = time.monotonic()
    with pytest.raises(PatternError, match=re.escape(words)):
        compile_pattern(pattern)
    assert time.monotonic() - start < 0.2


@pytest.mark.parametrize("pattern", ["query", r"layer\.[0-2]\.", r"(key|value)$", "", r"\d\.output\.dense",
                                     "a{2,}"])
def test_ordinary_patterns_match_what_re_matches(minilm_weights, pattern):
    names = list(minilm_weights.linear)
    assert matching(pattern, names) == [n for n in names if re.search(pattern, n)]


def test_run_configs_and_injection_use_the_limited_matcher(tiny_bert):
    from idlora_core.adapters.inject import resolve_targets

    raw = {"adapter": {"method": "lora", "targets": [{"pattern": "x{4294967294}", "regex": True}]}}
    with pytest.raises(ConfigError, match="repeats up to"):
        parse_config(raw)
    raw["adapter"]["targets"][0]["pattern"] = r"^(\w|[a-z]|\.)*\d\d\d\d\d"
    cfg = parse_config(raw)
    start = time.monotonic()
    with pytest.raises(PatternError, match="simplify it"):
        resolve_targets(tiny_bert, cfg.adapter)
    assert time.monotonic() - start < MATCH_SECONDS + 0.5
    raw["adapter"]["targets"][0]["pattern"] = r"layer\.1\..*query"
    hits = [name for name, _ in resolve_targets(tiny_bert, parse_config(raw).adapter)]
    assert hits == [n for n, m in tiny_bert.named_modules() if re.search(r"layer\.1\..*query", n)]
