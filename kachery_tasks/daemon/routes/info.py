"""The node itself (identity, storage use), logging in, and the live event stream."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from ..auth import COOKIE
from ..events import KEEPALIVE, EventHub, sse
from . import daemon_of, node_of

router = APIRouter(tags=["node"])
public = APIRouter(prefix="/api", tags=["node"])

KEEPALIVE_SECONDS = 15.0


class Login(BaseModel):
    token: str


@public.post("/login", summary="Log the hub page in: the token in, a session cookie out")
def login(body: Login, request: Request, response: Response) -> dict:
    session = request.app.state.auth.login(body.token)
    response.set_cookie(COOKIE, session, httponly=True, samesite="strict", path="/")
    return {"ok": True}


@router.post("/logout", summary="End this hub session")
def logout(request: Request, response: Response) -> dict:
    request.app.state.auth.logout(request.cookies.get(COOKIE))
    response.delete_cookie(COOKIE, path="/")
    return {"ok": True}


@router.get("/node", summary="This node: identity, storage use, whether channel services run")
def node_info(request: Request) -> dict:
    node = node_of(request)
    count, total = node.store.index.stored_bytes()
    disk = shutil.disk_usage(node.path)
    daemon = daemon_of(request)
    label = None
    if daemon is not None:
        label = daemon.status().get("node", {}).get("label")
    return {
        "id": node.id, "label": label, "path": str(node.path), "shared": node.shared,
        "store": {"blobs": count, "bytes": total},
        "disk": {"total": disk.total, "used": disk.used, "free": disk.free},
        "channel_services": daemon is not None,
    }


@router.get("/events", summary="Live events (server-sent events): channels, presence, "
            "requests, feeds, task runs, stored files",
            response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}}})
async def events(request: Request) -> StreamingResponse:
    hub = request.app.state.events
    return StreamingResponse(_event_stream(hub), media_type="text/event-stream",
                             headers={"cache-control": "no-cache", "x-accel-buffering": "no"})


async def _event_stream(hub: EventHub) -> AsyncIterator[bytes]:
    # hello comes once the stream is subscribed: the page reloads its lists on it, and an
    # event published after that must reach it
    async for event in hub.stream(idle=KEEPALIVE_SECONDS, greeting={"type": "hello"}):
        yield KEEPALIVE if event is None else sse(event, event=str(event.get("type", "message")))
