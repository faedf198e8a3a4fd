import pytest
from hypothesis import given
from hypothesis import strategies as st

from kachery_tasks.errors import InvalidValueError
from kachery_tasks.sizes import format_size, parse_size


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
