"""Claims: each call of a pure task or an action runs once in a whole channel.

A provider about to compute a task id for the channel first claims it: it
creates the object ``<prefix><task id hex>.json`` in the channel's bucket with
the create-only ``put``, so of several providers racing for a new id exactly
one creates it. The object is a signed envelope (kind ``task-claim``, see
:mod:`kachery_tasks.envelopes`) whose body is::

    {"task_id": "sha256:<hex>", "function": "<module.qualname>",
     "node": "<the signer's node id>", "claim": "<32 hex: this claim's token>",
     "started": <time>, "renewed": <time>, "expires": <time>,
     "state": "running" | "done", "outcome": null | {...}}

Times are seconds since the epoch on the holder's clock. While it computes,
the holder **renews** the claim every ``ttl / 3`` seconds (one renewer finds the
node's claims that are due, see :meth:`Claim.start_renewing`): it writes
``renewed = now, expires = now + ttl``
over the generation it wrote last (compare-and-swap, :mod:`.swap`). When the
result record is published, a provider **leaves** a pure task's claim
(:meth:`Claim.leave`: it stops renewing and writes nothing; the claim expires
on its own, and the result record is what others read from then on: every
provider looks for it before the claim). Once expired, a left claim is
deleted when its node has nothing else to do (:meth:`Claims.sweep`), also
after a restart of the node (the claims waiting for that are written down in
its directory, :mod:`.left`). An
action's claim is **released** as ``state: done`` with its ``outcome``,
which stays: the action ran, and it does not run again in the channel unless
asked ``again``. :meth:`Claim.release` without an outcome deletes a claim (a
failed computation frees the id).

Another provider that finds a **live** claim (trusted, running, ``expires``
still ahead on its own clock) does not compute: :meth:`Claims.wait` waits for
the result (its ``done`` callable) or the claim's end. A claim that is past
its expiry (its holder died, or stalled for longer than the TTL), released
without a result (the computation failed: failures are not results), or
**not trusted** is taken over: the taker writes its own claim over the very
generation it read, and of several racing takers exactly one succeeds.

*Trusted* means: the envelope verifies, its signer is the node the body
names, ``trusts(signer)`` (a member with ``process_tasks``) says yes, and the
body is well formed and names this task id. Anything else (a claim planted by
a non-member, a forged or garbled object, another task's claim copied here)
is ignored, with a warning in the log, and replaced by the next claimant: a
non-member cannot block a task id.

**Clocks.** Expiry is decided on the claim's own times (``expires``, written
by the holder), compared with the reader's clock; the bucket's object
metadata is not used. Because the holder renews every ``ttl / 3``, a live
claim always expires at least about ``2 * ttl / 3`` after the holder's
"now", so readers whose clocks run ahead by less than that (minus a renewal's
round trip) never take over a live claim. The assumption: clocks are kept
(NTP: well under a second) and the TTL (default 60 s) is far larger.

**Lost claims.** A holder whose renewals did not reach the bucket in time
may find its claim taken over: :meth:`Claim.renew` raises
:class:`~kachery_tasks.errors.ClaimLostError` and ``claim.lost`` is set. Both
nodes then compute. For a pure task that is only duplicate work: results
are interchangeable, and the holder may still publish its result
(:meth:`Claim.release` with no outcome returns False and leaves the new
holder's claim alone). For an action it means the action may have run twice:
:meth:`Claim.release` with an outcome raises ClaimLostError instead of
writing over the new holder's claim, so the caller can report it.

Queries take no claim: they run every time they are asked
(:func:`runs_once`, :meth:`Claims.holding` with ``kind="query"``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...canonical import canonical_json
from ...envelopes import Envelope, open_envelope, seal
from ...errors import (
    ClaimError,
    ClaimHeldError,
    ClaimLostError,
    ClaimTimeoutError,
    EnvelopeError,
    InvalidValueError,
    KacheryError,
)
from ...keys import KeyPair
from ...runtime.policies import POLICIES, fmt_time
from ...storage.buckets import Bucket
from . import swap
from .left import LeftJournal

log = logging.getLogger("kachery_tasks.network.tasks")

#: The envelope kind of a claim.
KIND = "task-claim"
#: Seconds a claim lives without renewal (renewed every third of it).
DEFAULT_TTL = 60.0
#: Claims a node remembers having left (:meth:`Claim.leave`), to delete once they expired
#: (:meth:`Claims.sweep`); beyond that the oldest are forgotten and stay, expired.
LEFT_MAX = 10_000
#: The longest TTL a claim may state; a claim stating more is not trusted.
MAX_TTL = 24 * 3600.0
#: The largest outcome an action's claim records (canonical JSON bytes).
MAX_OUTCOME_BYTES = 64 * 1024
#: The longest function name a claim may carry.
MAX_FUNCTION = 1000

RUNNING, DONE, CHANGING = "running", "done", "changing"
_FIELDS = frozenset({"task_id", "function", "node", "claim", "started", "renewed", "expires",
                     "state", "outcome"})
_TASK_ID = re.compile(r"sha256:([0-9a-f]{64})\Z")
_TOKEN = re.compile(r"[0-9a-f]{32}\Z")
_BUSY_ATTEMPTS = 8  # acquire: how often to look again while another writer is mid-write


def runs_once(kind: str) -> bool:
    """True for the kinds that take a claim (pure, action); queries run every time."""
    policy = POLICIES.get(kind)
    if policy is None:
        raise InvalidValueError(f"unknown task kind {kind!r}; use one of {sorted(POLICIES)}")
    return bool(policy.lease)


@dataclass(frozen=True)
class Holder:
    """Who holds a claim until when, as read from the bucket (not this node's claim).

    ``state`` is ``running`` (a node computes it until ``expires``, unless it
    renews), ``done`` (an action finished: ``outcome`` is what it recorded)
    or ``changing`` (another node is writing the claim right now: look again
    shortly; the other fields describe the claim being replaced, if any).
    """

    task_id: str
    function: str | None
    node: str | None
    started: float | None
    renewed: float | None
    expires: float | None
    state: str
    outcome: dict | None = None
    claim: str | None = None
    generation: str | None = None

    @property
    def done(self) -> bool:
        return self.state == DONE

    def live(self, now: float) -> bool:
        """True while the claim is running and not past its expiry at ``now``."""
        return self.state == RUNNING and self.expires is not None and now < self.expires

    def describe(self, who: str | None = None, *, short: bool = False) -> str:
        """One line: who holds the claim on which call, since and until when. ``who``
        names the holder (``label (16 hex...)``; by default its node id); ``short``
        names the call by the start of its task id alone (for a status line)."""
        if who is None:
            who = f"node {self.node[:16]}..." if self.node else "another node"
        if short:
            what = f"{self.task_id[:19]}..."
        else:
            what = f"{self.task_id} ({self.function})" if self.function else self.task_id
        if self.state == DONE:
            return f"{who} finished {what} at {fmt_time(self.renewed)}"
        if self.state == CHANGING:
            return f"{who} is writing the claim on {what} right now"
        return (f"{who} holds the claim on {what} since {fmt_time(self.started)}, "
                f"until {fmt_time(self.expires)} unless renewed")


def parse_claim(env: Envelope, task_id: str, source: str = "claim") -> Holder:
    """The holder a verified claim envelope describes; EnvelopeError when it is malformed.

    Checks the body's fields and types, that it names ``task_id`` and that
    its node is the envelope's signer. Whether the signer is trusted is the
    caller's question.
    """
    body = env.body
    if type(body) is not dict or set(body) != _FIELDS:
        raise EnvelopeError(f"{source}: a claim body has exactly the fields {sorted(_FIELDS)}")
    if body["task_id"] != task_id:
        raise EnvelopeError(f"{source} is a claim on {str(body['task_id'])[:80]!r}, "
                            f"not on {task_id}")
    if body["node"] != env.signer:
        raise EnvelopeError(f"{source}: the claim names another node than its signer")
    function = body["function"]
    if type(function) is not str or not 0 < len(function) <= MAX_FUNCTION:
        raise EnvelopeError(f"{source}: the claim's function is not a name")
    token = body["claim"]
    if type(token) is not str or not _TOKEN.match(token):
        raise EnvelopeError(f"{source}: the claim's token is not 32 hex digits")
    started, renewed, expires = body["started"], body["renewed"], body["expires"]
    if not all(type(t) in (int, float) for t in (started, renewed, expires)):
        raise EnvelopeError(f"{source}: the claim's times are not numbers")
    if started > renewed:
        raise EnvelopeError(f"{source}: the claim was renewed before it started")
    state, outcome = body["state"], body["outcome"]
    if state == RUNNING:
        if outcome is not None:
            raise EnvelopeError(f"{source}: a running claim has no outcome")
        if not 0 < expires - renewed <= MAX_TTL:
            raise EnvelopeError(f"{source}: the claim's TTL is not between 0 and {MAX_TTL:.0f} s")
    elif state == DONE:
        if type(outcome) is not dict:
            raise EnvelopeError(f"{source}: a finished claim's outcome is not a JSON object")
    else:
        raise EnvelopeError(f"{source}: the claim's state is not running or done")
    return Holder(task_id, function, env.signer, float(started), float(renewed), float(expires),
                  state, outcome, token)


class Claims:
    """The claims of one channel: ``claims.acquire(task_id, function)`` and friends.

    ``bucket`` is the channel's bucket, ``key`` this node's key pair (claims
    are signed with it), ``ttl`` the seconds a claim lives without renewal,
    ``trusts(node_id)`` says whether a node may hold claims (a member with
    ``process_tasks``). ``prefix`` is where claims live in the bucket;
    ``clock`` gives the time (seconds since the epoch; tests skew it).
    ``left_path``, a file in the node's directory, keeps the claims this node
    left and has not deleted yet across restarts (:mod:`.left`).
    """

    def __init__(
        self, bucket: Bucket, key: KeyPair, ttl: float = DEFAULT_TTL,
        trusts: Callable[[str], bool] | None = None, *, prefix: str = "claims/",
        clock: Callable[[], float] = time.time, left_path: Path | None = None,
    ) -> None:
        if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 < ttl <= MAX_TTL:
            raise InvalidValueError(f"a claim TTL is seconds between 0 and {MAX_TTL:.0f}, "
                                    f"not {ttl!r}")
        if trusts is None:
            raise InvalidValueError("Claims needs trusts(node_id) -> bool: which nodes may "
                                    "hold claims (members with process_tasks)")
        if not key.has_private:
            raise InvalidValueError("Claims needs this node's key pair with its private half: "
                                    "claims are signed")
        if prefix and not prefix.endswith("/"):
            raise InvalidValueError(f"a claims prefix ends with '/', not {prefix!r}")
        self.bucket = bucket
        self.key = key
        self.ttl = float(ttl)
        self.trusts = trusts
        self.prefix = prefix
        self.clock = clock
        self._renewer = _Renewer(self)
        self._left: deque[Claim] = deque()
        self._left_lock = threading.Lock()
        self._journal = LeftJournal(left_path) if left_path is not None else None
        if self._journal is not None:
            self._load_left(self._journal)

    # ------------------------------------------------------------ reading
    def key_of(self, task_id: str) -> str:
        """The bucket key of ``task_id``'s claim."""
        match = _TASK_ID.match(task_id) if isinstance(task_id, str) else None
        if match is None:
            raise InvalidValueError(f"{str(task_id)[:80]!r} is not a task id ('sha256:<64 hex>')")
        return f"{self.prefix}{match.group(1)}.json"

    def read(self, task_id: str) -> Holder | None:
        """The trusted claim on ``task_id`` as it is now (live or not), or None.

        None when there is no claim, or only one that is not trusted (logged).
        """
        got = swap.read(self.bucket, self.key_of(task_id))
        return None if got is None else self._holder(got, task_id)

    def _holder(self, got: swap.Read, task_id: str) -> Holder | None:
        source = f"{self.key_of(task_id)} in {self.bucket.url}"
        try:
            env = open_envelope(got.data, KIND, source)
            holder = parse_claim(env, task_id, source)
        except EnvelopeError as e:
            log.warning("ignoring a claim that is not valid: %s", e)
            return None
        if not self.trusts(env.signer):
            log.warning("ignoring %s: signed by %s..., not a member allowed to process tasks",
                        source, env.signer[:16])
            return None
        return dataclasses.replace(holder, generation=got.generation)

    # ------------------------------------------------------------ claiming
    def acquire(self, task_id: str, function: str, *, again: bool = False,
                finished: Callable[[Holder], bool] | None = None) -> Claim | Holder:
        """Claim ``task_id``: a :class:`Claim` (compute it, then release or leave it) or
        the :class:`Holder`.

        A live claim of another node, or (unless ``again``) an action's finished
        claim, is returned as its Holder. No claim, an expired, released or
        untrusted one is replaced by this node's claim (renew it with
        :meth:`Claim.renew`, or use :meth:`holding`, which does). So is a live
        claim that ``finished(holder)`` says has published its result (one left
        by :meth:`Claim.leave`, taken by a pure call asked to compute again).
        """
        key = self.key_of(task_id)
        if type(function) is not str or not 0 < len(function) <= MAX_FUNCTION:
            raise InvalidValueError(f"{function!r} is not a function name")
        delay = 0.005
        seen: Holder | None = None
        for _ in range(_BUSY_ATTEMPTS):
            now = self.clock()
            got = swap.read(self.bucket, key)
            holder = None if got is None else self._holder(got, task_id)
            if holder is not None:
                seen = holder
                if (holder.live(now) and not (finished is not None and finished(holder))) \
                        or (holder.done and not again):
                    return holder
            body = self._body(task_id, function, secrets.token_hex(16), now, now)
            generation = self._store(key, body, None if got is None else got.generation)
            if generation is not None:
                return Claim(self, body, generation)
            time.sleep(delay)  # another node won, or is writing: look again
            delay *= 2
        if seen is None:  # only claims that are not trusted, being replaced by another node
            return Holder(task_id, None, None, None, None, None, CHANGING)
        return dataclasses.replace(seen, state=CHANGING)

    def wait(
        self, task_id: str, function: str, done: Callable[[], bool], timeout: float, *,
        poll: float = 0.05,
    ) -> Claim | None:
        """Wait while another node holds ``task_id``: None when it is done, else a Claim.

        Returns None as soon as ``done()`` is true (the result record is there)
        or the claim records an action's outcome (read it with :meth:`read`).
        When the claim ends without a result (released after a failure, or
        expired: its holder died) this node takes it over and gets the
        :class:`Claim`: compute, then release. Polls the bucket, backing off
        from ``poll`` to a sixth of the TTL (at most 2 s); ``done`` may check
        something faster (a message). Raises ClaimTimeoutError after
        ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        delay = poll
        longest = max(poll, min(2.0, self.ttl / 6))
        while True:
            if done():
                return None
            got = self.acquire(task_id, function)
            if isinstance(got, Claim):
                if done():  # finished (and released) just before we took it
                    got.release()
                    return None
                return got
            if got.done:
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                raise ClaimTimeoutError(
                    f"gave up waiting after {timeout:g} s: {got.describe()}; wait longer or ask "
                    "that node"
                )
            time.sleep(min(delay, left))
            delay = min(delay * 2, longest)

    @contextmanager
    def holding(self, task_id: str, function: str, *, kind: str = "pure",
                again: bool = False) -> Iterator[Claim | None]:
        """``with claims.holding(task_id, function) as claim:`` compute while holding it.

        Acquires the claim (ClaimHeldError, with the holder, when another node
        has it), renews it every ``ttl / 3`` seconds, and frees
        it when the block ends without :meth:`Claim.release` (or :meth:`Claim.leave`)
        having been called (an exception: failures are not results). For ``kind="query"`` nothing
        is claimed and the block gets None: queries run every time.
        """
        if not runs_once(kind):
            yield None
            return
        got = self.acquire(task_id, function, again=again)
        if isinstance(got, Holder):
            raise ClaimHeldError(f"{got.describe()}; wait for its result instead", got)
        got.start_renewing()
        try:
            yield got
        except BaseException:
            got.stop_renewing()
            try:
                got.release()
            except KacheryError as e:  # the block's own error matters more
                log.warning("could not free the claim on %s: %s", task_id, e)
            raise
        got.stop_renewing()
        got.release()

    # ------------------------------------------------------------ sweeping
    def sweep(self, idle: Callable[[], bool] = lambda: True) -> int:
        """Delete the claims this node left (:meth:`Claim.leave`) that have expired since,
        oldest first, while ``idle()`` says so: the count deleted. A left claim that
        another node took over meanwhile is not this node's to delete and stays. The
        deletions are writes a busy provider need not make: it sweeps when it has no
        call in progress."""
        deleted = 0
        try:
            while idle():
                with self._left_lock:
                    if not self._left or self._left[0].expires > self.clock():
                        return deleted
                    claim = self._left.popleft()
                try:
                    deleted += claim._delete()
                except KacheryError as e:  # the bucket is away: the next sweep tries again
                    log.warning("could not delete the expired claim on %s: %s", claim.task_id,
                                e)
                    with self._left_lock:
                        self._left.appendleft(claim)
                    return deleted
            return deleted
        finally:
            self._tidy_journal()

    def _remember_left(self, claim: Claim) -> None:
        with self._left_lock:
            if len(self._left) >= LEFT_MAX:
                self._left.popleft()  # forgotten: it stays in the bucket, expired
            self._left.append(claim)
            if self._journal is not None:
                self._journal.append(claim._left_entry())

    def _load_left(self, journal: LeftJournal) -> None:
        """Take up the claims this node left before it last stopped (see :mod:`.left`)."""
        claims = [c for c in map(self._left_claim, journal.load()) if c is not None]
        claims.sort(key=lambda c: c.expires)
        self._left.extend(claims[-LEFT_MAX:])
        journal.rewrite([c._left_entry() for c in self._left])

    def _left_claim(self, entry: dict[str, Any]) -> Claim | None:
        """The left claim an entry of the journal describes, or None if it is malformed."""
        task_id, token, generation = (entry.get(k) for k in ("task_id", "claim", "generation"))
        function, started, expires = (entry.get(k) for k in ("function", "started", "expires"))
        if not (isinstance(task_id, str) and _TASK_ID.match(task_id)
                and isinstance(token, str) and _TOKEN.match(token)
                and isinstance(generation, str) and generation
                and isinstance(function, str) and len(function) <= MAX_FUNCTION
                and all(type(t) in (int, float) for t in (started, expires))):
            return None
        claim = Claim(self, {"task_id": task_id, "function": function, "claim": token,
                             "started": started, "expires": expires}, generation)
        claim._released = True
        return claim

    def _tidy_journal(self) -> None:
        """Rewrite the journal once it holds many more lines than claims left to delete."""
        with self._left_lock:
            journal = self._journal
            if journal is not None and journal.needs_rewrite(len(self._left)):
                journal.rewrite([c._left_entry() for c in self._left])

    def close(self) -> None:
        """Let go of the journal's file (it is opened again if a claim is left later)."""
        with self._left_lock:
            if self._journal is not None:
                self._journal.close()

    # ------------------------------------------------------------ writing
    def _body(self, task_id: str, function: str, token: str, started: float,
              now: float) -> dict[str, Any]:
        return {"task_id": task_id, "function": function, "node": self.key.public_hex,
                "claim": token, "started": started, "renewed": now, "expires": now + self.ttl,
                "state": RUNNING, "outcome": None}

    def _swap_options(self, writer: str) -> dict[str, Any]:
        return {"writer": writer, "turns": f"{self.prefix}turns/", "turn_ttl": self.ttl,
                "clock": self.clock}

    def _store(self, key: str, body: dict[str, Any], over: str | None) -> str | None:
        """Write ``body`` as the claim (create it, or swap it over generation ``over``).

        Returns the generation now holding it, or None when another writer's
        claim is there instead.
        """
        data = seal(KIND, body, self.key).to_bytes()
        for _ in range(3):
            if over is None:
                # create-only; a claim lost with the machine that held it changes nothing
                generation = self.bucket.create(key, data, flush=False)
                if generation is not None:
                    return generation
                # another writer's, or our own write whose answer was lost: the read says
            elif swap.swap(self.bucket, key, data, over, **self._swap_options(body["claim"])) \
                    == swap.BUSY:
                return None
            got = swap.read(self.bucket, key)
            if got is None:
                return None
            if got.data == data:
                return got.generation
            if self._token_in(got.data) != body["claim"]:
                return None
            over = got.generation  # our own earlier write (a retry): write over it
        return None

    def _token_in(self, data: bytes) -> str | None:
        """The claim token in ``data`` if this node signed it, else None."""
        try:
            env = open_envelope(data, KIND)
        except EnvelopeError:
            return None
        if env.signer != self.key.public_hex or type(env.body) is not dict:
            return None
        token = env.body.get("claim")
        return token if type(token) is str else None

    def _mine(self, key: str, token: str) -> swap.Read | None:
        """The claim object if it is still ``token``'s, else None."""
        got = swap.read(self.bucket, key)
        return got if got is not None and self._token_in(got.data) == token else None


RENEW_THREADS = 16
"""Renewals of one node's claims under way at once (each is a few bucket requests)."""


class _Renewer:
    """Renews the claims of one :class:`Claims` that asked to be renewed: one thread finds
    the claims due, up to :data:`RENEW_THREADS` renew them side by side (a renewal is a
    few bucket requests: done one after the other, hundreds of claims on a slow bucket
    would not all be renewed within their TTL). The thread starts when a claim is added
    and ends after a while without any."""

    def __init__(self, claims: Claims) -> None:
        self._claims = claims
        self._cond = threading.Condition()
        self._held: dict[int, Claim] = {}
        self._busy: set[int] = set()  # claims being renewed right now
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._pid = os.getpid()

    def add(self, claim: Claim) -> None:
        with self._cond:
            self._held[id(claim)] = claim
            if self._pid != os.getpid():  # a forked child: the parent's threads are not here
                self._pid, self._thread, self._pool, self._busy = os.getpid(), None, None, set()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="kachery-claim-renewer",
                                                daemon=True)
                self._thread.start()

    def remove(self, claim: Claim) -> None:
        with self._cond:
            self._held.pop(id(claim), None)

    def __len__(self) -> int:
        with self._cond:
            return len(self._held)

    def _run(self) -> None:
        pause = self._claims.ttl / 12  # a claim is renewed within a quarter of its interval
        idle = 0
        while True:
            with self._cond:
                if not self._held:
                    idle += 1
                    if idle > 3:  # linger a little: claims come in bursts
                        self._thread = None
                        return
                else:
                    idle = 0
                self._cond.wait(pause)
                now = time.monotonic()
                due = [c for key, c in self._held.items()
                       if key not in self._busy and c._due(now)]
                self._busy.update(id(c) for c in due)
                if due and self._pool is None:
                    self._pool = ThreadPoolExecutor(RENEW_THREADS,
                                                    thread_name_prefix="kachery-claim-renew")
                pool = self._pool
            for claim in due:
                assert pool is not None
                try:
                    pool.submit(self._renew, claim)
                except RuntimeError:  # the interpreter is exiting: the claims expire
                    return

    def _renew(self, claim: Claim) -> None:
        try:
            if not claim._renew_now():
                self.remove(claim)
        finally:
            with self._cond:
                self._busy.discard(id(claim))


class Claim:
    """This node's claim on a task id: renew it while computing, release it when done."""

    def __init__(self, claims: Claims, body: dict[str, Any], generation: str) -> None:
        self._claims = claims
        self._body = body
        self.generation = generation
        self.task_id: str = body["task_id"]
        self.function: str = body["function"]
        self.token: str = body["claim"]
        self.started: float = body["started"]
        self.lost = threading.Event()  # set when another node took the claim over
        self._key = claims.key_of(self.task_id)
        self._lock = threading.Lock()
        self._released = False
        self._next: float | None = None  # when the renewer renews it next (monotonic)
        self._lost_to: Holder | None = None

    @property
    def expires(self) -> float:
        return self._body["expires"]

    @property
    def released(self) -> bool:
        return self._released

    def check(self) -> None:
        """Raise ClaimLostError if another node took this claim over."""
        if self.lost.is_set():
            raise self._lost_error()

    # ------------------------------------------------------------ renewing
    def renew(self) -> None:
        """Push the expiry ``ttl`` seconds ahead; ClaimLostError if the claim is not ours."""
        with self._lock:
            if self._released:
                raise ClaimError(f"the claim on {self.task_id} was released; acquire it again")
            self.check()
            now = self._claims.clock()
            body = {**self._body, "renewed": now, "expires": now + self._claims.ttl}
            generation = self._write(body)
            if generation is None:
                self._lose()
                raise self._lost_error()
            self._body, self.generation = body, generation

    def start_renewing(self) -> None:
        """Renew every ``ttl / 3`` seconds until released or lost (by the renewer of this
        node's claims, see ``_Renewer``: a task that ends before its first renewal costs no
        thread of its own)."""
        if self._next is None:
            self._next = time.monotonic() + self._claims.ttl / 3
        self._claims._renewer.add(self)  # again after stop_renewing: renewed as before

    def stop_renewing(self) -> None:
        """Stop renewing (the claim stays until it expires or is released). A renewal
        already under way may still land; :meth:`release` waits for it (both hold the
        claim's lock) and writes over the generation it left."""
        self._claims._renewer.remove(self)

    def _due(self, now: float) -> bool:
        """Whether the renewer should renew the claim at ``now`` (monotonic)."""
        return self._next is not None and now >= self._next

    def _renew_now(self) -> bool:
        """Renew (a renewer thread); False once there is nothing more to renew."""
        interval = self._claims.ttl / 3
        try:
            self.renew()
            self._next = time.monotonic() + interval
            return True
        except ClaimLostError as e:
            log.warning("%s", e)
            return False
        except ClaimError:
            return False  # released
        except KacheryError as e:  # the bucket could not be reached: try again soon
            log.warning("could not renew the claim on %s (will retry): %s", self.task_id, e)
            self._next = time.monotonic() + interval / 4
            return True

    # ------------------------------------------------------------ releasing
    def leave(self) -> None:
        """Stop holding the claim without touching it: it expires on its own, at most the
        TTL from its last renewal. For a pure call whose result record is published: every
        provider looks for the record before the claim, and one that meets the claim
        still live waits for that record, which is there; so the claim guards nothing,
        and leaving it saves the writes of a release (a turn taken, the claim and the
        turn deleted: four requests on ``gs://``). A pure call asked to compute again
        takes it over (``acquire(finished=...)``). It is deleted once expired, when
        the node is idle (:meth:`Claims.sweep`)."""
        self.stop_renewing()
        with self._lock:
            if self._released:
                return
            self._released = True
        self._claims._remember_left(self)

    def release(self, outcome: dict | None = None) -> bool:
        """Give the claim up once the result record is published; True if it was still ours.

        Without ``outcome`` the claim is deleted: pure results are found by
        their record, and a failed run leaves the id free for another try.
        With ``outcome`` (a JSON object: an action's success or error) the
        claim stays, marked done: the action does not run again in the channel
        unless asked again. A lost claim is left alone: without outcome this
        returns False; with one it raises ClaimLostError (the outcome was not
        recorded and the action may have run twice).
        """
        if outcome is not None:
            _check_outcome(outcome)
        self.stop_renewing()
        with self._lock:
            if self._released:
                return False
            self._released = True
            if self.lost.is_set():
                if outcome is not None:
                    raise self._lost_error()
                return False
            if outcome is None:
                freed = self._delete()
            else:
                now = self._claims.clock()
                body = {**self._body, "renewed": now, "expires": now, "state": DONE,
                        "outcome": outcome}
                freed = self._write(body) is not None
            if not freed:
                self._lose()
                if outcome is not None:
                    raise self._lost_error()
            return freed

    # ------------------------------------------------------------ internals
    def _left_entry(self) -> dict[str, Any]:
        """What the journal of left claims keeps of this claim (:mod:`.left`)."""
        return {"task_id": self.task_id, "function": self.function, "claim": self.token,
                "generation": self.generation, "started": self.started,
                "expires": self.expires}

    def _write(self, body: dict[str, Any]) -> str | None:
        # over our last generation; _store also finds our own write whose answer was lost
        return self._claims._store(self._key, body, self.generation)

    def _delete(self) -> bool:
        generation = self.generation
        for _ in range(3):
            status = swap.remove(self._claims.bucket, self._key, generation,
                                 **self._claims._swap_options(self.token))
            if status == swap.WRITTEN:
                return True
            if status == swap.BUSY:
                return False
            got = self._claims._mine(self._key, self.token)  # CHANGED: by our own write?
            if got is None:
                return False
            generation = got.generation
        return False

    def _lose(self) -> None:
        try:
            self._lost_to = self._claims.read(self.task_id)
        except KacheryError:
            self._lost_to = None
        self.lost.set()

    def _lost_error(self) -> ClaimLostError:
        now_held = self._lost_to.describe() if self._lost_to else "the claim is gone"
        return ClaimLostError(
            f"lost the claim on {self.task_id} ({self.function}): {now_held}. Its renewals did "
            f"not reach the bucket within the TTL ({self._claims.ttl:g} s); a pure result may "
            "still be published, an action's outcome was not recorded (it may have run twice)"
        )

    def __repr__(self) -> str:
        return f"<Claim {self.function} {self.task_id[:19]}... until {fmt_time(self.expires)}>"


def _check_outcome(outcome: Any) -> None:
    if type(outcome) is not dict:
        raise InvalidValueError(f"an outcome is a JSON object (dict), not {type(outcome).__name__}")
    size = len(canonical_json(outcome, "claim outcome"))
    if size > MAX_OUTCOME_BYTES:
        raise InvalidValueError(f"the claim outcome is {size} bytes, over {MAX_OUTCOME_BYTES}; "
                                "record a result URI instead of the data")
