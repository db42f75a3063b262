"""User regular expressions that cannot hang the server: layer patterns under a time limit.

A layer pattern typed into a page (`^(.|\\w)*!`), given to `scan --layers` or written in a run
config with `regex: true` is matched here, never with Python's `re`: `re` holds the GIL while it
backtracks, so one pattern froze every session of a served lab. This file uses the `regex`
package instead (pinned in requirements.txt), whose matcher takes a `timeout=` and, with
`concurrent=True`, releases the GIL while it runs. Before compiling, a pattern is refused when
it is too long or its counted repeats (`x{1000}`) multiply past MAX_REPEAT: `regex` expands
them at compile time, where no timeout applies.

Every failure is a PatternError (a ValueError) with one line naming the pattern and the fix.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable

import regex

MAX_PATTERN_CHARS = 500
MAX_REPEAT = 10_000  # product of all counted-repeat bounds {n,m} of one pattern
MATCH_SECONDS = 0.5  # budget for matching one pattern against every name of a model
_COUNTED = regex.compile(r"\{\s*(\d+)\s*(?:,\s*(\d*)\s*)?\}")


class PatternError(ValueError):
    """A layer pattern that is not a valid regex, too large, or too slow to match."""


def _short(text: str, n: int = 60) -> str:
    return repr(text if len(text) <= n else text[:n] + "...")


def compile_pattern(text: str) -> regex.Pattern:
    """Return the compiled `regex` pattern of `text`; raises PatternError when it is longer than
    MAX_PATTERN_CHARS, when its counted repeats multiply past MAX_REPEAT, or when it is not a
    valid regex."""
    if len(text) > MAX_PATTERN_CHARS:
        raise PatternError(f"layer pattern {_short(text)} is {len(text):,} characters long; "
                           f"keep it under {MAX_PATTERN_CHARS}")
    bounds = [int(hi or lo) for lo, hi in _COUNTED.findall(text)]
    if bounds and math.prod(max(b, 1) for b in bounds) > MAX_REPEAT:
        raise PatternError(f"layer pattern {_short(text)} repeats up to {math.prod(bounds):,} times "
                           f"({{n}} counts multiplied); keep the counts small (at most {MAX_REPEAT:,})")
    try:
        return regex.compile(text)
    except (regex.error, OverflowError, RecursionError) as exc:
        raise PatternError(f"layer pattern {_short(text)} is not a valid regex: {exc}") from None


def _search_all(pattern: regex.Pattern, names: list[str], budget: float, out: dict) -> None:
    # `regex`'s timeout counts this thread's CPU time: on a busy machine it ends later in wall
    # time, so the caller waits by the clock and leaves this thread to stop on its own.
    deadline = time.monotonic() + budget
    try:
        out["found"] = [name for name in names
                        if pattern.search(name, timeout=max(deadline - time.monotonic(), 1e-3),
                                          concurrent=True) is not None]
    except TimeoutError:
        out["slow"] = True


def matching(text: str, names: Iterable[str], timeout_s: float = MATCH_SECONDS) -> list[str]:
    """Return the names in which the pattern `text` is found (`search`), in their order.

    Returns within about `timeout_s` seconds of wall time, and the GIL is released while the
    pattern runs. Raises PatternError (invalid, too large, or over time: "took longer than X s:
    simplify it"); a search over time stops by itself soon after (the matcher's own timeout)."""
    pattern = compile_pattern(text)
    out: dict = {}
    worker = threading.Thread(target=_search_all, args=(pattern, list(names), timeout_s, out),
                              name="layer-pattern", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if "found" not in out:
        raise PatternError(f"layer pattern {_short(text)} took longer than {timeout_s:g} s: simplify "
                           "it (nested repeats like (a|\\w)* backtrack without end)")
    return out["found"]


def search(text: str, name: str, timeout_s: float = MATCH_SECONDS) -> bool:
    """Return True when the pattern `text` is found in `name` (within `timeout_s` seconds, else
    PatternError)."""
    return bool(matching(text, [name], timeout_s))
