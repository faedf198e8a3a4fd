"""Export and import as JSON lines: verification of every received message, idempotence."""

from __future__ import annotations

import io
import itertools
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kachery_tasks as kf
from kachery_tasks.errors import FeedNotFoundError, FeedVerificationError, InvalidValueError
from kachery_tasks.feed_functions import import_lines
from kachery_tasks.feeds.messages import encode_body, sign_message
from kachery_tasks.keys import KeyPair
from kachery_tasks.nodes import current_node


@pytest.fixture
def feed():
    f = kf.create_feed("curation")
    f.subfeed("unit-labels").append_many([{"unit": i} for i in range(5)])
    f.subfeed("notes").append_many(["a", "b"])
    return f


@pytest.fixture
def other_node(monkeypatch, tmp_path):
    """Switch the process to a second, empty node directory."""

    def switch(name: str = "other") -> None:
        monkeypatch.setenv("KACHERY_TASKS_DIR", str(tmp_path / name))

    return switch


def _export(uri: str) -> list[bytes]:
    buf = io.BytesIO()
    kf.export_feed(uri, buf)
    return buf.getvalue().splitlines()


def _state(uri: str) -> list[tuple]:
    feed = kf.load_feed(uri)
    return [(name, m.seq, m.hash) for name in feed.subfeeds() for m in feed.subfeed(name).read()]


# ----------------------------------------------------------------- export
def test_export_format(feed):
    lines = _export(feed.uri)
    msgs = [json.loads(line) for line in lines]
    assert [(m["subfeed"], m["seq"]) for m in msgs] == [
        ("notes", 0),
        ("notes", 1),
        *[("unit-labels", i) for i in range(5)],
    ]
    stored = [m.to_bytes() for m in feed.subfeed("notes").read()]
    assert lines[:2] == stored  # each line is the signed bytes exactly as hashed
    assert _export(feed.subfeed("notes").uri) == lines[:2]


def test_export_to_a_path(feed, tmp_path):
    path = tmp_path / "feed.jsonl"
    assert feed.export(path) == 7
    assert path.read_bytes().splitlines() == _export(feed.uri)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []


def test_export_unknown_feed():
    with pytest.raises(FeedNotFoundError):
        _export("feed://" + "ab" * 32)


# ----------------------------------------------------------------- import
def test_import_into_another_node_is_read_only_and_verified(feed, other_node, tmp_path):
    path = tmp_path / "feed.jsonl"
    feed.export(path)
    before = _state(feed.uri)
    other_node()
    report = kf.import_feed(path)
    assert (report.added, report.present, report.feeds) == (7, 0, {feed.id})
    assert "imported 7 new messages" in str(report)
    copy = kf.load_feed(feed.uri)
    assert not copy.writable
    assert copy.verify() == {"notes": 2, "unit-labels": 5}
    assert _state(feed.uri) == before


def test_import_is_idempotent(feed, other_node):
    lines = _export(feed.uri)
    other_node()
    import_lines(lines)
    state = _state(feed.uri)
    report = import_lines(lines)
    assert (report.added, report.present) == (0, 7)
    assert _state(feed.uri) == state
    report = import_lines(lines)  # and again, from the owner's own node
    assert report.added == 0


def test_import_extends_what_is_there(feed, other_node):
    sub = feed.subfeed("unit-labels")
    first = _export(sub.uri)
    sub.append_many([{"unit": 5}, {"unit": 6}])
    everything = _export(sub.uri)
    other_node()
    import_lines(first)
    report = import_lines(everything)
    assert (report.added, report.present) == (2, 5)
    report = import_lines(everything[5:])  # a later part alone links to what is stored
    assert (report.added, report.present) == (0, 2)
    assert kf.load_subfeed(sub.uri).count() == 7


def test_import_accepts_messages_and_interleaved_subfeeds(feed, other_node):
    a = list(feed.subfeed("unit-labels").read())
    b = list(feed.subfeed("notes").read())
    mixed = [x for pair in itertools.zip_longest(a, b) for x in pair if x is not None]
    other_node()
    report = kf.import_messages(mixed)
    assert report.added == 7
    assert kf.load_feed(feed.uri).subfeeds() == {"notes": 2, "unit-labels": 5}


def test_import_skips_blank_lines_and_any_json_spelling(feed, other_node):
    lines = [
        json.dumps(json.loads(x), indent=1).replace("\n", " ").encode() for x in _export(feed.uri)
    ]
    other_node()
    assert import_lines([b"", *lines, b"   "]).added == 7


# ------------------------------------------------------ rejected streams
def _lines(feed) -> list[bytes]:
    return _export(feed.subfeed("unit-labels").uri)


def _check_rejected(lines, seq, match, stored):
    with pytest.raises(FeedVerificationError, match=match) as info:
        import_lines(lines)
    e = info.value
    assert e.seq == seq and e.subfeed == "unit-labels"
    assert e.feed is not None and f"seq {seq}" in str(e)
    feed = kf.load_feed(f"feed://{e.feed}") if stored else None
    count = feed.subfeed("unit-labels").count() if feed else 0
    assert count == stored
    return e


def test_forged_message_is_rejected_and_nothing_after_it(feed, other_node):
    lines = _lines(feed)
    lines[2] = lines[2].replace(b'"unit":2', b'"unit":9')
    other_node()
    e = _check_rejected(lines, 2, "signature", stored=2)
    assert (e.report.added, e.report.present) == (2, 0)


def test_report_counts_the_prefix_kept_before_a_stored_conflict(feed, other_node):
    lines = _lines(feed)
    other_node()
    import_lines(lines[:3])
    prev = json.loads(lines[2])["prev"]
    fork = sign_message(feed.key(), "unit-labels", 2, prev, 0, encode_body("fork"))
    with pytest.raises(FeedVerificationError, match="differs") as info:
        import_lines([lines[0], lines[1], fork.data, lines[3]])
    assert info.value.seq == 2
    assert (info.value.report.added, info.value.report.present) == (0, 2)
    assert kf.load_subfeed(feed.subfeed("unit-labels").uri).count() == 3


def test_message_signed_by_another_key_is_rejected(feed, other_node):
    lines = _lines(feed)
    wire = json.loads(lines[3])
    other = KeyPair.generate()
    forged = sign_message(
        other, "unit-labels", 3, wire["prev"], wire["time"], encode_body({"unit": 99})
    )
    wire["body"], wire["signature"] = {"unit": 99}, forged.signature
    lines[3] = json.dumps(wire).encode()
    other_node()
    _check_rejected(lines, 3, "signature", stored=3)


def test_dropped_message_is_rejected(feed, other_node):
    lines = _lines(feed)
    del lines[1]
    other_node()
    _check_rejected(lines, 2, "out of order", stored=1)


def test_reordered_messages_are_rejected(feed, other_node):
    lines = _lines(feed)
    lines[1], lines[2] = lines[2], lines[1]
    other_node()
    _check_rejected(lines, 2, "out of order", stored=1)


def test_duplicated_message_is_rejected(feed, other_node):
    lines = _lines(feed)
    lines.insert(2, lines[1])
    other_node()
    _check_rejected(lines, 1, "duplicated", stored=2)


def test_stream_starting_after_a_gap_is_rejected(feed, other_node):
    lines = _lines(feed)
    other_node()
    _check_rejected(lines[2:], 2, "missing", stored=0)


def test_fork_is_rejected(feed, other_node):
    sub = feed.subfeed("unit-labels")
    lines = _lines(feed)
    other_node()
    import_lines(lines[:3])
    # The owner (or a thief of the key) signs a different message at seq 2 elsewhere.
    fork = sign_message(
        feed.key(), "unit-labels", 2, json.loads(lines[2])["prev"], 1, encode_body("fork")
    )
    with pytest.raises(FeedVerificationError, match="differs") as info:
        kf.import_messages([json.loads(fork.data)])
    assert info.value.seq == 2
    assert kf.load_subfeed(sub.uri).count() == 3


def test_edited_prev_is_rejected(feed, other_node):
    lines = _lines(feed)
    m = json.loads(lines[3])
    bad = sign_message(feed.key(), "unit-labels", 3, "0" * 64, m["time"], encode_body(m["body"]))
    lines[3] = bad.data
    other_node()
    _check_rejected(lines, 3, "prev", stored=3)


def test_malformed_line_names_its_number(feed, other_node):
    lines = _lines(feed)
    lines.insert(2, b"{not json")
    other_node()
    with pytest.raises(FeedVerificationError, match="line 3") as info:
        import_lines(lines)
    assert info.value.report.added == 2
    assert kf.load_subfeed(feed.subfeed("unit-labels").uri).count() == 2


def test_non_object_line_is_rejected(other_node):
    with pytest.raises(FeedVerificationError, match="line 1 is not a JSON object"):
        import_lines([b"[1, 2]"])


def test_import_missing_file(tmp_path):
    with pytest.raises(InvalidValueError, match="cannot read"):
        kf.import_feed(tmp_path / "nothing.jsonl")


# ------------------------------------------------- property: any mutation
KEY = KeyPair.generate()
_names = (f"p{i}" for i in itertools.count())


@settings(
    max_examples=40, deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(order=st.lists(st.integers(0, 5), max_size=8))
def test_any_stream_is_accepted_exactly_up_to_its_first_bad_message(order):
    """Import messages 0..5 of a fresh subfeed in an arbitrary order (with drops and
    repeats): what is stored is exactly the longest prefix that is 0, 1, 2, ...; an
    error is raised iff the stream is not such a prefix."""
    name = next(_names)
    chain, prev = [], None
    for i in range(6):
        m = sign_message(KEY, name, i, prev, i, encode_body(i))
        chain.append(json.loads(m.data))
        prev = m.hash
    good = next((i for i, seq in enumerate(order) if seq != i), len(order))
    try:
        kf.import_messages([chain[i] for i in order])
        raised = False
    except FeedVerificationError as e:
        raised = True
        assert e.seq == order[good]
    assert raised == (good < len(order))
    assert current_node().feeds.count(KEY.public_hex, name) == good


# ----------------------------------------------------------------- nesting
@pytest.mark.parametrize("depth", [101, 990, 200_000])
def test_import_refuses_a_message_nested_too_deeply_and_keeps_what_came_before(
    feed, other_node, depth
):
    key = feed.key()
    good = [m.to_bytes() for m in feed.subfeed("notes").read()]
    deep = b"[" * depth + b"1" + b"]" * depth
    last = next(feed.subfeed("notes").read(1, 2))
    bad = sign_message(key, "notes", 2, last.hash, 1000, deep)
    other_node()
    with pytest.raises(FeedVerificationError, match=r"too deep|more than 100 levels") as e:
        import_lines([*good, bad.data])
    assert "\n" not in str(e.value)
    assert e.value.report.added == 2
    sub = kf.load_feed(feed.uri).subfeed("notes")
    assert [m.body for m in sub.read()] == ["a", "b"]  # the feed is still readable
    assert kf.load_feed(feed.uri).verify() == {"notes": 2}
