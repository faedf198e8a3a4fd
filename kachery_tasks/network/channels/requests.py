"""Requests to a channel's members and their answers: the plumbing every exchange uses.

An **exchange** (``request_file``, and ``request_task`` in :mod:`..tasks.protocol`) is one
request message and the answers members send back (:class:`Exchange` names
the types). Every request body carries a fresh request id (``"request"``, 32
hex digits) and every answer names it and the asker (``"to"``). An answer is

* **final** (``file_uploaded``): the exchange is done;
* **progress** (``file_upload_progress``): the answerer is at work, and the
  asker's wait is extended;
* a **decline** (``file_absent``): that member cannot help (its last word: a
  progress report of its heard afterwards is ignored).

**Asking** (:class:`Asker`): the asker expects an answer from each member
online that may answer (``asked``, chosen by the caller from presence and the
config). When every one of them declined, the request ends at once
(``declined``); when no final answer comes within ``timeout`` seconds of the
last sign of life (the request, a progress message), it fails with
ChannelTimeoutError naming the channel, how many members were online and how
many answered. When every member asked that has not declined has been out of
presence for :data:`GONE_AFTER` seconds (while this node is connected), the
wait ends at once with ChannelMemberLeftError: a member that was stopped or
killed will not answer, and the caller can ask another without waiting out
the timeout. While waiting, the asker repeats the request (same id) when it
heard nothing for ``repeat_after`` seconds, since a broker that restarted lost
what it was carrying; and it may look elsewhere for the outcome (``poll``: the
file may be in the bucket already) every ``poll_every`` seconds.

**Answering** (:class:`Responder`): each request runs in a worker thread (the
session's callback thread stays free for other messages), gets a
:class:`Incoming` to report progress and answer through, and a repeat of a
request being served is ignored; a repeat of one already answered gets the
same answer again. Final answers and declines are published with retries
for up to a minute, so a broker restarting mid-request does not lose them.

Both keep what they did as JSON-able status rows for the daemon
(``{"id", "type", "channel", "from", "to", "status", "started", "progress",
"detail"}``) and report changes to an ``events`` callback.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ...errors import ChannelMemberLeftError, ChannelTimeoutError, KacheryError, PubSubAuthError
from .messages import ChannelMessage
from .session import ChannelSession

log = logging.getLogger("kachery_tasks.network.channels")

_ENDED = frozenset({"done", "declined", "timeout", "failed"})
"""Statuses of a :class:`Pending` whose wait is over."""

Events = Callable[[dict[str, Any]], None]

ANSWER_RETRY_SECONDS = 60.0
"""How long a final answer or a decline is retried while the pub/sub is unreachable."""

PROGRESS_TIMEOUT = 2.0
"""Seconds a progress report waits for the broker's acknowledgement before it is given up."""

REMEMBERED_ANSWERS = 10_000
"""Answers a responder keeps to send again when a request is repeated."""

GONE_AFTER = 5.0
"""Seconds every member asked (and not declined) must stay out of presence before the
asker stops waiting for them: a member reconnecting at once is not given up on."""

LOOK_EVERY = 1.0
"""Seconds between two looks at presence while waiting for an answer."""


@dataclass(frozen=True)
class Exchange:
    """The message types of one kind of request and the permission an answerer needs."""

    request: str
    final: frozenset[str]
    progress: frozenset[str] = frozenset()
    decline: frozenset[str] = frozenset()
    answerer_needs: str = ""

    @property
    def answers(self) -> frozenset[str]:
        return self.final | self.progress | self.decline


def new_request_id() -> str:
    return secrets.token_hex(16)


def _is_request_id(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 32 and all(c in "0123456789abcdef"
                                                              for c in value)


@dataclass
class Pending:
    """A request this node sent and what came back."""

    id: str
    exchange: Exchange
    channel: str
    body: dict[str, Any]
    asked: frozenset[str]
    online: int
    timeout: float
    started: float = field(default_factory=time.time)
    status: str = "waiting"  # waiting, progress, done, declined, timeout, failed
    answers: dict[str, str] = field(default_factory=dict)  # node -> its last answer type
    # (a decline stays its last: see Asker._on_answer)
    final: ChannelMessage | None = None
    declines: dict[str, ChannelMessage] = field(default_factory=dict)  # node -> its decline
    outcome: Any = None  # what poll() found, when it ended the wait
    progress: dict[str, Any] | None = None
    detail: str = ""
    deadline: float = 0.0  # monotonic
    on_progress: Callable[[Pending, ChannelMessage], None] | None = field(
        default=None, repr=False, compare=False)
    wake: threading.Condition | None = field(default=None, repr=False, compare=False)
    """Notified when something arrives for this request (its asker's lock), so an answer
    wakes only the thread waiting on it, not every thread waiting on the session."""

    @property
    def declined_by_all(self) -> bool:
        return self.asked <= self.declines.keys()

    @property
    def answered(self) -> int:
        return len(self.answers)

    def to_status(self, me: str) -> dict[str, Any]:
        return {"id": self.id, "type": self.exchange.request, "channel": self.channel,
                "from": me, "to": sorted(self.asked), "status": self.status,
                "started": self.started, "progress": self.progress, "detail": self.detail}


class Asker:
    """Sends requests on one session and hands each answer to the request it names."""

    def __init__(self, session: ChannelSession, events: Events | None = None) -> None:
        self.session = session
        self.events = events
        self._pending: dict[str, Pending] = {}
        self._recent: OrderedDict[str, Pending] = OrderedDict()
        self._lock = threading.RLock()  # each Pending's ``wake`` is a condition on it; _end
        # takes it again inside a wait
        self._routed: set[str] = set()

    def _route(self, exchange: Exchange) -> None:
        with self._lock:
            todo = exchange.answers - self._routed
            self._routed |= todo
        for type in sorted(todo):
            self.session.on(type, self._on_answer)

    def ask(self, exchange: Exchange, body: dict[str, Any], *, asked: Iterable[str],
            online: int, timeout: float, what: str, repeat_after: float = 3.0,
            poll: Callable[[], Any] | None = None, poll_every: float = 1.0,
            on_progress: Callable[[Pending, ChannelMessage], None] | None = None) -> Pending:
        """Publish a request and wait for its outcome (see the module docstring).

        Returns the :class:`Pending` with ``status`` ``done`` (``final`` is the
        answer, or ``outcome`` what ``poll()`` found when it returned something
        other than None) or ``declined``. Raises ChannelTimeoutError (``what``
        names the request in its message) or the publish's error.
        """
        self._route(exchange)
        rid = new_request_id()
        pending = Pending(rid, exchange, self.session.channel.name, {**body, "request": rid},
                          frozenset(asked), online, timeout,
                          deadline=time.monotonic() + timeout,
                          wake=threading.Condition(self._lock), on_progress=on_progress)
        with self._lock:
            self._pending[rid] = pending
        try:
            if not pending.asked:
                self._end(pending, "declined", "no member online may answer")
                return pending
            self.session.publish(exchange.request, pending.body)
            self._changed(pending)
            return self._wait(pending, what, repeat_after, poll, poll_every)
        finally:
            with self._lock:
                self._pending.pop(rid, None)
                self._recent[rid] = pending
                while len(self._recent) > 100:
                    self._recent.popitem(last=False)

    def _wait(self, pending: Pending, what: str, repeat_after: float,
              poll: Callable[[], Any] | None, poll_every: float) -> Pending:
        last_sent = last_poll = last_look = time.monotonic()
        gone_since: float | None = None  # since when every member asked is out of presence
        wake = pending.wake
        assert wake is not None
        while True:
            with wake:
                now = time.monotonic()
                if pending.final is not None:
                    return self._end(pending, "done", f"answered by {pending.final.sender[:16]}")
                if pending.declined_by_all:
                    return self._end(pending, "declined",
                                     f"declined by all {len(pending.asked)} asked")
                if now >= pending.deadline:
                    break
                life = pending.deadline - pending.timeout  # the last sign of life
                waits = [pending.deadline - now, max(last_sent, life) + repeat_after - now,
                         last_look + LOOK_EVERY - now]
                if poll is not None:
                    waits.append(last_poll + poll_every - now)
                wake.wait(max(0.0, min(waits)))
                now = time.monotonic()
                quiet = now - max(last_sent, pending.deadline - pending.timeout)
            if now - last_look >= LOOK_EVERY:
                last_look = now
                gone = self._all_left(pending)
                if gone is None:
                    gone_since = None
                elif gone_since is None:
                    gone_since = now
                elif now - gone_since >= GONE_AFTER:
                    self._end(pending, "timeout", "the members asked left the channel")
                    raise ChannelMemberLeftError(
                        f"{_members(gone)} asked ({what}) left channel {pending.channel} "
                        f"(stopped, killed or cut off) without a final answer "
                        f"({_answer_summary(pending)})")
            if poll is not None and now - last_poll >= poll_every:
                last_poll = now
                found = poll()
                if found is not None:
                    pending.outcome = found
                    return self._end(pending, "done", "found without an answer")
            if quiet >= repeat_after and now - last_sent >= repeat_after:
                last_sent = now
                try:
                    self.session.publish(pending.exchange.request, pending.body)
                except PubSubAuthError:
                    raise
                except KacheryError as e:  # the broker is away; the next repeat may pass
                    log.info("could not repeat %s on %s: %s", what, pending.channel, e)
        self._end(pending, "timeout", "no final answer in time")
        online = pending.online
        raise ChannelTimeoutError(
            f"no member of channel {pending.channel} answered {what} within "
            f"{pending.timeout:g} s: {online} member{'s' if online != 1 else ''} online, "
            f"{len(pending.asked)} of them may answer, {pending.answered} answered "
            f"({_answer_summary(pending)}); try again, or ask the members to start their "
            "daemon ('kachery-tasks node start')")

    def _all_left(self, pending: Pending) -> list[str] | None:
        """The members asked that have not declined, when none of them is in presence
        (and this node is connected, so that presence is current); else None."""
        session = self.session
        if not session.connected:
            return None
        waiting = pending.asked - pending.declines.keys()
        try:
            present = {node for node, _ in session.members()}
        except KacheryError:
            return None
        return None if not waiting or waiting & present else sorted(waiting)

    def _end(self, pending: Pending, status: str, detail: str) -> Pending:
        with self._lock:
            pending.status, pending.detail = status, detail
        self._changed(pending)
        return pending

    def _on_answer(self, msg: ChannelMessage) -> None:
        body = msg.body if isinstance(msg.body, dict) else {}
        rid = body.get("request")
        if body.get("to") != self.session.node_id or not _is_request_id(rid):
            return
        with self._lock:
            pending = self._pending.get(rid)
            if pending is None or msg.type not in pending.exchange.answers \
                    or pending.status in _ENDED:  # it ended: a late answer changes nothing
                return
            exchange = pending.exchange
            if msg.type in exchange.progress and msg.sender in pending.declines:
                return  # published by its sender's progress thread after the decline went out
            pending.answers[msg.sender] = msg.type
            if msg.type in exchange.final and pending.final is None:
                pending.final = msg
            elif msg.type in exchange.decline:
                pending.declines[msg.sender] = msg
            elif msg.type in exchange.progress:
                pending.deadline = time.monotonic() + pending.timeout
                pending.status = "progress"
                pending.progress = {k: body[k] for k in ("bytes", "total") if k in body} or None
            if pending.wake is not None:
                pending.wake.notify_all()
        if msg.type in exchange.progress:
            if pending.on_progress is not None:
                pending.on_progress(pending, msg)
            self._changed(pending)

    def _changed(self, pending: Pending) -> None:
        if self.events is not None:
            self.events({"type": "request", "request": pending.to_status(self.session.node_id)})

    def status(self) -> list[dict[str, Any]]:
        """The requests in flight and the last ones that ended, as status rows."""
        with self._lock:
            rows = [*self._recent.values(), *self._pending.values()]
        return [p.to_status(self.session.node_id) for p in rows]


def _answer_summary(pending: Pending) -> str:
    if not pending.answers:
        return "none"
    counts: dict[str, int] = {}
    for t in pending.answers.values():
        counts[t] = counts.get(t, 0) + 1
    return ", ".join(f"{n} {t}" for t, n in sorted(counts.items()))


class Incoming:
    """A request this node serves: answer it with :meth:`progress` and :meth:`answer`."""

    def __init__(self, responder: Responder, msg: ChannelMessage) -> None:
        self.responder = responder
        self.message = msg
        self.body: dict[str, Any] = msg.body
        self.id: str = msg.body["request"]
        self.sender = msg.sender
        self.started = time.time()
        self.status = "serving"
        self.progress_now: dict[str, Any] | None = None
        self.detail = ""
        self.answered: tuple[str, dict[str, Any]] | None = None

    def progress(self, body: dict[str, Any]) -> None:
        """Report progress; returns at once. The responder's progress thread publishes
        the latest report of each request (best effort: a lost one only shortens the
        asker's patience), so a pub/sub that is away never slows the work down."""
        if not self.responder.send_progress(self, self._addressed(body)):
            return  # the answer went out: a report now would only follow it
        self.progress_now = {k: body[k] for k in ("bytes", "total") if k in body} or None
        self.responder.changed(self)

    def answer(self, type: str, body: dict[str, Any], detail: str = "") -> None:
        """Publish the final answer or a decline, retrying while the pub/sub is away."""
        exchange = self.responder.exchange
        if type not in exchange.final | exchange.decline:
            raise ValueError(f"{type} is not a final answer or a decline of {exchange.request}")
        self.answered = (type, self._addressed(body))
        self.status = "declined" if type in exchange.decline else "answered"
        self.detail = detail or type
        self.responder.send_answer(self)
        self.responder.changed(self)

    def _addressed(self, body: dict[str, Any]) -> dict[str, Any]:
        return {**body, "request": self.id, "to": self.sender}

    def to_status(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.message.type,
                "channel": self.responder.session.channel.name, "from": self.sender,
                "to": self.responder.session.node_id, "status": self.status,
                "started": self.started, "progress": self.progress_now, "detail": self.detail}


class Responder:
    """Serves one exchange's requests arriving on a session (see the module docstring).

    ``handler(incoming)`` runs in one of ``workers`` threads and answers
    through ``incoming``; what it raises is logged and the request marked
    failed (the asker then times out or hears from others). Requests from this
    node itself are ignored (another process of this node asked: it has what
    this one has).
    """

    def __init__(self, session: ChannelSession, exchange: Exchange,
                 handler: Callable[[Incoming], None], *, workers: int = 4,
                 events: Events | None = None) -> None:
        self.session = session
        self.exchange = exchange
        self.handler = handler
        self.events = events
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix=f"kachery-{exchange.request}")
        self._lock = threading.Lock()
        self._serving: dict[tuple[str, str], Incoming] = {}
        self._done: OrderedDict[tuple[str, str], Incoming] = OrderedDict()
        self._closed = False
        self._progress: dict[str, dict[str, Any]] = {}
        self._progress_ready = threading.Condition(self._lock)
        self._progress_thread: threading.Thread | None = None
        session.on(exchange.request, self._on_request)

    def _on_request(self, msg: ChannelMessage) -> None:
        body = msg.body
        if msg.sender == self.session.node_id or not isinstance(body, dict) \
                or not _is_request_id(body.get("request")):
            return
        key = (msg.sender, body["request"])
        with self._lock:
            if self._closed:
                return
            done = self._serving.get(key)
            if done is None:
                done = self._done.get(key)
            if done is not None and done.answered is None:
                return  # a repeat of a request being served (or that failed)
            if done is None:
                incoming = self._serving[key] = Incoming(self, msg)
        if done is not None:  # answered (its handler may not have returned yet)
            log.info("request %s... from %s... repeated: answering again", key[1][:8],
                     msg.sender[:16])
            self._pool.submit(self.send_answer, done)
            return
        self.changed(incoming)
        self._pool.submit(self._serve, key, incoming)

    def _serve(self, key: tuple[str, str], incoming: Incoming) -> None:
        try:
            self.handler(incoming)
        except Exception as e:
            incoming.status, incoming.detail = "failed", str(e)
            if isinstance(e, KacheryError):
                log.warning("could not serve %s %s... from %s...: %s", self.exchange.request,
                            incoming.id[:8], incoming.sender[:16], e)
            else:
                log.exception("serving %s %s... failed", self.exchange.request, incoming.id[:8])
            self.changed(incoming)
        finally:
            with self._lock:
                self._serving.pop(key, None)
                self._done[key] = incoming
                while len(self._done) > REMEMBERED_ANSWERS:
                    self._done.popitem(last=False)

    def send_answer(self, incoming: Incoming) -> None:
        """Publish ``incoming``'s answer, retrying for :data:`ANSWER_RETRY_SECONDS`."""
        if incoming.answered is None:
            return
        with self._lock:  # a report still queued would only follow the answer
            self._progress.pop(incoming.id, None)
        type, body = incoming.answered
        deadline = time.monotonic() + ANSWER_RETRY_SECONDS
        while True:
            try:
                self.session.publish(type, body)
                return
            except PubSubAuthError:
                raise
            except KacheryError as e:
                if time.monotonic() >= deadline or self._closed or self.session.pubsub is None:
                    log.warning("gave up sending %s for request %s...: %s", type,
                                incoming.id[:8], e)
                    return
                log.info("sending %s for request %s... failed (%s); retrying", type,
                         incoming.id[:8], e)
                time.sleep(0.5)

    def send_progress(self, incoming: Incoming, body: dict[str, Any]) -> bool:
        """Have the progress thread publish ``body`` (replacing a report not sent yet);
        False, and nothing sent, once ``incoming`` is answered: :meth:`send_answer` drops
        a report still queued, and none is queued after it (``answered`` is set before
        the answer is sent, and read here under the same lock)."""
        with self._lock:
            if incoming.answered is not None:
                return False
            self._progress[incoming.id] = body
            if self._progress_thread is None:
                self._progress_thread = threading.Thread(
                    target=self._send_progress, name="kachery-progress", daemon=True)
                self._progress_thread.start()
            self._progress_ready.notify()
        return True

    def _send_progress(self) -> None:
        type = next(iter(sorted(self.exchange.progress)))
        while True:
            with self._lock:
                while not self._progress and not self._closed:
                    self._progress_ready.wait()
                if self._closed:
                    return
                rid, body = next(iter(self._progress.items()))
                del self._progress[rid]
            try:
                self.session.publish(type, body, timeout=PROGRESS_TIMEOUT)
            except KacheryError as e:
                log.info("could not send %s for request %s...: %s", type, rid[:8], e)

    def changed(self, incoming: Incoming) -> None:
        if self.events is not None:
            self.events({"type": "request", "request": incoming.to_status()})

    def status(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = [*list(self._done.values())[-100:], *self._serving.values()]
        return [i.to_status() for i in rows]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._progress_ready.notify_all()
        self.session.off(self.exchange.request, self._on_request)
        self._pool.shutdown(wait=False, cancel_futures=True)


def _members(nodes: list[str]) -> str:
    """``the member 0123456789abcdef...`` or ``all 3 members``, for messages."""
    if len(nodes) == 1:
        return f"the member {nodes[0][:16]}..."
    return f"all {len(nodes)} members"
