"""Every repository file the README and docs/*.md cite exists (renamed modules left stale paths)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PATH = re.compile(r"(?<![\w./-])((?:app|analysis|idlora_core|tests|configs|bench|docs)/[\w/.-]+\.(?:py|yaml|md))")


def cited_paths() -> list[tuple[str, int, str]]:
    """(doc, line number, path) of every repo path cited, except on lines naming an old name."""
    found = []
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
            if "formerly" in line or "(was " in line:
                continue
            found += [(doc.name, number, p) for p in PATH.findall(line)]
    return found


def test_every_cited_file_exists():
    cited = cited_paths()
    assert len(cited) > 30  # the pattern really finds the citations
    missing = [f"{doc}:{n}: {p}" for doc, n, p in cited if not (REPO / p).exists()]
    assert not missing, "\n".join(missing)
