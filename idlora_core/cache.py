"""The one on-disk cache of ID-LoRA Lab: its location, content-addressed entries, atomic writes.

Where: `cache_dir()` reads the environment variable IDLORA_CACHE_DIR on every call, so a test
session or a server can point it elsewhere at any time and subprocesses inherit the choice.
Unset, it is the repository's `cached/` when the package runs from a writable source checkout
(a `pyproject.toml` naming idlora-lab beside the package: `make install`'s editable install,
or a clone on PYTHONPATH), else the user cache folder `platformdirs.user_cache_dir("idlora-lab")`
(`~/.cache/idlora-lab` on Linux): never inside an installed package. Below it: `results/`
(sweep results), `skeletons/` (clustered ID-LoRA skeletons), `models/` (SmolLM2 dequantised
to float32).

What: a key is the SHA-256 of a namespace, the dtype, shape and bytes of every array the
entry depends on and every parameter (sorted JSON): change one weight entry or one parameter
and the key changes. Entries are JSON files written atomically (temporary file in the same
folder, then `os.replace`), so readers never see half an entry. Every read is validated: an
entry that cannot be parsed, stores another key, or fails the caller's check (an empty
payload, skeleton rows out of range) counts as missing and is recomputed and overwritten.
A cache folder that cannot be written is not an error: one warning, and the work goes on
without the cache.

This file knows nothing about sweeps or adapters; their modules decide what to store.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1
PACKAGE_DIR = Path(__file__).resolve().parent
REPO_CACHE = PACKAGE_DIR.parent / "cached"  # used only from a source checkout (source_checkout)
_warned: set[str] = set()


class CacheWarning(UserWarning):
    """The cache folder cannot be written (or read): work continues without it."""


def source_checkout(package_dir: Path | None = None) -> Path | None:
    """Return the repository root when `package_dir` (default: this package's folder) lies in a
    writable source checkout of ID-LoRA Lab (its parent holds a pyproject.toml with name
    "idlora-lab"), else None."""
    root = (package_dir or PACKAGE_DIR).parent
    try:
        text = (root / "pyproject.toml").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    if not re.search(r'^name\s*=\s*["\']idlora-lab["\']', text, re.MULTILINE):
        return None
    folder = root / "cached"
    return root if os.access(folder if folder.is_dir() else root, os.W_OK) else None


def default_cache_dir(package_dir: Path | None = None) -> Path:
    """Return the cache folder used when IDLORA_CACHE_DIR is unset: `<checkout>/cached` from a
    writable source checkout, else `platformdirs.user_cache_dir("idlora-lab")`."""
    root = source_checkout(package_dir)
    if root is not None:
        return root / "cached"
    import platformdirs

    return Path(platformdirs.user_cache_dir("idlora-lab", appauthor=False))


def cache_dir() -> Path:
    """Return the cache folder: $IDLORA_CACHE_DIR when set and not empty, else
    `default_cache_dir()` (the checkout's `cached/`, or the user cache folder)."""
    env = os.environ.get("IDLORA_CACHE_DIR", "").strip()
    return Path(env).expanduser() if env else default_cache_dir()


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically, creating its folder; return the path.

    A write that fails leaves the previous file in place and no temporary file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def cache_key(namespace: str, arrays: Iterable[np.ndarray], params: dict) -> str:
    """Return the hex SHA-256 key of (namespace, arrays' dtype/shape/bytes, params as sorted JSON)."""
    digest = hashlib.sha256()
    digest.update(f"{namespace}\0v{FORMAT_VERSION}\0".encode())
    for arr in arrays:
        arr = np.ascontiguousarray(arr)
        digest.update(f"{arr.dtype.str}{arr.shape}\0".encode())
        digest.update(arr.tobytes())
    digest.update(json.dumps(params, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _warn_once(folder: Path, what: str, exc: BaseException) -> None:
    if str(folder) not in _warned:
        _warned.add(str(folder))
        reason = (exc.strerror or type(exc).__name__) if isinstance(exc, OSError) else str(exc)
        warnings.warn(f"cache folder {folder} cannot be {what} ({reason}): running without the "
                      "cache; set IDLORA_CACHE_DIR to a writable folder to keep results",
                      CacheWarning, stacklevel=3)


class ResultCache:
    """JSON entries stored by key under `root` (default: `cache_dir() / kind`, read at each use).

    `hits` and `misses` count lookups since creation; `misses` includes invalid entries.
    """

    def __init__(self, root: str | Path | None = None, kind: str = "results") -> None:
        self._root = Path(root) if root is not None else None
        self.kind = kind
        self.hits = 0
        self.misses = 0

    @property
    def root(self) -> Path:
        """The folder of this cache's entries (follows IDLORA_CACHE_DIR unless given explicitly)."""
        return self._root if self._root is not None else cache_dir() / self.kind

    def path(self, key: str) -> Path:
        """Return the file that holds (or would hold) the entry `key`."""
        return self.root / key[:2] / f"{key}.json"

    def load(self, key: str, validate: Callable[[dict], object] | None = None) -> dict | None:
        """Return the stored payload of `key`, or None when absent or invalid (then it is deleted).

        validate(payload) may raise KeyError / ValueError / TypeError / IndexError to reject
        an entry that parses but cannot be used (e.g. an empty payload).
        """
        path = self.path(key)
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(entry, dict) or entry.get("key") != key or not isinstance(
                    entry.get("payload"), dict):
                raise ValueError("entry does not match its key")
            if validate is not None:
                validate(entry["payload"])
        except FileNotFoundError:
            return None
        except PermissionError as exc:
            _warn_once(path.parent, "read", exc)
            return None
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, IndexError,
                AttributeError):
            try:
                path.unlink(missing_ok=True)
            except OSError:
                pass  # a read-only cache: the entry is simply not used
            return None
        return entry["payload"]

    def save(self, key: str, payload: dict) -> Path | None:
        """Write `payload` (JSON-serialisable) under `key` atomically; return the file path, or
        None (with one CacheWarning) when the cache folder cannot be written."""
        text = json.dumps({"key": key, "version": FORMAT_VERSION, "payload": payload})
        try:
            return write_text_atomic(self.path(key), text)
        except OSError as exc:
            _warn_once(self.root, "written", exc)
            return None

    def get_or_compute(self, key: str, compute: Callable[[], dict],
                       validate: Callable[[dict], object] | None = None) -> tuple[dict, bool]:
        """Return (payload, served_from_cache): the stored valid payload, or compute(), saved."""
        payload = self.load(key, validate)
        if payload is not None:
            self.hits += 1
            return payload, True
        self.misses += 1
        payload = compute()
        self.save(key, payload)
        return payload, False


def skeleton_key(weight: np.ndarray, params: dict) -> str:
    """Return the hex key of a weight (any dtype) and the parameters that decide its skeleton."""
    return cache_key("skeleton", [weight], params)


def cached_skeleton(
    weight: np.ndarray,
    params: dict,
    compute: Callable[[], list[list[int]]],
    check: Callable[[list[list[int]]], object] | None = None,
    root: str | Path | None = None,
) -> list[list[int]]:
    """Return the stored skeleton (k lists of r row indices) for (weight, params), or `compute()`
    it and store it. An entry that is not k*r distinct row indices in [0, m) (m = weight rows)
    or that `check` rejects (raising ValueError) is recomputed and overwritten."""
    m = int(np.shape(weight)[0])

    def validate(payload: dict) -> None:
        rows = [i for cluster in payload["skeleton"] for i in cluster]
        if not all(type(i) is int and 0 <= i < m for i in rows) or len(set(rows)) != len(rows):
            raise ValueError("skeleton rows out of range or repeated")
        if check is not None:
            check(payload["skeleton"])

    store = ResultCache(root, kind="skeletons")
    payload, _ = store.get_or_compute(
        skeleton_key(weight, params), lambda: {"skeleton": [[int(i) for i in c] for c in compute()]},
        validate)
    return payload["skeleton"]
