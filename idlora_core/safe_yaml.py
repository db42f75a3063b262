"""Bounded YAML reading for user-supplied text: configs, `--set` values, uploads.

`yaml.safe_load` never runs code, but a few hundred bytes of anchors and aliases
("billion laughs") expand into billions of nodes once something walks the result
(validation, printing an error). `safe_load_bounded` composes with a SafeLoader subclass
that counts every node *as expanded through aliases* and stops past a limit, refuses
recursive aliases and deep nesting, and turns every parser error into one `YAMLInputError`
line. `shorten` caps any value shown back to a user.

This file is not the config schema (that is `idlora_core.config`).
"""

from __future__ import annotations

from typing import Any

import yaml

MAX_YAML_NODES = 500_000  # a 70B model's resolved skeletons (k=8, r=16) are ~80k nodes
MAX_YAML_DEPTH = 64
MAX_SHOWN_CHARS = 200


class YAMLInputError(ValueError):
    """YAML text that could not be read safely; the message is one line naming the problem."""


def shorten(value: Any, limit: int = MAX_SHOWN_CHARS) -> str:
    """Return `repr(value)` cut to about `limit` characters (marked `...`), built without ever
    formatting more than that: safe to put any user value into an error message."""
    if isinstance(value, str):
        text = repr(value[: limit + 1])
        if len(value) > limit:
            return text[: limit - 3] + f"... ({len(value):,} chars)"
        return text
    if isinstance(value, (dict, list, tuple, set)) and len(value) > limit:
        return f"<{type(value).__name__} of {len(value):,} items>"
    text = reprlib_repr(value, limit)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def cut(text: str, limit: int = MAX_SHOWN_CHARS) -> str:
    """Return the message `text` on one line, cut to about `limit` characters."""
    text = text[: limit + 1].replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def reprlib_repr(value: Any, limit: int) -> str:
    """Return a repr of `value` no longer than about `limit` chars, without building a huge one."""
    import reprlib

    r = reprlib.Repr()
    r.maxstring = r.maxother = r.maxlong = limit
    r.maxlist = r.maxdict = r.maxtuple = r.maxset = 20
    r.maxlevel = 4
    return r.repr(value)


class BoundedSafeLoader(yaml.SafeLoader):
    """SafeLoader that refuses documents expanding to more than `max_nodes` nodes.

    Aliases are counted at their full expanded size (memoised per node), so the count is
    what a consumer walking the loaded object would visit; a recursive alias is refused.
    """

    max_nodes = MAX_YAML_NODES
    max_depth = MAX_YAML_DEPTH

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._count = 0
        self._depth = 0
        self._sizes: dict[int, int] = {}

    def _size(self, node: yaml.Node) -> int:
        known = self._sizes.get(id(node))
        if known is None:  # an anchored node still being composed: it contains its alias
            raise YAMLInputError(
                f"recursive alias at line {self._line()}: a node cannot contain itself"
            )
        return known

    def _line(self) -> int:
        return self.get_mark().line + 1

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:  # noqa: D102
        alias = self.check_event(yaml.AliasEvent)
        self._depth += 1
        if self._depth > self.max_depth:
            raise YAMLInputError(
                f"YAML nested deeper than {self.max_depth} levels at line {self._line()}"
            )
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if alias:
            size = self._size(node)
        else:
            if isinstance(node, yaml.SequenceNode):
                size = 1 + sum(self._sizes[id(c)] for c in node.value)
            elif isinstance(node, yaml.MappingNode):
                size = 1 + sum(self._sizes[id(k)] + self._sizes[id(v)] for k, v in node.value)
            else:
                size = 1
            self._sizes[id(node)] = size
        self._count += size if alias else 1
        if self._count > self.max_nodes or size > self.max_nodes:
            raise YAMLInputError(
                f"YAML expands to more than {self.max_nodes:,} nodes (line {self._line()}); "
                "anchors/aliases that multiply data are not accepted"
            )
        return node


def safe_load_bounded(text: str | bytes, max_nodes: int = MAX_YAML_NODES) -> Any:
    """Return the Python object in YAML `text` (safe tags only, at most `max_nodes` nodes).

    Raises YAMLInputError (one line, with the line number where YAML gives one) for invalid
    YAML, python/* tags, alias bombs, recursive aliases, deep nesting and non-UTF-8 bytes.
    """
    if isinstance(text, bytes):
        text = decode_utf8(text, "YAML")
    loader_cls = BoundedSafeLoader
    if max_nodes != MAX_YAML_NODES:
        loader_cls = type("_Loader", (BoundedSafeLoader,), {"max_nodes": max_nodes})
    loader = None
    try:
        loader = loader_cls(text)  # the reader already refuses control characters here
        return loader.get_single_data()
    except YAMLInputError:
        raise
    except yaml.MarkedYAMLError as exc:
        where = f" at line {exc.problem_mark.line + 1}" if exc.problem_mark else ""
        what = " ".join(str(p) for p in (exc.context, exc.problem) if p) or "invalid YAML"
        raise YAMLInputError(f"not valid YAML{where}: {cut(what)}") from None
    except yaml.YAMLError as exc:
        raise YAMLInputError(f"not valid YAML: {cut(str(exc))}") from None
    except RecursionError:
        raise YAMLInputError("YAML nested too deeply") from None
    except (ValueError, TypeError, OverflowError) as exc:  # e.g. a date 2001-02-30, !!int x
        raise YAMLInputError(f"not valid YAML: {cut(str(exc))}") from None
    except (AttributeError, IndexError, KeyError) as exc:  # PyYAML on e.g. an empty `!!int`
        raise YAMLInputError(f"not valid YAML: a tagged value could not be read "
                             f"({type(exc).__name__})") from None
    finally:
        if loader is not None:
            loader.dispose()


def decode_utf8(data: bytes, name: str) -> str:
    """Return `data` decoded as UTF-8; raises YAMLInputError naming `name` and the bad line."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise YAMLInputError(
            f"{name} is not UTF-8 text (byte 0x{data[exc.start]:02x} at line {line}); "
            "save it as UTF-8"
        ) from None
