"""Range headers: one range served exactly, everything else refused with the reason."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kachery_tasks.daemon.ranges import RangeNotSatisfiable, parse_range


def test_no_header_means_everything():
    assert parse_range(None, 10) is None


@pytest.mark.parametrize(("header", "size", "span"), [
    ("bytes=0-0", 10, (0, 1)),
    ("bytes=2-5", 10, (2, 6)),
    ("bytes=2-", 10, (2, 10)),
    ("bytes=5-100", 10, (5, 10)),
    ("bytes=-3", 10, (7, 10)),
    ("bytes=-30", 10, (0, 10)),
    (" bytes=9-9 ", 10, (9, 10)),
])
def test_one_range(header, size, span):
    assert parse_range(header, size) == span


@pytest.mark.parametrize(("header", "size", "why"), [
    ("bytes=10-", 10, "does not overlap"),
    ("bytes=10-20", 10, "does not overlap"),
    ("bytes=5-2", 10, "does not overlap"),
    ("bytes=0-", 0, "does not overlap"),
    ("bytes=-0", 10, "no bytes"),
    ("bytes=-5", 0, "no bytes"),
    ("bytes=0-1,3-4", 10, "several byte ranges"),
    ("bytes=-", 10, "not of the form"),
    ("items=0-1", 10, "not of the form"),
    ("bytes=a-b", 10, "not of the form"),
    ("bytes=0x1-2", 10, "not of the form"),
])
def test_refused(header, size, why):
    with pytest.raises(RangeNotSatisfiable, match=why) as e:
        parse_range(header, size)
    assert e.value.size == size


@given(st.integers(0, 2**40), st.integers(0, 2**40), st.integers(0, 2**40))
def test_a_served_range_is_inside_the_content_and_what_was_asked(size, a, b):
    header = f"bytes={a}-{b}"
    try:
        start, end = parse_range(header, size)
    except RangeNotSatisfiable:
        assert a >= size or b < a
        return
    assert 0 <= start == a < end <= size and end == min(b + 1, size)


@given(st.integers(1, 2**40), st.integers(1, 2**40))
def test_a_suffix_is_the_last_bytes(size, n):
    start, end = parse_range(f"bytes=-{n}", size)
    assert end == size and end - start == min(n, size)


@given(st.text(max_size=40), st.integers(0, 1000))
def test_any_header_is_served_or_refused_cleanly(header, size):
    try:
        span = parse_range(header, size)
    except RangeNotSatisfiable:
        return
    assert span is not None and 0 <= span[0] < span[1] <= size
