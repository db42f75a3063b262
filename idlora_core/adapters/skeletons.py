"""On-disk cache of resolved ID-LoRA skeletons, so that re-adapting a model skips k-means.

A key is the SHA-256 of the weight's dtype, shape and bytes plus the parameters that decide
the skeleton (k, r, selection, normalize_rows, seed) and a format version: any change to
the weight or a parameter gives a new key. Entries are small JSON files under
`CACHE_DIR / "skeletons"`, written atomically (temporary file, then `os.replace`); an entry
that cannot be read or does not match its key is deleted and recomputed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from idlora_core import models as catalog
from idlora_core.cache import write_text_atomic

FORMAT_VERSION = 1


def skeleton_key(weight: np.ndarray, params: dict) -> str:
    """Return the hex key of a weight (any dtype) and the skeleton parameters."""
    arr = np.ascontiguousarray(weight)
    digest = hashlib.sha256(f"skeleton\0v{FORMAT_VERSION}\0{arr.dtype.str}{arr.shape}\0".encode())
    digest.update(arr.tobytes())
    digest.update(json.dumps(params, sort_keys=True).encode())
    return digest.hexdigest()


def cache_root() -> Path:
    """Return the folder of skeleton entries (follows `catalog.CACHE_DIR`)."""
    return Path(catalog.CACHE_DIR) / "skeletons"


def _read(path: Path, key: str) -> list[list[int]] | None:
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
        if entry["key"] != key:
            raise ValueError("key mismatch")
        return [[int(i) for i in rows] for rows in entry["skeleton"]]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        path.unlink(missing_ok=True)  # corrupt: recompute
        return None


def _write(path: Path, key: str, skeleton: list[list[int]]) -> None:
    write_text_atomic(path, json.dumps({"key": key, "skeleton": skeleton}))


def cached_skeleton(
    weight: np.ndarray, params: dict, compute: Callable[[], list[list[int]]], root: Path | None = None
) -> list[list[int]]:
    """Return the stored skeleton for (weight, params), or `compute()` it and store it."""
    key = skeleton_key(weight, params)
    path = (root or cache_root()) / key[:2] / f"{key}.json"
    found = _read(path, key)
    if found is not None:
        return found
    skeleton = compute()
    try:
        _write(path, key, skeleton)
    except OSError:
        pass  # a read-only cache must not stop adaptation
    return skeleton
