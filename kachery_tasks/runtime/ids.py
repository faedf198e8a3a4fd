"""Task ids: SHA-256 over a canonical encoding of what a call computes.

Invariant: two calls get the same id exactly when they have the same kind,
function name (``module.qualname``), version, code hash (when there is no
version) and bound arguments; the id never depends on the machine, the
process, the order of keyword arguments or a dict's key order. Arguments
are bound to the signature first, so ``f(1, b=2)``, ``f(1, 2)`` and ``f(1)``
with ``b=2`` as the default are the same call.

The preimage of an id (see ``docs/task-ids.md`` for the byte-level rules)::

    b"kachery-task-id/1\\n" + enc(kind) + enc(function) + enc(version)
        + enc(code_hash) + enc({parameter name: argument value})

where ``enc`` is :func:`kachery_tasks.runtime.encoders.encode`, ``version``
and ``code_hash`` are a str or None, and ``code_hash`` is None whenever a
version is given: an explicit version replaces the code hash, and the user
takes responsibility for bumping it. The id is ``"sha256:" + hexdigest``.

The **code hash** covers what the function does, not how its source looks:
the Python minor version (bytecode differs between them), each code
object's bytecode, constants, names and exception table (recursively into
nested functions and comprehensions), and the identity of every ``@pure``
task the function can reach by name (its globals, attributes of modules it
uses, its closure). Line numbers, comments, formatting, local variable
names and the function's docstring are left out, so none of them changes an
id. Plain helper functions that are not tasks are *not* followed: give the
task a ``version`` or make the helper a task when its changes must count.
"""

from __future__ import annotations

import hashlib
import sys
import threading
import types
from typing import Any

from .encoders import _U64, _encode_into, encode

MAGIC = b"kachery-task-id/1\n"
PREFIX = "sha256:"
KINDS = ("pure", "query", "action")


def header(kind: str, function: str, version: str | None, code_hash: str | None) -> bytes:
    """The part of the preimage that is fixed for one task (everything but the arguments)."""
    out: list[bytes] = [MAGIC]
    for v in (kind, function, version, None if version is not None else code_hash):
        _encode_into(v, out)
    return b"".join(out)


def args_prefix(n: int) -> bytes:
    """The dict tag and count that open the encoding of ``n`` bound arguments."""
    return b"d" + _U64(n)


def name_key(name: str) -> bytes:
    """The encoding of a parameter name (arguments are sorted by these bytes)."""
    return encode(name)


def compute_task_id(
    kind: str,
    function: str,
    version: str | None,
    code_hash: str | None,
    arguments: dict[str, Any],
) -> str:
    """The task id of a call, from its parts (the reference implementation of the doc).

    ``arguments`` maps every parameter name to its bound value (defaults
    included). Used by tests and by other programs' conformance checks; tasks
    compute the same bytes through a faster path.
    """
    return PREFIX + hashlib.sha256(
        header(kind, function, version, code_hash) + encode(dict(arguments))
    ).hexdigest()


# ---------------------------------------------------------------- code hash
_state = threading.local()


def code_hash(func: types.FunctionType) -> str:
    """Hex SHA-256 of what ``func`` does (see the module docstring for what counts)."""
    h = hashlib.sha256()
    h.update(b"python %d.%d\n" % sys.version_info[:2])
    _hash_code(func.__code__, h, func.__doc__)
    in_progress: set[int] = getattr(_state, "in_progress", None) or set()
    _state.in_progress = in_progress
    in_progress.add(id(func))
    try:
        for task in sorted(called_tasks(func), key=lambda t: t.name):
            h.update(b"calls")
            h.update(encode(_callee_identity(task, in_progress)))
    finally:
        in_progress.discard(id(func))
    return h.hexdigest()


def _callee_identity(task: Any, in_progress: set[int]) -> tuple:
    if task.version is not None:
        return (task.name, "version", task.version)
    if id(task.func) in in_progress:  # recursion: the name is all that can be said
        return (task.name, "recursive")
    return (task.name, "code", task.code_hash)


def called_tasks(func: types.FunctionType) -> list[Any]:
    """The ``@pure`` tasks ``func`` can call by name: globals, module attributes, closure."""
    names = set(_all_names(func.__code__))
    found: dict[int, Any] = {}
    g = func.__globals__
    for name in names:
        obj = g.get(name)
        if _is_pure_task(obj):
            found[id(obj)] = obj
        elif isinstance(obj, types.ModuleType):
            for attr in names:
                sub = getattr(obj, attr, None)
                if _is_pure_task(sub):
                    found[id(sub)] = sub
    for cell in func.__closure__ or ():
        try:
            obj = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        if _is_pure_task(obj):
            found[id(obj)] = obj
    return list(found.values())


def _is_pure_task(obj: Any) -> bool:
    return getattr(obj, "_kachery_task_kind", None) == "pure"


def _all_names(code: types.CodeType) -> list[str]:
    names = list(code.co_names)
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            names.extend(_all_names(c))
    return names


def _hash_code(code: types.CodeType, h: Any, doc: str | None = None) -> None:
    consts = list(code.co_consts)
    if (
        isinstance(doc, str)
        and consts
        and consts[0] == doc
        and not _loads_const(code, 0)
    ):
        consts[0] = None  # the docstring: documentation, not behaviour
    h.update(
        encode(
            (
                "code",
                code.co_argcount,
                code.co_posonlyargcount,
                code.co_kwonlyargcount,
                code.co_flags,
                code.co_code,
                code.co_names,
                getattr(code, "co_exceptiontable", b""),
                len(consts),
            )
        )
    )
    for c in consts:
        if isinstance(c, types.CodeType):
            h.update(b"nested")
            _hash_code(c, h)
        else:
            h.update(_const_bytes(c))


def _const_bytes(c: Any) -> bytes:
    if isinstance(c, tuple | frozenset):
        parts = [_const_bytes(x) for x in c]
        if isinstance(c, frozenset):
            parts.sort()
        return b"T" + _U64(len(parts)) + b"".join(parts)
    if c is None or type(c) in (bool, int, float, str, bytes):
        return encode(c)
    text = repr(c).encode()  # Ellipsis, complex: repr is exact and stable
    return b"?" + _U64(len(text)) + text


def _loads_const(code: types.CodeType, index: int) -> bool:
    """True when the bytecode reads constant ``index`` (so it is not only a docstring)."""
    import opcode

    hasconst = set(opcode.hasconst)
    extended = opcode.opmap.get("EXTENDED_ARG")
    raw = code.co_code
    arg_prefix = 0
    for i in range(0, len(raw), 2):
        op, arg = raw[i], raw[i + 1]
        if op == extended:
            arg_prefix = (arg_prefix | arg) << 8
            continue
        if op in hasconst and (arg_prefix | arg) == index:
            return True
        arg_prefix = 0
    return False
