import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kachery_tasks.canonical import canonical_json
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
