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

The **code hash** covers what the function computes, not how its source
looks: its bytecode and constants, and what the code reads from outside --
captured closure values, module globals, helper functions and classes of the
user's own code, other tasks. It is computed by :mod:`.codehash`, which says
exactly what counts.
"""

from __future__ import annotations

import hashlib
from typing import Any

from .codehash import code_hash
from .encoders import _U64, _encode_into, encode

MAGIC = b"kachery-task-id/1\n"
PREFIX = "sha256:"
KINDS = ("pure", "query", "action")

__all__ = ["KINDS", "MAGIC", "PREFIX", "args_prefix", "code_hash", "compute_task_id", "header",
           "name_key"]


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
