"""Task records: recent runs, one task's runs, result and provenance, why it ran; and
requesting a task: run here (a task this daemon provides) or asked of a channel's providers
(see :mod:`kachery_tasks.daemon.requested`).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from ...runtime.provenance import (
    call_tree,
    imported_dict,
    resolve_function,
    resolve_task_id,
    run_dict,
    show,
)
from ...runtime.records import Records, why
from ..requested import DEFAULT_WAIT, MAX_WAIT, TaskRequests
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


@router.get("/tasks/imported",
            summary="Outcomes other nodes computed that are recorded here, newest first")
def imported(request: Request, function: Annotated[str | None, Query(max_length=1000)] = None,
             limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> dict:
    """Results from a shared bucket or sent by a channel's provider: no run of this node is
    behind them. ``computed_by`` names the node by its label in a joined channel, if any."""
    from ...network.channels.store import ChannelStore

    records = _records(request)
    name = resolve_function(records, function) if function else None
    rows = records.imported(function=name, limit=limit)
    labels = ChannelStore(node_of(request).dir).member_labels({row.node for row in rows})
    return {"results": [{**imported_dict(row), "computed_by": labels[row.node]}
                        for row in rows]}


class TaskRequest(BaseModel):
    function: str = Field(min_length=1, max_length=1000, description=(
        "module.qualname of the task, or its last part"))
    args: dict[str, Any] = Field(default_factory=dict, description=(
        "the arguments by parameter name, as JSON values"))
    channel: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,81}$",
                                description=(
        "ask this joined channel's providers; without it, the task runs on this daemon, "
        "which must provide it (node start --provide)"))
    wait: float = Field(DEFAULT_WAIT, ge=0, le=MAX_WAIT, description=(
        "seconds to wait for the answer; after them the answer is 202, status running"))


class TaskAnswer(BaseModel):
    request: str = Field(description="the request's id (its row in GET /api/requests)")
    task_id: str
    function: str
    channel: str | None
    status: str = Field(description="finished, error (the task raised) or running")
    result: Any = Field(description=(
        "the result when it is JSON of at most 64 KiB, else {uri, codec, summary}; "
        "for an action {ok, ran, error, finished}"))
    computed_by: str | None = Field(description="the node id that computed the result")
    error: str | None = Field(description="what the task raised (status error)")


def task_requests(request: Request) -> TaskRequests:
    """The app's requested tasks (made by create_app)."""
    return request.app.state.task_requests


@router.post("/tasks/request", response_model=TaskAnswer,
             summary="Run a task this daemon provides, or ask a channel's providers for it",
             responses={202: {"model": TaskAnswer,
                              "description": "still running after wait seconds: "
                                             "GET /api/tasks/{task_id} shows it when done"}})
async def request_task(request: Request, body: TaskRequest) -> Any:
    # checking the request may read the node (a thread); waiting for it holds no thread,
    # so requests that wait long do not take the threads other routes run in
    req = await run_in_threadpool(task_requests(request).start, body.function, body.args,
                                  body.channel)
    loop = asyncio.get_running_loop()
    ended = loop.create_future()
    req.add_done_callback(lambda: loop.call_soon_threadsafe(_set_once, ended))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(ended, body.wait)
    answer = req.answer()
    return JSONResponse(answer, status_code=202) if answer["status"] == "running" else answer


def _set_once(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


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
