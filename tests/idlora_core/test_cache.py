"""write_text_atomic: replaces whole files, creates folders, leaves nothing behind on failure."""

import pytest

from idlora_core.cache import write_text_atomic


def test_writes_and_replaces_without_temp_files(tmp_path):
    path = write_text_atomic(tmp_path / "a" / "b.json", "first")
    assert path.read_text(encoding="utf-8") == "first"
    write_text_atomic(path, "second ü")
    assert path.read_text(encoding="utf-8") == "second ü"
    assert sorted(p.name for p in path.parent.iterdir()) == ["b.json"]


def test_failed_write_keeps_the_previous_file(tmp_path):
    path = write_text_atomic(tmp_path / "c.txt", "kept")
    with pytest.raises(UnicodeEncodeError):
        write_text_atomic(path, "\ud800")  # a lone surrogate cannot be encoded as UTF-8
    assert path.read_text(encoding="utf-8") == "kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.txt"]
