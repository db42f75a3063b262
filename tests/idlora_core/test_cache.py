"""write_text_atomic: replaces whole files, creates folders, leaves nothing behind on failure;
where the cache lives (IDLORA_CACHE_DIR, the checkout's cached/, or the user cache folder)."""

from pathlib import Path

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


def test_cache_dir_is_read_on_every_call(tmp_path, monkeypatch):
    from idlora_core.cache import REPO_CACHE, ResultCache, cache_dir

    store = ResultCache()
    monkeypatch.setenv("IDLORA_CACHE_DIR", str(tmp_path / "a"))
    assert cache_dir() == tmp_path / "a" and store.root == tmp_path / "a" / "results"
    monkeypatch.setenv("IDLORA_CACHE_DIR", str(tmp_path / "b"))
    assert store.path("abcd") == tmp_path / "b" / "results" / "ab" / "abcd.json"
    monkeypatch.setenv("IDLORA_CACHE_DIR", "")
    assert cache_dir() == REPO_CACHE
    monkeypatch.delenv("IDLORA_CACHE_DIR")
    assert cache_dir() == REPO_CACHE


def test_test_session_never_uses_the_repo_cache():
    import os

    from idlora_core.cache import REPO_CACHE, cache_dir

    assert os.environ["IDLORA_CACHE_DIR"] and cache_dir().resolve() != REPO_CACHE.resolve()


@pytest.mark.parametrize("payload", [{}, {"table": None}, None, [], "x"])
def test_entry_with_right_key_but_unusable_payload_is_recomputed(tmp_path, payload):
    import json

    from idlora_core.cache import ResultCache

    def validate(p):
        if not p["rows"]:
            raise ValueError("no rows")

    cache = ResultCache(tmp_path)
    cache.path("ab12").parent.mkdir(parents=True)
    cache.path("ab12").write_text(json.dumps({"key": "ab12", "payload": payload}))
    assert cache.get_or_compute("ab12", lambda: {"rows": [1]}, validate) == ({"rows": [1]}, False)
    assert json.loads(cache.path("ab12").read_text())["payload"] == {"rows": [1]}  # overwritten
    assert cache.get_or_compute("ab12", lambda: pytest.fail("recomputed"), validate)[1] is True


@pytest.mark.skipif(__import__("os").geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_cache_folder_warns_and_runs_without_cache(tmp_path):
    from idlora_core.cache import CacheWarning, ResultCache

    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        cache = ResultCache(folder)
        with pytest.warns(CacheWarning, match="cannot be written.*running without the cache"):
            assert cache.get_or_compute("ab12", lambda: {"v": 1}) == ({"v": 1}, False)
        assert cache.get_or_compute("ab12", lambda: {"v": 2}) == ({"v": 2}, False)  # still works
    finally:
        folder.chmod(0o700)


def test_unwritable_cache_warns_once_even_as_root(tmp_path, monkeypatch):
    import idlora_core.cache as cache_module

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(cache_module.tempfile, "mkstemp", refuse)
    cache = cache_module.ResultCache(tmp_path / "x")
    with pytest.warns(cache_module.CacheWarning, match="Permission denied"):
        assert cache.get_or_compute("cd34", lambda: {"v": 1}) == ({"v": 1}, False)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per folder, not once per entry
        assert cache.get_or_compute("ef56", lambda: {"v": 2}) == ({"v": 2}, False)


def _tree(root, pyproject: str | None):
    """Return the package folder of a fake install at `root` (with `pyproject` text beside it)."""
    package = root / "idlora_core"
    package.mkdir(parents=True)
    if pyproject is not None:
        (root / "pyproject.toml").write_text(pyproject, encoding="utf-8")
    return package


@pytest.mark.parametrize("pyproject, in_checkout", [
    ('[project]\nname = "idlora-lab"\nversion = "0.1.0"\n', True),  # a clone / editable install
    (None, False),  # site-packages: no pyproject.toml beside the package
    ('[project]\nname = "someone-else"\n', False),  # a foreign project that vendors the package
])
def test_default_cache_is_the_checkout_or_the_user_cache(tmp_path, monkeypatch, pyproject, in_checkout):
    import platformdirs

    import idlora_core.cache as cache_module

    package = _tree(tmp_path / "root", pyproject)
    monkeypatch.setattr(cache_module, "PACKAGE_DIR", package)
    monkeypatch.delenv("IDLORA_CACHE_DIR")
    user = Path(platformdirs.user_cache_dir("idlora-lab", appauthor=False))
    assert cache_module.cache_dir() == (tmp_path / "root" / "cached" if in_checkout else user)
    assert package not in cache_module.cache_dir().parents  # never inside the package
    monkeypatch.setenv("IDLORA_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_module.cache_dir() == tmp_path / "mine"  # the environment wins either way


def test_read_only_checkout_uses_the_user_cache(tmp_path, monkeypatch):
    import platformdirs

    import idlora_core.cache as cache_module

    package = _tree(tmp_path / "root", '[project]\nname = "idlora-lab"\n')
    monkeypatch.setattr(cache_module.os, "access", lambda path, mode: False)  # as root, chmod is ignored
    assert cache_module.default_cache_dir(package) == Path(
        platformdirs.user_cache_dir("idlora-lab", appauthor=False))


def test_this_checkout_keeps_its_cached_folder():
    from idlora_core.cache import REPO_CACHE, default_cache_dir, source_checkout

    assert source_checkout() == REPO_CACHE.parent and default_cache_dir() == REPO_CACHE
