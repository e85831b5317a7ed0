"""Loading a YAML document fast: libyaml's parser, the objects built straight from its events.

``yaml.safe_load`` (PyYAML's pure-Python scanner, parser, composer and constructor) takes
minutes and gigabytes for a network file of 150,000 meters; even its libyaml loader builds a
node, with two marks, for every scalar before constructing anything. ``load_yaml`` asks
libyaml for the events and builds the dicts, lists and scalars as they come, resolving and
constructing each scalar exactly as ``safe_load`` does (same tags, same constructors), so the
document is the same. Whatever it does not handle itself (explicit tags, merge keys, keys
that are collections, several documents) and every error is left to ``safe_load``: what a
valid file gives and what an invalid one says (line and column included) stay as they were.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from typing import Any

import yaml
from yaml.events import (
    AliasEvent,
    DocumentEndEvent,
    DocumentStartEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
    StreamStartEvent,
)
from yaml.nodes import ScalarNode

_STR = "tag:yaml.org,2002:str"
# The tags of plain scalars that SafeLoader resolves and constructs (merge ``<<`` and
# value ``=`` keys are left to it).
_SCALAR_TAGS = frozenset(
    {
        "tag:yaml.org,2002:null",
        "tag:yaml.org,2002:bool",
        "tag:yaml.org,2002:int",
        "tag:yaml.org,2002:float",
        "tag:yaml.org,2002:timestamp",
    }
)
_CSafeLoader: Any = getattr(yaml, "CSafeLoader", None)


class _Unusual(Exception):
    """Something the fast path leaves to PyYAML's own loader."""


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """No cyclic garbage collection meanwhile: building millions of small objects (a big
    document, its model) otherwise triggers collections that scan all of them again and
    again. Reference counting still frees what is dropped."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def load_yaml(text: str) -> Any:
    """The single document in ``text`` as ``yaml.safe_load(text)`` gives it; a
    ``yaml.YAMLError`` as it raises it."""
    if _CSafeLoader is None:  # PyYAML built without libyaml
        return yaml.safe_load(text)
    with paused_gc():
        try:
            return _from_events(text)
        except (_Unusual, yaml.YAMLError):
            pass
        # The slow path, and the one that says what is wrong.
        return yaml.safe_load(text)


def _from_events(text: str) -> Any:
    loader = _CSafeLoader(text)
    try:
        return _build(loader)
    finally:
        loader.dispose()


def _build(loader: Any) -> Any:
    get = loader.get_event
    resolve = loader.resolve
    constructors = loader.yaml_constructors
    # Resolver.resolve inlined for plain scalars: the patterns for their first character
    # (most have none: text); SafeLoader has neither wildcard nor path resolvers.
    implicit = loader.yaml_implicit_resolvers
    if implicit.get(None) or loader.yaml_path_resolvers:  # pragma: no cover
        raise _Unusual
    anchors: dict[str, Any] = {}
    # One object for each distinct scalar: a big file repeats its keys and most of its
    # values (kinds, units, numbers) over and over, and the document is held as long as it
    # is validated.
    texts: dict[str, str] = {}
    share = texts.setdefault
    scalars: dict[tuple[str, str], Any] = {}
    # Collections being built: [the dict or list, the key waiting for its value (or _NO_KEY)].
    stack: list[list[Any]] = []
    no_key = _NO_KEY

    if type(get()) is not StreamStartEvent:  # pragma: no cover - libyaml always starts so
        raise _Unusual
    event = get()
    if type(event) is StreamEndEvent:
        return None
    if type(event) is not DocumentStartEvent:  # pragma: no cover
        raise _Unusual
    root: Any = no_key
    while True:
        event = get()
        kind = type(event)
        value: Any
        if kind is ScalarEvent:
            tag = event.tag
            value = event.value
            if tag is None and event.implicit[0]:
                patterns = implicit.get(value[0] if value else "")
                tag = _STR
                if patterns:
                    for candidate, pattern in patterns:
                        if pattern.match(value):
                            tag = candidate
                            break
            elif tag is None or tag == "!":
                tag = resolve(ScalarNode, value, event.implicit)
            if tag == _STR:
                value = share(value, value)
            elif tag in _SCALAR_TAGS:
                key = (tag, value)
                if key in scalars:
                    value = scalars[key]
                else:
                    node = ScalarNode(tag, value, event.start_mark, event.end_mark, event.style)
                    value = scalars[key] = constructors[tag](loader, node)
            else:
                raise _Unusual
            if event.anchor is not None:
                _anchor(anchors, event.anchor, value)
        elif kind is MappingStartEvent or kind is SequenceStartEvent:
            if event.tag is not None and event.tag != "!":
                raise _Unusual
            value = {} if kind is MappingStartEvent else []
            if event.anchor is not None:
                _anchor(anchors, event.anchor, value)
            stack.append([value, no_key])
            continue
        elif kind is MappingEndEvent or kind is SequenceEndEvent:
            value = stack.pop()[0]
        elif kind is AliasEvent:
            if event.anchor not in anchors:
                raise _Unusual
            value = anchors[event.anchor]
        elif kind is DocumentEndEvent:
            break
        else:  # pragma: no cover - nothing else comes inside a document
            raise _Unusual
        if not stack:
            root = value
            continue
        top = stack[-1]
        into = top[0]
        if type(into) is list:
            into.append(value)
        elif top[1] is no_key:
            if isinstance(value, dict | list):
                raise _Unusual  # a collection as a key: PyYAML says what is wrong
            top[1] = value
        else:
            into[top[1]] = value
            top[1] = no_key
    if type(get()) is not StreamEndEvent:
        raise _Unusual  # another document follows: PyYAML refuses it
    return None if root is no_key else root


def _anchor(anchors: dict[str, Any], name: str, value: Any) -> None:
    if name in anchors:
        raise _Unusual  # PyYAML refuses a duplicate anchor
    anchors[name] = value


_NO_KEY = object()
