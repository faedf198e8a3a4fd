import numpy as np
import pytest

import kachery_tasks as kachery


def test_json_is_canonical_and_round_trips():
    a = kachery.store_json({"b": [1, 2.5, None], "a": "é"})
    b = kachery.store_json({"a": "é", "b": [1, 2.5, None]})
    assert a == b
    assert kachery.load_json(a) == {"a": "é", "b": [1, 2.5, None]}


def test_text_bytes_pickle_round_trip():
    assert kachery.load_text(kachery.store_text("héllo")) == "héllo"
    assert kachery.load_bytes(kachery.store_bytes(b"\x00\x01")) == b"\x00\x01"
    value = {"set": {1, 2}, "tuple": (1, "x")}
    assert kachery.load_pickle(kachery.store_pickle(value)) == value


def test_npy_round_trip_and_mmap():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    uri = kachery.store_npy(x, label="x.npy")
    np.testing.assert_array_equal(kachery.load_npy(uri), x)
    m = kachery.load_npy(uri, mmap=True)
    np.testing.assert_array_equal(m, x)
    assert not m.flags.writeable
    with pytest.raises(kachery.InvalidValueError):
        kachery.store_npy(np.array([object()]))


def test_load_file_dest_copies(tmp_path):
    uri = kachery.store_bytes(b"content")
    dest = tmp_path / "out.bin"
    assert kachery.load_file(uri, dest=dest) == str(dest)
    assert dest.read_bytes() == b"content"
    with pytest.raises(kachery.InvalidValueError):
        kachery.load_file(uri, dest=tmp_path)


def test_wrong_types_and_formats_are_clear():
    with pytest.raises(kachery.InvalidValueError):
        kachery.store_bytes("text")  # type: ignore[arg-type]
    with pytest.raises(kachery.InvalidValueError):
        kachery.store_json({"x": object()})
    uri = kachery.store_bytes(b"\xff\xfe not json")
    with pytest.raises(kachery.StorageError):
        kachery.load_json(uri)
    with pytest.raises(kachery.StorageError):
        kachery.load_text(uri)
    with pytest.raises(kachery.StorageError):
        kachery.load_npy(uri)


def test_mutables_through_the_public_api():
    kachery.set_mutable("alias/latest", "sha256://" + "a" * 64)
    assert kachery.get_mutable("alias/latest") == "sha256://" + "a" * 64
    assert kachery.list_mutables("alias/") == {"alias/latest": "sha256://" + "a" * 64}
    assert kachery.delete_mutable("alias/latest")
    assert kachery.get_mutable("alias/latest") is None


def test_every_error_is_a_kachery_error():
    for name in kachery.__all__:
        obj = getattr(kachery, name)
        if isinstance(obj, type) and issubclass(obj, Exception) and not issubclass(obj, Warning):
            assert issubclass(obj, kachery.KacheryError)
