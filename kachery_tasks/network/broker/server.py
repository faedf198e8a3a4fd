"""The embedded broker: a websocket server that speaks Ably's realtime JSON protocol.

One :class:`Broker` serves any number of clients of the ``ably`` SDK (or
anything speaking the same frames) on one asyncio event loop. Each
websocket gets a reader (this module: handshake, authorization, CONNECT,
CLOSE, AUTH) and a writer task (drains the connection's outbox); what the
frames do is the :class:`~.router.Router`'s job. :class:`BrokerThread` runs a
broker on its own loop in a background thread, for tests and for embedding in
a threaded program.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ...errors import PubSubError
from ..pubsub.threads import LoopThread
from ..redact import redact_logger
from .limits import Limits
from .protocol import (
    BAD_REQUEST,
    CONNECTION_DISCONNECTED,
    CONTINUITY_LOST,
    INCOMPATIBLE_CREDENTIALS,
    INVALID_CREDENTIALS,
    TOKEN_EXPIRED,
    UNABLE_TO_RECOVER,
    Action,
    ProtocolError,
    encode,
    error_info,
    parse_frame,
)
from .router import Observer, Router
from .state import Session

log = logging.getLogger("kachery_tasks.network.broker")


@dataclass(frozen=True)
class Grant:
    """What an authorizer admits a token to: a client id, and the channels it may use.

    ``channels`` None means any channel; otherwise the client may attach,
    publish and enter presence only on those names and their sub-channels
    (``name/...``): anything else is refused with Ably's error 40160.
    """

    client_id: str | None
    channels: frozenset[str] | None = None


Authorizer = Callable[[str], "str | Grant"]
"""``authorize(token) -> client_id or Grant``; raises (or returns "") to deny the token."""


class TokenExpired(Exception):
    """Raised by an authorizer for a token that was valid but is too old.

    The client is told so with Ably's renewable error 40142: the SDK asks its
    token provider for a fresh token and reconnects, instead of failing.
    """


class _Denied(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class Broker:
    """An Ably-compatible pub/sub broker on ``host:port`` (port 0: any free port).

    ``authorize(token) -> client_id`` decides who may connect: the token is
    what the client's SDK presents (its auth callback's token, or its key);
    raising denies it (:class:`TokenExpired`: ask for a new one). Without an
    authorizer every client is admitted under the clientId it asks for (for
    development only).
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int = 7654, *,
        authorize: Authorizer | None = None, limits: Limits | None = None,
        observe: Observer | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.authorize = authorize
        self.limits = limits or Limits()
        self.router = Router(self.limits, self._overflow, observe)
        self.denials = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closers: set[asyncio.Future] = set()
        self._server: Any = None
        self._housekeeper: asyncio.Task | None = None
        self._ws_log = redact_logger("kachery_tasks.network.broker.websockets")
        if self._ws_log.level == logging.NOTSET:  # its "connection open" lines repeat ours
            self._ws_log.setLevel(logging.WARNING)

    @property
    def url(self) -> str:
        """Where clients connect: ``ws://host:port``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}"

    async def start(self) -> None:
        """Listen (returns once the port is bound)."""
        from websockets import http11
        from websockets.asyncio.server import serve

        # The token rides in the request line (?accessToken=...); websockets reads
        # at most MAX_LINE_LENGTH bytes of it (8 KiB by default), a module setting.
        http11.MAX_LINE_LENGTH = max(http11.MAX_LINE_LENGTH, self.limits.max_request_line)
        self._loop = asyncio.get_running_loop()
        try:
            self._server = await serve(
                self._serve_connection, self.host, self.port, max_size=self.limits.max_frame_bytes,
                compression=None, logger=self._ws_log, close_timeout=1.0,
            )
        except OSError as e:
            raise PubSubError(f"cannot listen on {self.host}:{self.port}: {e.strerror or e} "
                              "(is another broker running there? choose another --port)") from e
        self.port = self._server.sockets[0].getsockname()[1]
        self._housekeeper = asyncio.create_task(self._housekeeping())
        log.debug("broker listening on %s", self.url)

    async def close(self) -> None:
        """Stop listening; tell every client (DISCONNECTED, 80003) and close its connection.

        The SDK of a client told so reconnects at once and keeps trying until a
        broker answers at the same address again.
        """
        if self._housekeeper is not None:
            self._housekeeper.cancel()
        if self._server is not None:
            goodbye = encode({"action": Action.DISCONNECTED, "error": error_info(
                "the broker is shutting down", CONNECTION_DISCONNECTED)})
            live = [s for s in self.router.sessions.values() if s.ws is not None]
            for session in live:
                session.outbox.push_frame(goodbye)
                session.wake.set()
            deadline = time.monotonic() + 1.0
            while any(s.outbox and s.ws is not None for s in live) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        log.debug("broker on %s stopped", self.url)

    def abort_connections(self) -> int:
        """Cut every websocket without a closing frame, as a network failure would (tests)."""
        count = 0
        for session in list(self.router.sessions.values()):
            if session.ws is not None:
                session.ws.transport.abort()
                count += 1
        return count

    def disconnect(self, client_id: str, channel: str | None, reason: str) -> None:
        """Close (for good) the connections of ``client_id`` whose grant covers ``channel``.

        For an authorizer that learns a client is no longer admitted (a node
        removed from a channel): each such connection gets ERROR 40101 with
        ``reason`` (the SDK then fails without retrying) and is forgotten, so it
        cannot be resumed. ``channel`` None closes every connection of the
        client. Safe to call from any thread.
        """
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._disconnect, client_id, channel, reason)
        except RuntimeError:  # the loop closed meanwhile: nobody is connected any more
            pass

    def _disconnect(self, client_id: str, channel: str | None, reason: str) -> None:
        for session in list(self.router.sessions.values()):
            if session.client_id != client_id or (
                channel is not None and not session.may_use(channel)
            ):
                continue
            ws, session.ws = session.ws, None  # its reader no longer keeps it resumable
            pending = []  # what it was sent before (the notice that removed it, say)
            while ws is not None and session.outbox:
                pending.append(session.outbox.take())
            self.router.close_session(session)
            self.denials += 1
            log.warning("closed connection %s of client %r: %s", session.id, client_id, reason)
            if ws is not None:
                task = asyncio.ensure_future(self._refuse(ws, reason, INVALID_CREDENTIALS,
                                                          pending))
                self._closers.add(task)
                task.add_done_callback(self._closers.discard)

    def stats(self) -> dict[str, int]:
        """Counts for monitoring and tests: connections, channels, bytes waiting in outboxes."""
        sessions = self.router.sessions.values()
        return {
            "sessions": len(self.router.sessions),
            "connected": sum(s.ws is not None for s in sessions),
            "channels": len(self.router.channels),
            "outbox_bytes": sum(s.outbox.nbytes for s in sessions),
            "max_outbox_bytes": max((s.outbox.nbytes for s in sessions), default=0),
            "denials": self.denials,
        }

    # -- one websocket ----------------------------------------------------------

    async def _serve_connection(self, ws: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        peer = _peer(ws)
        query = parse_qs(urlsplit(ws.request.path).query)

        def param(name: str) -> str | None:
            values = query.get(name)
            return values[-1] if values else None

        if param("format") not in (None, "json"):
            await self._refuse(ws, "the binary protocol (msgpack) is not supported: connect "
                               "with use_binary_protocol=False", BAD_REQUEST)
            return
        try:
            grant = await self._admit(param("accessToken") or param("key"), param("clientId"))
        except _Denied as e:
            self.denials += 1
            log.warning("denied a client from %s: %s", peer, e)
            await self._refuse(ws, str(e), e.code)
            return
        client_id = grant.client_id
        session, error = self._open_session(param("resume"), grant, param("echo") != "false")
        session.ws = ws
        session.wake = asyncio.Event()  # this transport's writer's own: an old writer may linger
        session.last_sent = time.monotonic()
        session.outbox.push_frame(self._connected_frame(session, error))
        session.wake.set()
        writer = asyncio.create_task(self._write(session, ws))
        log.info("connection %s %s for client %r from %s", session.id,
                 "resumed" if error is None and param("resume") else "opened", client_id, peer)
        closed = False
        try:
            async for raw in ws:
                try:
                    frame = parse_frame(raw)
                except ProtocolError as e:
                    log.warning("connection %s sent a bad frame: %s", session.id, e)
                    await self._finish(session, ws, writer, {
                        "action": Action.ERROR, "error": error_info(str(e), e.code)})
                    closed = True
                    break
                action = frame["action"]
                if action == Action.CLOSE:
                    await self._finish(session, ws, writer, {"action": Action.CLOSED})
                    closed = True
                    break
                if action == Action.AUTH:
                    if not await self._reauthorize(session, ws, writer, frame):
                        closed = True
                        break
                    continue
                self.router.handle(session, frame, len(raw))
        except ConnectionClosed:
            pass
        finally:
            writer.cancel()
            if session.ws is ws:
                if closed:
                    self.router.close_session(session)
                else:
                    self.router.transport_lost(session)
                    log.info("connection %s dropped (resumable for %g s)", session.id,
                             self.limits.connection_ttl)

    def _open_session(
        self, resume: str | None, grant: Grant, echo: bool
    ) -> tuple[Session, dict | None]:
        """The resumed session, or a new one and the error saying why it is new.

        A session is resumed only by the same client with the same grant: a
        token for other channels starts afresh.
        """
        error = None
        client_id = grant.client_id
        if resume:
            prior = self.router.lookup(resume)
            superseded = prior.ws if prior is not None else None
            same_grant = prior is None or prior.channels_allowed == grant.channels
            session = self.router.resume(resume, client_id) if same_grant else None
            if session is not None:
                if superseded is not None:  # the client gave up on it; so do we
                    superseded.transport.abort()
                session.echo = echo
                return session, None
            reason = self.router.tombstones.pop(resume, None)
            error = (error_info(reason, CONTINUITY_LOST) if reason else error_info(
                "unable to recover the connection: its key is unknown or expired "
                "(a new connection was opened)", UNABLE_TO_RECOVER))
        session = self.router.new_session(client_id, echo)
        session.channels_allowed = grant.channels
        return session, error

    def _connected_frame(self, session: Session, error: dict | None) -> str:
        limits = self.limits
        frame: dict[str, Any] = {
            "action": Action.CONNECTED,
            "connectionId": session.id,
            "connectionDetails": {
                "clientId": session.client_id,
                "connectionKey": session.key,
                "connectionStateTtl": int(limits.connection_ttl * 1000),
                "maxIdleInterval": int(limits.max_idle_interval * 1000),
                "maxMessageSize": limits.max_message_bytes,
                "maxFrameSize": limits.max_frame_bytes,
                "serverId": f"kachery-broker-{self.router.instance}",
            },
        }
        if error is not None:
            frame["error"] = error
        return encode(frame)

    async def _admit(self, token: str | None, requested: str | None) -> Grant:
        """What a client presenting ``token`` is admitted to; raises _Denied."""
        if self.authorize is None:
            return Grant(requested)
        if not token:
            raise _Denied("no token: connect with a token provider (auth callback)",
                          INVALID_CREDENTIALS)
        try:
            grant = await asyncio.to_thread(self.authorize, token)
        except TokenExpired as e:
            raise _Denied(f"token expired: {e}", TOKEN_EXPIRED) from None
        except Exception as e:
            raise _Denied(f"token refused: {e}", INVALID_CREDENTIALS) from None
        if not isinstance(grant, Grant):
            grant = Grant(grant)
        if not grant.client_id:
            raise _Denied("token refused", INVALID_CREDENTIALS)
        if requested is not None and requested != grant.client_id:
            raise _Denied(f"the token is for client {grant.client_id!r}, not {requested!r}",
                          INCOMPATIBLE_CREDENTIALS)
        return grant

    async def _reauthorize(self, session: Session, ws: Any, writer: asyncio.Task,
                           frame: dict) -> bool:
        """AUTH with a new token: CONNECTED again, or an error that ends the connection."""
        try:
            grant = await self._admit(frame["auth"]["accessToken"], session.client_id)
        except _Denied as e:
            self.denials += 1
            log.warning("connection %s: new token denied: %s", session.id, e)
            await self._finish(session, ws, writer,
                               {"action": Action.ERROR, "error": error_info(str(e), e.code)})
            return False
        if grant.channels != session.channels_allowed:
            self.denials += 1
            message = "a new token must admit the client to the same channels as its first"
            log.warning("connection %s: new token denied: %s", session.id, message)
            await self._finish(session, ws, writer, {"action": Action.ERROR, "error": error_info(
                message, INCOMPATIBLE_CREDENTIALS)})
            return False
        session.client_id = grant.client_id
        session.outbox.push_frame(self._connected_frame(session, None))
        session.wake.set()
        return True

    async def _write(self, session: Session, ws: Any) -> None:
        """Send what the session's outbox holds, as long as ``ws`` is its transport."""
        from websockets.exceptions import ConnectionClosed

        outbox = session.outbox
        with contextlib.suppress(ConnectionClosed):
            while True:
                await session.wake.wait()
                session.wake.clear()
                while outbox and session.ws is ws:
                    await ws.send(outbox.take())
                    session.last_sent = time.monotonic()

    async def _finish(self, session: Session, ws: Any, writer: asyncio.Task, frame: dict) -> None:
        """Flush, send a last frame (CLOSED or ERROR) and close the websocket."""
        from websockets.exceptions import ConnectionClosed

        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer
        with contextlib.suppress(ConnectionClosed):
            while session.outbox:
                await ws.send(session.outbox.take())
            await ws.send(encode(frame))
            await ws.close()

    async def _refuse(self, ws: Any, message: str, code: int, before: list[str] = ()) -> None:
        """Send ``before``, then an ERROR, and let the client close first, so it reads it."""
        from websockets.exceptions import ConnectionClosed

        with contextlib.suppress(ConnectionClosed):
            for frame in before:
                await ws.send(frame)
            await ws.send(encode({"action": Action.ERROR, "error": error_info(message, code)}))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ws.wait_closed(), 2.0)
            await ws.close()

    def _overflow(self, session: Session) -> None:
        """A connection does not read fast enough: drop it before it grows the broker."""
        ws = session.ws
        reason = (f"the connection was dropped because it did not read its messages fast "
                  f"enough ({session.outbox.nbytes} bytes waiting, limit "
                  f"{self.limits.max_outbox_bytes}); messages were lost")
        log.warning("connection %s (client %r): %s", session.id, session.client_id, reason)
        self.router.drop(session, reason)
        if ws is not None:
            ws.transport.abort()

    async def _housekeeping(self) -> None:
        """Heartbeats to quiet connections; forget old history and unused channels."""
        half = self.limits.max_idle_interval / 2
        interval = min(half / 2, 5.0)
        heartbeat = encode({"action": Action.HEARTBEAT})
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for session in list(self.router.sessions.values()):
                quiet = now - session.last_sent >= half
                if session.ws is not None and not session.outbox and quiet:
                    session.outbox.push_frame(heartbeat)
                    session.wake.set()
            self.router.sweep()


def _peer(ws: Any) -> str:
    address = ws.remote_address
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address)


class BrokerThread:
    """A :class:`Broker` on its own event loop in a background (daemon) thread.

    ``with BrokerThread(port=0) as broker: ...`` starts it on a free port;
    :meth:`call` runs a function on the broker's loop (e.g.
    ``broker.call(broker.broker.stats)``).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **kwargs: Any) -> None:
        self.broker = Broker(host, port, **kwargs)
        self._loop: LoopThread | None = None

    @property
    def url(self) -> str:
        return self.broker.url

    def start(self) -> BrokerThread:
        self._loop = LoopThread("kachery-broker")
        try:
            self._loop.run(self.broker.start(), 30)
        except BaseException:
            self._loop.stop()
            raise
        return self

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` run on the broker's loop; its result."""

        async def run() -> Any:
            return fn(*args)

        return self._loop.run(run(), 30)

    def stop(self) -> None:
        if self._loop is None or not self._loop.thread.is_alive():
            return
        self._loop.run(self.broker.close(), 30)
        self._loop.stop()

    def __enter__(self) -> BrokerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
