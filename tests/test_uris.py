import pytest
from hypothesis import given
from hypothesis import strategies as st

from kachery_tasks.errors import InvalidURIError
from kachery_tasks.uris import format_uri, is_content_uri, parse_uri

HEX64 = st.text("0123456789abcdef", min_size=64, max_size=64)
LABELS = st.none() | st.text(min_size=1, max_size=40).filter(lambda s: "\x00" not in s)


@given(HEX64, LABELS, st.none() | st.integers(min_value=0, max_value=2**60))
def test_format_then_parse_round_trips(hex, label, size):
    uri = format_uri(hex, label=label, size=size)
    parsed = parse_uri(uri)
    assert (parsed.algorithm, parsed.hex, parsed.label, parsed.size) == ("sha256", hex, label, size)
    assert str(parsed) == uri


def test_hints_are_not_identity():
    h = "ab" * 32
    assert parse_uri(f"sha256://{h}?label=a.dat").hex == parse_uri(f"sha256://{h}").hex
    assert parse_uri(f"sha256://{h.upper()}").hex == h


def test_kachery_sha1_forms():
    h = "f572d396fae9206628714fb2ce00f72e94f2258f"
    assert parse_uri(f"sha1://{h}").algorithm == "sha1"
    assert parse_uri(f"sha1://{h}/file.dat").label == "file.dat"
    assert parse_uri(f"sha1://{h}?label=x&manifest=abc").label == "x"


@pytest.mark.parametrize(
    "bad",
    ["", "sha256://", "sha256://xyz", "sha256://" + "a" * 63, "sha1://" + "a" * 64,
     "md5://" + "a" * 32, "/tmp/file", "sha256://" + "a" * 64 + "?size=big"],
)
def test_malformed_uris_raise_named_error(bad):
    with pytest.raises(InvalidURIError) as e:
        parse_uri(bad)
    assert "sha256://" in str(e.value) or "digits" in str(e.value) or "size" in str(e.value)
    assert not is_content_uri(bad)


def test_non_string_is_rejected():
    with pytest.raises(InvalidURIError):
        parse_uri(42)  # type: ignore[arg-type]
