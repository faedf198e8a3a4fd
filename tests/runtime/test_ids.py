"""Task ids: the documented encoding, its test vectors, binding, and code hashes."""

from __future__ import annotations

import ast
import dataclasses
import enum
import math
import re
import struct
import subprocess
import sys
import types
import typing
from pathlib import Path

import numpy as np
import pytest
import task_defs
from hypothesis import given, settings
from hypothesis import strategies as st

import kachery_tasks.runtime as kachery
from kachery_tasks.errors import TaskDefinitionError
from kachery_tasks.runtime import encoders, ids
from kachery_tasks.runtime.encoders import encode

DOC = Path(__file__).resolve().parents[2] / "docs" / "task-ids.md"
_VECTOR_RE = re.compile(r"^(encode|task_id)\((.*)\) = (\S+)$")


def _vectors() -> list[tuple[str, str, str]]:
    text = DOC.read_text()
    block = text.split("```vectors\n", 1)[1].split("```", 1)[0]
    out = []
    for line in block.splitlines():
        m = _VECTOR_RE.match(line)
        assert m, f"unparseable vector line: {line!r}"
        out.append(m.groups())
    return out


# What the vector expressions may use, as the doc says above its vectors.
@dataclasses.dataclass
class Point:
    x: int
    y: float


class Color(enum.IntEnum):
    RED = 1


class Span(typing.NamedTuple):
    start: int
    stop: int


class Interval:
    def __init__(self, start: int, stop: int) -> None:
        self.start, self.stop = start, stop


for _cls in (Point, Color, Span, Interval):
    _cls.__module__ = "examples"
kachery.register_encoder(Interval, lambda iv: (iv.start, iv.stop), name="examples.Interval")


def _vector_namespace(tmp_path: Path) -> dict:
    def file_with(content: bytes) -> kachery.File:
        path = tmp_path / "file.bin"
        path.write_bytes(content)
        return kachery.File(path)

    def future(task_id: str) -> kachery.TaskFuture:
        return kachery.TaskFuture(task_defs.add, task_id, value=None)

    def stored_zarr(array, chunks):
        import kachery_tasks as kt

        return kt.load_zarr(kt.store_zarr(array, chunks=chunks))

    return {"np": np, "float": float, "frozenset": frozenset, "bytearray": bytearray,
            "memoryview": memoryview, "set": set, "Point": Point, "Color": Color, "Span": Span,
            "Interval": Interval, "file_with": file_with, "future": future,
            "stored_zarr": stored_zarr}


def _vector_values(tmp_path: Path) -> list[tuple[str, object, str]]:
    ns = _vector_namespace(tmp_path)
    return [(expr, eval(expr, ns), expected) for kind, expr, expected in _vectors()
            if kind == "encode"]


def test_doc_has_a_vector_for_every_encoder(tmp_path):
    """Every encoder function the dispatch can reach is exercised by some vector."""
    encoders._register_numpy()
    encoders._register_zarr()
    reachable = set(encoders._DISPATCH.values()) | {encoders._enc_dataclass}
    reachable = {e for e in reachable if not e.__name__.startswith("_refuse")}
    used = set()
    for _expr, value, _expected in _vector_values(tmp_path):
        enc = encoders._DISPATCH.get(type(value)) or encoders._resolve(value)
        used.add(enc)
    assert {e.__name__ for e in reachable - used} == set()
    assert len(_vectors()) >= 50


def test_doc_table_lists_exactly_the_tags_of_the_vectors(tmp_path):
    text = DOC.read_text()
    table = text.split("## The encoding `enc`", 1)[1].split("\n\n## ", 1)[0]
    documented = set()
    for line in table.splitlines():
        cells = line.split(" | ")
        if line.startswith("| ") and len(cells) >= 2:
            documented.update(re.findall(r"(?:^|/ )`(.)`", cells[1]))
    emitted = {expected[:2] for _expr, _value, expected in _vector_values(tmp_path)}
    assert {bytes.fromhex(t).decode() for t in emitted} == documented


@pytest.mark.parametrize("kind,expr,expected", _vectors())
def test_doc_vectors(kind, expr, expected, tmp_path):
    if kind == "encode":
        value = eval(expr, _vector_namespace(tmp_path))
        assert encode(value).hex() == expected
    else:
        kwargs = eval(f"dict({expr})", {})
        assert ids.compute_task_id(**kwargs) == expected


def test_task_id_matches_reference_implementation():
    # scale has a version: the code hash is not part of its id
    tid = task_defs.scale.task_id(3, 4.0)
    ref = ids.compute_task_id("pure", "task_defs.scale", "1", None, {"x": 3, "factor": 4.0})
    assert tid == ref
    # add has none: its code hash is
    tid = task_defs.add.task_id(1, 2)
    ref = ids.compute_task_id("pure", "task_defs.add", None, task_defs.add.code_hash,
                              {"a": 1, "b": 2})
    assert tid == ref
    assert tid.startswith("sha256:") and len(tid) == 7 + 64


def test_arguments_are_bound_to_the_signature():
    add = task_defs.add
    assert add.task_id(1, b=2) == add.task_id(1, 2) == add.task_id(a=1, b=2) == add.task_id(
        b=2, a=1)
    assert add.task_id(1) == add.task_id(1, 10)  # the default counts
    assert add.task_id(1) != add.task_id(1, 11)
    f = task_defs.with_kwonly
    assert f.task_id(1) == f.task_id(1, scale=3)
    assert f.task_id(1, z=1) != f.task_id(1)
    with pytest.raises(TypeError, match=r"task_defs\.add"):
        add.task_id()


def test_types_are_part_of_identity():
    add = task_defs.add
    assert len({add.task_id(1), add.task_id(1.0), add.task_id(True), add.task_id("1"),
                add.task_id(np.int64(1))}) == 5
    assert add.task_id([1, 2]) != add.task_id((1, 2))
    assert add.task_id(0.0) != add.task_id(-0.0)


def test_kind_name_and_version_are_part_of_identity():
    def f(x):
        return x

    a = kachery.pure(name="t.f")(f)
    b = kachery.query(name="t.f")(f)
    c = kachery.pure(name="t.g")(f)
    d = kachery.pure(name="t.f", version="1")(f)
    e = kachery.pure(name="t.f", version="2")(f)
    assert len({t.task_id(1) for t in (a, b, c, d, e)}) == 5


def test_uris_are_encoded_by_id_not_label():
    h = "ab" * 32
    add = task_defs.add
    assert add.task_id(f"sha256://{h}?label=a.dat") == add.task_id(f"sha256://{h}")
    assert add.task_id(f"sha256://{h}") != add.task_id(f"sha256://{'cd' * 32}")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text()
    | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=5), children, max_size=4)
    | st.tuples(children, children),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.text(max_size=8), json_values, max_size=6), st.randoms())
def test_dict_order_does_not_matter(d, rnd):
    items = list(d.items())
    rnd.shuffle(items)
    assert encode(dict(items)) == encode(d)
    assert task_defs.add.task_id(dict(items)) == task_defs.add.task_id(d)


def _rebuild(v):
    """An equal value made of new objects."""
    if isinstance(v, list):
        return [_rebuild(x) for x in v]
    if isinstance(v, tuple):
        return tuple(_rebuild(x) for x in v)
    if isinstance(v, dict):
        return {k: _rebuild(x) for k, x in reversed(list(v.items()))}
    if isinstance(v, float) and math.isnan(v):
        return struct.unpack(">d", bytes.fromhex("fff8000000000001"))[0]  # another NaN
    if isinstance(v, str):
        return "".join(list(v))
    return v


@settings(max_examples=150, deadline=None)
@given(json_values)
def test_equal_values_give_equal_ids(v):
    assert task_defs.add.task_id(v) == task_defs.add.task_id(_rebuild(v))


@settings(max_examples=100, deadline=None)
@given(json_values, json_values)
def test_different_values_give_different_encodings(a, b):
    if _same(a, b):
        assert encode(a) == encode(b)
    else:
        assert encode(a) != encode(b)


def _same(a, b) -> bool:
    """Equality as the encoding defines it: types count, NaNs are equal, -0.0 != 0.0."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a) and math.isnan(b):
            return True
        return struct.pack(">d", a) == struct.pack(">d", b)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def test_nan_is_deterministic_and_zero_signs_are_distinct():
    nan2 = struct.unpack(">d", bytes.fromhex("7ff8000000000abc"))[0]
    assert encode(float("nan")) == encode(nan2) == encode(-float("nan"))
    assert encode(0.0) != encode(-0.0)
    assert encode(np.float64("nan")) == encode(-np.float64("nan"))


def test_ids_do_not_depend_on_the_process(tmp_path):
    value = {"b": {3, 1, 2}, "a": frozenset({"x", "y", "z"}), "c": ("q", 1.5)}
    here = task_defs.add.task_id(value)
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import task_defs; "
        "print(task_defs.add.task_id({'c': ('q', 1.5), 'a': frozenset({'z', 'y', 'x'}), "
        "'b': {2, 3, 1}}))"
    )
    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env={**__import__("os").environ, "PYTHONHASHSEED": seed},
                             check=True)
        assert out.stdout.strip() == here


# ---------------------------------------------------------------- code hash
def _function(src: str, name: str = "f", extra: dict | None = None) -> types.FunctionType:
    ns = {"__name__": "fake_module", **(extra or {})}
    exec(compile(src, "fake_module.py", "exec"), ns)
    return ns[name]


BASE = """
def f(x, y=2):
    total = x + y
    return [total * k for k in range(3)]
"""

REFORMATTED = '''
# a comment that moves every line
def f(x,   y=2):
    """A docstring added later."""


    total = (x +
             y)   # a trailing comment
    return [total * k
            for k in range(3)]
'''


def test_code_hash_ignores_formatting_comments_and_docstrings():
    assert ids.code_hash(_function(BASE)) == ids.code_hash(_function(REFORMATTED))


def test_code_hash_follows_behaviour():
    base = ids.code_hash(_function(BASE))
    assert ids.code_hash(_function(BASE.replace("range(3)", "range(4)"))) != base
    assert ids.code_hash(_function(BASE.replace("x + y", "x - y"))) != base
    assert ids.code_hash(_function(BASE.replace("range", "list"))) != base


def test_a_docstring_that_is_also_used_as_a_value_counts():
    a = _function('def f():\n    "abc"\n    return "abc"\n')
    b = _function('def f():\n    "xyz"\n    return "xyz"\n')
    assert ids.code_hash(a) != ids.code_hash(b)


def test_code_hash_includes_called_pure_tasks():
    callee_src = "def g(x):\n    return x + {k}\n"
    g1 = kachery.pure(name="fake_module.g")(_function(callee_src.format(k=1), "g"))
    g2 = kachery.pure(name="fake_module.g")(_function(callee_src.format(k=2), "g"))
    caller = "def f(x):\n    return g(x) * 2\n"
    h1 = ids.code_hash(_function(caller, extra={"g": g1}))
    h2 = ids.code_hash(_function(caller, extra={"g": g2}))
    assert h1 != h2
    # a versioned callee contributes its version, not its code
    v1 = kachery.pure(name="fake_module.g", version="1")(_function(callee_src.format(k=1), "g"))
    v2 = kachery.pure(name="fake_module.g", version="1")(_function(callee_src.format(k=2), "g"))
    assert ids.code_hash(_function(caller, extra={"g": v1})) == ids.code_hash(
        _function(caller, extra={"g": v2}))


def test_called_tasks_found_through_modules_and_comprehensions():
    src = "def f(xs):\n    return sum(helpers.scale(x) for x in xs)\n"
    hashes = set()
    for version in ("1", "2"):
        mod = types.ModuleType("helpers")
        mod.scale = kachery.pure(name="helpers.scale", version=version)(lambda x: x)
        hashes.add(ids.code_hash(_function(src, extra={"helpers": mod})))
    assert len(hashes) == 2


def test_explicit_version_replaces_the_code_hash():
    one = kachery.pure(name="m.f", version="3")(_function(BASE))
    two = kachery.pure(name="m.f", version="3")(_function(BASE.replace("x + y", "x - y")))
    assert one.task_id(1) == two.task_id(1)
    unversioned = kachery.pure(name="m.f")(_function(BASE))
    changed = kachery.pure(name="m.f")(_function(BASE.replace("x + y", "x - y")))
    assert unversioned.task_id(1) != changed.task_id(1)


def test_recursive_tasks_have_a_code_hash():
    assert len(task_defs.recursive.code_hash) == 64


# ------------------------------------------------------- bad definitions
def test_lambda_needs_a_name():
    with pytest.raises(TaskDefinitionError, match="lambda"):
        kachery.pure(lambda x: x)
    assert kachery.pure(name="m.double")(lambda x: 2 * x).name == "m.double"


def test_main_module_tasks_are_named_after_main():
    f = _function("def f(x):\n    return x\n")
    for module in ("__main__", "__mp_main__"):  # multiprocessing's children use __mp_main__
        f.__module__ = module
        assert kachery.pure(f).name == "__main__.f"
    assert kachery.pure(name="proj.f")(f).name == "proj.f"


def test_generators_and_coroutines_cannot_be_tasks():
    gen = _function("def f(n):\n    yield n\n")
    with pytest.raises(TaskDefinitionError, match="generator"):
        kachery.pure(name="m.f")(gen)
    coro = _function("async def f(n):\n    return n\n")
    with pytest.raises(TaskDefinitionError, match="coroutine"):
        kachery.pure(name="m.f")(coro)


def test_other_bad_definitions():
    with pytest.raises(TaskDefinitionError, match="already a task"):
        kachery.pure(task_defs.add)
    with pytest.raises(TaskDefinitionError, match="plain Python functions"):
        kachery.pure(name="m.len")(len)
    with pytest.raises(TaskDefinitionError, match="version="):
        kachery.pure("1")
    with pytest.raises(TaskDefinitionError, match="non-empty string"):
        kachery.pure(version=1)(_function(BASE))


def test_module_docstring_documents_the_preimage():
    # The docstring of ids.py and docs/task-ids.md name the same magic.
    assert ids.MAGIC.decode().strip() in DOC.read_text()
    tree = ast.parse(Path(ids.__file__).read_text())
    assert "kachery-task-id/1" in ast.get_docstring(tree)
