"""Feeds: create, append, read, and follow a subfeed by long poll or server-sent events."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from ...errors import InvalidValueError
from ...feeds.feed import Feed, Subfeed
from ...feeds.uris import check_subfeed_name, format_feed_uri
from ..events import KEEPALIVE, sse
from . import node_of

router = APIRouter(tags=["feeds"])

FEED = Annotated[str, Path(pattern="^[0-9a-f]{64}$", description="the feed id (hex)")]
SUBFEED = Annotated[str, Path(pattern=r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$",
                               description="the subfeed's name ('main' by default)")]
START = Annotated[int | None, Query(ge=0, le=2**53, description=(
    "the first seq wanted (default: the next message appended)"))]
MAX_LONG_POLL = 60.0
KEEPALIVE_SECONDS = 15.0


class NewFeed(BaseModel):
    label: str | None = Field(None, max_length=1000)


class Append(BaseModel):
    """``body``: one message; or ``bodies``: several, appended in one step."""

    body: Any = None
    bodies: list[Any] | None = Field(None, max_length=10_000)


def _info(feed: Feed) -> dict:
    return {"feed_id": feed.id, **feed.info().to_dict()}


def _subfeed(request: Request, feed_id: str, name: str) -> Subfeed:
    node = node_of(request)
    check_subfeed_name(name)
    return node.load_feed(format_feed_uri(feed_id)).subfeed(name)


def _message(m: Any) -> dict:
    return {**m.to_dict(), "hash": m.hash}


@router.get("/feeds", summary="Every feed this node knows")
def list_feeds(request: Request) -> dict:
    return {"feeds": [{"feed_id": i.feed_id, **i.to_dict()}
                      for i in node_of(request).list_feeds()]}


@router.post("/feeds", summary="Create a feed whose private key stays on this node")
def create_feed(request: Request, body: NewFeed) -> dict:
    return _info(node_of(request).create_feed(body.label or None))


@router.get("/feeds/{feed_id}", summary="A feed's label, writability and subfeed sizes")
def feed_info(request: Request, feed_id: FEED) -> dict:
    return _info(node_of(request).load_feed(format_feed_uri(feed_id)))


@router.post("/feeds/{feed_id}/{subfeed}/messages",
             summary="Append a message (or several) to a subfeed of a feed this node owns")
def append(request: Request, feed_id: FEED, subfeed: SUBFEED, body: Append) -> dict:
    sub = _subfeed(request, feed_id, subfeed)
    fields = body.model_fields_set
    if ("body" in fields) == ("bodies" in fields and body.bodies is not None):
        raise InvalidValueError("send either 'body' (one message) or 'bodies' (a list)")
    one = "body" in fields
    messages = [sub.append(body.body)] if one else sub.append_many(body.bodies or [])
    return {"messages": [_message(m) for m in messages]}


@router.get("/feeds/{feed_id}/{subfeed}/messages", summary="Messages start <= seq < end")
def read(request: Request, feed_id: FEED, subfeed: SUBFEED,
         start: Annotated[int, Query(ge=0, le=2**53)] = 0,
         end: Annotated[int | None, Query(ge=0, le=2**53)] = None,
         limit: Annotated[int, Query(ge=1, le=10_000)] = 1000) -> dict:
    sub = _subfeed(request, feed_id, subfeed)
    stop = start + limit if end is None else min(end, start + limit)
    messages = [_message(m) for m in sub.read(start, max(stop, start))]
    return {"messages": messages, "count": sub.count()}


@router.get("/feeds/{feed_id}/{subfeed}/watch",
            summary="Long poll: wait until the subfeed has messages at or after start")
async def watch(request: Request, feed_id: FEED, subfeed: SUBFEED, start: START = None,
                timeout: Annotated[float, Query(ge=0, le=MAX_LONG_POLL)] = 25.0) -> dict:
    sub = await run_in_threadpool(_subfeed, request, feed_id, subfeed)
    if start is None:
        start = await run_in_threadpool(sub.count)
    messages = await sub.awatch(start, timeout=timeout, max_messages=1000)
    return {"messages": [_message(m) for m in messages],
            "next": messages[-1].seq + 1 if messages else start}


@router.get("/feeds/{feed_id}/{subfeed}/events",
            summary="Server-sent events: each message of the subfeed from start on, as it is "
                    "appended (event 'message', id its seq; Last-Event-ID resumes)",
            response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}}})
async def events(request: Request, feed_id: FEED, subfeed: SUBFEED, start: START = None,
                 last_event_id: Annotated[str | None, Header()] = None) -> StreamingResponse:
    sub = await run_in_threadpool(_subfeed, request, feed_id, subfeed)
    if last_event_id is not None and last_event_id.strip().isdigit():
        start = int(last_event_id) + 1
    if start is None:
        start = await run_in_threadpool(sub.count)
    return StreamingResponse(_follow(sub, start), media_type="text/event-stream",
                             headers={"cache-control": "no-cache", "x-accel-buffering": "no"})


async def _follow(sub: Subfeed, start: int) -> AsyncIterator[bytes]:
    yield sse({"next": start}, event="hello")
    pos, quiet_since = start, time.monotonic()
    while True:
        messages = await sub.awatch(pos, timeout=1.0, max_messages=1000)
        for m in messages:
            yield sse(_message(m), event="message", id=m.seq)
            pos = m.seq + 1
        if messages:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > KEEPALIVE_SECONDS:
            quiet_since = time.monotonic()
            yield KEEPALIVE
