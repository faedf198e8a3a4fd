"""The provider's side of ``request_task``: :class:`TaskProvider` runs calls for a channel.

A node started with ``kachery-tasks node start --provide MODULE...`` serves,
in each channel where it may ``process_tasks``, the requests addressed to it
(``body["provider"]`` is its node id; others are ignored). For each one:

1. **Checks.** The sender must be a member allowed to ``request_tasks``
   (else ``task_declined not_allowed``). The call is rebuilt with
   :meth:`Call.from_bytes <kachery_tasks.runtime.call.Call.from_bytes>`
   against the :class:`~.registry.Provided` registry, its large arguments
   fetched through the channel: a function not registered is declined
   ``unknown``; another version or code hash ``code_hash`` (the reason names
   both hashes and both nodes); a task id that does not match the arguments,
   or a malformed call, ``rejected``. No code travels with a call.
2. **Once in the channel.** The provider answers ``task_status queued``. A
   pure call whose signed result record is already in the channel's bucket
   is answered ``task_finished`` at once. Otherwise pure calls and actions
   are claimed (:class:`~.claims.Claims` under ``channels/<owner>/<name>/
   claims/`` in the channel's bucket); queries take no claim. When another
   provider holds the claim, the requester hears ``task_status waiting``
   (naming the holder) and this provider waits for the record (pure) or the
   outcome (action), or takes the claim over when its holder died.
   Identical requests arriving here while a call is in progress join it.
3. **Running.** On the provider's executor (in-process, or a Dask cluster:
   the task id stays the Dask key, but for calls run in bundles, see
   **Batches**), as the node of the daemon whose remotes
   include the channel, so nested pure calls are cached and shared as
   everywhere. Every request in progress hears a ``task_status`` (queued,
   waiting or running) at least every :data:`STATUS_EVERY` seconds, which
   extends the requester's wait for long tasks.
4. **Answer.** A pure result is published to the channel's bucket (content,
   then the signed record) and answered ``task_finished`` with the record;
   an action's or query's result content is put in the bucket and answered.
   A task that raised is answered ``task_failed`` (type, message, traceback
   text, this node's id and label); an action's failure is its recorded
   outcome, also kept in its claim.
5. **Who asked.** Each answered request is noted in the node's records
   (``requests`` table: task id, requester node and label, channel, outcome),
   shown by ``kachery-tasks tasks show``.

**Batches.** A ``request_tasks`` (``map`` on the requester) is checked and
accepted call by call as above; the answers gather in an :class:`~.batches.
Outbox` and go back in a few ``tasks_progress`` messages and one
``tasks_answered`` (:mod:`.protocol`). On a cluster, a batch's new calls start
as one unit: one look in the bucket for their results, their claims, then
the claimed calls of each task go to the cluster together. Many calls of a
task (four or more per thread of the cluster, their arguments small) run in
bundles of up to :data:`BUNDLE_MAX` calls, each bundle one Dask task that runs its calls one
after the other (:mod:`~kachery_tasks.runtime.bundles`: a Dask task costs
about a millisecond of CPU around the cluster, more than a tiny call itself);
fewer calls, and calls of a task whose calls proved long, go out in one
``submit_many`` (one ``client.map``), one Dask task each, keyed by its task
id. Each call is settled (published, released, answered) as it ends. A call
another provider holds is waited for by a job thread, as a single request's.

**Threads.** The session's :class:`~kachery_tasks.network.channels.requests.
Responder` threads only check and accept requests. Accepted calls queue for
``workers`` job threads (default :data:`DEFAULT_WORKERS`; a batch on a
cluster takes one for its start, not one per call); a job waiting for
another provider's claim holds one of them (claims are taken only by running
jobs, so waiters always wait on work in progress: no deadlock). At most
``max_accepted`` calls are accepted at a time; beyond that requests are
declined ``busy`` (the requester asks another provider), as they are while
the provider shuts down.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ...canonical import parse_json
from ...errors import (
    CallRejectedError,
    ClaimLostError,
    ExecutorError,
    InvalidValueError,
    KacheryError,
    one_line,
)
from ...nodes import Node
from ...remotes.bucket import BucketRemote
from ...runtime import bundles, shared
from ...runtime import cache as cache_mod
from ...runtime.call import Call, ResultRef
from ...runtime.executors import LOCAL, Executor, TaskFuture
from ...runtime.tracebacks import remote_traceback
from ..channels.remote import channel_url
from ..channels.requests import Incoming, Responder
from ..channels.session import ChannelSession
from . import left, protocol
from .batches import Outbox, Slot
from .claims import DEFAULT_TTL, Claim, Claims, Holder, runs_once
from .launcher import Launcher
from .registry import Provided

log = logging.getLogger("kachery_tasks.network.tasks")

STATUS_EVERY = 3.0
"""Seconds between two status messages to a request in progress (each extends its wait)."""

DEFAULT_WORKERS = 16
"""Job threads: calls computed or waited for at once (more queue, hearing ``queued``)."""

MAX_ACCEPTED = 10_000
"""Calls accepted at a time (queued, waiting or running); more are declined ``busy``."""

WAIT_TIMEOUT = 24 * 3600.0
"""Seconds a job waits for another provider's claim before giving up (``task_failed``)."""

RESPONDER_WORKERS = 8
"""Threads that check incoming requests (decoding a call may fetch its arguments)."""

BATCH_WORKERS = 2
"""Threads that check incoming batches (``request_tasks``), call by call."""

SETTLE_WORKERS = 8
"""Threads that answer the calls of batches as they end on the cluster (read the record,
release the claim, answer: about ten bucket requests, slow on a remote bucket)."""

BUNDLE_MAX = 32
"""Calls at most in one bundle (:mod:`~kachery_tasks.runtime.bundles`): a provider with
many calls of a task to start runs them in bundles of up to this many."""

LONG_FOR = 60.0
"""Seconds a task whose calls proved long (one took a bundle's whole budget) runs one
Dask task per call."""

TRACEBACK_MAX = 16_000
"""Characters of a remote traceback sent (its end: where it was raised)."""


def claims_prefix(owner: str, name: str) -> str:
    """Where the claims of channel ``name`` of ``owner`` live in its bucket."""
    return f"channels/{owner}/{name}/claims/"


class _Decline(Exception):
    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


@dataclass
class _Job:
    """One call accepted here, and the requests waiting for its answer."""

    call: Call
    mode: str
    key: tuple
    incomings: list[Incoming | Slot] = field(default_factory=list)
    status: str = "queued"
    detail: str = ""
    answer: tuple[str, dict[str, Any], str] | None = None  # type, body, how it ended


class TaskProvider:
    """Serves ``request_task`` on one channel session (see the module docstring).

    ``node`` is the providing node (its key signs claims and records);
    ``provided`` the registry; ``executor`` where calls run (in-process by
    default, a :class:`~kachery_tasks.runtime.executors.DaskExecutor` for a
    cluster); ``claim_ttl`` the seconds a claim lives without renewal.
    """

    def __init__(self, session: ChannelSession, node: Node, provided: Provided, *,
                 executor: Executor | None = None, claim_ttl: float = DEFAULT_TTL,
                 workers: int = DEFAULT_WORKERS, max_accepted: int = MAX_ACCEPTED,
                 status_every: float = STATUS_EVERY, wait_timeout: float = WAIT_TIMEOUT,
                 events: Callable[[dict[str, Any]], None] | None = None) -> None:
        if workers < 1 or max_accepted < 1:
            raise InvalidValueError("a task provider needs at least one worker and one "
                                    "accepted call")
        self.session = session
        self.provided = provided
        self.executor: Executor = executor if executor is not None else LOCAL
        self.status_every = status_every
        self.wait_timeout = wait_timeout
        self.max_accepted = max_accepted
        self.me = session.node_id
        self.node = _with_channel_remote(node, channel_url(session.channel))
        self.channel_name = session.channel.name
        channel = session.channel
        self.claims = Claims(self._bucket().bucket, node.key, ttl=claim_ttl, trusts=self._trusted,
                             prefix=claims_prefix(channel.owner, channel.name),
                             left_path=channel.path / left.FILE_NAME)
        self._lock = threading.Lock()
        self._jobs: dict[tuple, _Job] = {}
        self._accepted = 0
        self._closed = False
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="kachery-provide")
        self._settler = ThreadPoolExecutor(SETTLE_WORKERS, thread_name_prefix="kachery-settle")
        self._ticker = threading.Thread(target=self._tick, name="kachery-provide-status",
                                        daemon=True)
        self._ticker.start()
        self._long: dict[str, float] = {}  # task name -> until when its calls go one by one
        self._outbox = Outbox()
        self._launcher = Launcher(self.executor, self.node)
        self.responder = Responder(session, protocol.TASK, self._serve,
                                   workers=RESPONDER_WORKERS, events=events)
        self.batch_responder = Responder(session, protocol.TASKS, self._serve_batch,
                                         workers=BATCH_WORKERS, events=events)

    # ------------------------------------------------------------ parts
    def _bucket(self) -> BucketRemote:
        from ...remotes import open_remote

        remote = open_remote(self.session.config.bucket)
        assert isinstance(remote, BucketRemote)
        return remote

    def _trusted(self, node_id: str) -> bool:
        return protocol.TASK.answerer_needs in self.session.config.permissions_of(node_id)

    def _label_of(self, node_id: str | None) -> str:
        """``label (16 hex...)`` of a node, as the trusted config names it."""
        if not node_id:
            return "another node"
        if node_id == self.me:
            return f"{self.session.label} ({node_id[:16]}...)"
        member = self.session.config.members.get(node_id)
        label = member.label if member is not None else "a non-member"
        return f"{label} ({node_id[:16]}...)"

    # ------------------------------------------------------------ accepting
    def _serve(self, incoming: Incoming) -> None:
        """A Responder thread: check the request, then accept it (or decline)."""
        body = incoming.body
        if body.get("provider") != self.me:
            incoming.status, incoming.detail = "ignored", "addressed to another provider"
            return
        try:
            self._check_sender(incoming.sender)
            mode, text = body.get("mode", "call"), body.get("call")
            if mode not in protocol.MODES or not isinstance(text, str):
                raise _Decline("rejected", "the request is malformed (mode or call)")
            self._accept(self._check(text, incoming.sender), mode, incoming)
        except _Decline as d:
            self._declined(incoming, d)

    def _serve_batch(self, incoming: Incoming) -> None:
        """A Responder thread: check a ``request_tasks``, then each of its calls as
        :meth:`_serve` checks one (answers gather in the outbox, see :mod:`.batches`)."""
        body = incoming.body
        if body.get("provider") != self.me:
            incoming.status, incoming.detail = "ignored", "addressed to another provider"
            return
        mode, texts = body.get("mode", "call"), body.get("calls")
        try:
            self._check_sender(incoming.sender)
            if mode not in protocol.MODES or not isinstance(texts, list) \
                    or not 0 < len(texts) <= protocol.BATCH_MAX \
                    or not all(isinstance(t, str) for t in texts):
                raise _Decline("rejected", "the batch is malformed (mode or calls)")
        except _Decline as d:
            incoming.answer("tasks_declined", {"code": d.code, "reason": d.reason},
                            f"declined: {d.code}")
            log.info("channel %s: declined a request_tasks from %s: %s", self.channel_name,
                     self._label_of(incoming.sender), d.reason)
            return
        batch = self._outbox.open(incoming, len(texts))
        together = not self.executor.in_caller  # a cluster: start the batch's calls at once
        new: list[_Job] = []
        for i, text in enumerate(texts):
            slot = batch.slot(i, text)
            try:
                job = self._accept(self._check(text, incoming.sender), mode, slot,
                                   start=not together)
            except _Decline as d:
                self._declined(slot, d)
                continue
            if job is not None:
                new.append(job)
        if new:
            self._submit(self._run_together, new, new)

    def _declined(self, incoming: Incoming | Slot, d: _Decline) -> None:
        self._note(None, incoming, f"declined {d.code}")
        incoming.answer("task_declined", protocol.declined_body(
            _sent_task_id(incoming.body), d.code, d.reason), f"declined: {d.code}")
        log.info("channel %s: declined a call from %s: %s", self.channel_name,
                 self._label_of(incoming.sender), d.reason)

    def _check_sender(self, sender: str) -> None:
        """Decline a sender who may not ask, or every call while shutting down."""
        config = self.session.config
        if protocol.REQUESTER_NEEDS not in config.permissions_of(sender):
            raise _Decline("not_allowed", (
                f"{self._label_of(sender)} may not ask for tasks in channel {config.name} (it "
                f"lacks {protocol.REQUESTER_NEEDS} in config version {config.version}); ask the "
                f"owner to allow it"))
        if self._closed:
            raise _Decline("busy", self._shutting_down())

    def _check(self, text: str, sender: str) -> Call:
        """The call ``text`` names, rebuilt from this node's registry (or a decline)."""
        data = text.encode("utf-8")
        self._check_identity(data, sender)
        try:
            with self.node:  # a zarr argument reads its chunks through this node's remotes
                return Call.from_bytes(data, self.provided.lookup, load_path=self._load_path,
                                       results=self._result_ref)
        except (CallRejectedError, KacheryError) as e:  # WireError, content not found, ...
            raise _Decline("rejected", str(e)) from None

    def _check_identity(self, data: bytes, sender: str) -> None:
        """Decline ``unknown`` or ``code_hash`` before rebuilding any argument."""
        try:
            doc = parse_json(data, "received call")
        except KacheryError as e:
            raise _Decline("rejected", str(e)) from None
        if type(doc) is not dict:
            raise _Decline("rejected", "received call is not a JSON object")
        function = doc.get("function")
        if not isinstance(function, str):
            raise _Decline("rejected", "received call is malformed: function")
        if function not in self.provided:
            try:
                self.provided.lookup(function)
            except LookupError as e:
                raise _Decline("unknown", f"{self._label_of(self.me)}: {e}") from None
        task = self.provided.lookup(function)
        theirs = (doc.get("version"), doc.get("code_hash"))
        ours = (task.version, task.code_hash)
        if theirs != ours:
            raise _Decline("code_hash", (
                f"{function} differs: {self._label_of(sender)} calls "
                f"{_identity(*theirs)}, but provider {self._label_of(self.me)} runs "
                f"{_identity(*ours)}; the two nodes run different code, so the call is refused "
                "(update the code on one side)"))

    def _load_path(self, uri: str) -> str:
        return self.node.local_path(uri)

    def _result_ref(self, task_id: str) -> ResultRef:
        def load(tid: str) -> Any:
            c = cache_mod.for_node(self.node)
            value = c.get(tid)
            if value is cache_mod.MISS and shared.fetch(c, tid):
                value = c.load(c.records.result(tid))
            if value is cache_mod.MISS:
                raise CallRejectedError(f"the result of {tid}, an argument of the call, is "
                                        f"neither on this node nor in channel "
                                        f"{self.channel_name}'s bucket")
            return value

        return ResultRef(task_id, load)

    def _accept(self, call: Call, mode: str, incoming: Incoming | Slot, *,
                start: bool = True) -> _Job | None:
        """Take ``call`` on for ``incoming``: the new job (run by a job thread unless not
        ``start``), or None when it joined the same call in progress."""
        key: tuple = (call.task_id, mode) if runs_once(call.kind) else (call.task_id, id(incoming))
        with self._lock:
            job = self._jobs.get(key)
            if job is None:
                if self._accepted >= self.max_accepted:
                    raise _Decline("busy", (
                        f"{self._label_of(self.me)} has {self._accepted} calls in progress, its "
                        f"limit; ask another provider or later"))
                job = self._jobs[key] = _Job(call, mode, key)
                self._accepted += 1
                new = True
            else:
                new = False
            job.incomings.append(incoming)
            status, detail = job.status, job.detail
        incoming.progress(protocol.status_body(call.task_id, status, detail))
        if not new:
            return None
        if start:
            self._submit(self._run_job, job, [job])
        return job

    def _submit(self, fn: Callable[[Any], None], arg: Any, jobs: list[_Job]) -> None:
        """Hand ``fn(arg)`` to a job thread; once the provider has closed (its pool takes
        no more work) the calls of ``jobs`` are declined ``busy`` instead."""
        try:
            self._pool.submit(fn, arg)
        except RuntimeError:
            for job in jobs:
                self._declined_busy(job)

    def _declined_busy(self, job: _Job) -> None:
        self._finish(job, "task_declined", protocol.declined_body(
            job.call.task_id, "busy", self._shutting_down()), "declined busy")

    def _shutting_down(self) -> str:
        """Why a call is declined ``busy`` once the provider closes."""
        return f"{self._label_of(self.me)} is shutting down; ask another provider"

    # ------------------------------------------------------------ statuses
    def _set_status(self, job: _Job, status: str, detail: str = "") -> None:
        with self._lock:
            job.status, job.detail = status, detail
            incomings = list(job.incomings)
        body = protocol.status_body(job.call.task_id, status, detail)
        for incoming in incomings:
            incoming.progress(body)

    def _tick(self) -> None:
        """Repeat each request's status, so that the requester keeps waiting. A batch waits
        as one request: one status of one of its calls in progress keeps all of them (each
        call's own statuses went out as they changed). With no call in progress, delete
        the claims left after publishing that have expired (a deletion at a time, each
        after a look at whether a call came meanwhile)."""
        while not self._stop.wait(self.status_every):
            with self._lock:
                todo = [(job, list(job.incomings)) for job in self._jobs.values()]
            self.claims.sweep(idle=self._idle)  # at once back when a call is in progress
            batches: set[int] = set()
            for job, incomings in todo:
                body = protocol.status_body(job.call.task_id, job.status, job.detail)
                for incoming in incomings:
                    if isinstance(incoming, Slot):
                        if id(incoming.batch) in batches:
                            continue
                        batches.add(id(incoming.batch))
                    incoming.progress(body)

    # ------------------------------------------------------------ running
    def _run_job(self, job: _Job) -> None:
        self._guarded([job], lambda: self._run(job))

    def _guarded(self, jobs: list[_Job], work: Callable[[], None], *,
                 settling: bool = False) -> None:
        """Do ``work`` for ``jobs`` as this node; a failure of the provider itself (bucket,
        executor) answers each job it left unanswered with it. Work that would start jobs
        all answered already (declined while queued: closing) is skipped; ``settling``
        work (after a call ran: its claim to release) never is."""
        if not settling and all(job.answer is not None for job in jobs):
            return
        try:
            with self.node:
                work()
        except BaseException as e:
            log.exception("channel %s: serving %d call(s) failed", self.channel_name,
                          len(jobs))
            for job in jobs:
                if job.answer is None:
                    self._failed_here(job, e)
            if not isinstance(e, Exception):
                raise

    def _run_together(self, jobs: list[_Job]) -> None:
        """A batch's new calls as one unit: one look for their shared results, then their
        claims, and the claimed calls started on the cluster at once (one ``submit_many``
        per task and mode, as one ``client.map`` of many calls costs the cluster far less
        than many small ones). Each call is answered as it ends; a call another provider
        holds is waited for by a job thread of its own, as a single request's is."""
        def work() -> None:
            todo = [job for job in jobs if job.answer is None]
            looked = [job.call.task_id for job in todo
                      if job.call.kind == "pure" and job.mode == "call"]
            records = self._records(looked) if looked else {}  # failing: nothing held yet
            claimed: list[tuple[_Job, Claim | None]] = []
            for job in todo:
                call = job.call
                record = records.get(call.task_id)
                if record is not None and job.mode == "call":
                    self._finished_pure(job, record, "served the shared result")
                    continue
                if not runs_once(call.kind):
                    claimed.append((job, None))
                    continue
                try:
                    got = self.claims.acquire(
                        call.task_id, call.function,
                        again=call.kind == "action" and job.mode == "again",
                        finished=self._finished_test(job))
                except Exception as e:  # this call's claim (the bucket): the others go on
                    self._failed_here(job, e)
                    continue
                if isinstance(got, Claim):
                    claimed.append((job, got))
                else:  # held elsewhere, or an action's outcome: the single request's way
                    self._submit(self._run_job, job, [job])
            groups: dict[tuple[int, str], list[tuple[_Job, Claim | None]]] = {}
            for job, claim in claimed:
                groups.setdefault((id(job.call.task), job.mode), []).append((job, claim))
            for group in groups.values():
                self._start(group)

        self._guarded(jobs, work)

    def _failed_here(self, job: _Job, e: BaseException) -> None:
        """Answer ``job`` with a failure of this provider (not of the task)."""
        log.error("channel %s: serving %s %s failed: %s", self.channel_name,
                  job.call.function, job.call.task_id, one_line(e))
        self._finish(job, "task_failed", self._failure(job, e), "failed here")

    def _start(self, group: list[tuple[_Job, Claim | None]]) -> None:
        """Start the calls of ``group`` (one task, one mode) together; each is settled by
        the settling threads when it ends (or here, with the error, when they cannot be
        started). Every call of the group is settled: its claim is never left behind."""
        try:
            for job, claim in group:
                self._begin(job, claim)
        except Exception as e:
            self._settle_all(group, e)
            return
        task = group[0][0].call.task
        if self._bundle_size(task, len(group)) == 1:
            self._launch(group, 1)
            return
        fits = [bundles.fits(job.call) for job, _ in group]
        small = [pair for pair, ok in zip(group, fits, strict=True) if ok]
        large = [pair for pair, ok in zip(group, fits, strict=True) if not ok]
        if small:
            self._launch(small, self._bundle_size(task, len(small)))
        if large:  # their arguments travel in their own Dask tasks, as Dask prefers
            self._launch(large, 1)

    def _bundle_size(self, task: Any, n: int) -> int:
        """Calls per bundle for ``n`` calls of ``task`` to start (1: one Dask task each).
        Bundles only when the cluster gets at least two of them per thread, and not for a
        task whose calls proved long lately (:meth:`_settle_bundle`). Under 4 calls no
        bundle is possible, and the cluster is not asked for its threads."""
        if not self.executor.runs_bundles or n < 4 or self._long.get(task.name, 0.0) > \
                time.monotonic():
            return 1
        return max(1, min(BUNDLE_MAX, n // (2 * self.executor.threads())))

    def _launch(self, group: list[tuple[_Job, Claim | None]], size: int) -> None:
        """Start the begun calls of ``group`` on the cluster: in bundles of ``size`` calls,
        or (``size`` 1) one Dask task each, keyed by its task id."""
        mode = group[0][0].mode
        parts = [group[i:i + size] for i in range(0, len(group), size)] if size > 1 else []
        for n, part in enumerate(parts):
            try:
                bundle = self.executor.submit_bundle([job.call for job, _ in part], mode)
            except Exception as e:  # the cluster is away: each call not started hears it
                self._settle_all([pair for rest in parts[n:] for pair in rest], e)
                return
            bundle.on_done(lambda b, part=part: self._settler.submit(
                self._guarded, [job for job, _ in part],
                lambda: self._settle_bundle(part, b), settling=True))
        if parts:
            return
        try:
            futures = self.executor.submit_many(
                group[0][0].call.task, [(job.call.args, job.call.kwargs) for job, _ in group],
                mode)
        except Exception as e:  # the cluster is away: each call hears it
            self._settle_all(group, e)
            return
        for (job, claim), future in zip(group, futures, strict=True):
            future.on_done(lambda f, job=job, claim=claim: self._settle_later(job, claim, f))

    def _settle_all(self, group: list[tuple[_Job, Claim | None]], error: Exception) -> None:
        """Settle every call of ``group`` with ``error`` (they could not run)."""
        for job, claim in group:
            self._guarded([job], lambda job=job, claim=claim: self._settle(job, claim, error),
                          settling=True)

    def _settle_bundle(self, part: list[tuple[_Job, Claim | None]],
                       bundle: bundles.Bundle) -> None:
        """A settling thread, as this node: a bundle ended. Its calls that ran or failed
        are settled (each by a settling thread of its own); those it did not start go out
        one Dask task each. When its first call alone took the bundle's whole budget, the
        task's calls are long: they are not bundled for :data:`LONG_FOR` seconds."""
        try:
            outcomes = bundle.outcomes()
        except Exception as e:  # the bundle itself failed, or the cluster went away
            self._settle_all(part, e)
            return
        unrun: list[tuple[_Job, Claim | None]] = []
        for pair, outcome in zip(part, outcomes, strict=True):
            if outcome.status == bundles.UNRUN:
                unrun.append(pair)
                continue
            job, claim = pair
            self._settler.submit(self._guarded, [job],
                                 lambda job=job, claim=claim, e=outcome.error:
                                 self._settle(job, claim, e), settling=True)
        if unrun:
            if len(unrun) == len(part) - 1:  # its first call alone took the whole budget
                self._long[part[0][0].call.task.name] = time.monotonic() + LONG_FOR
            self._launch(unrun, 1)

    def _settle_later(self, job: _Job, claim: Claim | None, future: TaskFuture) -> None:
        """Hand an ended call to the settling threads (the executor's thread calling this
        must not be held). They run on after :meth:`close`: a call that ends then is still
        published, released and answered."""
        self._settler.submit(self._guarded, [job],
                             lambda: self._settle(job, claim, _ended(future)), settling=True)

    def _run(self, job: _Job) -> None:
        call = job.call
        if not runs_once(call.kind):
            self._compute(job, None)
            return
        pure = call.kind == "pure"
        if pure and job.mode == "call":
            record = self._record(call.task_id)
            if record is not None:
                self._finished_pure(job, record, "served the shared result")
                return
        again = call.kind == "action" and job.mode == "again"
        finished = self._finished_test(job)
        for _ in range(3):  # the claim may change hands between two looks
            got: Claim | Holder | None = self.claims.acquire(call.task_id, call.function,
                                                            again=again, finished=finished)
            if isinstance(got, Holder):
                if got.done:
                    self._from_outcome(job, got)
                    return
                self._set_status(job, "waiting",
                                 got.describe(self._label_of(got.node), short=True))
                done = ((lambda h=got: self._published_by(h)) if finished is not None
                        else (lambda: self._has_record(call.task_id)) if pure
                        else (lambda: False))
                got = self.claims.wait(call.task_id, call.function, done, self.wait_timeout)
            if isinstance(got, Claim):
                self._compute(job, got)
                return
            if pure:  # the other provider published it
                record = self._record(call.task_id)
                if record is not None:
                    self._finished_pure(job, record, "served what another provider computed")
                    return
            else:
                holder = self.claims.read(call.task_id)
                if holder is not None and holder.done:
                    self._from_outcome(job, holder)
                    return
            again = False
        raise KacheryError(f"the claim on {call.task_id} kept changing hands; ask again")

    def _compute(self, job: _Job, claim: Claim | None) -> None:
        """Run the call here (holding ``claim`` for pure calls and actions) and answer."""
        try:
            self._begin(job, claim)
            try:
                self._launcher.run(job.call, job.mode)
            except Exception as e:
                self._settle(job, claim, e)
                return
            self._settle(job, claim, None)
        finally:
            if claim is not None and not claim.released:
                claim.release()  # a failure of the provider: free the id for another try

    def _begin(self, job: _Job, claim: Claim | None) -> None:
        """The call is about to run here: keep its claim alive, tell its requesters."""
        if claim is not None:
            claim.start_renewing()
        self._set_status(job, "running", f"on {self._label_of(self.me)}")

    def _settle(self, job: _Job, claim: Claim | None, error: Exception | None) -> None:
        """The call ran here (raising ``error``, or not): publish, release, answer."""
        call = job.call
        try:
            if error is not None:
                failure = self._failure(job, error)
                if claim is not None:
                    try:
                        claim.release(_failure_outcome(failure) if call.kind == "action"
                                      else None)
                    except ClaimLostError as lost:
                        log.warning("channel %s: %s", self.channel_name, lost)
                self._finish(job, "task_failed", failure, "the task failed")
                return
            c = cache_mod.for_node(self.node)
            bucket = self._bucket()
            if call.kind == "pure":
                record = self._record(call.task_id)  # published where it ran, as a rule
                if record is None:
                    shared.publish(c, call.task_id, [bucket], trusts=self._serves_signer)
                    record = self._record(call.task_id)
                if record is None:
                    raise KacheryError(f"the result of {call.task_id} could not be published "
                                       f"to {bucket.url}")
                if claim is not None and job.mode == "call":
                    claim.leave()  # the record it published stands for it (Claim.leave)
                elif claim is not None:  # computed again: the record there may be older
                    claim.release()
                self._finished_pure(job, record, "computed")
                return
            row = c.records.result(call.task_id)
            uri = c.materialize(call.task_id) if row is not None else None
            if uri is not None:
                bucket.offer_content(c.store, uri, progress=False)
            codec = row.codec if row is not None and uri is not None else None
            finished = row.finished if row is not None else time.time()
            if claim is not None:
                try:
                    claim.release({"status": "success", "result_uri": uri, "codec": codec,
                                   "finished": finished})
                except ClaimLostError as e:  # it ran here; say so in the log
                    log.warning("channel %s: %s", self.channel_name, e)
            ran = {"ran": True, "finished": finished} if call.kind == "action" else {}
            self._finish(job, "task_finished", protocol.finished_body(
                call.task_id, call.kind, uri, codec, None, **ran), "computed")
        finally:
            if claim is not None and not claim.released:
                claim.release()  # a failure of the provider: free the id for another try

    def _serves_signer(self, node_id: str) -> bool:
        """Whether a result record signed by ``node_id`` is served: this node's, a member's
        allowed to process tasks; a record signed by anyone else is replaced on publishing."""
        return node_id == self.me or self._trusted(node_id)

    def _record(self, task_id: str) -> tuple[str, dict[str, Any]] | None:
        """The signed result record of ``task_id`` in the channel's bucket (its text and
        checked body), or None (also when the record there is one this provider would not
        serve)."""
        return self._records([task_id]).get(task_id)

    def _records(self, task_ids: list[str]) -> dict[str, tuple[str, dict[str, Any]]]:
        """:meth:`_record` of several task ids, in one look at the bucket."""
        out = {}
        for task_id, data in self._bucket().get_result_records(task_ids).items():
            body = shared.trusted_record(data, task_id, self._serves_signer,
                                         f"the result record of {task_id} in channel "
                                         f"{self.channel_name}")
            if body is not None:
                out[task_id] = (data.decode("utf-8"), body)
        return out

    def _finished_test(self, job: _Job) -> Callable[[Holder], bool] | None:
        """For a pure call asked to compute again (mode ``force``): which live claims
        stand for a computation already published (taken over, as expired ones are)."""
        return self._published_by if job.call.kind == "pure" and job.mode == "force" else None

    def _published_by(self, holder: Holder) -> bool:
        """Whether the computation ``holder``'s claim stands for has published its result:
        a record this provider serves, finished since the claim started (a claim left
        after publishing, see :meth:`Claim.leave`; or one whose holder is about to)."""
        record = self._record(holder.task_id)
        finished = record[1]["finished"] if record is not None else None
        return finished is not None and holder.started is not None \
            and finished >= holder.started

    def _has_record(self, task_id: str) -> bool:
        """Whether a record this provider serves is in the bucket (a planted one is not)."""
        return self._record(task_id) is not None

    def _finished_pure(self, job: _Job, record: tuple[str, dict[str, Any]], how: str) -> None:
        text, body = record
        self._finish(job, "task_finished", protocol.finished_body(
            job.call.task_id, "pure", body["result_uri"], body["codec"], text), how)

    def _from_outcome(self, job: _Job, holder: Holder) -> None:
        """Answer an action that already ran in the channel from its claim's outcome."""
        outcome = holder.outcome or {}
        how = f"recorded by {self._label_of(holder.node)}"
        if outcome.get("status") == "error" and isinstance(outcome.get("error"), dict):
            error = outcome["error"]
            self._finish(job, "task_failed", {"task_id": job.call.task_id, "error": error},
                         f"failure {how}")
            return
        self._finish(job, "task_finished", protocol.finished_body(
            job.call.task_id, job.call.kind, outcome.get("result_uri"), outcome.get("codec"),
            None, ran=False, finished=_finished_at(outcome, holder), ran_on=holder.node),
            f"outcome {how}")

    def _failure(self, job: _Job, e: BaseException) -> dict[str, Any]:
        """The ``task_failed`` body of ``e`` (a bundled call's as its worker described it)."""
        if isinstance(e, bundles.CallFailed):
            name, message, text = e.type_name, e.message, e.traceback
        else:
            name, message, text = type(e).__name__, str(e), remote_traceback(e)
        if len(text) > TRACEBACK_MAX:
            text = "...\n" + text[-TRACEBACK_MAX:]
        return protocol.failed_body(job.call.task_id, type=name, message=message[:4000],
                                    traceback=text, provider=self.me,
                                    label=self.session.label)

    def _finish(self, job: _Job, type: str, body: dict[str, Any], how: str) -> None:
        """Answer every request of ``job`` (and note who asked)."""
        with self._lock:
            if job.answer is not None:
                return
            job.answer = (type, body, how)
            if self._jobs.get(job.key) is job:
                del self._jobs[job.key]
            self._accepted -= 1
            incomings = list(job.incomings)
        for incoming in incomings:
            self._note(job.call.task_id, incoming, how)
            try:
                incoming.answer(type, body, how)
            except KacheryError as e:
                log.warning("channel %s: could not answer %s: %s", self.channel_name,
                            incoming.id[:8], e)
        log.info("channel %s: %s %s for %d request(s): %s", self.channel_name,
                 job.call.function, job.call.task_id[:19], len(incomings), how)

    def _note(self, task_id: str | None, incoming: Incoming | Slot, outcome: str) -> None:
        """Note in the records who asked for ``task_id`` (a failure to note is logged)."""
        tid = task_id or _sent_task_id(incoming.body)
        if tid is None:
            return
        member = self.session.config.members.get(incoming.sender)
        try:
            cache_mod.for_node(self.node).records.note_request(
                tid, incoming.sender, member.label if member is not None else "",
                self.channel_name, outcome)
        except KacheryError as e:
            log.warning("could not note the request for %s: %s", tid, e)

    # ------------------------------------------------------------ status
    def status(self) -> list[dict[str, Any]]:
        """The requests served and in progress, as the Responders' status rows."""
        return [*self.responder.status(), *self.batch_responder.status()]

    def _idle(self) -> bool:
        """No call in progress, and the provider not closing."""
        return not self._stop.is_set() and self.in_progress() == 0

    def in_progress(self) -> int:
        with self._lock:
            return self._accepted

    def close(self) -> None:
        """Stop taking requests. Calls still queued are declined ``busy`` (their requesters
        ask another provider); running ones end as they would (published, released and
        answered when they end; their claims expire if the process dies first)."""
        self._closed = True
        self._stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            queued = [job for job in self._jobs.values() if job.status == "queued"]
        for job in queued:
            self._declined_busy(job)
        self.responder.close()
        self.batch_responder.close()
        self._outbox.close()
        self._launcher.close()
        self.claims.close()


def _with_channel_remote(node: Node, url: str) -> Node:
    """``node``, or a Node of the same directory whose remotes end with the channel."""
    urls = [r.url for r in node.remotes]
    if url in urls:
        return node
    return Node(node.path, remotes=[*urls, url])


def _identity(version: str | None, code_hash: str | None) -> str:
    if version is not None:
        return f"version {version!r}"
    return f"code hash {code_hash}"


def _sent_task_id(body: dict[str, Any]) -> str | None:
    """The task id a request's call names (for the decline), if it can be read."""
    try:
        doc = parse_json(str(body.get("call", "")).encode("utf-8"), "received call")
    except (KacheryError, ValueError):
        return None
    tid = doc.get("task_id") if isinstance(doc, dict) else None
    return tid if isinstance(tid, str) and len(tid) == 71 else None


def _ended(future: TaskFuture) -> Exception | None:
    """What an ended call raised, or None (a task's SystemExit and the like as an
    ExecutorError: the call failed, the provider goes on)."""
    try:
        future.wait()
    except Exception as e:
        return e
    except BaseException as e:
        return ExecutorError(f"the task ended with {type(e).__name__}: {e}")
    return None


def _failure_outcome(failure: dict[str, Any]) -> dict[str, Any]:
    """An action's failure as its claim records it (within the claim's size limit)."""
    error = dict(failure["error"])
    error["traceback"] = error["traceback"][-8000:]
    return {"status": "error", "error": error}


def _finished_at(outcome: dict[str, Any], holder: Holder) -> float | None:
    """When the action whose claim ``holder`` is ended: as its outcome says, else when
    its claim was released."""
    finished = outcome.get("finished")
    return float(finished) if type(finished) in (int, float) else holder.renewed


__all__ = ["DEFAULT_WORKERS", "MAX_ACCEPTED", "STATUS_EVERY", "TaskProvider", "claims_prefix"]
