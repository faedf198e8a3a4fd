"""Outbox merging and channel history."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from kachery_tasks.network.broker.state import (
    MAX_BATCH_BYTES,
    Channel,
    HistoryEntry,
    Outbox,
)


def drain(outbox: Outbox) -> list[dict]:
    frames = []
    while outbox:
        frames.append(json.loads(outbox.take()))
    assert outbox.nbytes == 0
    return frames


def message(i: int) -> str:
    return json.dumps({"name": "m", "data": str(i)})


def test_messages_of_one_channel_merge_into_one_frame():
    box = Outbox()
    for i in range(3):
        box.push_message('"a"', f'"s:{i + 1}"', message(i))
    box.push_message('"b"', '"t:1"', message(9))
    frames = drain(box)
    assert [f["channel"] for f in frames] == ["a", "b"]
    assert [m["data"] for m in frames[0]["messages"]] == ["0", "1", "2"]
    assert frames[0]["channelSerial"] == "s:3"  # the last message's serial
    assert frames[0]["action"] == 15


def test_consecutive_acks_merge_and_others_keep_their_order():
    box = Outbox()
    for serial in (4, 5, 6):
        box.push_ack(serial)
    box.push_ack(9)  # not consecutive: a new ACK
    box.push_frame('{"action":11,"channel":"a"}')
    box.push_ack(10)
    frames = drain(box)
    assert frames == [
        {"action": 1, "msgSerial": 4, "count": 3},
        {"action": 1, "msgSerial": 9, "count": 1},
        {"action": 11, "channel": "a"},
        {"action": 1, "msgSerial": 10, "count": 1},
    ]


def test_a_batch_stays_below_the_frame_budget():
    box = Outbox()
    big = json.dumps({"data": "x" * 60_000})
    for i in range(10):
        box.push_message('"a"', f'"s:{i}"', big)
    frames = drain(box)
    assert len(frames) > 1
    assert all(len(json.dumps(f)) < MAX_BATCH_BYTES + 1000 for f in frames)
    assert sum(len(f["messages"]) for f in frames) == 10


@given(st.lists(st.one_of(
    st.tuples(st.just("m"), st.sampled_from(["a", "b"]), st.integers(0, 99)),
    st.tuples(st.just("ack"), st.integers(0, 5)),
    st.tuples(st.just("frame"), st.integers(0, 99)),
)))
def test_merging_never_reorders_or_loses_anything(ops):
    box = Outbox()
    expected = []
    serial = 0
    for op in ops:
        if op[0] == "m":
            box.push_message(json.dumps(op[1]), '"s:1"', message(op[2]))
            expected.append(("m", op[1], str(op[2])))
        elif op[0] == "ack":
            serial += op[1]
            box.push_ack(serial)
            expected.append(("ack", serial))
        else:
            box.push_frame(json.dumps({"action": 0, "id": str(op[1])}))
            expected.append(("frame", str(op[1])))
    seen = []
    for frame in drain(box):
        if frame["action"] == 15:
            seen += [("m", frame["channel"], m["data"]) for m in frame["messages"]]
        elif frame["action"] == 1:
            first = frame["msgSerial"]
            seen += [("ack", s) for s in range(first, first + frame["count"])]
        else:
            seen.append(("frame", frame["id"]))
    assert seen == expected


def channel_with(n: int, **limits) -> Channel:
    channel = Channel(name="c", instance="i.1")
    for _ in range(n):
        channel.seq += 1
        channel.record(HistoryEntry(channel.seq, message(channel.seq), "conn", float(channel.seq)),
                       limits.get("max_messages", 100), limits.get("max_bytes", 10**6))
    return channel


def test_history_since_a_serial():
    channel = channel_with(5)
    entries, complete = channel.since(2)
    assert [e.seq for e in entries] == [3, 4, 5] and complete
    assert channel.since(5) == ([], True)
    assert channel.since(7) == ([], False)  # a serial from the future is not ours
    assert channel.serial() == "i.1:5" and channel.serial(2) == "i.1:2"


def test_history_beyond_its_limits_is_incomplete():
    channel = channel_with(10, max_messages=4)
    assert [e.seq for e in channel.history] == [7, 8, 9, 10]
    entries, complete = channel.since(3)
    assert [e.seq for e in entries] == [7, 8, 9, 10] and not complete
    assert channel.since(6)[1]
    by_bytes = channel_with(10, max_bytes=3 * len(message(10)))
    assert len(by_bytes.history) == 3
    assert by_bytes.history_bytes == sum(len(e.message_json) for e in by_bytes.history)


def test_prune_forgets_old_entries_and_an_empty_channel_is_idle():
    channel = channel_with(5)
    channel.prune(oldest=3.5)
    assert [e.seq for e in channel.history] == [4, 5]
    channel.prune(oldest=100.0)
    assert channel.idle and channel.history_bytes == 0
