"""Helpers of app/common.py that every page uses."""

from __future__ import annotations

import re

import pytest


@pytest.mark.parametrize("text", [r"^(\w|[a-z]|\.)*\d\d\d", "cost $5 * k_r [x](y) <b> #1 `c` ~~s~~", "plain words"])
def test_literal_escapes_every_markdown_punctuation_and_nothing_else(text):
    from app.common import literal

    escaped = literal(text)
    assert re.sub(r"\\(.)", r"\1", escaped) == text  # CommonMark: a backslash-escaped char shows as itself
    unescaped = re.sub(r"\\.", "", escaped)
    assert not re.search(r"[\\`*_{}\[\]()#+\-.!|<>~$:^]", unescaped)  # no active Markdown left
    assert [c for c in escaped if c.isalnum() or c == " "] == [c for c in text if c.isalnum() or c == " "]
