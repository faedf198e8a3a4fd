"""Argument encoders: arrays, files, dataclasses, registration, and clear refusals."""

from __future__ import annotations

import dataclasses
import enum
import subprocess
import sys
import tracemalloc
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import task_defs

import kachery_tasks.runtime as kachery
from kachery_tasks.errors import SourceFileError, UnsupportedArgumentError
from kachery_tasks.runtime.encoders import encode

add = task_defs.add


def test_array_identity_is_dtype_shape_order_and_content():
    a = np.arange(12, dtype=np.float64).reshape(3, 4)
    assert encode(a) == encode(a.copy())
    assert encode(a) != encode(a.astype(np.float32))
    assert encode(a) != encode(a.reshape(4, 3))
    assert encode(a) != encode(a.reshape(12))
    b = a.copy()
    b[2, 3] += 1e-9
    assert encode(a) != encode(b)
    assert encode(a) != encode(a.astype(">f8"))  # byte order is part of the dtype


def test_memory_order_is_recorded_and_strided_arrays_equal_their_copy():
    a = np.arange(12.0).reshape(3, 4)
    f = np.asfortranarray(a)
    assert encode(f) != encode(a)
    assert encode(f) == encode(np.asfortranarray(a.copy()))
    strided = np.arange(24.0).reshape(3, 8)[:, ::2]
    assert not strided.flags.c_contiguous
    assert encode(strided) == encode(np.ascontiguousarray(strided))


def test_contiguous_arrays_are_hashed_without_a_copy():
    a = np.ones(16 * 2**20 // 8)
    f = np.asfortranarray(a.reshape(1024, -1))
    encode(a)  # warm up imports
    tracemalloc.start()
    encode(a)
    encode(f)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < a.nbytes // 10


def test_numpy_subclasses_scalars_and_refusals(tmp_path):
    mm = np.lib.format.open_memmap(tmp_path / "m.npy", mode="w+", dtype=np.int16, shape=(5,))
    mm[:] = 7
    assert encode(mm) == encode(np.full(5, 7, dtype=np.int16))
    assert encode(np.float32(1.5)) != encode(np.float64(1.5)) != encode(1.5)
    assert encode(np.datetime64("2024-01-01", "ns")) != encode(np.datetime64("2024-01-01", "s"))
    with pytest.raises(UnsupportedArgumentError, match="objects"):
        add.task_id(np.array([object()], dtype=object))
    with pytest.raises(UnsupportedArgumentError, match="masked"):
        add.task_id(np.ma.masked_array([1, 2], mask=[0, 1]))


def test_structured_dtype():
    dt = np.dtype([("a", "<i4"), ("b", "<f8")])
    x = np.zeros(3, dtype=dt)
    y = np.zeros(3, dtype=np.dtype([("a", "<i4"), ("c", "<f8")]))
    assert encode(x) != encode(y)


# Values with padding bytes, whose padding is set to random bytes (what np.empty or an x87
# register spill may leave behind) after the values are written.
PADDED = """
import os, sys
import numpy as np
from kachery_tasks.runtime.encoders import encode

def noise(n):
    return np.frombuffer(os.urandom(n), np.uint8)

dt = np.dtype([("a", "u1"), ("b", "<f8"), ("c", [("x", "u1"), ("y", "<i4")])], align=True)
a = np.zeros(3, dtype=dt)
a["a"], a["b"], a["c"]["x"], a["c"]["y"] = [1, 2, 3], [0.5, 1.5, 2.5], 7, [-1, 0, 1]
rows = a.view(np.uint8).reshape(3, dt.itemsize)
for offset, size in ((1, 7), (17, 3)):  # between a and b; between c.x and c.y
    rows[:, offset:offset + size] = noise(3 * size).reshape(3, size)
ld = np.array([1, 2], dtype=np.longdouble) / 3
cld = (np.array([1, 2], dtype=np.clongdouble) + 1j) / 3
for arr in (ld, cld):
    item = arr.view(np.uint8).reshape(2, arr.dtype.itemsize)
    for start in range(0, arr.dtype.itemsize, np.dtype(np.longdouble).itemsize):
        item[:, start + 10:start + np.dtype(np.longdouble).itemsize] = 0 if sys.argv[1] == "0" \
            else noise(2 * (np.dtype(np.longdouble).itemsize - 10)).reshape(2, -1)
print(" ".join(encode(v).hex() for v in (a, a[1], ld, ld[0], cld, cld[1])))
"""


def test_padding_bytes_are_not_part_of_the_encoding(tmp_path):
    script = tmp_path / "padded.py"
    script.write_text(PADDED)
    runs = [subprocess.run([sys.executable, str(script), zeroed], capture_output=True,
                           text=True, check=True).stdout for zeroed in ("1", "1", "0")]
    assert runs[0] == runs[1] == runs[2]  # random padding twice, zeroed padding once


def test_padding_is_left_out_but_values_count():
    dt = np.dtype([("a", "u1"), ("b", "<f8")], align=True)
    x = np.zeros(2, dtype=dt)
    y = x.copy()
    y.view(np.uint8).reshape(2, 16)[:, 1:8] = 0xAB
    assert x.tobytes() != y.tobytes() and encode(x) == encode(y)
    y["a"][0] = 1
    assert encode(x) != encode(y)
    assert encode(np.longdouble(1.5)) != encode(np.longdouble(2.5))
    unpadded = np.zeros(2, dtype=[("a", "u1"), ("b", "<f8")])  # packed: nothing left out
    assert encode(unpadded) != encode(x)  # the dtypes differ
    assert encode(np.asfortranarray(np.zeros((2, 3), dtype=dt))) == encode(
        np.asfortranarray(np.zeros((2, 3), dtype=dt)))


@dataclasses.dataclass
class Probe:
    name: str
    channels: list
    spacing: float = 20.0


@dataclasses.dataclass
class OtherProbe:
    name: str
    channels: list
    spacing: float = 20.0


def test_dataclasses_are_encoded_by_name_and_fields():
    p = Probe("tetrode", [0, 1, 2, 3])
    assert encode(p) == encode(Probe("tetrode", [0, 1, 2, 3], 20.0))
    assert encode(p) != encode(Probe("tetrode", [0, 1, 2, 3], 25.0))
    assert encode(p) != encode(OtherProbe("tetrode", [0, 1, 2, 3]))
    assert add.task_id(p) == add.task_id(Probe("tetrode", [0, 1, 2, 3]))


def test_sets_of_any_order_and_mixed_keys():
    assert encode({"b", "a", "c"}) == encode({"c", "a", "b"})
    assert encode({1: "x", "1": "y"}) == encode({"1": "y", 1: "x"})
    assert encode({1, 2}) != encode([1, 2])
    assert encode(frozenset({1, 2})) == encode({1, 2})


def test_subclasses_of_builtins_use_their_base():
    class Color(enum.IntEnum):
        RED = 1

    Point = namedtuple("Point", "x y")
    assert encode(Color.RED) == encode(1)
    assert encode(Point(1, 2)) == encode((1, 2))


def test_file_arguments_follow_content_not_path(tmp_path):
    a = tmp_path / "a.dat"
    b = tmp_path / "b.dat"
    a.write_bytes(b"hello")
    b.write_bytes(b"hello")
    assert add.task_id(kachery.File(a)) == add.task_id(kachery.File(b))
    before = add.task_id(kachery.File(a))
    a.write_bytes(b"hello, world")
    assert add.task_id(kachery.File(a)) != before
    assert kachery.File(a).uri.startswith("sha256://")
    with pytest.raises(SourceFileError, match="no such file"):
        kachery.File(tmp_path / "missing")
    with pytest.raises(SourceFileError, match="not a regular file"):
        kachery.File(tmp_path)


def test_paths_are_refused_with_a_pointer_to_file(tmp_path):
    with pytest.raises(UnsupportedArgumentError) as info:
        add.task_id(tmp_path / "x.dat")
    msg = str(info.value)
    assert "'a'" in msg and "PosixPath" in msg and "kachery.File(path)" in msg
    assert isinstance(info.value, TypeError)


def test_unsupported_types_name_argument_type_and_remedy():
    class Opaque:
        pass

    with pytest.raises(UnsupportedArgumentError) as info:
        add.task_id(1, b=Opaque())
    msg = str(info.value)
    assert "'b'" in msg and "Opaque" in msg and "Accepted:" in msg
    assert "register_encoder" in msg
    with pytest.raises(UnsupportedArgumentError, match=r"'a'.*contains a value of type .*Opaque"):
        add.task_id([1, {"k": Opaque()}])
    with pytest.raises(UnsupportedArgumentError, match="generators"):
        add.task_id(i for i in range(3))
    with pytest.raises(UnsupportedArgumentError, match="functions"):
        add.task_id(len)
    with pytest.raises(UnsupportedArgumentError):
        add.task_id(1 + 2j)


def _self_referencing_list():
    v: list = [1]
    v.append(v)
    return v


def _self_referencing_dict():
    v: dict = {"a": 1}
    v["b"] = [v]
    return v


def _nested_too_deep():
    v: list = []
    for _ in range(sys.getrecursionlimit() * 2):
        v = [v]
    return v


@pytest.mark.parametrize("make, why", [
    (_self_referencing_list, "contains itself"),
    (_self_referencing_dict, "contains itself"),
    (_nested_too_deep, "nested more deeply than Python's recursion limit"),
])
def test_arguments_that_break_the_encoder_are_one_line_errors(make, why):
    value = make()
    calls = [lambda: add.task_id(value), lambda: add.task_id(a=value, b=1),
             lambda: task_defs.with_kwonly.task_id(1, z=value), lambda: add(value)]
    for call in calls:
        with pytest.raises(UnsupportedArgumentError, match=why) as info:
            call()
        msg = str(info.value)
        assert "\n" not in msg and "argument '" in msg and "task_defs." in msg
    assert not add.is_cached(1)  # nothing was recorded on the way


class Interval:
    def __init__(self, start, stop):
        self.start, self.stop = start, stop


class SubInterval(Interval):
    pass


def test_register_encoder():
    with pytest.raises(UnsupportedArgumentError):
        add.task_id(Interval(1, 2))
    kachery.register_encoder(Interval, lambda iv: (iv.start, iv.stop))
    assert add.task_id(Interval(1, 2)) == add.task_id(Interval(1, 2))
    assert add.task_id(Interval(1, 2)) != add.task_id(Interval(1, 3))
    assert add.task_id(Interval(1, 2)) != add.task_id((1, 2))
    assert add.task_id(SubInterval(1, 2)) == add.task_id(Interval(1, 2))
    before = add.task_id(Interval(1, 2))
    kachery.register_encoder(Interval, lambda iv: (iv.start, iv.stop), name="lab.Interval")
    assert add.task_id(Interval(1, 2)) != before
    assert encode(Interval(1, 2)).startswith(b"x")


def test_import_stays_light():
    code = (
        "import sys, kachery_tasks.runtime, kachery_tasks.cli.tasks; "
        "print(sorted(m for m in ('numpy', 'dask', 'distributed', 'zarr', 'xxhash', "
        "'cloudpickle', 'scipy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parents[2])
    assert out.stdout.strip() == "[]"
