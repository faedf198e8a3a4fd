"""The provider's outbox for batches: answers gathered, superseded statuses dropped, the
final answer last, messages under the size limit."""

from __future__ import annotations

import json
import threading
import time

from hypothesis import given
from hypothesis import strategies as st

from kachery_tasks.network.tasks import protocol
from kachery_tasks.network.tasks.batches import Outbox, chunked

_ENTRY = st.fixed_dictionaries({
    "type": st.sampled_from(sorted(protocol.ANSWER_TYPES)),
    "task_id": st.text(max_size=80),
    "detail": st.text(max_size=3000),
})


def _size(entries: list[dict]) -> int:
    return sum(len(json.dumps(e, separators=(",", ":"))) + 1 for e in entries)


@given(st.lists(_ENTRY, max_size=60), st.integers(min_value=50, max_value=20_000))
def test_chunks_keep_every_entry_in_order_within_the_limit(entries, limit):
    chunks = chunked(entries, limit)
    assert [e for chunk in chunks for e in chunk] == entries
    assert chunks and (all(chunks) or chunks == [[]])
    for chunk in chunks:
        assert len(chunk) == 1 or _size(chunk) <= limit  # one entry over the limit goes alone


class _Session:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict]] = []

    def publish(self, type, body, timeout=None):
        self.sent.append((type, body))


class _Incoming:
    """What the outbox needs of a served request: its session, id, sender and answer()."""

    def __init__(self, session: _Session) -> None:
        self.responder = type("R", (), {"session": session})()
        self.id = "0" * 32
        self.sender = "requester"
        self.done = threading.Event()

    def answer(self, type, body, detail=""):
        self.responder.session.sent.append((type, body))
        self.done.set()


def test_the_outbox_sends_the_latest_of_each_call_and_the_final_answer_last():
    session = _Session()
    incoming = _Incoming(session)
    outbox = Outbox(every=0.2)
    try:
        batch = outbox.open(incoming, 3)
        a, b, c = (batch.slot(i, f"call {i}") for i in range(3))
        with outbox.lock:  # all said before the outbox gathers anything, however slow
            a.progress(protocol.status_body("a", "queued"))
            a.progress(protocol.status_body("a", "running"))  # supersedes queued, not sent
            b.answer("task_finished", protocol.finished_body("b", "pure", None, None, None))
            b.progress(protocol.status_body("b", "running"))  # late: b was answered
            c.answer("task_declined", protocol.declined_body("c", "unknown", "not here"))
            a.answer("task_failed", protocol.failed_body(
                "a", type="ValueError", message="no", traceback="", provider="p", label="p"))
        assert incoming.done.wait(10)
    finally:
        outbox.close()
    types = [t for t, _ in session.sent]
    assert types[-1] == "tasks_answered" and set(types[:-1]) <= {"tasks_progress"}
    entries = [e for _, body in session.sent for e in body["answers"]]
    assert sorted((e["task_id"], e["type"]) for e in entries) == [
        ("a", "task_failed"), ("b", "task_finished"), ("c", "task_declined")]
    for _, body in session.sent[:-1]:
        assert body["to"] == "requester" and body["request"] == incoming.id


def test_a_closed_outbox_still_sends_the_answers_of_calls_that_end_later():
    session = _Session()
    incoming = _Incoming(session)
    outbox = Outbox(every=0.05)
    batch = outbox.open(incoming, 2)
    a, b = batch.slot(0, "call a"), batch.slot(1, "call b")
    a.answer("task_finished", protocol.finished_body("a", "pure", None, None, None))
    deadline = time.monotonic() + 10
    while not session.sent:  # a's answer went out: the outbox has nothing left to send
        assert time.monotonic() < deadline
        time.sleep(0.01)
    outbox.close()  # the provider closes while b still runs
    time.sleep(0.2)
    b.answer("task_finished", protocol.finished_body("b", "pure", None, None, None))
    assert incoming.done.wait(10)
    entries = [e["task_id"] for _, body in session.sent for e in body["answers"]]
    assert sorted(entries) == ["a", "b"]
    outbox._thread.join(10)
    assert not outbox._thread.is_alive()  # every batch answered: the thread ends


def test_a_closed_outbox_gives_up_on_calls_that_never_end():
    outbox = Outbox(every=0.05)
    batch = outbox.open(_Incoming(_Session()), 1)
    batch.slot(0, "a call that never ends")
    outbox.close(wait_for_answers=0.2)
    outbox._thread.join(10)
    assert not outbox._thread.is_alive()
