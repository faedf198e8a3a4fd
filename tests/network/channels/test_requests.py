"""The request/answer plumbing: asking members, answering, progress, repeats, timeouts.

Real sessions on the embedded broker (with channel admission), through the SDK.
"""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from kachery_tasks.errors import ChannelMemberLeftError, ChannelTimeoutError
from kachery_tasks.network.channels import ChannelSession
from kachery_tasks.network.channels import requests as requests_mod
from kachery_tasks.network.channels.files import FILE
from kachery_tasks.network.channels.requests import Asker, Responder
from kachery_tasks.testing.pubsub import Inbox
from tests.network.channels.conftest import FAST_SESSION, wait_for


@pytest.fixture
def sessions(lab):
    """Sessions of nodes a (the asker), b and c (answerers), all members with every
    permission; closed after the test."""
    opened = []

    def start(name: str) -> ChannelSession:
        node = lab.nodes[name] if name in lab.nodes else lab.add(name)
        from kachery_tasks.network.channels import ChannelStore

        channel = ChannelStore(node.dir).find("lab")
        s = ChannelSession(channel, node.key, **FAST_SESSION).start()
        opened.append(s)
        return s

    for name in ("a", "b", "c"):
        lab.add(name)
    yield start
    for s in opened:
        s.close()


def answer_with(type: str, extra: dict | None = None, delay: float = 0.0):
    def handler(incoming):
        time.sleep(delay)
        incoming.answer(type, {"sha256": "x", **(extra or {})})
    return handler


def test_a_final_answer_ends_the_wait(sessions):
    a, b = sessions("a"), sessions("b")
    Responder(b, FILE, answer_with("file_uploaded", {"size": 3}))
    pending = Asker(a).ask(FILE, {"uri": "u"}, asked={b.node_id}, online=1, timeout=5,
                           what="the test request")
    assert pending.status == "done"
    assert pending.final.type == "file_uploaded" and pending.final.sender == b.node_id
    assert pending.final.body["to"] == a.node_id and pending.final.body["size"] == 3


def test_when_every_member_asked_declines_the_request_ends_at_once(sessions):
    a, b, c = sessions("a"), sessions("b"), sessions("c")
    Responder(b, FILE, answer_with("file_absent"))
    Responder(c, FILE, answer_with("file_absent", delay=0.2))
    started = time.monotonic()
    pending = Asker(a).ask(FILE, {"uri": "u"}, asked={b.node_id, c.node_id}, online=2,
                           timeout=30, what="the test request")
    assert pending.status == "declined"
    assert pending.answers == {b.node_id: "file_absent", c.node_id: "file_absent"}
    assert time.monotonic() - started < 30  # not a timeout (a guard, not a measurement)


def test_progress_extends_the_wait_beyond_the_timeout(sessions):
    a, b = sessions("a"), sessions("b")

    def slow(incoming):
        for i in range(6):  # 1.2 s of work, with a timeout of 0.6 s
            incoming.progress({"sha256": "x", "bytes": i, "total": 6})
            time.sleep(0.2)
        incoming.answer("file_uploaded", {"sha256": "x"})

    Responder(b, FILE, slow)
    seen = []
    pending = Asker(a).ask(FILE, {"uri": "u"}, asked={b.node_id}, online=1, timeout=0.6,
                           what="the test request",
                           on_progress=lambda p, m: seen.append(m.body["bytes"]))
    assert pending.status == "done" and seen == [0, 1, 2, 3, 4, 5]
    assert pending.progress == {"bytes": 5, "total": 6}


def test_a_timeout_names_the_channel_who_was_online_and_who_answered(sessions):
    a, b, c = sessions("a"), sessions("b"), sessions("c")
    Responder(b, FILE, answer_with("file_absent"))  # c never answers
    with pytest.raises(ChannelTimeoutError) as e:
        Asker(a).ask(FILE, {"uri": "u"}, asked={b.node_id, c.node_id}, online=3, timeout=0.8,
                     what="the request for sha256://abc", repeat_after=10)
    assert str(e.value).startswith(
        "no member of channel lab answered the request for sha256://abc within 0.8 s: "
        "3 members online, 2 of them may answer, 1 answered (1 file_absent)")


def test_when_the_members_asked_leave_the_wait_ends_without_the_timeout(sessions,
                                                                       monkeypatch):
    monkeypatch.setattr(requests_mod, "GONE_AFTER", 0.5)
    a, b, c = sessions("a"), sessions("b"), sessions("c")
    Responder(b, FILE, answer_with("file_absent"))
    Responder(c, FILE, lambda incoming: threading.Timer(0.3, c.close).start())  # killed
    with pytest.raises(ChannelMemberLeftError) as e:  # long before the 60 s
        Asker(a).ask(FILE, {"uri": "u"}, asked={b.node_id, c.node_id}, online=3, timeout=60,
                     what="the test request")
    assert str(e.value).startswith(
        f"the member {c.node_id[:16]}... asked (the test request) left channel lab")
    assert "1 file_absent" in str(e.value)


def test_a_member_back_in_the_channel_at_once_is_still_waited_for(sessions, lab):
    a, b = sessions("a"), sessions("b")
    asker = Asker(a)
    result = {}

    def ask():
        result["p"] = asker.ask(FILE, {"uri": "u"}, asked={b.node_id}, online=1, timeout=30,
                                what="the test request", repeat_after=0.3)

    thread = threading.Thread(target=ask)
    Responder(b, FILE, lambda incoming: None)  # takes it, then its connection drops
    thread.start()
    time.sleep(0.3)
    b.close()
    time.sleep(1.5)  # out of presence for a while, less than GONE_AFTER
    again = sessions("b")
    Responder(again, FILE, answer_with("file_uploaded"))
    thread.join(30)
    assert result["p"].status == "done" and result["p"].final.sender == b.node_id


def test_a_request_is_repeated_when_nothing_is_heard(sessions):
    a, b = sessions("a"), sessions("b")
    asker = Asker(a)
    result = {}
    thread = threading.Thread(target=lambda: result.update(p=asker.ask(
        FILE, {"uri": "u"}, asked={b.node_id}, online=1, timeout=10, what="the test request",
        repeat_after=0.3)))
    thread.start()
    time.sleep(0.5)  # the first request went by before b listened: as if the broker lost it
    calls = []
    Responder(b, FILE, lambda i: (calls.append(i.id), i.answer("file_uploaded", {})))
    thread.join(15)
    assert result["p"].status == "done" and len(calls) == 1


def test_a_repeat_is_served_once_and_answered_again(sessions):
    a, b = sessions("a"), sessions("b")
    calls = []
    Responder(b, FILE, lambda i: (calls.append(i.id), i.answer("file_absent", {"sha256": "x"})))
    answers = Inbox()
    a.on("file_absent", answers)
    body = {"uri": "u", "request": "ab" * 16}
    a.publish("request_file", body)
    answers.wait_for(1)
    a.publish("request_file", body)  # the asker did not hear the answer: it asks again
    got = answers.wait_for(2)
    assert calls == ["ab" * 16]
    assert [m.body for m in got] == [{"sha256": "x", "request": "ab" * 16, "to": a.node_id}] * 2


def test_a_repeat_arriving_before_the_handler_returns_is_answered_again(sessions):
    a, b = sessions("a"), sessions("b")
    answers = Inbox()
    a.on("file_absent", answers)
    finish = threading.Event()

    def handler(incoming):
        incoming.answer("file_absent", {"sha256": "x"})
        finish.wait(30)  # still running after its answer went out

    Responder(b, FILE, handler)
    body = {"uri": "u", "request": "cd" * 16}
    try:
        a.publish("request_file", body)
        answers.wait_for(1)
        a.publish("request_file", body)  # the asker missed the answer: it asks again
        got = answers.wait_for(2)
    finally:
        finish.set()
    assert [m.body["request"] for m in got] == ["cd" * 16] * 2


def test_requests_from_this_node_and_malformed_ones_are_not_served(sessions, lab):
    a, b = sessions("a"), sessions("b")
    other_b = sessions("b")  # another process of node b
    calls = []
    Responder(b, FILE, lambda i: calls.append(i.id))
    other_b.publish("request_file", {"uri": "u", "request": "cd" * 16})
    a.publish("request_file", {"uri": "u", "request": "not an id"})
    a.publish("request_file", {"uri": "u", "request": "ef" * 16})
    wait_for(lambda: calls, what="the request from a")
    time.sleep(0.2)
    assert calls == ["ef" * 16]


def test_answers_to_another_node_are_ignored(sessions):
    a, b, c = sessions("a"), sessions("b"), sessions("c")
    asker = Asker(a)
    rid = []

    def misdirected(incoming):  # answers a request of a, addressed to c
        rid.append(incoming.id)
        b.publish("file_uploaded", {"request": incoming.id, "to": c.node_id})

    Responder(b, FILE, misdirected)
    with pytest.raises(ChannelTimeoutError, match="0 answered"):
        asker.ask(FILE, {"uri": "u"}, asked={b.node_id}, online=1, timeout=0.8,
                  what="the test request", repeat_after=10)
    assert rid


def test_both_sides_keep_status_rows(sessions):
    a, b = sessions("a"), sessions("b")
    events = []
    responder = Responder(b, FILE, answer_with("file_absent"), events=events.append)
    asker = Asker(a, events=events.append)
    pending = asker.ask(FILE, {"uri": "u"}, asked={b.node_id}, online=1, timeout=5,
                        what="the test request")
    [asked] = asker.status()
    assert asked == {"id": pending.id, "type": "request_file", "channel": "lab",
                     "from": a.node_id, "to": [b.node_id], "status": "declined",
                     "started": pytest.approx(time.time(), abs=60), "progress": None,
                     "detail": "declined by all 1 asked"}
    [served] = wait_for(lambda: [r for r in responder.status() if r["status"] == "declined"])
    assert served["id"] == pending.id and served["from"] == a.node_id
    assert served["to"] == b.node_id
    assert all(e["type"] == "request" for e in events)
    assert {e["request"]["status"] for e in events} >= {"waiting", "serving", "declined"}


def _session_publishing_with(publish):
    """A stand-in for a responder's ChannelSession that publishes with ``publish``; also
    the handlers a Responder registers on it, for the test to hand requests to."""
    handlers: dict = {}
    session = SimpleNamespace(node_id="me", channel=SimpleNamespace(name="lab"),
                              on=lambda t, h: handlers.setdefault(t, h),
                              off=lambda t, h: None, publish=publish, pubsub=object())
    return session, handlers


def test_progress_reports_never_hold_up_the_work():
    """A broker that does not acknowledge progress reports does not stop the answer."""
    release, sending = threading.Event(), threading.Event()
    published = []

    def publish(type, body, timeout=None):
        if type == "file_upload_progress":
            sending.set()
            release.wait(30)  # the pub/sub is away
        published.append((type, body.get("bytes")))

    session, handlers = _session_publishing_with(publish)

    def work(incoming):
        incoming.progress({"sha256": "x", "bytes": 0, "total": 3})
        assert sending.wait(30)  # the first report is on its way, and stuck
        for i in (1, 2):
            incoming.progress({"sha256": "x", "bytes": i, "total": 3})
        incoming.answer("file_uploaded", {"sha256": "x"})

    responder = Responder(session, FILE, work)
    msg = SimpleNamespace(type="request_file", sender="asker", body={"request": "ab" * 16})
    handlers["request_file"](msg)
    wait_for(lambda: ("file_uploaded", None) in published, what="the answer")
    release.set()
    wait_for(lambda: len(published) >= 2, what="the stuck progress report")
    assert published[:2] == [("file_uploaded", None), ("file_upload_progress", 0)]
    responder.close()


def test_a_report_still_queued_when_the_answer_goes_out_is_not_sent():
    """Reports go out from their own thread, one at a time: one queued behind a slow
    report when the answer is published would only follow the answer, and is dropped."""
    release, sending = threading.Event(), threading.Event()
    published = []

    def publish(type, body, timeout=None):
        if body.get("bytes") == 0:
            sending.set()
            release.wait(30)  # the first report is slow to go out
        published.append((type, body.get("request"), body.get("bytes")))

    session, handlers = _session_publishing_with(publish)
    rid, other = "ab" * 16, "cd" * 16

    def work(incoming):
        incoming.progress({"sha256": "x", "bytes": 0, "total": 2})
        assert sending.wait(30)
        incoming.progress({"sha256": "x", "bytes": 1, "total": 2})  # queued behind it
        incoming.answer("file_uploaded", {"sha256": "x"})

    responder = Responder(session, FILE, work)
    handlers["request_file"](SimpleNamespace(type="request_file", sender="asker",
                                             body={"request": rid}))
    wait_for(lambda: ("file_uploaded", rid, None) in published, what="the answer")
    # another request's report, queued after the answer: the thread sends it after any
    # report of the answered request still queued
    responder.send_progress(SimpleNamespace(id=other, answered=None),
                            {"request": other, "bytes": 5})
    release.set()
    wait_for(lambda: ("file_upload_progress", other, 5) in published, what="the other report")
    assert published == [("file_uploaded", rid, None), ("file_upload_progress", rid, 0),
                         ("file_upload_progress", other, 5)]
    responder.close()


def test_a_report_given_after_the_answer_is_not_sent():
    """A report given once the request is answered (a provider's status tick that read
    the request just before its call ended) is not sent, and leaves the status row."""
    published = []
    session, handlers = _session_publishing_with(
        lambda type, body, timeout=None: published.append((type, body.get("bytes"))))
    served = []

    def work(incoming):
        incoming.answer("file_uploaded", {"sha256": "x"})
        incoming.progress({"sha256": "x", "bytes": 1, "total": 2})  # late
        served.append(incoming)

    responder = Responder(session, FILE, work)
    handlers["request_file"](SimpleNamespace(type="request_file", sender="asker",
                                             body={"request": "ab" * 16}))
    wait_for(lambda: served, what="the request served")
    other = SimpleNamespace(id="cd" * 16, answered=None)
    assert responder.send_progress(other, {"request": other.id, "bytes": 7})
    wait_for(lambda: ("file_upload_progress", 7) in published, what="the other report")
    assert published == [("file_uploaded", None), ("file_upload_progress", 7)]
    assert served[0].progress_now is None and served[0].status == "answered"
    responder.close()


def test_an_answer_heard_after_the_wait_ended_does_not_change_its_outcome(sessions):
    """A progress report that lands between the end of the wait (here: ``poll`` found the
    outcome) and the asker forgetting the request leaves the request done."""
    a, b = sessions("a"), sessions("b")
    late: list[str] = []

    def events(event):
        row = event["request"]
        if row["status"] == "done" and not late:  # the wait just ended: b's report lands
            late.append(row["id"])
            asker._on_answer(SimpleNamespace(
                type="file_upload_progress", sender=b.node_id,
                body={"request": row["id"], "to": a.node_id, "sha256": "x", "bytes": 1}))

    asker = Asker(a, events=events)
    pending = asker.ask(FILE, {"uri": "u"}, asked={b.node_id}, online=1, timeout=5,
                        what="the test request", poll=lambda: "in the bucket", poll_every=0.05)
    assert late == [pending.id]
    assert pending.status == "done" and pending.outcome == "in the bucket"


def test_a_report_heard_after_a_decline_leaves_the_request_declined(sessions):
    """A responder's progress thread can publish a report (``queued``, say) after its
    handler's decline went out from another thread: the decline stands, the request ends
    declined at once instead of waiting out its timeout."""
    a, b = sessions("a"), sessions("b")
    injected: list[str] = []

    def events(event):
        row = event["request"]
        if row["status"] == "waiting" and not injected:  # sent: the decline, then a report
            injected.append(row["id"])
            for type, extra in (("file_absent", {}), ("file_upload_progress", {"bytes": 1})):
                asker._on_answer(SimpleNamespace(type=type, sender=b.node_id, body={
                    "request": row["id"], "to": a.node_id, "sha256": "x", **extra}))

    asker = Asker(a, events=events)
    pending = asker.ask(FILE, {"uri": "u"}, asked={b.node_id}, online=1, timeout=3,
                        what="the test request")
    assert injected == [pending.id]
    assert pending.status == "declined"
    assert pending.answers == {b.node_id: "file_absent"}


def test_an_answer_wakes_only_the_thread_waiting_for_it(sessions, monkeypatch):
    """Many requests wait at once (a map sent to providers): a message for one of them
    must not wake the others, else every message costs a wake-up of every waiting thread."""
    from kachery_tasks.network.channels import requests

    woken: dict[str, int] = {}

    class Counting(threading.Condition):
        def wait(self, timeout=None):
            notified = super().wait(timeout)
            if notified:
                name = threading.current_thread().name
                woken[name] = woken.get(name, 0) + 1
            return notified

    monkeypatch.setattr(requests.threading, "Condition", Counting)
    a, b = sessions("a"), sessions("b")
    asker = Asker(a)
    busy = threading.Event()

    def serve(incoming):
        if incoming.body["uri"] == "quiet":  # answered at the end, without progress
            busy.wait(15)
            incoming.answer("file_uploaded", {"sha256": "x"})
            return
        for i in range(30):
            incoming.progress({"sha256": "x", "bytes": i, "total": 30})
            time.sleep(0.01)
        incoming.answer("file_uploaded", {"sha256": "x"})
        busy.set()

    Responder(b, FILE, serve)
    results = {}

    def ask(uri):
        results[uri] = asker.ask(FILE, {"uri": uri}, asked={b.node_id}, online=1, timeout=10,
                                 what="the test request", repeat_after=10)

    quiet = threading.Thread(target=ask, args=("quiet",), name="quiet-waiter")
    quiet.start()
    time.sleep(0.2)
    ask("chatty")
    quiet.join(15)
    assert results["quiet"].status == results["chatty"].status == "done"
    assert woken.get("quiet-waiter", 0) <= 2  # its own answer (and no other request's news)


def test_a_wait_hearing_progress_does_not_spin(sessions, monkeypatch):
    """A request older than ``repeat_after`` that keeps hearing progress is alive: its
    waiter sleeps until the next sign of life is due, it does not loop without waiting."""
    from kachery_tasks.network.channels import requests

    waits: list[float | None] = []

    class Counting(threading.Condition):
        def wait(self, timeout=None):
            waits.append(timeout)
            return super().wait(timeout)

    monkeypatch.setattr(requests.threading, "Condition", Counting)
    a, b = sessions("a"), sessions("b")

    def slow(incoming):
        for i in range(8):  # 1.6 s of work, progress every 0.2 s, repeat_after 0.5 s
            incoming.progress({"sha256": "x", "bytes": i, "total": 8})
            time.sleep(0.2)
        incoming.answer("file_uploaded", {"sha256": "x"})

    calls = []
    Responder(b, FILE, lambda i: (calls.append(i.id), slow(i)))
    pending = Asker(a).ask(FILE, {"uri": "u"}, asked={b.node_id}, online=1, timeout=5,
                           what="the test request", repeat_after=0.5)
    assert pending.status == "done" and len(calls) == 1
    assert len(waits) < 100  # a wake-up per message and per due repeat, not a busy loop
