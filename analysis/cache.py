"""Content-addressed on-disk cache of computed results, under `cached/results/`.

A key is the SHA-256 of a namespace, the bytes (with dtype and shape) of every array the
result depends on, and every parameter (JSON, sorted keys): change any weight entry or any
parameter and the key changes. Entries are JSON files written atomically (temporary file in
the same folder, then `os.replace`), so readers never see half an entry; an entry that
cannot be read or whose stored key does not match is treated as missing, deleted, and
recomputed. The folder follows `idlora_core.models.CACHE_DIR` (env IDLORA_CACHE_DIR).

This file knows nothing about sweeps; `layer_sweep.py` decides what to store.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from idlora_core.cache import write_text_atomic
from idlora_core.models import CACHE_DIR

FORMAT_VERSION = 1


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


class ResultCache:
    """JSON results stored by key in `root` (default `CACHE_DIR / "results"`).

    `hits` and `misses` count lookups since creation.
    """

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else CACHE_DIR / "results"
        self.hits = 0
        self.misses = 0

    def path(self, key: str) -> Path:
        """Return the file that holds (or would hold) the entry `key`."""
        return self.root / key[:2] / f"{key}.json"

    def load(self, key: str) -> dict | None:
        """Return the stored payload of `key`, or None when absent or corrupt (then it is deleted)."""
        path = self.path(key)
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(entry, dict) or entry.get("key") != key or "payload" not in entry:
                raise ValueError("entry does not match its key")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, ValueError):
            path.unlink(missing_ok=True)
            return None
        return entry["payload"]

    def save(self, key: str, payload: dict) -> Path:
        """Write `payload` (JSON-serialisable) under `key` atomically; returns the file path."""
        text = json.dumps({"key": key, "version": FORMAT_VERSION, "payload": payload})
        return write_text_atomic(self.path(key), text)

    def get_or_compute(self, key: str, compute: Callable[[], dict]) -> tuple[dict, bool]:
        """Return (payload, served_from_cache): the stored payload, or compute(), saved, when missing."""
        payload = self.load(key)
        if payload is not None:
            self.hits += 1
            return payload, True
        self.misses += 1
        payload = compute()
        self.save(key, payload)
        return payload, False
