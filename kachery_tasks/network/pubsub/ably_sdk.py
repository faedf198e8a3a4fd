"""The :class:`PubSub` adapter over the ``ably`` SDK's realtime client.

One class serves both backends; only the SDK options differ:

* ``ws://host:port`` — the embedded broker: ``endpoint="host:port", tls=False,
  use_binary_protocol=False, fallback_hosts=[]`` (JSON frames over a plain
  websocket, no fallback hosts, no internet connectivity check), and shorter
  retry timings than the Ably defaults.
* ``ably:`` or ``ably:<endpoint>`` — the Ably service, with the SDK's defaults;
  credentials come from the token provider, else ``$ABLY_API_KEY``, else
  ``$ABLY_TOKEN``.

The SDK is asyncio code; it runs on an event loop in a daemon thread
(``kachery-pubsub-loop``), and callbacks run on a second daemon thread
(``kachery-pubsub-callbacks``). Authentication uses the SDK's token auth
callback, so a node presents a token it signed itself.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ...errors import InvalidValueError, KacheryError, PubSubAuthError, PubSubError
from ..redact import redact_sdk_loggers
from .base import (
    Data,
    Member,
    Message,
    MessageCallback,
    PresenceCallback,
    PresenceEvent,
    PubSub,
    TokenProvider,
)
from .threads import CallbackThread, LoopThread, shared_loop

log = logging.getLogger("kachery_tasks.network.pubsub")

DOWN_LOG_EVERY = 60.0
"""Seconds between two warnings that a dropped connection is still down (each failed
attempt in between is a debug record)."""

ENV_ABLY_KEY = "ABLY_API_KEY"
ENV_ABLY_TOKEN = "ABLY_TOKEN"
_PRESENCE_ACTIONS = {1: "present", 2: "enter", 3: "leave", 4: "update"}
_ANONYMOUS_TOKEN = "anonymous"


@dataclass(eq=False)
class _Subscription:
    callback: Any
    name: str | None = None
    active: bool = True
    listener: Any = None

    @property
    def sdk_args(self) -> tuple:
        """The arguments of the SDK's subscribe/unsubscribe for this subscription."""
        return (self.listener,) if self.name is None else (self.name, self.listener)


@dataclass
class _ChannelUse:
    """What this client does with one channel (touched on the loop thread only)."""

    messages: list[_Subscription] = field(default_factory=list)
    presence: list[_Subscription] = field(default_factory=list)
    entered: bool = False

    @property
    def unused(self) -> bool:
        return not self.messages and not self.presence and not self.entered


def _plain(data: Any) -> Any:
    """SDK data as the interface promises it: bytearray becomes bytes."""
    return bytes(data) if isinstance(data, bytearray) else data


def _check_data(data: object) -> Data:
    if isinstance(data, bytes | str):
        return data
    if isinstance(data, bytearray | memoryview):
        return bytes(data)
    if isinstance(data, dict):
        try:
            json.dumps(data, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise InvalidValueError(f"message data must be JSON-serializable: {e}") from None
        return data
    raise InvalidValueError(
        f"message data must be bytes, str or a dict, not {type(data).__name__}"
    )


def _check_channel(channel: object) -> str:
    if not isinstance(channel, str) or not channel:
        raise InvalidValueError(f"a channel name must be a non-empty string, not {channel!r}")
    return channel


class AblyPubSub(PubSub):
    """A pub/sub client over the ``ably`` SDK (see the module docstring).

    ``sdk_options`` are passed to ``AblyRealtime``; ``key`` (an Ably API key)
    or else ``token`` (a fixed token) is used when connect gets no token
    provider (neither is ever logged); ``echo=False`` asks
    the broker not to send this client its own messages. ``request_timeout``
    bounds publish, subscribe and presence calls, ``connect_timeout`` connect.
    """

    def __init__(
        self, url: str, sdk_options: dict[str, Any], *, key: str | None = None,
        token: str | None = None, needs_credentials: bool = False, echo: bool = True,
        request_timeout: float = 10.0, connect_timeout: float = 15.0,
    ) -> None:
        if importlib.util.find_spec("ably") is None:
            raise PubSubError(
                "pub/sub needs the ably package: pip install 'kachery-tasks[network]'")
        self.url = url
        self._sdk_options = sdk_options
        self._key = key
        self._token = token
        self._needs_credentials = needs_credentials
        self._echo = echo
        self.request_timeout = request_timeout
        self.connect_timeout = connect_timeout
        self._loop: LoopThread | None = None
        self._callbacks: CallbackThread | None = None
        self._client: Any = None
        self._client_id: str | None = None
        self._channels: dict[str, _ChannelUse] = {}
        self._failure: PubSubError | None = None
        self._closing: asyncio.Future | None = None
        self._closed = False
        self._sdk_closed = False  # the SDK client reached "closed" after close()
        self._down_since: float | None = None  # monotonic: the connection dropped
        self._down_said = 0.0  # monotonic: when the log last said it is down
        self._down_tries = 0  # reconnection attempts that failed since it dropped
        self._close_lock = threading.Lock()

    # -- connection ---------------------------------------------------------------

    @property
    def client_id(self) -> str | None:
        return self._client_id

    @property
    def state(self) -> str:
        """The SDK's connection state: connecting, connected, disconnected, failed, closed..."""
        if self._client is None:
            return "closed" if self._closed else "initialized"
        return str(self._client.connection.state.value)

    def connect(self, client_id: str | None = None, token_provider: TokenProvider | None = None,
                *, timeout: float | None = None) -> None:
        if self._closed:
            raise PubSubError(f"this pub/sub client of {self.url} is closed: open a new one")
        if self._client is not None:
            raise PubSubError(f"already connected to {self.url}")
        if token_provider is None and self._token is not None:
            token = self._token
            token_provider = lambda: token  # noqa: E731 - a fixed token, never renewed
        if token_provider is None and self._key is None and self._needs_credentials:
            raise PubSubAuthError(f"no credentials for {self.url}: set ${ENV_ABLY_KEY} or "
                                  f"${ENV_ABLY_TOKEN}, or pass a token provider")
        redact_sdk_loggers()
        timeout = self.connect_timeout if timeout is None else timeout
        self._loop = shared_loop()
        self._callbacks = CallbackThread("kachery-pubsub-callbacks")
        try:
            self._loop.run(self._connect(client_id, token_provider, timeout), timeout + 5)
        except BaseException:
            self._stop_threads()
            raise
        self._client_id = client_id

    async def _connect(self, client_id: str | None, token_provider: TokenProvider | None,
                       timeout: float) -> None:
        from ably import AblyRealtime
        from ably.types.connectionstate import ConnectionState
        from ably.types.tokendetails import TokenDetails

        options = dict(self._sdk_options)
        provider_errors: list[BaseException] = []
        if token_provider is not None:
            async def auth_callback(_params: dict) -> TokenDetails:
                try:
                    token = await asyncio.get_running_loop().run_in_executor(None, token_provider)
                    if not isinstance(token, str) or not token:
                        raise PubSubAuthError("the token provider returned no token")
                except BaseException as e:
                    provider_errors.append(e)
                    raise
                # Naming the client id keeps the SDK from resetting it to None.
                return TokenDetails(token=token, client_id=client_id)
            options["auth_callback"] = auth_callback
        elif self._key is not None:
            options["key"] = self._key
        else:
            async def anonymous(_params: dict) -> TokenDetails:
                return TokenDetails(token=_ANONYMOUS_TOKEN, client_id=client_id)
            options["auth_callback"] = anonymous
        if client_id is not None:
            options["client_id"] = client_id
        if not self._echo:
            options["transport_params"] = {"echo": "false"}

        loop = asyncio.get_running_loop()
        outcome: asyncio.Future[None] = loop.create_future()
        last_reason: list[Any] = []

        def on_state(change: Any) -> None:
            state, reason = change.current, change.reason
            if reason is not None:
                last_reason.append(reason)
            if outcome.done():
                self._watch(change)
            elif state == ConnectionState.CONNECTED:
                outcome.set_result(None)
            elif state in (ConnectionState.FAILED, ConnectionState.SUSPENDED,
                           ConnectionState.CLOSED):
                outcome.set_exception(self._error(reason, f"connecting to {self.url}"))
            elif state == ConnectionState.DISCONNECTED and provider_errors:
                error = provider_errors[-1]
                if not isinstance(error, PubSubError):
                    error = PubSubAuthError(
                        f"the token provider raised {type(error).__name__}: {error}")
                outcome.set_exception(error)

        self._client = client = AblyRealtime(**options)
        _report_unreachable_hosts(client)
        client.connection.on(on_state)
        try:
            await asyncio.wait_for(outcome, timeout)
        except BaseException as e:
            await self._close_client()
            self._client = None
            if isinstance(e, TimeoutError):
                why = f" (last error: {last_reason[-1]})" if last_reason else ""
                raise PubSubError(
                    f"no broker answered at {self.url} within {timeout:g} s{why}: is it running "
                    "and reachable? (the embedded one: kachery-tasks broker start)"
                ) from None
            raise

    def _watch(self, change: Any) -> None:
        """Log connection changes after connect; a failed connection stays failed, and a
        closed one stays closed."""
        state, reason = change.current.value, change.reason
        if self._sdk_closed and state in ("connecting", "connected", "disconnected",
                                          "suspended"):
            # ably 3.1.4 can fire its reconnection timer while its close is under way,
            # and the closed client connects again (then retries for ever once the
            # broker is gone): close it again.
            log.debug("pub/sub client of %s came back (%s) after close: closing it",
                      self.url, state)
            self._closing = asyncio.ensure_future(self._close_client())
        elif state == "failed":
            self._failure = self._error(reason, f"the connection to {self.url}")
            log.error("pub/sub connection to %s failed: %s", self.url, self._failure)
            # The SDK may retry later from FAILED; closing stops it for good.
            self._closing = asyncio.ensure_future(self._close_client())
        elif state in ("disconnected", "suspended"):
            self._down(state, reason)
        elif state == "connected" or change.event.value == "update":
            down, self._down_since = self._down_since, None
            after = f" after {time.monotonic() - down:.0f} s" if down is not None else ""
            if reason is not None:
                log.warning("pub/sub connection to %s re-established%s: %s", self.url, after,
                            reason)
            elif down is not None:
                log.warning("pub/sub connection to %s re-established%s", self.url, after)
            else:
                log.info("pub/sub connection to %s %s", self.url, state)

    def _down(self, state: str, reason: Any) -> None:
        """Log a dropped connection once, then once every :data:`DOWN_LOG_EVERY` seconds
        while the reconnection attempts (every ``retry_interval``) keep failing."""
        now = time.monotonic()
        why = f" ({reason})" if reason else ""
        if self._down_since is None:
            self._down_since, self._down_said, self._down_tries = now, now, 0
            log.warning("pub/sub connection to %s %s%s; reconnecting", self.url, state, why)
            return
        self._down_tries += 1
        if now - self._down_said >= DOWN_LOG_EVERY:
            self._down_said = now
            log.warning("pub/sub connection to %s still %s after %.0f s (%d attempts)%s; "
                        "reconnecting", self.url, state, now - self._down_since,
                        self._down_tries, why)
        else:
            log.debug("pub/sub connection to %s %s%s; reconnecting", self.url, state, why)

    def _error(self, reason: Any, doing: str) -> PubSubError:
        """The KacheryError for an SDK exception (or None) met while ``doing``."""
        if isinstance(reason, PubSubError):
            return reason
        code = getattr(reason, "code", None)
        text = getattr(reason, "message", None) or str(reason or "no reason given")
        if code is not None and 40100 <= code < 40400 and code not in (40140, 40142):
            return PubSubAuthError(
                f"{self.url} refused this client: {text} (error {code}); check its token, key "
                "or client id", code=code)
        suffix = f" (error {code})" if code is not None else ""
        return PubSubError(f"{doing} failed: {text}{suffix}", code=code)

    def _call(self, coro: Any, doing: str, timeout: float | None = None) -> Any:
        """Run ``coro`` on the loop; SDK errors and timeouts become PubSubError."""
        from ably.util.exceptions import AblyException

        loop = self._loop
        if self._closed or loop is None or self._client is None:
            coro.close()
            state = "closed" if self._closed else "not connected"
            raise PubSubError(f"cannot {doing}: this client of {self.url} is {state}")
        if self._failure is not None:
            coro.close()
            raise self._failure
        timeout = self.request_timeout if timeout is None else timeout
        try:
            return loop.run(coro, timeout)
        except TimeoutError:
            raise PubSubError(
                f"cannot {doing}: no answer from {self.url} within {timeout:g} s (connection "
                f"{self.state}); if this was a publish, the message may still be delivered"
            ) from None
        except AblyException as e:
            raise self._error(e, doing) from None
        except (KacheryError, RuntimeError):
            raise
        except Exception as e:  # the websocket broke under the SDK (it has not noticed yet)
            raise PubSubError(
                f"cannot {doing}: the connection to {self.url} broke ({type(e).__name__}: {e}); "
                "it is being repaired, and if this was a publish the message may still be "
                "delivered"
            ) from e

    # -- messages -----------------------------------------------------------------

    def publish(self, channel: str, name: str, data: Data, *, timeout: float | None = None) -> None:
        _check_channel(channel)
        data = _check_data(data)
        self._call(self._publish(channel, name, data), f"publish on {channel!r}", timeout)

    async def _publish(self, channel: str, name: str, data: Data) -> None:
        await self._client_channel(channel).publish(name, data)

    def _client_channel(self, channel: str) -> Any:
        return self._client.channels.get(channel)

    def subscribe(self, channel: str, callback: MessageCallback, *,
                  name: str | None = None) -> None:
        _check_channel(channel)
        sub = _Subscription(callback, name)

        def message(m: Any) -> Message:
            return Message(channel=channel, name=m.name, data=_plain(m.data),
                           client_id=m.client_id, connection_id=m.connection_id,
                           id=m.id, timestamp=m.timestamp)

        self._call(self._add(channel, sub, "messages", message), f"subscribe to {channel!r}")

    def unsubscribe(self, channel: str, callback: MessageCallback | None = None) -> None:
        self._call(self._remove(channel, callback, "messages"), f"unsubscribe from {channel!r}")

    def _emitter(self, channel: str, kind: str) -> Any:
        """The SDK object whose subscribe/unsubscribe serve ``kind`` (messages or presence)."""
        sdk_channel = self._client_channel(channel)
        return sdk_channel if kind == "messages" else sdk_channel.presence

    async def _add(self, channel: str, sub: _Subscription, kind: str,
                   convert: Callable[[Any], Any]) -> None:
        """Register ``sub`` with the SDK (attaching the channel); SDK events reach
        its callback on the callback thread, converted by ``convert``."""
        callbacks = self._callbacks

        def listener(item: Any) -> None:
            if sub.active:
                callbacks.submit(sub, convert(item))

        sub.listener = listener
        subs = getattr(self._channels.setdefault(channel, _ChannelUse()), kind)
        subs.append(sub)
        try:
            await self._emitter(channel, kind).subscribe(*sub.sdk_args)
        except BaseException:
            sub.active = False
            subs.remove(sub)
            raise

    async def _remove(self, channel: str, callback: Any, kind: str) -> None:
        """Drop the subscriptions of ``callback`` (all when None); detach if unused."""
        use = self._channels.get(channel)
        if use is None:
            return
        emitter = self._emitter(channel, kind)
        subs = getattr(use, kind)
        for sub in [s for s in subs if callback is None or s.callback == callback]:
            sub.active = False
            subs.remove(sub)
            emitter.unsubscribe(*sub.sdk_args)
        await self._release(channel)

    async def _release(self, channel: str) -> None:
        """Detach a channel this client no longer uses (best effort)."""
        use = self._channels.get(channel)
        if use is not None and not use.unused:
            return
        self._channels.pop(channel, None)
        try:  # within half the caller's timeout, so a slow detach never fails the call
            await asyncio.wait_for(self._client_channel(channel).detach(), self.request_timeout / 2)
        except Exception as e:  # detaching only saves traffic; a failure changes nothing
            log.debug("detaching %r failed: %s", channel, e)

    # -- presence -------------------------------------------------------------------

    def enter(self, channel: str, data: Data | None = None) -> None:
        _check_channel(channel)
        data = None if data is None else _check_data(data)
        if self._client is not None and self._client_id is None:
            raise PubSubError(f"cannot enter the presence of {channel!r}: connect with a client id")
        self._call(self._enter(channel, data), f"enter the presence of {channel!r}")

    async def _enter(self, channel: str, data: Data | None) -> None:
        use = self._channels.setdefault(channel, _ChannelUse())
        use.entered = True
        try:
            await self._client_channel(channel).presence.enter(data)
        except BaseException:
            use.entered = False
            await self._release(channel)
            raise

    def leave(self, channel: str) -> None:
        self._call(self._leave(channel), f"leave the presence of {channel!r}")

    async def _leave(self, channel: str) -> None:
        use = self._channels.get(channel)
        if use is None or not use.entered:
            return
        await self._client_channel(channel).presence.leave()
        use.entered = False
        await self._release(channel)

    def members(self, channel: str) -> list[Member]:
        _check_channel(channel)
        return self._call(self._members(channel), f"list the presence of {channel!r}")

    async def _members(self, channel: str) -> list[Member]:
        try:
            present = await self._client_channel(channel).presence.get()
        finally:
            if channel not in self._channels:
                await self._release(channel)
        return [Member(m.client_id, m.connection_id, _plain(m.data)) for m in present]

    def on_presence(self, channel: str, callback: PresenceCallback) -> None:
        _check_channel(channel)

        def event(p: Any) -> PresenceEvent:
            return PresenceEvent(channel=channel, action=_PRESENCE_ACTIONS.get(p.action, "update"),
                                 member=Member(p.client_id, p.connection_id, _plain(p.data)))

        self._call(self._add(channel, _Subscription(callback), "presence", event),
                   f"watch the presence of {channel!r}")

    def off_presence(self, channel: str, callback: PresenceCallback | None = None) -> None:
        self._call(self._remove(channel, callback, "presence"), f"stop watching {channel!r}")

    # -- closing ---------------------------------------------------------------------

    def close(self) -> None:
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        if self._loop is not None and self._client is not None:
            try:
                self._loop.run(self._close(), 10)  # its steps take 7 s at most
            except Exception as e:
                log.debug("closing the pub/sub client of %s: %s", self.url, e)
        self._stop_threads()

    async def _close(self) -> None:
        for use in self._channels.values():
            for sub in use.messages + use.presence:
                sub.active = False
        if self.state == "connected":
            # Leave now, so others see it at once rather than after the broker's
            # presence timeout; offline, the broker's timeout is all there is.
            entered = [c for c, use in self._channels.items() if use.entered]
            results = await asyncio.gather(*(
                asyncio.wait_for(self._client_channel(c).presence.leave(), 2.0) for c in entered
            ), return_exceptions=True)
            for channel, result in zip(entered, results):
                if isinstance(result, BaseException):
                    log.debug("leaving %r on close: %s", channel, result)
        # A reconnection timer that fired during the SDK's close would revive the client.
        self._client.connection.connection_manager.cancel_retry_timer()
        try:
            await self._close_client()
        finally:  # from now on, a client the SDK revives is closed again
            self._sdk_closed = True

    async def _close_client(self) -> None:
        client = self._client
        if client is None:
            return
        try:
            await asyncio.wait_for(client.close(), 5.0)
        except Exception as e:
            log.debug("closing the SDK client: %s", e)

    def _stop_threads(self) -> None:
        if self._callbacks is not None:
            self._callbacks.stop()


def _report_unreachable_hosts(client: Any) -> None:
    """Make the SDK notice at once that a websocket could not even be opened.

    ably 3.1.4 reports a failed websocket handshake but not a refused or timed
    out TCP connection (an ``OSError``): the attempt then hangs until the SDK's
    request timeout, and the error the caller finally sees says only "request
    timeout". This reports such a failure the way the SDK reports the others,
    so the SDK retries after its retry interval and knows why it failed.
    """
    from ably.util.exceptions import AblyException

    loop = asyncio.get_running_loop()

    def on_pending(transport: Any) -> None:
        def watch() -> None:  # connect() creates the task just after this event
            task = transport.ws_connect_task
            if task is not None:
                task.add_done_callback(report)

        def report(task: asyncio.Task) -> None:
            error = None if task.cancelled() else task.exception()
            if isinstance(error, OSError):
                transport._emit("failed", AblyException(
                    f"cannot open a websocket to {transport.host}: {error}", 400, 80003))

        loop.call_soon(watch)

    client.connection.connection_manager.on("transport.pending", on_pending)


def local_broker(url: str, *, echo: bool = True, request_timeout: float = 10.0,
                 connect_timeout: float = 15.0, retry_interval: float = 2.0) -> AblyPubSub:
    """A client of the embedded broker at ``ws://host:port``.

    ``retry_interval``: seconds between reconnection attempts after the
    broker went away (the SDK's ``disconnected_retry_timeout``).
    """
    parts = urlsplit(url)
    if parts.scheme != "ws" or not parts.hostname or parts.port is None:
        raise InvalidValueError(f"an embedded broker URL looks like ws://HOST:PORT, not {url!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise InvalidValueError(f"an embedded broker URL has no path or query: {url!r}")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    options = {
        "endpoint": f"{host}:{parts.port}",
        "tls": False,
        "use_binary_protocol": False,
        "fallback_hosts": [],
        "realtime_request_timeout": int(request_timeout * 1000),
        "disconnected_retry_timeout": int(retry_interval * 1000),
        "suspended_retry_timeout": int(max(retry_interval, 5.0) * 1000),
    }
    return AblyPubSub(url, options, echo=echo, request_timeout=request_timeout,
                      connect_timeout=connect_timeout)


def ably_service(url: str, *, key: str | None = None, echo: bool = True,
                 request_timeout: float = 10.0, connect_timeout: float = 15.0) -> AblyPubSub:
    """A client of the Ably service: ``ably:`` (default endpoint) or ``ably:<endpoint>``.

    Credentials: the token provider given to connect, else ``key``, else
    ``$ABLY_API_KEY``, else the fixed token ``$ABLY_TOKEN``.
    """
    if not url.startswith("ably:"):
        raise InvalidValueError(
            f"an Ably service URL looks like ably: or ably:ENDPOINT, not {url!r}")
    endpoint = url[len("ably:"):].lstrip("/")
    options: dict[str, Any] = {"realtime_request_timeout": int(request_timeout * 1000)}
    if endpoint:
        options["endpoint"] = endpoint
    return AblyPubSub(url, options, key=key or os.environ.get(ENV_ABLY_KEY) or None,
                      token=os.environ.get(ENV_ABLY_TOKEN) or None, needs_credentials=True,
                      echo=echo, request_timeout=request_timeout, connect_timeout=connect_timeout)
