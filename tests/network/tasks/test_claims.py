"""Claims: each call of a pure task or an action runs once channel-wide (threads, both backends).

Processes (and SIGKILL) are in tests/integration/test_claims_processes.py.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kachery_tasks.envelopes import Envelope, seal
from kachery_tasks.errors import (
    ClaimError,
    ClaimHeldError,
    ClaimLostError,
    ClaimTimeoutError,
    EnvelopeError,
    InvalidValueError,
    TransferError,
)
from kachery_tasks.keys import KeyPair
from kachery_tasks.network.tasks import KIND, Claim, Claims, Holder, parse_claim, runs_once
from kachery_tasks.storage.buckets.base import Bucket

FN = "mylab.pipelines.spikes"
WAIT = 30.0  # a failure guard only: the tests never measure time


def tid(n: object = 0) -> str:
    return "sha256:" + hashlib.sha256(str(n).encode()).hexdigest()


@pytest.fixture
def make(bucket, keys):
    """``make(i, ttl=..., clock=...)``: node i's Claims on the bucket (members 0-7 trusted)."""
    members = {k.public_hex for k in keys[:8]}

    def make(i: int = 0, ttl: float = 30.0, clock=time.time, trusts=members.__contains__,
             on=None, left_path=None) -> Claims:
        return Claims(on or bucket, keys[i], ttl, trusts, clock=clock, left_path=left_path)

    return make


def body_of(task_id: str, signer: KeyPair, **changes) -> dict:
    now = time.time()
    return {"task_id": task_id, "function": FN, "node": signer.public_hex, "claim": "ab" * 16,
            "started": now, "renewed": now, "expires": now + 30, "state": "running",
            "outcome": None, **changes}


def plant(claims: Claims, task_id: str, signer: KeyPair, **changes) -> None:
    """Put a claim signed by ``signer`` into the bucket, as another node would."""
    data = seal(KIND, body_of(task_id, signer, **changes), signer).to_bytes()
    assert claims.bucket.put(claims.key_of(task_id), data)


class Failing:
    """``bucket``, except that its first ``failures`` calls of ``method`` fail (the network
    is down)."""

    def __init__(self, bucket: Bucket, method: str, failures: int) -> None:
        self._bucket, self._method, self.failures = bucket, method, failures

    def __getattr__(self, name):
        attr = getattr(self._bucket, name)
        if name != self._method:
            return attr

        def failing(*args, **kwargs):
            if self.failures:
                self.failures -= 1
                raise TransferError("the network is down")
            return attr(*args, **kwargs)

        return failing


def plant_expired(claims: Claims, task_id: str, signer: KeyPair) -> None:
    """A claim of a trusted node that died 70 s ago (its last renewal: 100 s ago)."""
    then = time.time() - 100
    plant(claims, task_id, signer, started=then, renewed=then, expires=then + 30)
    assert claims.read(task_id).node == signer.public_hex  # trusted, only expired


# ---------------------------------------------------------------- acquiring
def test_the_first_claimant_holds_and_others_see_who_until_when(make, keys):
    a, b = make(0), make(1)
    claim = a.acquire(tid(), FN)
    assert isinstance(claim, Claim) and claim.function == FN
    seen = b.acquire(tid(), FN)
    assert isinstance(seen, Holder) and seen.state == "running"
    assert seen.node == keys[0].public_hex and seen.function == FN
    assert seen.expires == claim.expires and seen.started == claim.started
    assert "holds the claim on" in seen.describe()
    assert isinstance(a.acquire(tid(), FN), Holder)  # the same node, another thread: held too
    assert b.read(tid()) == seen


def test_racing_claimants_of_a_new_id_one_wins(make, keys, in_threads):
    for round_ in range(3):
        results = in_threads(lambda i, r=round_: make(i).acquire(tid(r), FN), 6)
        winners = [i for i, got in enumerate(results) if isinstance(got, Claim)]
        assert len(winners) == 1, results
        others = {got.node for got in results if isinstance(got, Holder)}
        assert others <= {keys[winners[0]].public_hex}


def test_racing_takers_of_an_expired_claim_one_wins(make, keys, slow_renames, in_threads):
    dead = keys[7]
    for round_ in range(3):
        plant_expired(make(), tid(round_), dead)
        results = in_threads(lambda i, r=round_: make(i).acquire(tid(r), FN), 5)
        winners = [i for i, got in enumerate(results) if isinstance(got, Claim)]
        assert len(winners) == 1, results
        assert make(6).read(tid(round_)).node == keys[winners[0]].public_hex


def test_a_task_id_is_checked(make):
    with pytest.raises(InvalidValueError, match="not a task id"):
        make().acquire("sha256:1234", FN)
    with pytest.raises(InvalidValueError, match="not a function name"):
        make().acquire(tid(), "")


# ---------------------------------------------------------------- trust
@pytest.mark.parametrize("planted", [
    "stranger",  # validly signed, by a node that is not a member with process_tasks
    "forged",  # names a member as signer, signed by someone else
    "garbage",
    "other task",  # a member's real claim on another task id, copied here
    "other node",  # signed by one member, naming another
    "absurd ttl",  # a member's claim that would last a year
])
def test_a_claim_that_is_not_trusted_is_ignored_and_replaced(make, keys, caplog, planted):
    a = make(0)
    key = a.key_of(tid())
    if planted == "stranger":
        plant(a, tid(), keys[8])
    elif planted == "forged":
        env = seal(KIND, body_of(tid(), keys[1]), keys[8])
        forged = Envelope(env.kind, keys[1].public_hex, env.body, env.signature)
        a.bucket.put(key, forged.to_bytes())
    elif planted == "garbage":
        a.bucket.put(key, b"\x00 nothing to see")
    elif planted == "other task":
        a.bucket.put(key, seal(KIND, body_of(tid(1), keys[1]), keys[1]).to_bytes())
    elif planted == "other node":
        a.bucket.put(key, seal(KIND, body_of(tid(), keys[2]), keys[1]).to_bytes())
    else:
        plant(a, tid(), keys[1], expires=time.time() + 365 * 86400)
    with caplog.at_level(logging.WARNING, "kachery_tasks.network.tasks"):
        assert a.read(tid()) is None
        claim = a.acquire(tid(), FN)
    assert isinstance(claim, Claim)
    assert "ignoring" in caplog.text
    assert make(1).read(tid()).node == keys[0].public_hex


def test_trusts_decides_who_may_hold(make, keys):
    plant(make(), tid(), keys[1])
    assert isinstance(make(0).acquire(tid(), FN), Holder)  # a member: honoured
    no_one = make(0, trusts=lambda node: node == keys[0].public_hex)
    assert isinstance(no_one.acquire(tid(), FN), Claim)  # no longer a member: replaced


# ---------------------------------------------------------------- clocks
def test_expiry_is_read_from_the_claim_with_the_readers_clock(make, keys):
    start = 1_800_000_000.0
    holder = make(0, ttl=30, clock=lambda: start)
    holder.acquire(tid(), FN)
    # clocks a little ahead (under 2/3 of the TTL) never take a live claim over ...
    assert isinstance(make(1, clock=lambda: start + 19).acquire(tid(), FN), Holder)
    assert isinstance(make(1, clock=lambda: start - 1000).acquire(tid(), FN), Holder)
    # ... a claim past its expiry is taken over
    assert isinstance(make(1, clock=lambda: start + 31).acquire(tid(), FN), Claim)


def test_renewal_moves_the_expiry(make):
    now = [1_800_000_000.0]
    a = make(0, ttl=30, clock=lambda: now[0])
    claim = a.acquire(tid(), FN)
    first = claim.generation
    now[0] += 25
    claim.renew()
    assert claim.expires == now[0] + 30 and claim.generation != first
    assert isinstance(make(1, clock=lambda: now[0] + 29).acquire(tid(), FN), Holder)
    assert make(1).read(tid()).started == 1_800_000_000.0  # renewals keep the start


# ---------------------------------------------------------------- lost claims
def test_a_holder_whose_claim_was_taken_over_is_told_and_leaves_it_alone(make, keys):
    a = make(0)
    claim = a.acquire(tid(), FN)
    taker = make(1, clock=lambda: time.time() + 100).acquire(tid(), FN)  # A seemed dead
    assert isinstance(taker, Claim)
    taken = rf"lost the claim on {tid()}.*node {keys[1].public_hex[:16]}"
    with pytest.raises(ClaimLostError, match=taken):
        claim.renew()
    assert claim.lost.is_set()
    with pytest.raises(ClaimLostError):
        claim.check()
    assert claim.release() is False  # a pure result may still be published; B's claim stays
    assert make(2).read(tid()).node == keys[1].public_hex


@pytest.mark.parametrize("renewed_since", [False, True])
def test_an_action_whose_claim_was_lost_cannot_record_its_outcome(make, keys, renewed_since):
    a = make(0)
    claim = a.acquire(tid(), FN)
    make(1, clock=lambda: time.time() + 100).acquire(tid(), FN)
    if renewed_since:  # the renewal thread found out already
        with pytest.raises(ClaimLostError):
            claim.renew()
    with pytest.raises(ClaimLostError, match="may have run twice"):
        claim.release({"status": "success"})
    held = make(2).read(tid())
    assert held.node == keys[1].public_hex and held.state == "running"


def test_a_write_whose_answer_was_lost_is_recognised_as_ours(make, bucket, keys):
    class LosesAnswers:
        """The bucket, except that the next replace lands and then reports a failure."""

        def __init__(self) -> None:
            self.fail_next = False

        def __getattr__(self, name):
            return getattr(bucket, name)

        def replace(self, key, data, generation):
            written = bucket.replace(key, data, generation)
            if self.fail_next:
                self.fail_next = False
                raise TransferError("the connection dropped before the answer came")
            return written

    flaky = LosesAnswers()
    claim = make(0, on=flaky).acquire(tid(), FN)
    flaky.fail_next = True
    with pytest.raises(TransferError):
        claim.renew()  # it did land: the claim's generation is not the one we know
    claim.renew()
    assert not claim.lost.is_set()
    assert make(1).read(tid()).generation == claim.generation
    flaky.fail_next = True
    with pytest.raises(TransferError):
        claim.renew()
    assert claim.release() is True
    assert make(1).read(tid()) is None


# ---------------------------------------------------------------- releasing
def test_releasing_without_outcome_frees_the_id(make, bucket):
    a = make(0)
    claim = a.acquire(tid(), FN)
    assert claim.release() is True
    assert list(bucket.list("claims/")) == []  # no claim, no turn left behind
    assert claim.release() is False  # once
    with pytest.raises(ClaimError, match="released"):
        claim.renew()
    assert isinstance(make(1).acquire(tid(), FN), Claim)


def test_a_left_claim_stays_unrenewed_until_it_expires(make, bucket, keys):
    a = make(0, ttl=0.9)
    claim = a.acquire(tid(), FN)
    claim.start_renewing()
    written = bucket.stat(a.key_of(tid())).generation
    claim.leave()
    assert claim.released and len(a._renewer) == 0
    assert claim.release() is False  # left is let go: nothing more to free
    with pytest.raises(ClaimError, match="released"):
        claim.renew()
    assert list(bucket.list("claims/")) == [a.key_of(tid())]  # nothing written or deleted
    assert bucket.stat(a.key_of(tid())).generation == written
    seen = make(1).acquire(tid(), FN)
    assert isinstance(seen, Holder) and seen.node == keys[0].public_hex  # live until...
    time.sleep(1.0)
    assert isinstance(make(1).acquire(tid(), FN), Claim)  # ...its expiry, not renewed


def test_left_claims_are_swept_once_expired_while_idle_unless_taken_over(make, bucket):
    a = make(0, ttl=0.5)
    for n in range(3):
        a.acquire(tid(n), FN).leave()
    assert a.sweep() == 0  # not expired yet
    time.sleep(0.6)
    assert a.sweep(idle=lambda: False) == 0
    taken = make(1).acquire(tid(0), FN)  # expired: another node takes one over
    assert isinstance(taken, Claim)
    assert a.sweep() == 2
    assert list(bucket.list("claims/")) == [a.key_of(tid(0))]  # the taker's; no turn left
    assert make(2).read(tid(0)).claim == taken.token


def test_claims_left_before_a_restart_are_swept_after_it(make, bucket, tmp_path):
    journal = tmp_path / "channel" / "claims-left.jsonl"
    now = [time.time()]
    a = make(0, ttl=30, clock=lambda: now[0], left_path=journal)
    for n in range(3):
        a.acquire(tid(n), FN).leave()
    a.acquire(tid(9), FN).release()  # released, not left: nothing to remember
    a.close()  # the provider stops (or is killed: the lines are written as claims are left)
    assert len(journal.read_text().splitlines()) == 3
    now[0] += 31  # all three expired meanwhile
    taken = make(1, clock=lambda: now[0]).acquire(tid(0), FN)  # one is taken over
    assert isinstance(taken, Claim)
    b = make(0, ttl=30, clock=lambda: now[0], left_path=journal)  # the same node restarted
    assert b.sweep() == 2
    assert list(bucket.list("claims/")) == [b.key_of(tid(0))]  # the taker's stays
    assert not journal.exists()  # nothing left to delete


def test_a_journal_of_left_claims_survives_a_crash_cut_and_garbage(make, bucket, tmp_path):
    journal = tmp_path / "claims-left.jsonl"
    now = [time.time()]
    a = make(0, ttl=30, clock=lambda: now[0], left_path=journal)
    a.acquire(tid(0), FN).leave()
    now[0] += 20
    a.acquire(tid(1), FN).leave()
    now[0] += 11  # the first expired, the second not yet
    assert a.sweep() == 1
    with journal.open("a") as f:  # garbage, and a line cut short by a crash
        f.write('["not an object"]\n{"task_id": "sha256:12"}\n{"task_id": "sha')
    b = make(0, ttl=30, clock=lambda: now[0], left_path=journal)  # restarted
    assert [c.task_id for c in b._left] == [tid(0), tid(1)]  # in order of expiry
    assert len(journal.read_text().splitlines()) == 2  # rewritten without the garbage
    now[0] += 20
    assert b.sweep() == 1  # the one deleted before the restart is gone already
    assert list(bucket.list("claims/")) == [] and not journal.exists()


def test_a_left_claim_the_bucket_failed_to_delete_is_swept_later(make, bucket, tmp_path):
    failing = Failing(bucket, "delete", 1)
    journal = tmp_path / "claims-left.jsonl"
    now = [time.time()]
    a = make(0, ttl=30, clock=lambda: now[0], on=failing, left_path=journal)
    a.acquire(tid(), FN).leave()
    now[0] += 31
    assert a.sweep() == 0  # tried, failed: kept for the next sweep
    assert failing.failures == 0 and len(a._left) == 1 and journal.exists()
    assert a.sweep() == 1
    assert list(bucket.list("claims/")) == [] and not journal.exists()


def test_a_live_claim_said_finished_is_taken_over_and_others_are_not(make, keys):
    a, b = make(0), make(1)
    claim = a.acquire(tid(), FN)
    asked: list = []

    def finished(holder):
        asked.append(holder)
        return holder.claim == claim.token

    assert isinstance(b.acquire(tid(), FN), Holder)  # without the test: held
    taken = b.acquire(tid(), FN, finished=finished)
    assert isinstance(taken, Claim) and asked[0].node == keys[0].public_hex
    assert b.read(tid()).claim == taken.token  # over the very generation it read
    seen = make(2).acquire(tid(), FN, finished=finished)  # b's claim: not said finished
    assert isinstance(seen, Holder) and seen.claim == taken.token


def test_an_actions_outcome_stays_and_it_runs_again_only_when_asked(make, keys):
    claim = make(0).acquire(tid(), FN)
    outcome = {"status": "error", "error": "ValueError: no such sample"}
    assert claim.release(outcome) is True
    seen = make(1, clock=lambda: time.time() + 10**6).acquire(tid(), FN)  # never expires
    assert isinstance(seen, Holder) and seen.done and seen.outcome == outcome
    assert "finished" in seen.describe()
    assert make(1).wait(tid(), FN, lambda: False, WAIT) is None
    again = make(1).acquire(tid(), FN, again=True)
    assert isinstance(again, Claim)
    assert make(2).read(tid()).state == "running"


@pytest.mark.parametrize("outcome, message", [
    (["success"], "a JSON object"),
    ({"log": "x" * 70_000}, "over 65536"),
    ({"value": float("nan")}, "not JSON"),
])
def test_an_outcome_is_checked_before_anything_is_written(make, outcome, message):
    claim = make(0).acquire(tid(), FN)
    with pytest.raises(InvalidValueError, match=message):
        claim.release(outcome)
    assert not claim.released
    assert make(1).read(tid()).state == "running"


# ---------------------------------------------------------------- holding
def test_holding_renews_from_a_thread_so_the_claim_outlives_its_ttl(make, keys):
    ttl = 3.0
    with make(0, ttl=ttl).holding(tid(), FN) as claim:
        observer = make(1)
        renewals = {observer.read(tid()).renewed}
        deadline = time.monotonic() + WAIT
        while len(renewals) < 3:  # two renewals seen: the claim lived past its first TTL
            assert time.monotonic() < deadline, "the claim was not renewed"
            time.sleep(0.05)
            renewals.add(observer.read(tid()).renewed)
        assert isinstance(observer.acquire(tid(), FN), Holder)
        assert not claim.lost.is_set()
    assert observer.read(tid()) is None  # freed on leaving


def test_one_thread_renews_many_claims_and_forgets_the_released(make):
    import threading

    claims = make(0, ttl=1.5)
    held = [claims.acquire(tid(n), FN) for n in range(20)]
    before = set(threading.enumerate())
    for claim in held:
        claim.start_renewing()
    assert len(set(threading.enumerate()) - before) == 1
    first = {c.task_id: c.generation for c in held}
    deadline = time.monotonic() + WAIT
    while any(c.generation == first[c.task_id] for c in held):  # each one renewed
        assert time.monotonic() < deadline, "not every claim was renewed"
        time.sleep(0.05)
    assert not any(c.lost.is_set() for c in held)
    for claim in held:
        claim.release()
    assert len(claims._renewer) == 0 and all(make(1).read(c.task_id) is None for c in held)


def test_claims_on_a_slow_bucket_are_renewed_side_by_side_within_their_ttl(make, bucket):
    """40 claims, a TTL of 3 s, each bucket request 20 ms (a renewal is about 7): one after
    the other the renewals would take longer than the claims live."""
    class Slow:
        on = False  # slow once the claims are taken: only their renewals are

        def __getattr__(self, name):
            attr = getattr(bucket, name)
            if not callable(attr):
                return attr

            def slow(*args, **kwargs):
                if self.on:
                    time.sleep(0.02)
                return attr(*args, **kwargs)
            return slow

    slow = Slow()
    claims = make(0, ttl=3.0, on=slow)
    held = [claims.acquire(tid(n), FN) for n in range(40)]
    slow.on = True
    for claim in held:
        claim.start_renewing()
    time.sleep(4.5)  # past the first TTL: every claim lives only by its renewals
    observer = make(1)
    now = time.time()
    assert not any(c.lost.is_set() for c in held)
    assert all(observer.read(c.task_id).live(now) for c in held)
    for claim in held:
        claim.stop_renewing()


def test_the_renewal_thread_keeps_trying_when_the_bucket_fails(make, bucket):
    failing = Failing(bucket, "replace", 3)
    with make(0, ttl=3.0, on=failing).holding(tid(), FN) as claim:
        first = claim.generation
        deadline = time.monotonic() + WAIT
        while claim.generation == first:  # renewed, once the failures are over
            assert time.monotonic() < deadline, "the renewals stopped at the first failure"
            time.sleep(0.05)
        assert failing.failures == 0 and not claim.lost.is_set()


def test_holding_frees_the_claim_when_the_block_fails(make):
    with pytest.raises(ZeroDivisionError), make(0).holding(tid(), FN):
        1 / 0  # noqa: B018
    assert make(1).read(tid()) is None


def test_holding_a_claim_held_elsewhere_says_who(make, keys):
    with make(0).holding(tid(), FN), pytest.raises(ClaimHeldError, match="holds the claim") as e, \
            make(1).holding(tid(), FN):
        pass
    assert e.value.holder.node == keys[0].public_hex


def test_holding_records_an_outcome_released_in_the_block(make):
    with make(0).holding(tid(), FN, kind="action") as claim:
        claim.release({"status": "success"})
    assert make(1).read(tid()).outcome == {"status": "success"}


def test_queries_take_no_claim_and_run_every_time(make, bucket):
    with make(0).holding(tid(), FN, kind="query") as first, \
            make(1).holding(tid(), FN, kind="query") as second:
        assert first is None and second is None
        assert list(bucket.list("")) == []
    assert (runs_once("pure"), runs_once("action"), runs_once("query")) == (True, True, False)
    with pytest.raises(InvalidValueError, match="unknown task kind"):
        runs_once("job")


# ---------------------------------------------------------------- waiting
def test_a_waiter_returns_when_the_result_is_there(make):
    published = threading.Event()
    claim = make(0).acquire(tid(), FN)
    waited: list = []
    waiter = threading.Thread(target=lambda: waited.append(
        make(1).wait(tid(), FN, published.is_set, WAIT)))
    waiter.start()
    published.set()  # the holder publishes its result record, then releases
    claim.release()
    waiter.join(WAIT)
    assert waited == [None]


def test_a_waiter_takes_over_when_the_holder_gives_up_without_a_result(make, keys):
    claim = make(0).acquire(tid(), FN)
    waited: list = []
    waiter = threading.Thread(target=lambda: waited.append(
        make(1).wait(tid(), FN, lambda: False, WAIT)))
    waiter.start()
    claim.release()  # the computation failed: failures are not results
    waiter.join(WAIT)
    assert isinstance(waited[0], Claim)
    assert make(2).read(tid()).node == keys[1].public_hex


def test_a_waiter_takes_over_an_expired_claim(make, keys):
    plant_expired(make(), tid(), keys[7])
    assert isinstance(make(1).wait(tid(), FN, lambda: False, WAIT), Claim)


def test_a_result_that_came_as_the_claim_was_freed_is_not_computed_again(make, bucket):
    answers = iter([False, True])  # not done when first asked, done right after
    assert make(1).wait(tid(), FN, lambda: next(answers), WAIT) is None
    assert make(2).read(tid()) is None  # the claim taken meanwhile was given back


def test_waiting_for_a_live_holder_times_out_with_who_holds_it(make):
    make(0).acquire(tid(), FN)
    with pytest.raises(ClaimTimeoutError, match=r"gave up waiting after 0\.2 s: node") as e:
        make(1).wait(tid(), FN, lambda: False, 0.2, poll=0.01)
    assert isinstance(e.value, TimeoutError)


# ---------------------------------------------------------------- the format
def test_claims_check_their_settings(bucket, keys):
    def trusts(node):
        return True

    with pytest.raises(InvalidValueError, match="TTL"):
        Claims(bucket, keys[0], 0, trusts)
    with pytest.raises(InvalidValueError, match="trusts"):
        Claims(bucket, keys[0], 30)
    with pytest.raises(InvalidValueError, match="private"):
        Claims(bucket, KeyPair(keys[0].public_hex), 30, trusts)
    with pytest.raises(InvalidValueError, match="prefix"):
        Claims(bucket, keys[0], 30, trusts, prefix="claims")
    claims = Claims(bucket, keys[0], 30, trusts, prefix="channels/o/lab/claims/")
    claims.acquire(tid(), FN)
    assert list(bucket.list("channels/")) == [f"channels/o/lab/claims/{tid()[7:]}.json"]


SIGNER = KeyPair.generate()
_times = st.floats(min_value=0, max_value=4e9, allow_nan=False)
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-2**53, 2**53) | _times | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                  max_size=3),
    max_leaves=6,
)


_wrong = st.one_of(_json, st.booleans(), st.text("0123456789abcdefX", max_size=40),
                   st.floats(-1e10, 1e10))
_near_misses = {  # per field: values that are almost right
    "task_id": st.sampled_from([tid(1), tid().upper(), tid()[7:], ""]),
    "function": st.sampled_from(["", "f" * 1001, 7, None]),
    "node": st.sampled_from([KeyPair.generate().public_hex, SIGNER.public_hex.upper(), ""]),
    "claim": st.text("0123456789abcdefA", min_size=31, max_size=33),
    "started": st.booleans() | st.text(max_size=3) | st.floats(4e9, 5e9),
    "renewed": st.booleans() | st.just(None) | st.floats(-1, 0),
    "expires": st.booleans() | st.just("soon") | st.floats(-1e6, 0),
    "state": st.sampled_from(["ended", "Running", "", None, "changing"]),
    "outcome": st.sampled_from([[], "ok", 1, {}, None]) | st.dictionaries(st.text(max_size=3),
                                                                      _json, max_size=2),
}


@st.composite
def bodies(draw):
    """Claim bodies: well formed, or with a field or two almost right, wrong or missing."""
    started = draw(_times)
    renewed = started + draw(st.floats(0, 1e5))
    state = draw(st.sampled_from(["running", "done"]))
    body = {"task_id": tid(), "function": draw(st.text(min_size=1, max_size=30)),
            "node": SIGNER.public_hex, "claim": draw(st.text("0123456789abcdef", min_size=32,
                                                              max_size=32)),
            "started": started, "renewed": renewed,
            "expires": renewed + draw(st.floats(0.001, 86400) | st.floats(-10, 2 * 86400)),
            "state": state, "outcome": draw(st.dictionaries(st.text(max_size=5), _json,
                                                           max_size=3))
            if state == "done" else None}
    changes = draw(st.sampled_from([0, 1, 1, 1, 2]))
    for field in draw(st.lists(st.sampled_from(sorted(body)), min_size=changes,
                               max_size=changes, unique=True)):
        how = draw(st.sampled_from(["almost", "almost", "wrong", "drop"]))
        if how == "drop":
            del body[field]
        else:
            body[field] = draw(_near_misses[field] if how == "almost" else _wrong)
    if draw(st.sampled_from([False] * 9 + [True])):
        body["extra"] = 1
    return body


@pytest.mark.parametrize("field, value", [
    ("task_id", tid(1)), ("task_id", tid().upper()), ("function", ""), ("function", "f" * 1001),
    ("function", 7), ("node", "ab" * 32), ("claim", "ab" * 15), ("claim", "AB" * 16),
    ("claim", None), ("started", True), ("started", "1"), ("renewed", None),
    ("expires", False), ("started", 2e9 + 1), ("expires", 1e9), ("expires", 2e9 + 86401),
    ("state", "ended"), ("state", None), ("outcome", {"status": "success"}),
])
def test_parse_claim_refuses_a_body_that_is_almost_right(field, value):
    body = {"task_id": tid(), "function": FN, "node": SIGNER.public_hex, "claim": "ab" * 16,
            "started": 1e9, "renewed": 2e9, "expires": 2e9 + 60, "state": "running",
            "outcome": None}
    assert parse_claim(Envelope(KIND, SIGNER.public_hex, body, "00" * 64), tid()).claim
    done = {**body, "state": "done", "outcome": {}}
    assert parse_claim(Envelope(KIND, SIGNER.public_hex, done, "00" * 64), tid()).done
    body[field] = value
    with pytest.raises(EnvelopeError):
        parse_claim(Envelope(KIND, SIGNER.public_hex, body, "00" * 64), tid())
    for broken in ({**done, "outcome": [1]}, {**done, "outcome": None}, {**done, "extra": 1}):
        with pytest.raises(EnvelopeError):
            parse_claim(Envelope(KIND, SIGNER.public_hex, broken, "00" * 64), tid())


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=500)
@given(bodies())
def test_parse_claim_accepts_exactly_the_well_formed_claims(body):
    env = Envelope(KIND, SIGNER.public_hex, body, "00" * 64)  # parse_claim reads, not verifies
    try:
        holder = parse_claim(env, tid())
    except EnvelopeError as e:
        assert "\n" not in str(e)
        return
    assert set(body) == {"task_id", "function", "node", "claim", "started", "renewed",
                         "expires", "state", "outcome"}
    assert (holder.task_id, holder.function, holder.node, holder.claim) == (
        tid(), body["function"], SIGNER.public_hex, body["claim"])
    assert (holder.started, holder.renewed, holder.expires) == (
        body["started"], body["renewed"], body["expires"])
    assert type(holder.function) is str and 0 < len(holder.function) <= 1000
    assert re.fullmatch("[0-9a-f]{32}", holder.claim)
    assert all(type(body[t]) in (int, float) for t in ("started", "renewed", "expires"))
    assert holder.started <= holder.renewed
    assert holder.state in ("running", "done")
    if holder.state == "running":
        assert holder.outcome is None and 0 < holder.expires - holder.renewed <= 86400
    else:
        assert type(holder.outcome) is dict and holder.outcome == body["outcome"]


def test_a_new_claim_is_not_read_back(make, bucket, monkeypatch):
    """Creating a claim answers its generation: taking a new id reads no object (on gs://
    a read back would be three more requests per call)."""
    reads = []
    real = type(bucket).get

    def get(self, key, *args, **kwargs):
        reads.append(key)
        return real(self, key, *args, **kwargs)

    monkeypatch.setattr(type(bucket), "get", get)
    claims = make(0)
    claim = claims.acquire(tid("no read back"), FN)
    assert isinstance(claim, Claim) and reads == []
    assert claim.generation == bucket.stat(claims.key_of(claim.task_id)).generation
    claim.renew()  # the generation it holds is the object's: a swap over it succeeds
    assert claim.release()


def test_claims_and_their_turns_are_written_without_a_flush(make, bucket, monkeypatch):
    """A claim lives for one computation: its bucket writes (the claim, the turn taken to
    delete it) ask not to be flushed to disk, which would cost more than the call."""
    flushes = []

    def counted(name):
        real = getattr(type(bucket), name)

        def write(self, key, data, *, flush=True):
            flushes.append((key.rsplit("/", 2)[-2], flush))
            return real(self, key, data, flush=flush)

        monkeypatch.setattr(type(bucket), name, write)

    counted("put")
    if type(bucket).create is not Bucket.create:  # else create() calls put()
        counted("create")
    claim = make(0).acquire(tid("flush"), FN)
    assert isinstance(claim, Claim)
    assert claim.release()
    assert flushes and all(flush is False for _, flush in flushes)
    assert len(flushes) >= 2  # the claim, and the turn taken to delete it
