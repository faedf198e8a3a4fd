"""Reading a node's task records for people: what ran, what it used, what it called.

Shared by ``kachery-tasks tasks ...`` and the daemon's HTTP API, so both name
tasks, resolve prefixes and describe runs the same way.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import InvalidValueError, TaskNotCachedError
from .records import Records, ResultRow, Run

#: Results kept inline whose JSON is at most this long are shown with ``show``.
PREVIEW_BYTES = 4096


def resolve_function(records: Records, name: str) -> str:
    """The recorded function ``name`` means: exact, or a unique last part (``bandpass``)."""
    names = records.functions()
    if name in names:
        return name
    matches = [n for n in names if n.rsplit(".", 1)[-1] == name or n.endswith("." + name)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise TaskNotCachedError(
            f"no outcomes of a function named {name!r} are recorded on this node; "
            "'kachery-tasks tasks ls' lists the recorded ones"
        )
    raise InvalidValueError(f"{name!r} is ambiguous: {', '.join(sorted(matches))}")


def resolve_task_id(records: Records, prefix: str) -> str:
    """The one recorded task id starting with ``prefix`` (with or without ``sha256:``)."""
    prefix = prefix.strip()
    matches = records.task_ids_with_prefix(prefix)
    if not matches:
        raise TaskNotCachedError(
            f"no task with id {prefix} is recorded on this node; 'kachery-tasks tasks ls' "
            "lists those run here, 'kachery-tasks tasks ls --imported' those computed elsewhere"
        )
    if len(matches) > 1:
        raise InvalidValueError(
            f"{prefix} matches several tasks ({', '.join(m[:19] for m in matches)}...); "
            "give more digits"
        )
    return matches[0]


def run_dict(r: Run) -> dict[str, Any]:
    """One run as JSON-ready data (what ``tasks ls --json`` prints)."""
    return {
        "task_id": r.task_id, "kind": r.kind, "function": r.function, "version": r.version,
        "code_hash": r.code_hash, "args": r.args, "inputs": r.inputs, "result_uri": r.result_uri,
        "codec": r.codec, "node": r.node, "host": r.host, "pid": r.pid, "started": r.started,
        "finished": r.finished, "duration": r.duration, "status": r.effective_status(),
        "error": r.error, "reason": r.reason, "components": r.components,
    }


def imported_dict(r: ResultRow) -> dict[str, Any]:
    """One outcome computed elsewhere as JSON-ready data (``tasks ls --imported --json``)."""
    return {"task_id": r.task_id, "kind": r.kind, "function": r.function,
            "status": r.status, "result_uri": r.result_uri, "codec": r.codec, "node": r.node,
            "finished": r.finished, "error": r.error}


def show(records: Records, task_id: str) -> dict[str, Any]:
    """Everything recorded about one task id: its runs, served result, callees and callers,
    and the channel members that asked this node for it (as a provider)."""
    served = records.result(task_id)
    info: dict[str, Any] = {
        "task_id": task_id,
        "served_result": served.result_uri if served else None,
        "runs": [run_dict(r) for r in records.runs(task_id=task_id)],
        "called": [{"task_id": c, "function": records.function_of(c)}
                   for c in records.children(task_id)],
        "called_by": [{"task_id": p, "function": records.function_of(p)}
                      for p in records.parents(task_id)],
        "asked_by": records.requests_of(task_id),
    }
    if served is not None:
        info["served"] = {"kind": served.kind, "function": served.function,
                          "status": served.status, "codec": served.codec, "node": served.node,
                          "finished": served.finished, "error": served.error}
        if served.codec == "json" and served.data is not None and \
                len(served.data) <= PREVIEW_BYTES:
            try:
                info["served"]["value"] = json.loads(served.data)
            except ValueError:
                pass
    return info


def call_tree(records: Records, task_id: str, depth: int, callers: bool = False,
              limit: int = 200) -> dict[str, Any]:
    """The tasks ``task_id`` called (``callers=True``: that called it), ``depth`` levels deep.

    A nested ``{"task_id", "function", "children": [...]}``; at most ``limit``
    nodes, and a task met twice on one path is not expanded again (``"cycle": true``).
    """
    step = records.parents if callers else records.children
    budget = [limit]

    def node(tid: str, level: int, path: frozenset[str]) -> dict[str, Any]:
        budget[0] -= 1
        out: dict[str, Any] = {"task_id": tid, "function": records.function_of(tid),
                               "children": []}
        if tid in path:
            out["cycle"] = True
            return out
        if level >= depth:
            out["more"] = bool(step(tid))
            return out
        for nxt in step(tid):
            if budget[0] <= 0:
                out["truncated"] = True
                break
            out["children"].append(node(nxt, level + 1, path | {tid}))
        return out

    return node(task_id, 0, frozenset())
