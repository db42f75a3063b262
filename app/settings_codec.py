"""Text and JSON forms of the page settings dataclasses (`app/page_settings.py`).

`PageSettings` is the base of every page's dataclass: session state, URL text and JSON
conversions driven by the fields' types (no per-key tables). URL text: lists comma-separated
(each value once), a (first, last) range "first-last", booleans 1/0, a dict as compact JSON,
floats exact (repr), None as "". Values are validated with pydantic (lax for URL text, strict
for JSON) and against the class's LIMITS; a value that does not fit is left out, so its default
stays. Fields whose metadata is LOCAL never leave the session. A class's RETIRED keys (old
session key -> the one name, docs/VOCABULARY.md) are read in state, URL and JSON under the new
key when the new key is absent; they are never written. A class's FALLBACK keys (key -> the
key it falls back to, e.g. HydraLoRA's heads -> the clusters-k key that held them before) take
the other key's value when they are absent from state, URL or JSON; so that a reload never does
that to a key left at its default, a FALLBACK key is written (URL, store) whenever the key it
falls back to is. No Streamlit calls, no maths.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import types
import typing
from collections.abc import Mapping, MutableMapping
from typing import Annotated, Any, ClassVar

from pydantic import ConfigDict, TypeAdapter, ValidationError

LOCAL = {"local": True}  # field metadata: session only (never in the URL or the store)
MAX_QUERY_CHARS = 2000  # a longer value stays out of the URL (browsers and proxies cap addresses)


class PageSettings:
    """The conversions of a page's settings dataclass (see the module docstring)."""

    PAGE: ClassVar[str]  # the page's name in url_state
    KEYS: ClassVar[dict[str, str]] = {}  # field -> session key, where they differ
    LIMITS: ClassVar[Mapping[str, tuple[float, float | None]]] = {}  # key -> (min, max), each item
    RETIRED: ClassVar[dict[str, str]] = {}  # old session key -> its key now (read, never written)
    FALLBACK: ClassVar[dict[str, str]] = {}  # key -> the key whose value it takes when absent

    @classmethod
    def keys(cls) -> dict[str, str]:
        """Return {field name: session-state key} of every field."""
        return {f.name: cls.KEYS.get(f.name, f.name) for f in dataclasses.fields(cls)}

    @classmethod
    def renamed(cls, values: Mapping[str, Any]) -> Mapping[str, Any]:
        """Return `values` with each RETIRED key's value under its new key (when the new key is
        absent), then each absent FALLBACK key with the value of the key it falls back to;
        `values` itself when neither applies."""
        old = {o: n for o, n in cls.RETIRED.items() if o in values and n not in values}
        if old:
            values = dict(values) | {new: values[o] for o, new in old.items()}
        missing = {key: other for key, other in cls.FALLBACK.items() if other in values and key not in values}
        if missing:
            values = dict(values) | {key: values[other] for key, other in missing.items()}
        return values

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> typing.Self:
        """Return the settings held in `state` (a missing key: its default, or the value of the key
        it falls back to (FALLBACK); a retired key is read under its new name)."""
        base = cls()
        state = cls.renamed(state)
        return cls(**{name: copy.deepcopy(state[key]) if key in state else getattr(base, name)
                      for name, key in cls.keys().items()})

    def to_state(self, state: MutableMapping[str, Any]) -> None:
        """Write every field into `state` under its key (a copy of each value)."""
        state.update(self.values())

    def values(self) -> dict[str, Any]:
        """Return {session key: value} of every field (copies)."""
        return {key: copy.deepcopy(getattr(self, name)) for name, key in self.keys().items()}

    def changed(self) -> dict[str, Any]:
        """Return {session key: value} of the fields that differ from their defaults."""
        base = type(self)()
        return {key: getattr(self, name) for name, key in self.keys().items()
                if getattr(self, name) != getattr(base, name)}

    def _written(self) -> dict[str, Any]:
        """Return `changed()` plus each FALLBACK key whose other key is in it (at its own value,
        a default included: absent, it would take the other key's value when read back)."""
        out = self.changed()
        names = {key: name for name, key in self.keys().items()}
        return out | {key: getattr(self, names[key]) for key, other in self.FALLBACK.items()
                      if other in out and key not in out}

    def to_query(self) -> dict[str, str]:
        """Return the URL parameters of the values that differ from the defaults, and of each
        FALLBACK key whose other key is written (LOCAL fields never; nor a value longer than
        MAX_QUERY_CHARS, e.g. overrides for hundreds of layers: the session store keeps it)."""
        local = _local(type(self))
        texts = {key: encode(value, _hint(type(self), _field(type(self), key)))
                 for key, value in self._written().items() if key not in local}
        return {key: text for key, text in texts.items() if len(text) <= MAX_QUERY_CHARS}

    @classmethod
    def parse_query(cls, params: Mapping[str, str]) -> dict[str, Any]:
        """Return {key: value} of the keys of this class found in `params` (URL text) that parse
        and fit their ranges (a retired key under its new name, a missing FALLBACK key from the
        key it falls back to); unknown keys, LOCAL keys and bad values are left out."""
        out = {}
        params = cls.renamed(params)
        for name, key in cls.keys().items():
            if key in params and key not in _local(cls):
                try:
                    out[key] = decode(str(params[key]), cls, name)
                except ValueError:
                    continue
        return out

    @classmethod
    def from_query(cls, params: Mapping[str, str]) -> typing.Self:
        """Return the settings of URL `params`: the defaults, replaced by every value that parses."""
        return cls.from_state(cls.parse_query(params))

    def to_json(self, changed_only: bool = False) -> dict[str, Any]:
        """Return {key: JSON-able value} of every non-LOCAL field (only those that differ from
        their defaults, and FALLBACK keys whose other key is written, with `changed_only`), for
        the session store."""
        local = _local(type(self))
        values = self._written() if changed_only else self.values()
        return {key: _adapter(type(self), _field(type(self), key)).dump_python(value, mode="json")
                for key, value in values.items() if key not in local}

    @classmethod
    def parse_json(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        """Return {key: value} of the keys of this class in `data` (JSON values) that validate
        and fit their ranges (a retired key under its new name, a missing FALLBACK key from the
        key it falls back to); the rest are left out."""
        out = {}
        data = cls.renamed(data)
        for name, key in cls.keys().items():
            if key in data and key not in _local(cls):
                try:  # strict: JSON holds typed values ("yes" is no boolean)
                    out[key] = _check(cls, name, json.dumps(data[key]), from_json=True)
                except (TypeError, ValueError):
                    continue
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> typing.Self:
        """Return the settings of store `data`: the defaults, replaced by every value that validates."""
        return cls.from_state(cls.parse_json(data))


def _local(cls: type) -> frozenset[str]:
    keys = cls.keys()
    return frozenset(keys[f.name] for f in dataclasses.fields(cls) if f.metadata.get("local"))


def _field(cls: type, key: str) -> str:
    return {k: n for n, k in cls.keys().items()}[key]


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def _hint(cls: type, name: str) -> Any:
    return _hints(cls)[name]


@functools.cache
def _adapter(cls: type, name: str) -> TypeAdapter:
    return TypeAdapter(_hint(cls, name), config=ConfigDict(allow_inf_nan=False))


def _shape(hint: Any) -> tuple[str, bool]:
    """Return (kind, optional) of a field type: kind is list, tuple, dict, bool, float or str."""
    optional = False
    while True:
        origin = typing.get_origin(hint)
        if origin is Annotated:
            hint = typing.get_args(hint)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            optional = optional or len(args) < len(typing.get_args(hint))
            hint = args[0]
        else:
            break
    if origin in (list, tuple, dict):
        return origin.__name__, optional
    return (hint.__name__ if hint in (bool, float) else "str"), optional


def encode(value: Any, hint: Any) -> str:
    """Return the URL text of `value` of field type `hint`: lists comma-separated, a range
    "first-last", booleans 1/0, a dict as JSON, floats exactly (repr)."""
    kind, _ = _shape(hint)
    if value is None:
        return ""
    if kind == "list":
        return ",".join(str(v) for v in value)
    if kind == "tuple":
        return f"{int(value[0])}-{int(value[1])}"
    if kind == "dict":
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    if kind == "bool":
        return "1" if value else "0"
    return repr(float(value)) if kind == "float" else str(value)


def decode(text: str, cls: type, name: str) -> Any:
    """Return the value of URL `text` for field `name` of `cls`; raise ValueError when it does
    not parse or lies outside its range. Lists keep each value once, in order (`id,id` named
    two widgets alike: StreamlitDuplicateElementKey)."""
    kind, optional = _shape(_hint(cls, name))
    raw: Any = text
    if optional and text == "":
        raw = None
    elif kind == "list":
        raw = [t.strip() for t in text.split(",") if t.strip()]
    elif kind == "tuple":
        first, sep, last = text.partition("-")
        if not sep:
            raise ValueError(f"{text!r} is not a range first-last")
        raw = (first, last)
    elif kind == "dict":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(str(exc)) from exc
    elif kind == "bool" and text not in ("0", "1"):
        raise ValueError(f"{text!r} is not 0 or 1")
    return _check(cls, name, raw)


def _check(cls: type, name: str, raw: Any, from_json: bool = False) -> Any:
    """Validate `raw` (JSON text, strictly, when `from_json`) as field `name` of `cls`
    (ValueError when it does not fit), dedupe lists, order ranges and check LIMITS."""
    try:
        adapter = _adapter(cls, name)
        value = adapter.validate_json(raw, strict=True) if from_json else adapter.validate_python(raw)
    except ValidationError as exc:
        raise ValueError(str(exc)) from exc
    if isinstance(value, list):
        value = list(dict.fromkeys(value))
    if isinstance(value, tuple):
        value = (min(value), max(value))
    lo, hi = cls.LIMITS.get(cls.KEYS.get(name, name), (None, None))
    items = value if isinstance(value, (list, tuple)) else [value]
    for item in items:
        if isinstance(item, (int, float)) and not isinstance(item, bool) and (
                (lo is not None and item < lo) or (hi is not None and item > hi)):
            raise ValueError(f"{item} outside {lo} to {hi}")
    return value
