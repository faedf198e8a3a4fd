"""Code hashes cover what a task's code reads: closures, globals, helpers, classes, wrappers."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import textwrap
import types
import warnings
from pathlib import Path

import numpy as np
import pytest

import kachery_tasks.runtime as kachery
from kachery_tasks.errors import TaskDefinitionError
from kachery_tasks.runtime import codehash


def _module(src: str, name: str = "user_mod") -> types.ModuleType:
    """A module of the user's own code, made from ``src`` (in sys.modules while it runs)."""
    mod = types.ModuleType(name)
    sys.modules[name] = mod  # dataclasses look their module up
    try:
        exec(compile(textwrap.dedent(src), f"{name}.py", "exec", dont_inherit=True),
             mod.__dict__)
    finally:
        del sys.modules[name]
    return mod


def _ids_in_subprocess(tmp_path: Path, src: str, call: str, seed: str = "0") -> str:
    """``call`` evaluated in a fresh interpreter that imports ``src`` as module ``cmod``."""
    (tmp_path / "cmod.py").write_text(textwrap.dedent(src))
    code = f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import cmod; print({call})"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONHASHSEED": seed}, cwd=str(tmp_path),
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


# ------------------------------------------------------------- closures
def test_closure_values_are_part_of_the_id():
    def make(k):
        @kachery.pure(name="m.scaled")
        def scaled(x):
            return x * k

        return scaled

    two, three = make(2), make(3)
    assert two.task_id(5) != three.task_id(5)
    assert two(5) == 10
    assert three(5) == 15  # not the 10 cached for k=2
    assert make(2).task_id(5) == two.task_id(5)


def test_a_closure_cell_rebound_by_nonlocal_changes_the_id():
    def make():
        k = 1

        def bump():
            nonlocal k
            k += 1

        @kachery.pure(name="m.closed")
        def f(x):
            return x + k

        return f, bump

    f, bump = make()
    before = f.task_id(1)
    assert f(1) == 2
    bump()
    assert f.task_id(1) != before
    assert f(1) == 3


# -------------------------------------------------------------- globals
GLOBALS_SRC = """
import kachery_tasks as kachery
K = {k}

@kachery.pure
def scaled(x):
    return x * K
"""


def test_a_global_constant_changed_between_processes_changes_the_id(tmp_path):
    a = _ids_in_subprocess(tmp_path, GLOBALS_SRC.format(k=2), "cmod.scaled.task_id(5)")
    same = _ids_in_subprocess(tmp_path, GLOBALS_SRC.format(k=2), "cmod.scaled.task_id(5)", "7")
    b = _ids_in_subprocess(tmp_path, GLOBALS_SRC.format(k=3), "cmod.scaled.task_id(5)")
    assert a == same
    assert a != b


def test_a_global_reassigned_in_the_process_changes_the_id():
    mod = _module(GLOBALS_SRC.format(k=2))
    first = mod.scaled.task_id(5)
    assert mod.scaled(5) == 10
    mod.K = 3  # as a notebook cell re-assigning a constant
    assert mod.scaled.task_id(5) != first
    assert mod.scaled(5) == 15
    mod.K = 2
    assert mod.scaled.task_id(5) == first


def test_mutable_globals_are_checked_by_content():
    mod = _module("""
        import kachery_tasks as kachery
        import numpy as np
        WEIGHTS = [1, 2]
        TABLE = {"a": 1}
        KERNEL = np.array([1.0, 2.0])

        @kachery.pure
        def f(x):
            return x * sum(WEIGHTS) + TABLE["a"] + float(KERNEL.sum())
    """)
    seen = {mod.f.task_id(1)}
    assert mod.f(1) == 7.0
    mod.WEIGHTS.append(3)
    seen.add(mod.f.task_id(1))
    assert mod.f(1) == 10.0
    mod.TABLE["a"] = 5
    seen.add(mod.f.task_id(1))
    mod.KERNEL[0] = 10.0
    seen.add(mod.f.task_id(1))
    assert len(seen) == 4
    assert mod.f(1) == 6 + 5 + 12.0


def test_an_equal_value_of_another_type_changes_the_id():
    mod = _module("""
        import kachery_tasks as kachery
        K = 1
        TABLE = {"k": 1}

        @kachery.pure
        def f(x):
            return x / K + TABLE["k"]
    """)
    seen = {mod.f.task_id(2)}
    mod.K = 1.0  # equal to 1, but another value for the id (and for repr, //, ...)
    seen.add(mod.f.task_id(2))
    mod.TABLE["k"] = True
    seen.add(mod.f.task_id(2))
    del mod.K
    seen.add(mod.f.task_id(2))
    assert len(seen) == 4


def test_a_global_defined_after_the_first_call_changes_the_id():
    mod = _module("""
        import kachery_tasks as kachery

        @kachery.pure
        def f(x):
            return len(x)
    """)
    first = mod.f.task_id("abc")
    assert mod.f("abc") == 3
    mod.len = lambda x: 0  # shadows the builtin
    assert mod.f.task_id("abc") != first
    assert mod.f("abc") == 0


def test_an_untracked_global_is_left_out():
    mod = _module("""
        import collections
        import kachery_tasks as kachery
        calls = kachery.untracked(collections.Counter())

        @kachery.pure
        def f(x):
            calls["f"] += 1
            return x
    """)
    first = mod.f.task_id(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert mod.f(1) == 1
    assert mod.f.task_id(1) == first
    assert mod.f(1) == 1
    assert mod.calls["f"] == 1  # the second call was a hit
    mod.calls = {"f": 1}  # re-bound to another object: that counts
    assert mod.f.task_id(1) != first


def test_a_task_that_changes_what_it_reads_is_warned_about():
    mod = _module("""
        import kachery_tasks as kachery
        seen = []

        @kachery.pure
        def f(x):
            seen.append(x)
            return x
    """)
    with pytest.warns(kachery.TaskIdWarning, match=r"user_mod\.f changed .*'seen'.*untracked"):
        mod.f(1)


def test_an_unencodable_global_is_refused_with_its_name():
    mod = _module("""
        import kachery_tasks as kachery
        import numpy as np
        rng = np.random.default_rng(0)

        def helper(n):
            return rng.random(n)

        @kachery.pure
        def f(n):
            return helper(n)

        @kachery.pure(version="1")
        def g(n):
            return helper(n)
    """)
    with pytest.raises(TaskDefinitionError, match=(
        r"user_mod\.f reads global 'helper' -> global 'rng', a "
        r"numpy\.random\._generator\.Generator.*version=")) as e:
        mod.f(2)
    assert "\n" not in str(e.value)
    assert len(mod.g(2)) == 2  # a version rules: the code is not looked at
    assert mod.g.code_hash is None


# --------------------------------------------------- helpers and classes
HELPER_SRC = """
import kachery_tasks as kachery

def helper(x):
    return x {op} 1

@kachery.pure
def f(x):
    return helper(x)
"""


def test_a_helper_function_whose_code_changes_changes_the_id(tmp_path):
    plus = _ids_in_subprocess(tmp_path, HELPER_SRC.format(op="+"), "cmod.f.task_id(1)")
    minus = _ids_in_subprocess(tmp_path, HELPER_SRC.format(op="-"), "cmod.f.task_id(1)")
    assert plus != minus
    assert _module(HELPER_SRC.format(op="+"), "cmod").f.task_id(1) == plus


def test_helpers_are_followed_through_defaults_modules_and_cycles():
    helpers = _module("""
        SCALE = 2

        def even(n):
            return n == 0 or odd(n - 1)

        def odd(n):
            return n != 0 and even(n - 1)
    """, "helpers")
    src = """
        import kachery_tasks as kachery

        def offset(x, by={by}):
            return x + by

        @kachery.pure
        def f(x):
            return offset(x) * helpers.SCALE + helpers.even(x)
    """
    mod = _module(src.format(by=1))
    mod.helpers = helpers
    first = mod.f.task_id(2)
    assert mod.f(2) == 3 * 2 + True
    helpers.SCALE = 3  # an attribute of a module of the user's code
    assert mod.f.task_id(2) != first
    assert mod.f(2) == 3 * 3 + True
    other = _module(src.format(by=5))  # a helper's default value
    other.helpers = helpers
    assert other.f.task_id(2) not in (first, mod.f.task_id(2))


def test_library_modules_functions_and_builtins_count_by_name(tmp_path):
    src = """
    import dataclasses, enum, functools, logging, math, re
    import numpy as np
    import kachery_tasks as kachery

    log = logging.getLogger("cmod")
    PATTERN = re.compile(r"a+b", re.I)
    MISSING = object()
    TYPES = (np.float32, np.dtype("<i4"), complex(1, 2))

    class Color(enum.Enum):
        RED = 1
        BLUE = 2

    @dataclasses.dataclass(frozen=True)
    class Params:
        k: int = 3
        names: tuple = ()

        def scaled(self, x):
            return x * self.k

    P = Params(4)
    OPS = {"sqrt": math.sqrt, "sum": np.sum, "len": len}
    half = functools.partial(np.multiply, 0.5)

    @kachery.pure
    def f(x):
        log.debug("f")
        return (P.scaled(x), OPS["sqrt"](x), half(x), Color.RED.value, bool(PATTERN.match("ab")),
                MISSING is None, TYPES[0], np.pi)
    """
    here = _module(src, "cmod")
    ids = {_ids_in_subprocess(tmp_path, src, "cmod.f.task_id(4.0)", seed) for seed in "12"}
    assert ids == {here.f.task_id(4.0)}


def test_class_methods_and_attributes_count():
    src = """
        import kachery_tasks as kachery

        class Model:
            FACTOR = {factor}

            def predict(self, x):
                return x {op} self.FACTOR

        @kachery.pure
        def f(x):
            return Model().predict(x)
    """
    base = _module(src.format(factor=2, op="*")).f.task_id(1)
    assert _module(src.format(factor=3, op="*")).f.task_id(1) != base
    assert _module(src.format(factor=2, op="+")).f.task_id(1) != base
    assert _module(src.format(factor=2, op="*")).f.task_id(1) == base


def test_dataclass_defaults_count_and_generated_methods_are_accepted():
    src = """
        import dataclasses
        import kachery_tasks as kachery

        @dataclasses.dataclass
        class Config:
            k: int = {k}
            tags: list = dataclasses.field(default_factory=lambda: [{tag}])

        @kachery.pure
        def f(x):
            return x * Config().k + Config().tags[0]
    """
    base = _module(src.format(k=2, tag=0)).f
    assert base.task_id(1) != _module(src.format(k=3, tag=0)).f.task_id(1)
    assert base.task_id(1) != _module(src.format(k=2, tag=1)).f.task_id(1)  # only in the field
    assert base.task_id(1) == _module(src.format(k=2, tag=0)).f.task_id(1)
    assert base(2) == 4


def test_stateful_instances_of_user_classes_are_refused():
    mod = _module("""
        import kachery_tasks as kachery

        class Holder:
            def __init__(self):
                self.k = 2

        H = Holder()

        @kachery.pure
        def f(x):
            return x * H.k
    """)
    with pytest.raises(TaskDefinitionError, match=r"global 'H', a user_mod\.Holder"):
        mod.f.task_id(1)


def test_a_self_referencing_global_is_refused_not_a_recursion_error():
    mod = _module("""
        import kachery_tasks as kachery
        LOOP = []
        LOOP.append(LOOP)

        @kachery.pure
        def f(x):
            return len(LOOP)
    """)
    with pytest.raises(TaskDefinitionError, match=r"global 'LOOP'.*contains itself"):
        mod.f.task_id(1)


# -------------------------------------------------------------- wrappers
def _wrapped_task(body: str):
    mod = _module(f"""
        import functools

        def inner(x):
            return x {body}

        def deco(f):
            @functools.wraps(f)
            def wrapper(*args):
                return wrapper.__wrapped__(*args)  # reaches f only through __wrapped__
            return wrapper
    """)
    import kachery_tasks.runtime as rt

    return rt.pure(name="m.wrapped")(mod.deco(mod.inner))


def test_functools_wraps_hashes_the_wrapped_function():
    plus, minus = _wrapped_task("+ 1"), _wrapped_task("- 1")
    assert plus.task_id(1) != minus.task_id(1)
    assert plus(1) == 2 and minus(1) == 0
    assert _wrapped_task("+ 1").task_id(1) == plus.task_id(1)


def test_a_decorator_over_different_functions_gives_different_ids():
    def deco(f):
        @functools.wraps(f)
        def wrapper(*args, **kwargs):
            return f(*args, **kwargs)
        return wrapper

    @kachery.pure(name="m.deco")
    @deco
    def one(x):
        return x + 1

    @kachery.pure(name="m.deco")
    @deco
    def two(x):
        return x + 2

    assert one.task_id(1) != two.task_id(1)
    assert (one(1), two(1)) == (2, 3)


# ----------------------------------------------------------- unit level
def test_future_imports_do_not_change_code_hashes():
    src = "def f(x: int) -> int:\n    return x + 1\n"
    plain = _module(src).f
    future = _module("from __future__ import annotations\n" + src).f
    assert plain.__code__.co_flags != future.__code__.co_flags
    assert codehash.code_hash(plain) == codehash.code_hash(future)


def test_reads_finds_globals_and_module_attribute_chains():
    def f(x):
        return helpers.scale(x) + np.sum(a.b.c) + K + [y for y in G]  # noqa: F821

    names, chains = codehash.reads(f.__code__)
    assert names == {"helpers", "np", "a", "K", "G"}
    assert chains == {("helpers", "scale"), ("np", "sum"), ("a", "b", "c")}


def test_library_code_is_recognised():
    assert codehash._is_library_function(textwrap.dedent)  # the standard library
    assert codehash._is_library_class(np.ndarray)  # an installed package
    assert codehash._is_library_class(codehash.Watch)  # kachery_tasks itself
    assert not codehash._is_library_function(_module)  # these tests: the user's code


def test_code_hashes_are_the_same_in_every_process(tmp_path):
    src = HELPER_SRC.format(op="*")
    here = codehash.code_hash(_module(src, "cmod").f.func)
    there = _ids_in_subprocess(
        tmp_path, src, "__import__('kachery_tasks.runtime.codehash').runtime.codehash."
        "code_hash(cmod.f.func)", "3")
    assert here == there
