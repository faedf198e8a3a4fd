"""Fully verified reads with signatures checked by worker processes."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

import kachery_tasks as kf
from kachery_tasks.errors import FeedVerificationError, InvalidValueError
from kachery_tasks.feeds import feed as feed_mod
from kachery_tasks.feeds import parallel, verify_worker
from kachery_tasks.nodes import current_node


@pytest.fixture
def sub(monkeypatch):
    """A 95-message subfeed read in pages of 10, every full read going to 2 workers."""
    monkeypatch.setenv(parallel.ENV, "2")
    monkeypatch.setattr(parallel, "MIN_MESSAGES", 1)
    monkeypatch.setattr(feed_mod, "READ_PAGE_ROWS", 10)
    s = kf.create_feed("p").subfeed("s")
    s.append_many([{"i": i} for i in range(95)])
    return s


def _forge(seq: int) -> None:
    """Rewrite a message's body and its stored hash: only its signature can tell."""
    conn = current_node().feeds.conn
    conn.execute(
        "UPDATE messages SET data = replace(data, ?, ?) WHERE seq = ?",
        (f'"i":{seq}}}', '"i":-1}', seq),
    )
    (data,) = conn.execute(
        "SELECT CAST(data AS BLOB) FROM messages WHERE seq = ?", (seq,)
    ).fetchone()
    conn.execute(
        "UPDATE messages SET hash = ? WHERE seq = ?", (hashlib.sha256(data).hexdigest(), seq)
    )


def _read_until_error(sub, **kw) -> tuple[list[int], FeedVerificationError | None]:
    got: list[int] = []
    try:
        for m in sub.read(verify="full", **kw):
            got.append(m.seq)
    except FeedVerificationError as e:
        return got, e
    return got, None


def test_parallel_full_read_equals_serial_read(sub, monkeypatch):
    parallel_msgs = list(sub.read(verify="full"))
    assert parallel._workers, "the read did not use the workers"
    monkeypatch.setenv(parallel.ENV, "0")
    assert parallel_msgs == list(sub.read(verify="full")) == list(sub.read())
    assert [m.seq for m in parallel_msgs] == list(range(95))
    assert [m.seq for m in sub.read(37, 61, verify="full")] == list(range(37, 61))


@pytest.mark.parametrize("seq", [0, 9, 10, 47, 94])
def test_a_forged_signature_stops_the_read_right_before_it(sub, seq):
    _forge(seq)
    got, error = _read_until_error(sub)
    assert got == list(range(seq))  # everything before it, nothing from it on
    assert error is not None and error.seq == seq and "signature" in str(error)


def test_a_broken_link_after_a_forged_signature_names_the_signature(sub):
    # seq 41's stored bytes change (and hash); seq 42's link to it breaks as well
    _forge(41)
    got, error = _read_until_error(sub)
    assert got == list(range(41)) and error.seq == 41


def test_a_missing_message_is_reported_after_the_ones_before_it(sub):
    current_node().feeds.conn.execute("DELETE FROM messages WHERE seq = 23")
    got, error = _read_until_error(sub)
    assert got == list(range(23)) and error.seq == 23 and "missing" in str(error)


def test_a_dead_worker_is_replaced_by_checking_here(sub, monkeypatch):
    monkeypatch.setattr(parallel, "_broken", False)  # restored after: later tests get workers
    list(sub.read(0, 20, verify="full"))  # start the workers
    for w in parallel._workers:
        w.proc.kill()
        w.proc.wait()
    _forge(77)
    got, error = _read_until_error(sub)
    assert got == list(range(77)) and error.seq == 77
    assert parallel._broken  # the reader checked from then on


def test_an_abandoned_read_leaves_the_workers_usable(sub):
    it = sub.read(verify="full")
    assert next(it).seq == 0
    it.close()
    assert [m.seq for m in sub.read(verify="full")] == list(range(95))


def test_reads_from_two_threads_at_once(sub):
    results: list[list[int]] = []

    def read() -> None:
        results.append([m.seq for m in sub.read(verify="full")])

    threads = [threading.Thread(target=read) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [list(range(95))] * 3


def test_worker_count_setting(monkeypatch):
    monkeypatch.setenv(parallel.ENV, "3")
    assert parallel.worker_count() == 3
    monkeypatch.setenv(parallel.ENV, "lots")
    with pytest.raises(InvalidValueError, match=parallel.ENV):
        parallel.worker_count()
    monkeypatch.delenv(parallel.ENV)
    monkeypatch.setattr(parallel.os, "sched_getaffinity", lambda pid: {0})
    assert parallel.worker_count() == 0  # one core: checks stay in the reader
    monkeypatch.setattr(parallel.os, "sched_getaffinity", lambda pid: set(range(8)))
    assert parallel.worker_count() == 4  # at most four workers
    from kachery_tasks import keys

    monkeypatch.setattr(keys, "_SODIUM", False)  # no libsodium: no workers, whatever asked
    monkeypatch.setenv(parallel.ENV, "3")
    assert parallel.worker_count() == 0


def test_a_script_without_a_main_guard_is_not_run_again_by_the_workers(tmp_path):
    script = tmp_path / "analysis.py"
    script.write_text(textwrap.dedent(
        """
        import kachery_tasks as kf
        from kachery_tasks.feeds import parallel, verify_worker
        parallel.MIN_MESSAGES = 1
        s = kf.create_feed("x").subfeed("s")
        s.append_many(list(range(50)))
        print("ran", sum(1 for _ in s.read(verify="full")), bool(parallel._workers))
        """
    ))
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120,
        env={**os.environ, parallel.ENV: "2"},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["ran 50 True"]


def test_the_worker_imports_nothing_of_kachery_tasks():
    code = (
        "import runpy, sys; sys.argv = ['w']; sys.stdin = open('/dev/null'); "
        f"runpy.run_path({verify_worker.__file__!r}, run_name='__main__'); "
        "print(sorted(m for m in sys.modules if m.startswith('kachery_tasks')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_worker_protocol_reports_the_first_bad_signature():
    feed = kf.create_feed("w")
    msgs = feed.append_many([{"i": i} for i in range(4)])
    from kachery_tasks.feeds.messages import split_signature

    pairs = [split_signature(m.to_bytes()) for m in msgs]
    pairs[2] = (pairs[2][0] + b" ", pairs[2][1])
    worker = parallel._Worker()
    try:
        worker.send(parallel.encode_request(feed.id, pairs))
        assert worker.receive() == 2
        worker.send(parallel.encode_request(feed.id, pairs[:2]))
        assert worker.receive() == -1
    finally:
        worker.stop()
    assert worker.proc.returncode == 0


@given(
    st.lists(
        st.tuples(st.binary(max_size=300), st.text("0123456789abcdef", min_size=128, max_size=128))
    )
)
def test_requests_round_trip(pairs):
    feed = "ab" * 32
    request = verify_worker.encode_request(feed, pairs)
    (size,) = verify_worker.U32.unpack(request[:4])
    assert size == len(request) - 4
    assert verify_worker.decode_request(request[4:]) == (feed, pairs)
    if pairs:
        with pytest.raises(ValueError):
            verify_worker.decode_request(request[4:-1])


@pytest.mark.parametrize("taken", [1, 10, 15, 60])
def test_an_abandoned_read_leaves_no_answer_behind(sub, taken):
    """Answers owed for pages queued behind the one being read must be collected,
    or the next read would take them for its own and miss a forgery."""
    it = sub.read(verify="full")
    for _ in range(taken):
        next(it)
    it.close()
    _forge(33)
    got, error = _read_until_error(sub)
    assert got == list(range(33)) and error is not None and error.seq == 33
