"""JSON Patch (RFC 6902): diff two JSON documents, apply a patch. Pure.

diff(a, b) returns operations that turn `a` into `b`; the admission webhook
sends them to the API server, which applies them to the pod it holds.
apply_patch(doc, ops) is a complete RFC 6902 implementation (add, remove,
replace, move, copy, test); the webhook checks each patch with it before
answering, and the tests use it.

Documents are JSON values as Python sees them: dict, list, str, int, float,
bool, None. Equality is JSON equality: True is not 1, 1 is not "1".

How diff handles arrays: the common head and tail are kept, the differing
middle is compared position by position, and what remains is removed or
added. An element inserted at the front (a native sidecar) or appended at
the end (a classic sidecar) therefore becomes one `add` each, not a rewrite
of the whole list.
"""
from __future__ import annotations

import copy
from typing import Any

Patch = list[dict[str, Any]]


class JsonPatchError(ValueError):
    """A patch that cannot be applied (bad pointer, missing member, failed test)."""


def escape(token: str) -> str:
    """One JSON Pointer reference token (RFC 6901): '~' -> '~0', '/' -> '~1'."""
    return token.replace("~", "~0").replace("/", "~1")


def equal(a: Any, b: Any) -> bool:
    """JSON equality: like ==, but a bool never equals a number."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict):
        return (isinstance(b, dict) and a.keys() == b.keys()
                and all(equal(v, b[k]) for k, v in a.items()))
    if isinstance(a, list):
        return (isinstance(b, list) and len(a) == len(b)
                and all(equal(x, y) for x, y in zip(a, b)))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return type(a) is type(b) and a == b


def diff(a: Any, b: Any) -> Patch:
    """Operations turning `a` into `b` (an empty list when they are equal)."""
    ops: Patch = []
    _diff(a, b, "", ops)
    return ops


def _diff(a: Any, b: Any, path: str, ops: Patch) -> None:
    if equal(a, b):
        return
    if isinstance(a, dict) and isinstance(b, dict):
        for key in a:
            if key not in b:
                ops.append({"op": "remove", "path": path + "/" + escape(key)})
        for key, value in b.items():
            if key in a:
                _diff(a[key], value, path + "/" + escape(key), ops)
            else:
                ops.append({"op": "add", "path": path + "/" + escape(key), "value": copy.deepcopy(value)})
        return
    if isinstance(a, list) and isinstance(b, list):
        _diff_list(a, b, path, ops)
        return
    ops.append({"op": "replace", "path": path, "value": copy.deepcopy(b)})


def _diff_list(a: list, b: list, path: str, ops: Patch) -> None:
    shortest = min(len(a), len(b))
    head = 0
    while head < shortest and equal(a[head], b[head]):
        head += 1
    tail = 0
    while tail < shortest - head and equal(a[-1 - tail], b[-1 - tail]):
        tail += 1
    old = a[head:len(a) - tail]
    new = b[head:len(b) - tail]
    paired = min(len(old), len(new))
    for i in range(paired):
        _diff(old[i], new[i], f"{path}/{head + i}", ops)
    # Extra old elements sit at head+paired onwards: removing that index
    # repeatedly removes them all.
    for _ in range(len(old) - paired):
        ops.append({"op": "remove", "path": f"{path}/{head + paired}"})
    for j in range(paired, len(new)):
        index = head + j
        at_end = tail == 0  # nothing after the insertion point: append
        ops.append({"op": "add", "path": f"{path}/-" if at_end else f"{path}/{index}",
                    "value": copy.deepcopy(new[j])})


def apply_patch(doc: Any, patch: Patch) -> Any:
    """Applies `patch` to a copy of `doc` and returns the copy. Raises
    JsonPatchError if any operation fails; `doc` is never modified."""
    if not isinstance(patch, list):
        raise JsonPatchError("a patch is a JSON array of operations")
    out = copy.deepcopy(doc)
    for n, op in enumerate(patch):
        try:
            out = _apply_one(out, op)
        except JsonPatchError as e:
            raise JsonPatchError(f"operation {n} ({_describe(op)}): {e}") from None
    return out


def _describe(op: Any) -> str:
    if isinstance(op, dict):
        return f"{op.get('op')} {op.get('path')!r}"
    return repr(op)


def _member(op: dict, name: str) -> Any:
    if name not in op:
        raise JsonPatchError(f"missing {name!r}")
    return op[name]


def _apply_one(doc: Any, op: Any) -> Any:
    if not isinstance(op, dict):
        raise JsonPatchError("an operation is a JSON object")
    kind = _member(op, "op")
    path = _member(op, "path")
    if not isinstance(path, str):
        raise JsonPatchError("'path' must be a string")
    if kind == "add":
        return _add(doc, path, copy.deepcopy(_member(op, "value")))
    if kind == "remove":
        doc, _ = _remove(doc, path)
        return doc
    if kind == "replace":
        _get(doc, path)  # the target must exist
        doc, _ = _remove(doc, path)
        return _add(doc, path, copy.deepcopy(_member(op, "value")))
    if kind == "move":
        source = _member(op, "from")
        if not isinstance(source, str):
            raise JsonPatchError("'from' must be a string")
        if path.startswith(source + "/"):
            raise JsonPatchError("cannot move a value into one of its own children")
        if path == source:
            _get(doc, path)
            return doc
        doc, value = _remove(doc, source)
        return _add(doc, path, value)
    if kind == "copy":
        source = _member(op, "from")
        if not isinstance(source, str):
            raise JsonPatchError("'from' must be a string")
        return _add(doc, path, copy.deepcopy(_get(doc, source)))
    if kind == "test":
        if not equal(_get(doc, path), _member(op, "value")):
            raise JsonPatchError("test failed: value differs")
        return doc
    raise JsonPatchError(f"unknown op {kind!r}")


def _tokens(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise JsonPatchError(f"pointer {path!r} must be empty or start with '/'")
    return [t.replace("~1", "/").replace("~0", "~") for t in path[1:].split("/")]


def _index(token: str, length: int, allow_end: bool) -> int:
    if allow_end and token == "-":
        return length
    if not token.isdigit() or not token.isascii() or (len(token) > 1 and token[0] == "0"):
        raise JsonPatchError(f"{token!r} is not an array index")
    i = int(token)
    if i > length or (i == length and not allow_end):
        raise JsonPatchError(f"index {i} is out of range (array of {length})")
    return i


def _parent(doc: Any, path: str) -> tuple[Any, str]:
    tokens = _tokens(path)
    container = doc
    for token in tokens[:-1]:
        container = _child(container, token)
    return container, tokens[-1]


def _child(container: Any, token: str) -> Any:
    if isinstance(container, dict):
        if token not in container:
            raise JsonPatchError(f"no member {token!r}")
        return container[token]
    if isinstance(container, list):
        return container[_index(token, len(container), allow_end=False)]
    raise JsonPatchError(f"cannot descend into a {type(container).__name__} with {token!r}")


def _get(doc: Any, path: str) -> Any:
    value = doc
    for token in _tokens(path):
        value = _child(value, token)
    return value


def _add(doc: Any, path: str, value: Any) -> Any:
    if path == "":
        return value
    container, last = _parent(doc, path)
    if isinstance(container, dict):
        container[last] = value
    elif isinstance(container, list):
        container.insert(_index(last, len(container), allow_end=True), value)
    else:
        raise JsonPatchError(f"cannot add to a {type(container).__name__}")
    return doc


def _remove(doc: Any, path: str) -> tuple[Any, Any]:
    if path == "":
        return None, doc
    container, last = _parent(doc, path)
    if isinstance(container, dict):
        if last not in container:
            raise JsonPatchError(f"no member {last!r}")
        return doc, container.pop(last)
    if isinstance(container, list):
        return doc, container.pop(_index(last, len(container), allow_end=False))
    raise JsonPatchError(f"cannot remove from a {type(container).__name__}")
