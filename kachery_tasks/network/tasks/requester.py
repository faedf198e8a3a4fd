"""Asking a channel's providers to run tasks: ``kachery.channel("lab")``.

Inside ``with kachery.channel("lab"):`` (a :class:`ChannelTasks`), a call made
at the top level that must run -- a pure call found neither here nor in the
shared records, an action with no recorded outcome, every query -- is sent to
one of the channel's providers as a ``request_task`` (:mod:`.protocol`) instead
of being computed here; ``submit`` and ``map`` return :class:`ChannelFuture`
objects computed the same way in a thread pool, except that ``map`` sends its
pure misses in batches (``request_tasks``, one per provider and 100 calls, see
:class:`_BatchRequest`). Calls made inside a running task are not sent: they
run where their parent runs.

**Choosing a provider.** From presence: the members online (other than this
node) allowed to ``process_tasks`` whose presence data lists the function
(:data:`~.protocol.PRESENCE_KEY`). Those announcing the caller's code hash and
version come first; among them the order is fixed per task id (rendezvous
hashing), so the same call always goes to the same provider and identical
requests join one computation. A provider that declines (any code) or does not
answer in time is passed over for the next one.

**Arguments.** The call is sent as :meth:`Call.to_bytes
<kachery_tasks.runtime.call.Call.to_bytes>`; large values go to this node's
store, and every content URI the call needs (those, and the File and content
URI arguments held here) is uploaded to the channel's bucket first. Results of
other tasks named by the call that this node computed are published there too.

**Answers.** ``task_status`` updates the future's ``status`` and extends the
wait. ``task_finished`` of a pure call: its signed result record (sent inline,
else read from the bucket) is checked exactly as records read from a bucket are
(:func:`kachery_tasks.runtime.shared.import_record`: the signer must be a member
allowed to ``process_tasks``) and the result is then served from this node's
records. Of an action or a query: the outcome is loaded from the bucket and
recorded here as the provider's. ``task_failed`` raises
:class:`~kachery_tasks.errors.RemoteTaskError`.

**Errors.** Nobody provides the function: :class:`NoProviderError` at once
(with ``fallback="local"`` the call runs here instead, as it does when the
channel's broker cannot be reached, or a request cannot be sent to it: then a
warning is logged once, and the broker is tried again after
:data:`OFFLINE_RETRY` seconds, not at every call). Every provider declined:
:class:`CallRejectedError` (ChannelPermissionError when they all said this
node may not ask), each reason in the message. None answered in time:
ChannelTimeoutError naming who was asked and who answered; when the providers
asked left the channel, ChannelMemberLeftError.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from ...errors import (
    CallRejectedError,
    ChannelMemberLeftError,
    ChannelPermissionError,
    ChannelTimeoutError,
    InvalidValueError,
    NoProviderError,
    PubSubAuthError,
    PubSubError,
    RemoteTaskError,
    TaskError,
)
from ...remotes import open_remote
from ...runtime import cache as cache_mod
from ...runtime import context, encoders, results, shared, wire
from ...runtime.call import Call, encode_result
from ...runtime.executors import TaskFuture, serve_recorded
from ...runtime.policies import ActionOutcome, QueryResult
from ..channels.config import grant_command
from ..channels.messages import ChannelMessage
from ..channels.remote import ChannelRemote, channel_url
from ..channels.requests import Asker, Pending
from ..channels.session import ChannelSession
from ..channels.store import ChannelStore
from . import protocol

DEFAULT_TIMEOUT = 60.0
"""Seconds a provider may stay silent (no status message) before the next one is asked."""

THREADS = 64
"""Calls of ``submit``/``map`` in flight at once (each waits on its provider)."""

POLL_EVERY = 1.0
"""Seconds between two looks in the bucket for a pure call's record while waiting."""

DETAIL_MAX = 500
"""Characters of a provider's status detail kept for ``ChannelFuture.detail``."""

OFFLINE_RETRY = 30.0
"""With ``fallback="local"``: seconds calls run here, without trying the broker again,
after it could not be reached."""

log = logging.getLogger(__name__)

_status_sink: contextvars.ContextVar[Callable[[str, str], None] | None] = \
    contextvars.ContextVar("kachery_channel_status", default=None)


class ChannelFuture(TaskFuture):
    """A call submitted inside ``kachery.channel(...)``: ``status`` says where it is
    (``queued``, ``running``, ``waiting``, ``finished``, ``error``), ``detail`` what the
    provider last said, ``provider`` the label of the provider that answered."""

    __slots__ = ("_future", "_status", "detail", "provider")

    def __init__(self, task: Any, task_id: str, future: concurrent.futures.Future) -> None:
        super().__init__(task, task_id)
        self._future = future
        self._status = "queued"
        self.detail = ""
        self.provider = ""
        future.add_done_callback(self._ended)

    @property
    def status(self) -> str:
        return self._status

    def _set_status(self, status: str, detail: str) -> None:
        if not self._future.done():
            self._status, self.detail = status, detail

    def _ended(self, future: concurrent.futures.Future) -> None:
        self._status = "error" if future.exception() is not None else "finished"

    def done(self) -> bool:
        return self._future.done()

    def result(self, timeout: float | None = None) -> Any:
        """The task's result (waiting up to ``timeout`` seconds); raises what the call raised."""
        try:
            return self._future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise ChannelTimeoutError(
                f"{self.task.name} ({self.task_id[:19]}...) is not done after {timeout:.3g} s "
                f"(status {self._status}); wait longer, or look at it later") from None

    def __repr__(self) -> str:
        return f"<ChannelFuture {self.task.name} {self.task_id[:19]}... {self._status}>"


encoders.register_special(ChannelFuture, encode_result)  # an argument: the producer's id


class ChannelTasks:
    """Calls that must run go to the providers of channel ``name`` inside the block (see the
    module docstring); ``submit``/``map`` run there through a thread pool."""

    def __init__(self, name: str, *, fallback: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT, threads: int = THREADS) -> None:
        if fallback not in (None, "local"):
            raise InvalidValueError(f"fallback is None or 'local', not {fallback!r}")
        if not (isinstance(timeout, int | float) and timeout > 0):
            raise InvalidValueError(f"timeout is a number of seconds above 0, not {timeout!r}")
        self.name = name
        self.fallback = fallback
        self.timeout = float(timeout)
        self.threads = threads
        self.remote: ChannelRemote | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._stack: contextlib.ExitStack | None = None
        self._offline_until: float | None = None  # monotonic; the broker was unreachable

    # ----------------------------------------------------------------- block
    def __enter__(self) -> ChannelTasks:
        node = cache_mod.current().node
        joined = ChannelStore(node.dir).find(self.name)  # ChannelNotFoundError
        remote = open_remote(channel_url(joined), node)
        assert isinstance(remote, ChannelRemote)
        self.remote = remote
        stack = contextlib.ExitStack()
        stack.enter_context(context.use_remote_runner(self))
        stack.enter_context(context.use_executor(self))
        self._stack = stack
        return self

    def __exit__(self, *exc: Any) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False)  # calls in flight finish; their futures stay valid

    # --------------------------------------------------------------- executor
    def submit(self, task: Any, args: tuple, kwargs: dict, mode: str = "call") -> ChannelFuture:
        """Run ``task(*args, **kwargs)`` as a call inside the block would; a future."""
        call = task.prepare(*args, **kwargs)
        return self._start(call, lambda: task.run(call, mode))

    def map(self, task: Any, items: Iterable[Any], args: tuple = (),
            kwargs: dict | None = None) -> list[TaskFuture]:
        """``submit(task, (item, *args), kwargs)`` for every item, in order. What is recorded
        here or in the shared records is served at once (looked up in one batch); the
        distinct pure misses are asked in batches, each other call on its own."""
        kw = dict(kwargs or {})
        prepared = [task.prepare(item, *args, **kw) for item in items]
        out: list[TaskFuture | None] = list(serve_recorded(cache_mod.current(), task,
                                                           prepared, "call"))
        started: dict[str, ChannelFuture] = {}
        for i, call in enumerate(prepared):
            if out[i] is not None:
                continue
            if task.policy.deterministic:  # looked up already: straight to the providers
                fut = started.get(call.task_id)
                if fut is None:
                    fut = started[call.task_id] = ChannelFuture(
                        call.task, call.task_id, concurrent.futures.Future())
                out[i] = fut
            else:
                out[i] = self._start(call, lambda call=call: task.run(call, "call"))
        if started:
            calls = {call.task_id: call for call in prepared if call.task_id in started}
            self._start_batches([(calls[tid], fut) for tid, fut in started.items()])
        return out  # type: ignore[return-value]

    def _start(self, call: Call, run: Callable[[], Any],
               fut: ChannelFuture | None = None) -> ChannelFuture:
        """``fut`` (a new one by default) for ``call``, resolved by ``run()`` in the pool."""
        if fut is None:
            fut = ChannelFuture(call.task, call.task_id, concurrent.futures.Future())
        cf = fut._future

        def job() -> None:
            if not cf.set_running_or_notify_cancel():
                return
            _status_sink.set(fut._set_status)
            try:
                value = run()
            except BaseException as e:
                cf.set_exception(e)
            else:
                cf.set_result(value)

        self._submit(contextvars.copy_context(), job)
        return fut

    def _submit(self, ctx: contextvars.Context, job: Callable[[], Any]) -> None:
        """Run ``job`` in the pool in a copy of ``ctx`` (a context is entered by one thread
        at a time)."""
        ctx = ctx.copy()
        with self._lock:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    self.threads, thread_name_prefix=f"kachery-channel-{self.name}")
            self._pool.submit(ctx.run, job)

    # ---------------------------------------------------------------- batches
    def _start_batches(self, calls: list[tuple[Call, ChannelFuture]]) -> None:
        """Ask for ``calls`` (distinct pure calls looked up already) in batches, one
        ``request_tasks`` per provider and :data:`~.protocol.BATCH_MAX` calls; what cannot
        go in a batch (no provider, no permission) takes the single-call path, which
        raises or falls back as it says."""
        ctx = contextvars.copy_context()
        planned = self._orders(calls)
        if planned is None:  # offline, may not ask, or no provider: each call raises (or
            for call, fut in calls:  # runs here) as the single path says
                self._start(call, lambda call=call: self.run_call(call, "call"), fut)
            return
        orders, online = planned
        groups: dict[str, list[tuple[Call, ChannelFuture]]] = {}
        for call, fut in calls:
            groups.setdefault(orders[call.task_id][0], []).append((call, fut))
        for provider, group in groups.items():
            for i in range(0, len(group), protocol.BATCH_MAX):
                batch = _BatchRequest(self, provider, group[i:i + protocol.BATCH_MAX], orders,
                                      online, ctx)
                self._submit(ctx, batch.run)

    def _orders(self, calls: list[tuple[Call, ChannelFuture]]
                ) -> tuple[dict[str, list[str]], int] | None:
        """Each call's providers in order (by task id) and how many members are online;
        None when the calls cannot go in batches: the broker is away, this node may not
        ask, or a call has no provider."""
        connected = self._session()
        if connected is None:
            return None
        session = connected[0]
        if protocol.REQUESTER_NEEDS not in session.config.permissions_of(session.node_id):
            return None
        members = self._present(session)
        if members is None:
            return None
        try:
            orders = {call.task_id: choose_providers(call, members, session.config)
                      for call, _ in calls}
        except NoProviderError:
            return None
        return orders, len({n for n, _ in members})

    # ----------------------------------------------------------------- runner
    def run_call(self, call: Call, mode: str, skip: frozenset[str] = frozenset()) -> Any:
        """Run ``call`` on a provider (the remote runner's job, see
        :class:`~kachery_tasks.runtime.context.RemoteRunner`): the kind's outcome.
        Providers in ``skip`` (they declined it in a batch) are asked last."""
        c = cache_mod.current()
        remote = self._remote()
        if call.kind == "pure" and mode == "call" and remote not in c.node.remotes:
            value = self._from_bucket(c, call.task_id)  # node.remotes were looked at already
            if value is not cache_mod.MISS:
                return value
        connected = self._session()
        if connected is None:
            return self._run_here(call, mode)
        session, asker = connected
        config, me = session.config, session.node_id
        if protocol.REQUESTER_NEEDS not in config.permissions_of(me):
            need = protocol.REQUESTER_NEEDS
            raise ChannelPermissionError(
                f"this node may not ask channel {config.name} to run tasks (it lacks the "
                f"{need} permission): ask the owner to run "
                f"'{grant_command(config, me, need)}'")
        members = self._present(session)
        if members is None:
            return self._run_here(call, mode)
        try:
            providers = choose_providers(call, members, config)
        except NoProviderError:
            if self.fallback != "local":
                raise
            return self._run_here(call, mode)
        providers.sort(key=lambda p: p in skip)
        data = self._call_bytes(c, call)
        online = len({n for n, _ in members})
        try:
            pending, provider = self._ask(asker, call, data, mode, providers, online)
        except PubSubError as e:  # the request could not be sent: the broker went away
            if not self._offline(e):
                raise
            return self._run_here(call, mode)
        return self._outcome(c, call, pending, provider)

    @staticmethod
    def _run_here(call: Call, mode: str) -> Any:
        """The outcome of ``call`` run (or served) here, as outside the block."""
        with context.use_remote_runner(None):
            return call.task.outcome(call, mode)

    def _session(self) -> tuple[ChannelSession, Asker] | None:
        """The channel's session; None when its broker cannot be reached and calls may run
        here (``fallback="local"``; the broker is tried again after :data:`OFFLINE_RETRY`
        seconds). Without that fallback, the broker's error."""
        if self.fallback == "local" and self._offline_until is not None \
                and time.monotonic() < self._offline_until:
            return None
        try:
            connected = self._remote().session()
        except PubSubError as e:
            if not self._offline(e):
                raise
            return None
        self._offline_until = None
        return connected

    def _present(self, session: ChannelSession) -> list[tuple[str, Any]] | None:
        """The other members in presence, with their data; None when presence cannot be
        listed (the broker went away since the block began: the SDK suspended the
        channel) and calls may run here. Without that fallback, the error."""
        try:
            return [(n, d) for n, d in session.members() if n != session.node_id]
        except PubSubError as e:
            if not self._offline(e):
                raise
            return None

    def _offline(self, error: PubSubError) -> bool:
        """Whether calls may run here now that the broker failed with ``error``
        (``fallback="local"``, and not a refusal of this node's key or membership, which
        running here would hide); if so, the broker is left alone for
        :data:`OFFLINE_RETRY` seconds, and the first time a warning says so."""
        if self.fallback != "local" or isinstance(error, PubSubAuthError):
            return False
        with self._lock:
            first = self._offline_until is None
            self._offline_until = time.monotonic() + OFFLINE_RETRY
        if first:
            log.warning("channel %s cannot be reached (%s); its calls run on this node "
                        "(fallback='local')", self.name, error)
        return True

    def _remote(self) -> ChannelRemote:
        if self.remote is None:
            raise TaskError(f"kachery.channel({self.name!r}) is used outside its with block")
        return self.remote

    def _label(self, node: str) -> str:
        member = self._remote().config().members.get(node)
        return f"{member.label} ({node[:12]}...)" if member else f"{node[:12]}..."

    def _call_bytes(self, c: cache_mod.NodeCache, call: Call) -> bytes:
        """The call's wire form, with every content it needs in the channel's bucket."""
        encoded: list[wire.Encoded] = []
        data = call.to_bytes(lambda data, label: c.store.store_bytes(data, label=label),
                             encoded)
        remote = self._remote()
        needed = [uri for enc in encoded for uri in enc.content]
        for enc in encoded:
            for uri, path in enc.named.items():
                if not c.store.has(uri) and path is not None:  # a File: its content goes
                    c.store.store_file(path, progress=False)
                if c.store.has(uri):
                    needed.append(uri)
            for tid in enc.results:  # another task's result, published if computed here
                shared.publish(c, tid, [remote])
        if needed:
            bucket = remote.bucket
            for uri in dict.fromkeys(needed):
                bucket.offer_content(c.store, uri, progress=False)
        return data

    def _ask(self, asker: Any, call: Call, data: bytes, mode: str, providers: list[str],
             online: int) -> tuple[Pending, str]:
        """Ask ``providers`` in turn until one finishes or fails the call."""
        tid = call.task_id
        remote = self._remote()
        sink = _status_sink.get()
        heard: dict[str, str] = {}
        declined: dict[str, tuple[str, str]] = {}
        silent: list[str] = []
        left: list[str] = []
        what = f"the request to run {call.function} ({tid[:19]}...)"
        poll = None
        if call.kind == "pure" and mode == "call":
            def poll() -> bool | None:  # a record published while its answer got lost
                data = remote.get_result_records([tid]).get(tid)  # (not a planted one)
                return True if data is not None and shared.trusted_record(
                    data, tid, remote.trusts_result_signer,
                    f"the result record of {tid} in {remote.url}") is not None else None
        for provider in providers:
            def on_progress(pending: Pending, msg: ChannelMessage, provider: str = provider
                            ) -> None:
                body = msg.body
                status = str(body.get("status", ""))
                heard[provider] = status
                if sink is not None:
                    sink("running" if status == "progress" else status,
                         str(body.get("detail", ""))[:DETAIL_MAX])

            if sink is not None:
                sink("queued", f"asking {self._label(provider)}")
            try:
                pending = asker.ask(protocol.TASK, protocol.request_body(provider, data, mode),
                                    asked={provider}, online=online, timeout=self.timeout,
                                    what=what, poll=poll, poll_every=POLL_EVERY,
                                    on_progress=on_progress)
            except ChannelMemberLeftError:  # stopped or killed: the next one, at once
                left.append(provider)
                continue
            except ChannelTimeoutError:
                silent.append(provider)
                continue
            if pending.status == "done":
                return pending, provider
            msg = pending.declines.get(provider)
            body = msg.body if msg is not None and isinstance(msg.body, dict) else {}
            declined[provider] = (str(body.get("code", "")), str(body.get("reason", ""))[:500])
        raise self._all_failed(call, providers, heard, declined, silent, left)

    def _all_failed(self, call: Call, providers: list[str], heard: dict[str, str],
                    declined: dict[str, tuple[str, str]], silent: list[str],
                    left: list[str]) -> Exception:
        name = self._remote().channel.name
        reasons = "; ".join(f"{self._label(n)}: {reason or code}"
                            for n, (code, reason) in declined.items())
        if declined and not silent and not left:
            if all(code == "not_allowed" for code, _ in declined.values()):
                return ChannelPermissionError(
                    f"the providers of {call.function} in channel {name} refused this node: "
                    f"{reasons}")
            return CallRejectedError(
                f"every provider of {call.function} in channel {name} declined the call: "
                f"{reasons}")
        answered = [f"{self._label(n)} said {heard[n]!r}" for n in silent if n in heard]
        answered += [f"{self._label(n)} declined ({code})" for n, (code, _) in declined.items()]
        quiet = [self._label(n) for n in silent if n not in heard]
        gone = f"; left the channel before answering: " \
               f"{', '.join(self._label(n) for n in left)}" if left else ""
        if left and not silent:
            return ChannelMemberLeftError(
                f"no provider of channel {name} finished {call.function} "
                f"({call.task_id[:19]}...): asked {', '.join(map(self._label, providers))}"
                f"{gone}; declined: {reasons or 'none'}. Try again once a provider is back "
                f"('kachery-tasks channel status {name}' shows who provides what)")
        return ChannelTimeoutError(
            f"no provider of channel {name} finished {call.function} ({call.task_id[:19]}...) "
            f"within {self.timeout:g} s of its last sign of life: asked "
            f"{', '.join(self._label(n) for n in providers)}; answered: "
            f"{', '.join(answered) or 'none'}; silent: {', '.join(quiet) or 'none'}{gone}. "
            f"Try again, or pass a longer timeout to kachery.channel({name!r}, timeout=...)")

    # --------------------------------------------------------------- outcome
    def _outcome(self, c: cache_mod.NodeCache, call: Call, pending: Pending,
                 provider: str) -> Any:
        msg = pending.final
        label = self._label(provider)
        if msg is None:  # the record turned up in the bucket (poll)
            return self._pure_result(c, call, None, label)
        body = msg.body if isinstance(msg.body, dict) else {}
        if msg.type == "task_failed":
            raise self._failed(c, call, body, provider, label)
        if call.kind == "pure":
            return self._pure_result(c, call, body.get("record"), label)
        return self._recorded(c, call, body, provider, label)

    def _pure_result(self, c: cache_mod.NodeCache, call: Call, record: Any, label: str) -> Any:
        tid = call.task_id
        remote = self._remote()
        ok = isinstance(record, str) and shared.import_record(
            c, tid, remote, record.encode("utf-8"),
            where=f"the result record of {tid} sent by provider {label}")
        value = self._load(c, tid) if ok else self._from_bucket(c, tid)
        if value is cache_mod.MISS:
            raise TaskError(
                f"provider {label} said {call.function} ({tid[:19]}...) finished, but no result "
                f"record signed by a member allowed to process tasks was sent or is in the "
                f"bucket of channel {remote.channel.name}; nothing was recorded (see the log, "
                "and ask the channel's owner who may process tasks)")
        return value

    def _from_bucket(self, c: cache_mod.NodeCache, task_id: str) -> Any:
        """The pure result of ``task_id`` published in the channel's bucket, or MISS."""
        return self._imported(c, [task_id]).get(task_id, cache_mod.MISS)

    def _imported(self, c: cache_mod.NodeCache, task_ids: list[str]) -> dict[str, Any]:
        """Of ``task_ids``, those whose record in the channel's bucket checks: imported
        here (one read of the bucket), each with its value."""
        remote = self._remote()
        found = {}
        for tid, data in remote.get_result_records(task_ids).items():
            if shared.import_record(c, tid, remote, data):
                value = self._load(c, tid)
                if value is not cache_mod.MISS:
                    found[tid] = value
        return found

    @staticmethod
    def _load(c: cache_mod.NodeCache, task_id: str) -> Any:
        row = c.records.result(task_id)
        return cache_mod.MISS if row is None else c.load(row)

    def _recorded(self, c: cache_mod.NodeCache, call: Call, body: dict, provider: str,
                  label: str) -> Any:
        """An action's or a query's outcome from the provider, recorded here as its."""
        tid, now = call.task_id, time.time()
        if call.kind == "action":
            ran, finished = protocol.action_run(body, now)
            ran_on = body.get("ran_on")  # another provider ran it: its producer, if it may
            config = self._remote().config()
            producer = ran_on if isinstance(ran_on, str) and ran_on in config.members \
                and "process_tasks" in config.permissions_of(ran_on) else provider
            c.records.import_result(tid, "action", call.function, None, None, producer,
                                    finished)
            return ActionOutcome(tid, call.function, True, ran, None, finished)
        uri, codec = body.get("result_uri"), body.get("codec")
        if uri is None:  # the query returned None
            codec_obj, data = results.encode(None)
            uri = c.store.store_bytes(bytes(data), label=f"{call.task.__name__}.none")
            codec = codec_obj.name
        else:
            if not isinstance(uri, str) or not isinstance(codec, str):
                raise TaskError(f"provider {label} answered {call.function} with a malformed "
                                "task_finished (result_uri and codec must be text)")
            self._remote().fetch_content(c.store, uri, progress=False)  # verified
        c.records.import_result(tid, "query", call.function, uri, codec, provider, now)
        value = self._load(c, tid)
        if value is cache_mod.MISS:
            raise TaskError(f"the result provider {label} sent for {call.function} "
                            f"({tid[:19]}...) cannot be read here")
        return QueryResult(value, False, None, now)

    def _failed(self, c: cache_mod.NodeCache, call: Call, body: dict, provider: str,
                label: str) -> RemoteTaskError:
        error = body.get("error") if isinstance(body.get("error"), dict) else {}
        rtype = str(error.get("type") or "Exception")[:200]
        message = str(error.get("message") or "")[:2000]
        where = str(error.get("label") or "") or label
        if call.kind == "action":  # a failed action's outcome is served, like a local one
            c.records.import_result(call.task_id, "action", call.function, None, None,
                                    provider, time.time(), status="error",
                                    error=f"{rtype}: {message} (on {where})")
        first = message.splitlines()[0] if message else ""
        return RemoteTaskError(
            f"{call.function} ({call.task_id[:19]}...) failed on provider {where} "
            f"in channel {self._remote().channel.name}: {rtype}: {first}",
            remote_type=rtype, remote_message=message,
            remote_traceback=str(error.get("traceback") or ""), provider=provider, label=where)


class _BatchRequest:
    """Calls of ``map`` asked of one provider in one ``request_tasks``, and their answers.

    The shared records are looked at first (one read for the batch). Answers are
    resolved in the pool as they come (``tasks_progress``), the rest when the batch
    is answered; a call declined in the batch, or left without an answer, takes
    the single-call path (the decliner asked last), so every future ends.
    """

    def __init__(self, tasks: ChannelTasks, provider: str,
                 calls: list[tuple[Call, ChannelFuture]], orders: dict[str, list[str]],
                 online: int, ctx: contextvars.Context) -> None:
        self.tasks, self.provider, self.online, self.ctx = tasks, provider, online, ctx
        self.calls = {call.task_id: (call, fut) for call, fut in calls}
        self.orders = orders
        self._lock = threading.Lock()
        self._open = set(self.calls)  # task ids without a final answer or a decline yet

    def run(self) -> None:
        try:
            self._run()
        except BaseException as e:  # the bucket or the pub/sub failed under the batch
            for tid in self._take(list(self._open)):
                self._fail(tid, e)

    def _run(self) -> None:
        tasks = self.tasks
        c = cache_mod.current()
        remote = tasks._remote()
        if remote not in c.node.remotes:  # shared hits (node.remotes were looked at)
            for tid, value in tasks._imported(c, list(self.calls)).items():
                if self._take([tid]):
                    _settle(self.calls[tid][1]._future, result=value)
        texts: list[tuple[str, str]] = []
        for tid in [tid for tid in self.calls if tid in self._open]:
            try:
                texts.append((tid, tasks._call_bytes(c, self.calls[tid][0]).decode("utf-8")))
            except Exception as e:  # its arguments cannot travel
                if self._take([tid]):
                    self._fail(tid, e)
        parts = protocol.within_limit(texts, lambda item: len(item[1]) + 3)
        for part in parts[1:]:  # more than one message's worth: the others in the pool
            tasks._submit(self.ctx, lambda part=part: self._ask(c, part))
        if parts:
            self._ask(c, parts[0])

    def _ask(self, c: cache_mod.NodeCache, part: list[tuple[str, str]]) -> None:
        """Ask for ``part``; a failure to ask (the pub/sub is away) ends its open calls,
        or with ``fallback="local"`` sends them down the single path, which runs them
        here."""
        try:
            self._ask_part(c, part)
        except BaseException as e:
            here = isinstance(e, PubSubError) and self.tasks._offline(e)
            for tid in self._take([tid for tid, _ in part]):
                if here:
                    self._single(tid, skip=False)
                else:
                    self._fail(tid, e)

    def _ask_part(self, c: cache_mod.NodeCache, part: list[tuple[str, str]]) -> None:
        tasks, provider = self.tasks, self.provider
        _, asker = tasks._remote().session()
        function = self.calls[part[0][0]][0].function
        asking = f"asking {tasks._label(provider)}"
        for tid, _ in part:
            self.calls[tid][1]._set_status("queued", asking)

        def on_progress(pending: Pending, msg: ChannelMessage) -> None:
            self._answers(c, msg.body.get("answers"))

        timed_out: ChannelTimeoutError | None = None
        pending: Pending | None = None
        try:
            pending = asker.ask(
                protocol.TASKS, protocol.batch_body(provider, [t for _, t in part]),
                asked={provider}, online=self.online, timeout=tasks.timeout,
                what=f"the request to run {len(part)} calls of {function}",
                on_progress=on_progress)
        except ChannelTimeoutError as e:
            timed_out = e
        if pending is not None and pending.final is not None:
            self._answers(c, pending.final.body.get("answers"), here=True)
        declined = pending is not None and pending.status == "declined"
        for tid in self._take([tid for tid, _ in part]):  # unanswered: on its own
            if timed_out is not None and len(self.orders[tid]) == 1:
                self._fail(tid, timed_out)
            else:
                self._single(tid, skip=declined or timed_out is not None)

    def _answers(self, c: cache_mod.NodeCache, answers: Any, here: bool = False) -> None:
        """Hand each entry of a ``tasks_progress``/``tasks_answered`` to its call."""
        finals: list[tuple[str, dict]] = []
        for entry in answers if isinstance(answers, list) else ():
            tid = entry.get("task_id") if isinstance(entry, dict) else None
            if tid not in self.calls:
                continue
            type = entry.get("type")
            if type == "task_status":
                status = str(entry.get("status", ""))
                self.calls[tid][1]._set_status("running" if status == "progress" else status,
                                               str(entry.get("detail", ""))[:DETAIL_MAX])
            elif type == "task_declined":
                if self._take([tid]):
                    self._single(tid, skip=True)
            elif type in ("task_finished", "task_failed") and self._take([tid]):
                finals.append((tid, entry))
        if not finals:
            return
        if here:
            self._finals(c, finals)
        else:  # not in the session's message thread
            self.tasks._submit(self.ctx, lambda: self._finals(c, finals))

    def _finals(self, c: cache_mod.NodeCache, finals: list[tuple[str, dict]]) -> None:
        tasks = self.tasks
        for tid, entry in finals:
            call = self.calls[tid][0]
            if entry["type"] == "task_failed":
                self._resolve(tid, lambda call=call, entry=entry: _raise(tasks._failed(
                    c, call, entry, self.provider, tasks._label(self.provider))))
            else:
                self._resolve(tid, lambda call=call, entry=entry: tasks._pure_result(
                    c, call, entry.get("record"), tasks._label(self.provider)))

    def _take(self, tids: list[str]) -> list[str]:
        """Of ``tids``, those still open, now closed (each call is answered once)."""
        with self._lock:
            taken = [tid for tid in tids if tid in self._open]
            self._open.difference_update(taken)
        return taken

    def _resolve(self, tid: str, value: Callable[[], Any]) -> None:
        cf = self.calls[tid][1]._future
        try:
            result = value()
        except BaseException as e:
            _settle(cf, exception=e)
        else:
            _settle(cf, result=result)

    def _fail(self, tid: str, e: BaseException) -> None:
        _settle(self.calls[tid][1]._future, exception=e)

    def _single(self, tid: str, *, skip: bool) -> None:
        call, fut = self.calls[tid]
        skipped = frozenset({self.provider}) if skip else frozenset()
        self.tasks._start(call, lambda: self.tasks.run_call(call, "call", skipped), fut)


def _raise(e: BaseException) -> Any:
    raise e


def _settle(cf: concurrent.futures.Future, *, result: Any = None,
            exception: BaseException | None = None) -> None:
    """End ``cf`` (a future cancelled meanwhile stays so)."""
    if not cf.set_running_or_notify_cancel():
        return
    if exception is not None:
        cf.set_exception(exception)
    else:
        cf.set_result(result)


def choose_providers(call: Call, members: list[tuple[str, Any]], config: Any) -> list[str]:
    """The providers to ask for ``call``, in order (see the module docstring); raises
    NoProviderError when none of ``members`` (``(node, presence data)``) provides it."""
    found: dict[str, bool] = {}
    offered: dict[str, set[str]] = {}
    for node, data in members:
        if not isinstance(data, dict) or "process_tasks" not in config.permissions_of(node):
            continue
        entries = data.get(protocol.PRESENCE_KEY)
        if not isinstance(entries, list):
            continue
        label = config.members[node].label
        for entry in entries:
            if not isinstance(entry, dict):
                continue
            offered.setdefault(label, set()).add(str(entry.get("name")))
            if entry.get("name") == call.function:
                same = (entry.get("code_hash") == call.code_hash
                        and entry.get("version") == call.version
                        and entry.get("kind") == call.kind)
                found[node] = found.get(node, False) or same
    if not found:
        if offered:
            what = "; ".join(f"{label} provides {', '.join(sorted(names)[:10])}"
                             + (" ..." if len(names) > 10 else "")
                             for label, names in sorted(offered.items()))
        else:
            what = "no member online provides tasks"
        raise NoProviderError(
            f"no provider of {call.function} is online in channel {config.name} ({what}); "
            f"start one with 'kachery-tasks node start --provide MODULE', or use "
            f"kachery.channel({config.name!r}, fallback='local') to run it here")

    def spread(node: str) -> tuple[bool, str]:
        return (not found[node], hashlib.sha256(f"{call.task_id}{node}".encode()).hexdigest())

    return sorted(found, key=spread)


def channel(name: str, *, fallback: str | None = None,
            timeout: float = DEFAULT_TIMEOUT) -> ChannelTasks:
    """``with kachery.channel("lab"):`` -- see :class:`ChannelTasks`."""
    return ChannelTasks(name, fallback=fallback, timeout=timeout)
