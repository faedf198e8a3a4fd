"""Task records: recent runs, one task's runs, result and provenance, why it ran.

Asking the node to *run* a registered task over HTTP is not offered: there is
no registry of tasks a node serves yet.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request

from ...runtime.provenance import call_tree, resolve_function, resolve_task_id, run_dict, show
from ...runtime.records import Records, why
from . import node_of

router = APIRouter(tags=["tasks"])

TASK = Annotated[str, Path(max_length=200, description=(
    "a task id, or a unique prefix of one (with or without 'sha256:')"))]
FUNCTION = Annotated[str, Query(min_length=1, max_length=1000, description=(
    "module.qualname, or its last part"))]


def _records(request: Request) -> Records:
    from ...runtime import cache

    return cache.for_node(node_of(request)).records


@router.get("/tasks/runs", summary="Recent task runs, newest first (the latest of each task id)")
def runs(request: Request, function: Annotated[str | None, Query(max_length=1000)] = None,
         limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> dict:
    records = _records(request)
    name = resolve_function(records, function) if function else None
    return {"runs": [run_dict(r) for r in records.latest_runs(function=name, limit=limit)]}


@router.get("/tasks/why", summary="Why the last call of a function missed the cache")
def why_missed(request: Request, function: FUNCTION) -> dict:
    records = _records(request)
    return why(records, resolve_function(records, function)).to_dict()


@router.get("/tasks/{task_id}", summary="One task: runs, inputs, result, callees and callers")
def task(request: Request, task_id: TASK) -> dict:
    records = _records(request)
    return show(records, resolve_task_id(records, task_id))


@router.get("/tasks/{task_id}/graph",
            summary="Provenance: what the task called and what called it, levels deep")
def graph(request: Request, task_id: TASK,
          depth: Annotated[int, Query(ge=1, le=10)] = 3) -> dict:
    records = _records(request)
    tid = resolve_task_id(records, task_id)
    return {"task_id": tid, "called": call_tree(records, tid, depth),
            "called_by": call_tree(records, tid, depth, callers=True)}
