import pytest
from hypothesis import given
from hypothesis import strategies as st

from kachery_tasks.errors import InvalidValueError
from kachery_tasks.sizes import MAX_SIZE, format_size, parse_size


@pytest.mark.parametrize(
    "text,n",
    [("4096", 4096), ("20MiB", 20 * 2**20), ("50GiB", 50 * 2**30), ("1.5GB", 1_500_000_000),
     ("100 MB", 100_000_000), ("2k", 2048), (" 7 b ", 7), (12, 12)],
)
def test_parse_size(text, n):
    assert parse_size(text) == n


@pytest.mark.parametrize("bad", ["", "MB", "-5", "5 parsecs", "1e9", True, -1])
def test_bad_sizes_raise(bad):
    with pytest.raises(InvalidValueError):
        parse_size(bad)


@given(st.integers(min_value=0, max_value=2**50))
def test_format_size_parses_back_within_rounding(n):
    text = format_size(n).replace(" ", "")
    back = parse_size(text)
    assert abs(back - n) <= n * 0.05  # one decimal in a unit of at least 1


@pytest.mark.parametrize(
    "huge",
    ["9" * 400, "9" * 400 + "GiB", "1" + "0" * 100_000, "8EiB", "9223372036854775808",
     "10000000PB", 10**400, 2**63],
    ids=lambda v: repr(v)[:20],
)
def test_sizes_above_the_maximum_are_refused(huge):
    with pytest.raises(InvalidValueError, match="too large"):
        parse_size(huge)


def test_the_maximum_and_exact_fractions():
    assert parse_size(str(MAX_SIZE)) == MAX_SIZE
    assert parse_size("7.5EiB") == 15 * 2**59
    assert parse_size("1.1GB") == 1_100_000_000  # exact: no float rounding to 1099999999
    assert parse_size("1PiB") == 2**50


@given(st.one_of(
    st.text(),
    st.from_regex(r"\A\s*[0-9]{0,500}(\.[0-9]{0,50})?\s*(b|kb|KiB|MB|GiB|tb|PiB|EB|eib|k|g|x)?\s*\Z"),
    st.integers(),
    st.floats(),
))
def test_any_input_is_a_size_or_a_clear_error(text):
    try:
        n = parse_size(text)
    except InvalidValueError as e:
        message = str(e)
        assert "\n" not in message and len(message) < 200
    else:
        assert isinstance(n, int) and 0 <= n <= MAX_SIZE


@given(st.integers(min_value=0, max_value=MAX_SIZE))
def test_every_size_in_range_is_accepted(n):
    assert parse_size(str(n)) == n == parse_size(n)
