import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kachery_tasks.canonical import MAX_DEPTH, canonical_json, check_text, is_text, parse_json
from kachery_tasks.errors import InvalidValueError

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


@given(st.dictionaries(st.text(), JSON, max_size=8))
def test_key_order_does_not_matter(d):
    reordered = dict(reversed(list(d.items())))
    assert canonical_json(d) == canonical_json(reordered)


def test_exact_form():
    assert canonical_json({"b": 1, "a": [1, "é"]}) == '{"a":[1,"é"],"b":1}'.encode()


@pytest.mark.parametrize("bad", [math.nan, math.inf, {1, 2}, object()])
def test_non_json_is_refused(bad):
    with pytest.raises(InvalidValueError):
        canonical_json({"x": bad})


def test_lone_surrogate_is_a_clear_error():
    with pytest.raises(InvalidValueError):
        canonical_json("\ud800")


def _nest(depth: int, kinds: list[bool], leaf: str):
    """A value nesting ``depth`` arrays/objects (object where kinds[i]), with ``leaf`` inside."""
    value: object = leaf
    for i in range(depth):
        value = {leaf: value} if kinds[i % len(kinds)] else [value, leaf]
    return value


_BRACKETY = st.text(alphabet='[]{}"\\ab', max_size=12)


@given(st.integers(min_value=0, max_value=2 * MAX_DEPTH),
       st.lists(st.booleans(), min_size=1, max_size=5), _BRACKETY)
def test_depth_limit_when_encoding_and_parsing(depth, kinds, leaf):
    value = _nest(depth, kinds, leaf)
    if depth <= MAX_DEPTH:
        data = canonical_json(value)
        assert parse_json(data) == value == parse_json(data.decode())
    else:
        with pytest.raises(InvalidValueError, match="more than 100 levels deep"):
            canonical_json(value, "body")
        text = json.dumps(value)
        with pytest.raises(InvalidValueError, match="more than 100 levels deep"):
            parse_json(text)


@pytest.mark.parametrize("depth", [1000, 100_000])
def test_very_deep_values_are_a_clear_error(depth):
    value: list = []
    for _ in range(depth):
        value = [value]
    with pytest.raises(InvalidValueError, match="levels deep"):
        canonical_json(value)
    with pytest.raises(InvalidValueError, match="levels deep"):
        parse_json("[" * depth)  # unterminated, as a user might type it
    with pytest.raises(InvalidValueError, match="levels deep"):
        parse_json("[" * depth + "]" * depth)


@pytest.mark.parametrize(
    "text", ["NaN", "[1, Infinity]", '{"a": -Infinity}', "1e400", "-1e400", "[1,", "", "\ud800",
             b"\xff\xfe", "{'a': 1}"],
)
def test_parse_json_refuses_what_json_cannot_say(text):
    with pytest.raises(InvalidValueError, match=r"^the VALUE is not JSON"):
        parse_json(text, "the VALUE")


@given(st.text(max_size=200) | st.binary(max_size=200))
def test_parse_json_is_a_json_value_or_a_clear_error(text):
    try:
        value = parse_json(text)
    except InvalidValueError as e:
        assert "\n" not in str(e)
    else:
        assert parse_json(canonical_json(value)) == value


@given(JSON)
def test_parse_json_reads_canonical_json_back(value):
    assert parse_json(canonical_json(value)) == value


def test_text_is_what_encodes_as_utf8():
    assert is_text("café ✓") and check_text("café", "a name") == "café"
    assert not is_text("caf\udce9")
    with pytest.raises(InvalidValueError, match=r"^a name must be valid Unicode text"):
        check_text("caf\udce9", "a name")
