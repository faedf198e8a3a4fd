"""Feed URI and subfeed name parsing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kachery_tasks.errors import InvalidURIError, InvalidValueError
from kachery_tasks.feeds.uris import (
    FeedURI,
    check_subfeed_name,
    format_feed_uri,
    is_subfeed_name,
    parse_feed_uri,
)

FEED = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"

feed_ids = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
names = st.from_regex(r"\A[A-Za-z0-9_][A-Za-z0-9._-]{0,127}\Z")


def test_parse_feed_and_subfeed():
    assert parse_feed_uri(f"feed://{FEED}") == FeedURI(FEED, None)
    assert parse_feed_uri(f"feed://{FEED}/unit-labels") == FeedURI(FEED, "unit-labels")
    assert str(FeedURI(FEED, "a.b_c")) == f"feed://{FEED}/a.b_c"


def test_upper_case_hex_is_lowered():
    assert parse_feed_uri(f"feed://{FEED.upper()}/x").feed_id == FEED


@pytest.mark.parametrize(
    "uri",
    [
        "",
        "feed:/" + FEED,
        "sha256://" + FEED,
        "feed://" + FEED[:-1],
        "feed://" + FEED + "0",
        "feed://" + "g" * 64,
        f"feed://{FEED}/",
        f"feed://{FEED}/a/b",
        f"feed://{FEED}/.hidden",
        f"feed://{FEED}/-x",
        f"feed://{FEED}/a b",
        f"feed://{FEED}/" + "a" * 129,
        f"feed://{FEED}?x=1",
    ],
)
def test_malformed_uris_are_refused(uri):
    with pytest.raises(InvalidURIError):
        parse_feed_uri(uri)


def test_non_string_is_refused():
    with pytest.raises(InvalidURIError, match="string"):
        parse_feed_uri(42)  # type: ignore[arg-type]


def test_error_names_the_problem():
    with pytest.raises(InvalidURIError, match="64 hex digits, not 3"):
        parse_feed_uri("feed://abc")
    with pytest.raises(InvalidURIError, match="subfeed name"):
        parse_feed_uri(f"feed://{FEED}/no spaces")


@pytest.mark.parametrize("name", ["", ".x", "-x", "a/b", "é", "a" * 129, None, 3])
def test_check_subfeed_name_refuses(name):
    assert not is_subfeed_name(name)
    with pytest.raises(InvalidValueError, match="subfeed name"):
        check_subfeed_name(name)


def test_longest_name_is_allowed():
    assert check_subfeed_name("a" * 128) == "a" * 128


def test_format_refuses_bad_parts():
    with pytest.raises(InvalidValueError):
        format_feed_uri(FEED.upper())
    with pytest.raises(InvalidValueError):
        format_feed_uri(FEED, "bad name")


@given(feed_ids, st.none() | names)
def test_format_parse_round_trip(feed_id, name):
    uri = format_feed_uri(feed_id, name)
    assert parse_feed_uri(uri) == FeedURI(feed_id, name)


@given(st.text(max_size=200))
def test_parser_raises_only_invalid_uri_error(text):
    try:
        parsed = parse_feed_uri(text)
    except InvalidURIError:
        return
    assert text.strip().lower().startswith(f"feed://{parsed.feed_id}")
    assert parse_feed_uri(format_feed_uri(parsed.feed_id, parsed.subfeed)) == parsed


@given(feed_ids, st.text(max_size=140))
def test_any_subfeed_text_parses_iff_it_is_a_valid_name(feed_id, name):
    uri = f"feed://{feed_id}/{name}"
    if is_subfeed_name(name):
        assert parse_feed_uri(uri).subfeed == name
    elif name.strip() == name:  # surrounding whitespace is stripped from URIs
        with pytest.raises(InvalidURIError):
            parse_feed_uri(uri)
