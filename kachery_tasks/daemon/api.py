"""The node's HTTP API: one FastAPI application per running node (:func:`create_app`).

Everything under ``/api`` needs a credential (see :mod:`.auth`); the hub page
(``/``, ``/hub/...``), the OpenAPI description (``/openapi.json``) and its
docs page (``/docs``) do not, as they hold nothing of the node's. Errors are
``{"error": "..."}`` with the status :mod:`.statuses` gives the KacheryError
behind them; a request that does not match the API (a missing field, a
parameter of the wrong type) is a 422 with the same body.

The channel services (``NodeDaemon``, see docs/daemon.md) are optional: without
them the API shows the channels from the node directory, and nobody as online.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.security import APIKeyCookie, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import KacheryError
from ..nodes import Node
from .auth import COOKIE, Auth, new_token
from .events import EventHub, RunWatcher
from .requested import TaskRequests
from .statuses import MEANING, error_body, status_of

HUB = Path(__file__).parent / "hub"
VERSION = "1"

_bearer = HTTPBearer(auto_error=False, scheme_name="token",
                     description="The token in <node>/daemon/token")
_cookie = APIKeyCookie(name=COOKIE, auto_error=False, scheme_name="hub-session",
                       description="Set by POST /api/login (the hub page)")


_BEARER, _COOKIE = Security(_bearer), Security(_cookie)


def require_auth(request: Request, _b: Any = _BEARER, _c: Any = _COOKIE) -> None:
    """Let the request on only with the daemon's token or a hub session."""
    request.app.state.auth.check(request.method, request.headers.get("authorization"),
                                 request.cookies.get(COOKIE), request.headers.get("origin"),
                                 request.headers.get("host"))


ERROR_SCHEMA = {"type": "object", "properties": {"error": {"type": "string"}},
                "required": ["error"]}
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"description": what, "content": {"application/json": {"schema": ERROR_SCHEMA}}}
    for code, what in sorted(MEANING.items())
}


def create_app(node: Node, daemon: Any | None = None, token: str | None = None,
               run_poll: float = 0.5) -> FastAPI:
    """The API of ``node``; ``daemon`` is its NodeDaemon (channel services) or None.

    ``token`` is the bearer token (a new random one when None: then only hub
    sessions made with :attr:`app.state.auth` get in, which is what tests use).
    """
    from .routes import channels, feeds, files, info, mutables, tasks

    hub = EventHub()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        unsubscribe = daemon.subscribe(hub.publish) if daemon is not None else None
        from ..runtime import cache

        watcher = RunWatcher(cache.for_node(node).records, hub, interval=run_poll)
        task = asyncio.get_running_loop().create_task(watcher.run())
        try:
            yield
        finally:
            task.cancel()
            if unsubscribe is not None:
                unsubscribe()

    app = FastAPI(
        title="kachery-tasks node", version=VERSION, lifespan=lifespan,
        docs_url=None, redoc_url=None,
        description="The HTTP API of one kachery-tasks node: its files, mutables, feeds, "
                    "task records and channels. See docs/daemon.md.",
    )
    app.state.node = node
    app.state.daemon = daemon
    app.state.auth = Auth(token or new_token())
    app.state.events = hub
    app.state.task_requests = TaskRequests(node, daemon, events=hub.publish)

    @app.exception_handler(KacheryError)
    async def kachery_error(request: Request, e: KacheryError) -> JSONResponse:
        status = status_of(e)
        headers = {"www-authenticate": "Bearer"} if status == 401 else None
        extra = getattr(e, "size", None) if status == 416 else None
        if extra is not None:
            headers = {"content-range": f"bytes */{extra}"}
        return JSONResponse(error_body(str(e)), status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, e: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body(_validation_message(e)), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        headers = {k.lower(): v for k, v in (getattr(e, "headers", None) or {}).items()}
        if e.status_code == 405:  # every method of the path, not only the first route's
            headers["allow"] = ", ".join(_methods_of(app, request))
        return JSONResponse(error_body(str(e.detail)), status_code=e.status_code,
                            headers=headers or None)

    protected = [Depends(require_auth)]
    app.include_router(info.public, responses=ERRORS)
    for module in (info, files, mutables, feeds, tasks, channels):
        app.include_router(module.router, prefix="/api", dependencies=protected,
                           responses=ERRORS)
    _add_pages(app)
    return app


def _methods_of(app: FastAPI, request: Request) -> list[str]:
    """The methods some route takes at the request's path."""
    from starlette.routing import Match

    methods: set[str] = set()
    for route in app.routes:
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


def _validation_message(e: RequestValidationError) -> str:
    parts = []
    for err in e.errors()[:3]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "request"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) + " (see /docs for what the API takes)"


def _add_pages(app: FastAPI) -> None:
    """The hub page and its assets, and the docs page with its assets when installed."""
    app.mount("/hub", StaticFiles(directory=HUB), name="hub")

    @app.get("/", include_in_schema=False)
    def hub_page() -> FileResponse:
        return FileResponse(HUB / "index.html", headers={"cache-control": "no-cache"})

    assets = swagger_assets()
    if assets is not None:
        app.mount("/docs/assets", StaticFiles(directory=assets), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs_page() -> HTMLResponse:
        if assets is None:  # FastAPI's default: swagger-ui from a CDN (needs the network)
            return get_swagger_ui_html(openapi_url="/openapi.json", title=app.title + " docs")
        return get_swagger_ui_html(
            openapi_url="/openapi.json", title=app.title + " docs",
            swagger_js_url="/docs/assets/swagger-ui-bundle.js",
            swagger_css_url="/docs/assets/swagger-ui.css",
            swagger_favicon_url="/docs/assets/favicon-32x32.png")


def swagger_assets() -> Path | None:
    """The swagger-ui files of the ``swagger-ui-py`` package, if it is installed."""
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        return None
    static = Path(next(iter(spec.submodule_search_locations))) / "static"
    return static if (static / "swagger-ui-bundle.js").exists() else None
