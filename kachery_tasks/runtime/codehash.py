"""Code hashes: what a task's function computes, including what it reads from outside.

A task without ``version=`` is identified by a hash of its function (see
``docs/task-ids.md``, "Version and code hash"). The hash covers the
function's bytecode and constants (recursively into nested functions and
comprehensions; docstring, comments, formatting, line numbers and local
names left out) and **everything the code reads from outside**:

* the values its closure captures (``__closure__`` cells);
* the module globals it reads (``LOAD_GLOBAL`` in its code and nested code),
  and attributes read from modules of the user's own code (``helpers.f``);
* ``__wrapped__`` (``functools.wraps``): the wrapped function too.

Each value read counts by what it is:

* plain values by their argument encoding (:mod:`.encoders`); instances of
  the user's own classes (dataclasses, registered types) with their class;
* functions of the user's own code by their code hash, recursively (with
  their closure, globals and defaults; cycles are cut); classes of the
  user's own code by their methods' code and class attributes (for
  dataclasses: the fields instead of the generated methods);
* tasks by their kind, name and version, or code hash when unversioned;
* modules, and functions and classes of *library* code (the standard
  library, installed packages, kachery_tasks itself), by name only, so a
  library's internals never make ids differ between processes; builtins
  by name;
* containers of the above element by element; enum members by class and
  name; loggers by name; compiled regexes by pattern and flags; instances
  without state (sentinels such as ``object()``) by their class; a few
  immutable standard types with an exact, stable ``repr`` (complex, range,
  datetime, Decimal, Fraction, UUID, paths, numpy dtypes) by type and repr;
* a value marked with :func:`untracked` by nothing but that mark.

Anything else (an open file, a random generator, an instance of a class
with state and no encoder) is refused with a :class:`TaskDefinitionError`
that names the variable: it must not silently drop out of the id.

The hash is computed once per task and kept, together with a :class:`Watch`
of what it read: the bindings (global names, module and class attributes,
closure cells) must still hold the same objects, and mutable values (lists,
dicts, sets, arrays, non-frozen dataclasses) must still encode to the same
bytes. Each call checks the watch (a few dict lookups; mutable values are
re-encoded) and computes the hash again when something changed, so a
notebook that re-assigns a constant or edits a list gets new ids at once.
"""

from __future__ import annotations

import builtins
import dataclasses
import dis
import enum
import functools
import hashlib
import logging
import os
import re
import site
import sys
import sysconfig
import threading
import types
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import repeat
from operator import is_, itemgetter
from pathlib import PurePath
from typing import Any, NoReturn

from ..errors import TaskDefinitionError
from .encoders import _U64, _Refused, encode

_ABSENT: Any = type("_Absent", (), {"__repr__": lambda self: "<absent>"})()
_BUILTIN_NAMES = frozenset(vars(builtins))
_HEAPTYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class made at run time (not a static C type)
# Code flags below the __future__ ones (CO_FUTURE_* start at 0x20000): those only steered
# the compiler, whose output is hashed anyway (``from __future__ import annotations``).
_BEHAVIOUR_FLAGS = 0x1FFFF

# ------------------------------------------------------------- untracked
_UNTRACKED: dict[int, Any] = {}
_untracked_lock = threading.Lock()


def untracked(value: Any) -> Any:
    """Mark ``value`` as not part of the task ids of the code that reads it; return it.

    For objects a task reads that do not change its results: a call counter,
    a cache, a lock, a progress display. Code hashes then count only that the
    name is bound to this very object (re-binding it to another object still
    counts), never its content, so changing it keeps the ids. Marking a value
    that does change results makes the cache serve stale results.

    Example::

        calls = kachery.untracked(collections.Counter())
    """
    with _untracked_lock:
        _UNTRACKED[id(value)] = value  # kept alive: its id is never reused
    return value


def _is_untracked(v: Any) -> bool:
    return _UNTRACKED.get(id(v)) is v


# -------------------------------------------------------- library code
_lib_roots: tuple[str, ...] | None = None
_lib_files: dict[str, bool] = {}


def _library_roots() -> tuple[str, ...]:
    global _lib_roots
    if _lib_roots is None:
        paths = sysconfig.get_paths()
        roots = {paths.get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
        roots.update(getattr(site, "getsitepackages", list)())
        user_site = getattr(site, "getusersitepackages", lambda: None)()
        roots.add(user_site if isinstance(user_site, str) else None)
        roots.add(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # kachery_tasks
        _lib_roots = tuple(
            sorted(os.path.join(os.path.realpath(r), "") for r in roots if r)
        )
    return _lib_roots


def _is_library_file(filename: str) -> bool:
    """True for code of the standard library, installed packages and kachery_tasks."""
    known = _lib_files.get(filename)
    if known is None:
        if filename.startswith("<"):
            known = filename.startswith("<frozen ")  # <string>, <stdin>: the user's
        else:
            real = os.path.realpath(filename)
            known = real.startswith(_library_roots())
        _lib_files[filename] = known
    return known


def _is_library_module(mod: types.ModuleType) -> bool:
    name = getattr(mod, "__name__", None)
    if name in sys.builtin_module_names:
        return True
    file = getattr(mod, "__file__", None)
    if isinstance(file, str):
        return _is_library_file(file)
    paths = list(getattr(mod, "__path__", None) or ())  # a namespace package
    return bool(paths) and all(isinstance(p, str) and _is_library_file(p) for p in paths)


def _is_library_class(cls: type) -> bool:
    if not cls.__flags__ & _HEAPTYPE:
        return True  # a static C type (int, dict, numpy.ndarray, ...)
    mod = sys.modules.get(getattr(cls, "__module__", None) or "")
    if mod is not None:
        return _is_library_module(mod)
    # no importable module: library (C) code unless it has Python methods
    return not any(isinstance(x, types.FunctionType) for x in vars(cls).values())


def _is_library_function(f: types.FunctionType) -> bool:
    return _is_library_file(f.__code__.co_filename)


def _qualname(obj: Any) -> str:
    mod = getattr(obj, "__module__", None)
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", "?")
    return f"{mod}.{name}" if isinstance(mod, str) else str(name)


# ------------------------------------------------------------ bytecode
_GLOBAL_OPS = frozenset({"LOAD_GLOBAL", "LOAD_NAME", "LOAD_FROM_DICT_OR_GLOBALS"})
_ATTR_OPS = frozenset({"LOAD_ATTR", "LOAD_METHOD"})
_reads_memo: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def reads(code: types.CodeType) -> tuple[frozenset[str], frozenset[tuple[str, ...]]]:
    """The global names ``code`` (and its nested code) reads, and attribute chains on them.

    A chain ``("helpers", "scale")`` is ``helpers.scale`` read right after
    loading the global ``helpers``.
    """
    memo = _reads_memo.get(code)
    if memo is not None:
        return memo
    names: set[str] = set()
    chains: set[tuple[str, ...]] = set()
    stack = [code]
    while stack:
        co = stack.pop()
        chain: list[str] = []
        for ins in dis.get_instructions(co):
            op = ins.opname
            if op == "EXTENDED_ARG":
                continue
            if op in _ATTR_OPS and chain:
                chain.append(ins.argval)
                continue
            if len(chain) > 1:
                chains.add(tuple(chain))
            chain = []
            if op in _GLOBAL_OPS:
                names.add(ins.argval)
                chain = [ins.argval]
        if len(chain) > 1:
            chains.add(tuple(chain))
        stack.extend(c for c in co.co_consts if isinstance(c, types.CodeType))
    memo = (frozenset(names), frozenset(chains))
    _reads_memo[code] = memo
    return memo


def code_digest(code: types.CodeType, doc: str | None = None) -> bytes:
    """SHA-256 of a code object's behaviour: bytecode, names, constants, nested code."""
    h = hashlib.sha256()
    _hash_code(code, h, doc)
    return h.digest()


def _hash_code(code: types.CodeType, h: Any, doc: str | None = None) -> None:
    consts = list(code.co_consts)
    if isinstance(doc, str) and consts and consts[0] == doc and not _loads_const(code, 0):
        consts[0] = None  # the docstring: documentation, not behaviour
    h.update(
        encode(
            (
                "code",
                code.co_argcount,
                code.co_posonlyargcount,
                code.co_kwonlyargcount,
                code.co_flags & _BEHAVIOUR_FLAGS,
                code.co_code,
                code.co_names,
                getattr(code, "co_exceptiontable", b""),
                len(consts),
            )
        )
    )
    for c in consts:
        if isinstance(c, types.CodeType):
            h.update(b"nested")
            _hash_code(c, h)
        else:
            h.update(_const_bytes(c))


def _const_bytes(c: Any) -> bytes:
    if isinstance(c, tuple | frozenset):
        parts = [_const_bytes(x) for x in c]
        if isinstance(c, frozenset):
            parts.sort()
        return b"T" + _U64(len(parts)) + b"".join(parts)
    if c is None or type(c) in (bool, int, float, str, bytes):
        return encode(c)
    text = repr(c).encode()  # Ellipsis, complex: repr is exact and stable
    return b"?" + _U64(len(text)) + text


def _loads_const(code: types.CodeType, index: int) -> bool:
    """True when the bytecode reads constant ``index`` (so it is not only a docstring)."""
    import opcode

    hasconst = set(opcode.hasconst)
    extended = opcode.opmap.get("EXTENDED_ARG")
    raw = code.co_code
    arg_prefix = 0
    for i in range(0, len(raw), 2):
        op, arg = raw[i], raw[i + 1]
        if op == extended:
            arg_prefix = (arg_prefix | arg) << 8
            continue
        if op in hasconst and (arg_prefix | arg) == index:
            return True
        arg_prefix = 0
    return False


# ---------------------------------------------------------------- watch
class Watch:
    """What a kept code hash read that may change while the process runs.

    ``spaces`` are (namespace, getter, objects, absent names, names): the names
    the getter reads must still be bound to the same objects and the absent names
    must still be absent; ``checks`` are (function, label): each must still
    return True. Checked on every call, so the common path is all in C.
    """

    __slots__ = ("checks", "spaces")

    def __init__(self, spaces: tuple, checks: tuple) -> None:
        self.spaces = spaces
        self.checks = checks

    def changed(self) -> bool:
        """True when something the hash read is no longer what it was (cheap: every call)."""
        for ns, get, objs, absent, _names in self.spaces:
            try:
                if get is not None and not all(map(is_, get(ns), objs)):
                    return True
            except KeyError:  # a name was deleted
                return True
            if absent and not ns.keys().isdisjoint(absent):
                return True  # a name was defined (e.g. shadowing a builtin)
        checks = self.checks
        if not checks:
            return False
        try:
            return not all(check() for check, _label in checks)
        except Exception:  # e.g. another thread resized a dict while it was compared
            return True

    def first_change(self) -> str | None:
        """A description of the first thing that changed, or None."""
        for ns, _get, objs, absent, names in self.spaces:
            for name, obj in zip(names, objs):
                if ns.get(name, _ABSENT) is not obj:
                    return f"{_space_label(ns)} {name!r}"
            for name in sorted(absent):
                if name in ns:
                    return f"{_space_label(ns)} {name!r}"
        for check, label in self.checks:
            try:
                if not check():
                    return label
            except Exception:
                return label
        return None


def _space(ns: Any, bound: dict[str, Any]) -> tuple:
    names = [n for n, v in bound.items() if v is not _ABSENT]
    absent = frozenset(n for n, v in bound.items() if v is _ABSENT)
    if not names:
        return (ns, None, (), absent, ())
    if len(names) == 1:
        names.append(names[0])  # itemgetter of one name returns the value, not a tuple
    return (ns, itemgetter(*names), tuple(bound[n] for n in names), absent, tuple(names))


def _space_label(ns: Any) -> str:
    if isinstance(ns, dict) and isinstance(ns.get("__name__"), str):
        return f"global of {ns['__name__']}"
    return "attribute"


class _WatchBuilder:
    def __init__(self) -> None:
        self.spaces: dict[int, tuple[Any, dict[str, Any]]] = {}
        self.checks: list[tuple[Callable[[], bool], str]] = []
        self.merged: list[Watch] = []

    def bind(self, ns: Any, name: str, obj: Any) -> None:
        self.spaces.setdefault(id(ns), (ns, {}))[1][name] = obj

    def check(self, fn: Callable[[], bool], label: str) -> None:
        self.checks.append((fn, label))

    def build(self) -> Watch | None:
        spaces = [_space(ns, b) for ns, b in self.spaces.values() if b]
        checks = list(self.checks)
        for w in self.merged:
            spaces.extend(w.spaces)
            checks.extend(w.checks)
        if not spaces and not checks:
            return None
        return Watch(tuple(spaces), tuple(checks))


def _cell_value(cell: types.CellType) -> Any:
    try:
        return cell.cell_contents
    except ValueError:  # an empty cell
        return _ABSENT


def _encodes_to(v: Any, enc: bytes) -> bool:
    try:
        return encode(v) == enc
    except (_Refused, RecursionError):
        return False


# --------------------------------------------------------------- values
_IMMUTABLE = frozenset({type(None), bool, int, float, complex, str, bytes, range})
_REPR_TYPES = frozenset({
    "builtins.complex", "builtins.range", "builtins.slice", "builtins.ellipsis",
    "builtins.NotImplementedType", "datetime.date", "datetime.datetime", "datetime.time",
    "datetime.timedelta", "datetime.timezone", "decimal.Decimal", "fractions.Fraction",
    "uuid.UUID", "zoneinfo.ZoneInfo",
})
# Class attributes that are bookkeeping, not behaviour (or are covered otherwise).
_CLASS_SKIP = frozenset({
    "__dict__", "__weakref__", "__module__", "__qualname__", "__doc__", "__annotations__",
    "__dataclass_fields__", "__dataclass_params__", "_abc_impl", "__parameters__",
    "__orig_bases__", "__firstlineno__", "__static_attributes__", "__type_params__",
})
_SLOT_TYPES = (types.MemberDescriptorType, types.GetSetDescriptorType)
_DATACLASS_MADE = frozenset({
    "__init__", "__repr__", "__eq__", "__lt__", "__le__", "__gt__", "__ge__", "__hash__",
    "__setattr__", "__delattr__", "__getstate__", "__setstate__",
})


def _immutable(v: Any) -> bool:
    """True when ``v``'s encoding cannot change while the same object is bound."""
    t = type(v)
    if t in _IMMUTABLE:
        return True
    try:
        if isinstance(v, tuple | frozenset):
            return all(_immutable(x) for x in v)
        if isinstance(v, int | float | str | bytes | enum.Enum):
            return True  # subclasses (IntEnum) encode as their base value
        np = sys.modules.get("numpy")
        if np is not None and isinstance(v, np.generic):
            return True
        if dataclasses.is_dataclass(t) and t.__dataclass_params__.frozen:
            return all(_immutable(getattr(v, f.name)) for f in dataclasses.fields(v))
    except RecursionError:
        return False
    return False


def _same_items(v: Any) -> Callable[[], bool] | None:
    """For a list, dict or set of immutable items: a check that it still holds the very
    same objects (cheaper than encoding it again, and as exact); else None."""
    t = type(v)
    if t is dict:
        keys, vals = tuple(v), tuple(v.values())
        if all(map(_immutable, keys)) and all(map(_immutable, vals)):
            return lambda: (len(v) == len(keys) and all(map(is_, v, keys))
                            and all(map(is_, v.values(), vals)))
    elif t is list or t is set:
        items = tuple(v)
        if all(map(_immutable, items)):
            return lambda: len(v) == len(items) and all(map(is_, v, items))
    return None


def _stateless(v: Any) -> bool:
    """An instance whose behaviour is all in its class (``object()``, sentinels)."""
    t = type(v)
    if t is object:
        return True
    d = getattr(v, "__dict__", None)
    if not isinstance(d, dict) or d:
        return False
    for cls in t.__mro__[:-1]:
        if not cls.__flags__ & _HEAPTYPE or cls.__dict__.get("__slots__"):
            return False  # a C base or slots may hold state that __dict__ does not show
    return True


def _repr_type(v: Any) -> bool:
    t = type(v)
    if _qualname(t) in _REPR_TYPES or isinstance(v, PurePath):
        return True
    np = sys.modules.get("numpy")
    return np is not None and isinstance(v, np.dtype)


class _Hasher:
    """One code-hash computation: memo, cycle guard, watch and the path for messages."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.watch = _WatchBuilder()
        self.memo: dict[int, bytes] = {}
        self.active: set[int] = set()
        self.keep: list[Any] = []  # objects whose ids are in memo stay alive meanwhile
        self.path: list[str] = []

    @contextmanager
    def at(self, label: str) -> Iterator[None]:
        self.path.append(label)
        try:
            yield
        finally:
            self.path.pop()

    def refuse(self, v: Any, why: str = "") -> NoReturn:
        where = " -> ".join(self.path) or "a value"
        raise TaskDefinitionError(
            f"{self.owner} reads {where}, a {_qualname(type(v))}{why}, which cannot be part of "
            "its task id: pass it as an argument, register an encoder for its type "
            "(kachery.register_encoder), mark it kachery.untracked(...) if it does not change "
            "results, or give the task a version= (then the version alone identifies its code)"
        )

    # ------------------------------------------------------ functions
    def function(self, f: types.FunctionType, top: bool = False) -> bytes:
        key = id(f)
        done = self.memo.get(key)
        if done is not None:
            return done
        if key in self.active:
            return b"Z" + encode(f.__qualname__)  # a cycle: the name is all that can be said
        self.active.add(key)
        self.keep.append(f)
        try:
            if _is_library_function(f):
                # library code by name (its internals are the library's), the top
                # function by its code; both with what they wrap
                parts = [b"f", encode(_qualname(f))]
                if top:
                    parts.append(code_digest(f.__code__, f.__doc__))
            else:
                parts = [b"F", code_digest(f.__code__, f.__doc__)]
                self._closure(f, parts)
                self._globals(f, parts)
                if not top:
                    with self.at(f"the defaults of {f.__qualname__}"):
                        parts.append(self.ident(f.__defaults__))
                        parts.append(self.ident(f.__kwdefaults__))
            wrapped = f.__dict__.get("__wrapped__", _ABSENT)
            if wrapped is not _ABSENT:
                with self.at(f"__wrapped__ of {f.__qualname__}"):
                    parts.append(b"w" + self.ident(wrapped))
        finally:
            self.active.discard(key)
        out = b"F" + hashlib.sha256(b"".join(parts)).digest()
        self.memo[key] = out
        return out

    def _closure(self, f: types.FunctionType, parts: list[bytes]) -> None:
        for name, cell in zip(f.__code__.co_freevars, f.__closure__ or ()):
            v = _cell_value(cell)
            with self.at(f"closure variable {name!r}"):
                parts.append(encode(name) + (b"-" if v is _ABSENT else self.ident(v)))
            self.watch.check(
                lambda cell=cell, v=v: _cell_value(cell) is v, f"closure variable {name!r}"
            )

    def _globals(self, f: types.FunctionType, parts: list[bytes]) -> None:
        names, chains = reads(f.__code__)
        g = f.__globals__
        for name in sorted(names):
            v = g.get(name, _ABSENT)
            self.watch.bind(g, name, v)
            if v is _ABSENT:  # a builtin, or not defined (yet)
                parts.append(encode(name) + (b"b" if name in _BUILTIN_NAMES else b"-"))
                continue
            with self.at(f"global {name!r}"):
                parts.append(encode(name) + self.ident(v))
        for chain in sorted(chains):
            obj = g.get(chain[0], _ABSENT)
            label = chain[0]
            for attr in chain[1:]:
                if not isinstance(obj, types.ModuleType):
                    break
                ns = obj.__dict__
                v = ns.get(attr, _ABSENT)
                label += "." + attr
                if _is_library_module(obj):
                    if isinstance(v, types.ModuleType):
                        obj = v
                        continue
                    if not getattr(type(v), "_kachery_task", False):
                        break  # a library's attributes count by its name; its tasks by theirs
                self.watch.bind(ns, attr, v)
                with self.at(f"attribute {label!r}"):
                    parts.append(encode(label) + (b"-" if v is _ABSENT else self.ident(v)))
                obj = v

    # -------------------------------------------------------- classes
    def klass(self, cls: type) -> bytes:
        if _is_library_class(cls):
            return b"K" + encode(_qualname(cls))
        key = id(cls)
        done = self.memo.get(key)
        if done is not None:
            return done
        if key in self.active:
            return b"Y" + encode(cls.__qualname__)
        self.active.add(key)
        self.keep.append(cls)
        try:
            parts = [encode(("class", cls.__qualname__, len(cls.__bases__)))]
            for base in cls.__bases__:
                parts.append(self.klass(base))
            ns = cls.__dict__
            fields = ns.get("__dataclass_fields__") if "__dataclass_params__" in ns else None
            for name in sorted(ns):
                v = ns[name]
                if name in _CLASS_SKIP or isinstance(v, _SLOT_TYPES) or (
                    type(v).__name__ == "_tuplegetter"  # namedtuple fields: see _fields
                ):
                    continue
                if fields is not None and _dataclass_made(name, v):
                    continue  # made from the fields, which are hashed below
                self.watch.bind(ns, name, v)
                with self.at(f"class attribute {cls.__qualname__}.{name}"):
                    parts.append(encode(name) + self.ident(v))
            if fields is not None:
                parts.append(self._dataclass(cls, fields))
        finally:
            self.active.discard(key)
        out = b"C" + hashlib.sha256(b"".join(parts)).digest()
        self.memo[key] = out
        return out

    def _dataclass(self, cls: type, fields: dict) -> bytes:
        params = cls.__dict__["__dataclass_params__"]
        slots = getattr(type(params), "__slots__", ())
        flags = tuple(getattr(params, s) for s in slots) if slots else tuple(
            sorted(vars(params).items())
        )
        parts = [encode(("dataclass", flags, len(fields)))]
        for f in fields.values():
            with self.at(f"field {cls.__qualname__}.{f.name}"):
                parts.append(self.ident((f.name, f._field_type.name, f.init, f.repr, f.compare,
                                         f.hash, f.kw_only)))
                parts.append(self.ident(f.default))
                parts.append(self.ident(f.default_factory))
        return b"".join(parts)

    # ---------------------------------------------------------- tasks
    def task(self, t: Any) -> bytes:
        if t.version is not None:
            return b"t" + encode((t.kind, t.name, "version", t.version))
        if id(t.func) in _active_tasks():
            return b"t" + encode((t.kind, t.name, "recursive"))
        code, watch = t._code_identity()
        if watch is not None:
            self.watch.merged.append(watch)
        return b"t" + encode((t.kind, t.name, "code", code))

    # --------------------------------------------------------- values
    def ident(self, v: Any) -> bytes:
        """The self-delimiting identity bytes of a value the code reads (see the module doc)."""
        t = type(v)
        if t in _IMMUTABLE and t is not complex and t is not range:
            return encode(v)
        if _is_untracked(v):
            return b"U"
        if getattr(t, "_kachery_task", False):
            return self.task(v)
        if t is types.FunctionType:
            return self.function(v)
        if isinstance(v, type):
            return self.klass(v)
        if isinstance(v, types.ModuleType):
            return b"M" + encode(v.__name__)
        if t is types.MethodType:
            return b"B" + self.ident(v.__func__) + self.ident(v.__self__)
        if t is functools.partial:
            return b"P" + self.ident(v.func) + self.ident(v.args) + self.ident(v.keywords)
        if t is staticmethod or t is classmethod:
            return (b"S" if t is staticmethod else b"L") + self.ident(v.__func__)
        if t is property:
            return b"R" + self.ident(v.fget) + self.ident(v.fset) + self.ident(v.fdel)
        return self._value(v)

    def _value(self, v: Any) -> bytes:
        t = type(v)
        try:
            enc = encode(v)
        except _Refused:
            enc = None
        except RecursionError:
            self.refuse(v, " that contains itself or is nested too deeply")
        if enc is not None:
            if not _immutable(v):
                check = _same_items(v) or (lambda v=v, enc=enc: _encodes_to(v, enc))
                self.watch.check(check, self._label())
                self.keep.append(v)
            out = b"V" + hashlib.sha256(enc).digest()
            if not _is_library_class(t):  # the user's dataclass, NamedTuple, registered type
                out += self.klass(t)
            return out
        if isinstance(v, list | tuple | dict | set | frozenset):
            return self._container(v)
        if isinstance(v, enum.Enum):
            return b"E" + self.klass(t) + encode(v.name)
        if isinstance(v, logging.Logger):
            return b"G" + encode(v.name)  # logging does not change results
        if isinstance(v, re.Pattern):
            return b"X" + encode(v.pattern) + encode(v.flags)
        if _repr_type(v):
            return b"Q" + encode((_qualname(t), repr(v)))
        if _stateless(v):
            return b"O" + self.klass(t)
        if callable(v) and _is_library_class(t) and isinstance(getattr(v, "__name__", None), str):
            return self._library_callable(v)
        self.refuse(v)

    def _label(self) -> str:
        return " -> ".join(self.path) or "a value"

    def _container(self, v: Any) -> bytes:
        """A container holding values with no plain encoding (functions, classes, ...)."""
        key = id(v)
        if key in self.active:
            self.refuse(v, " that contains itself")
        self.active.add(key)
        try:
            if isinstance(v, dict):
                items = sorted((self.ident(k), self.ident(x)) for k, x in v.items())
                body = b"".join(k + x for k, x in items)
                tag = b"D"
            elif isinstance(v, set | frozenset):
                body = b"".join(sorted(self.ident(x) for x in v))
                tag = b"E" if isinstance(v, frozenset) else b"e"
            else:
                body = b"".join(self.ident(x) for x in v)
                tag = b"T" if isinstance(v, tuple) else b"L"
        finally:
            self.active.discard(key)
        self.keep.append(v)
        label = self._label()
        if isinstance(v, dict):
            keys, objs = tuple(v), tuple(v.values())
            self.watch.check(
                lambda v=v, keys=keys, objs=objs: len(v) == len(keys)
                and all(map(is_, map(v.get, keys, repeat(_ABSENT)), objs)), label)
        elif isinstance(v, set):
            snap = frozenset(v)
            self.watch.check(lambda v=v, snap=snap: v == snap, label)
        elif isinstance(v, list):
            objs = tuple(v)
            self.watch.check(
                lambda v=v, objs=objs: len(v) == len(objs) and all(map(is_, v, objs)), label)
        return tag + _U64(len(v)) + hashlib.sha256(body).digest()

    def _library_callable(self, v: Any) -> bytes:
        """A builtin or compiled function (len, numpy.add, ...): by name, and its binding."""
        out = b"c" + encode((
            _qualname(type(v)), str(getattr(v, "__module__", None) or ""),
            str(getattr(v, "__qualname__", None) or v.__name__),
        ))
        bound = getattr(v, "__self__", None)
        if bound is not None and not isinstance(bound, types.ModuleType):
            with self.at(f"the object {v.__name__} is bound to"):
                out += b"s" + self.ident(bound)
        wrapped = getattr(v, "__wrapped__", _ABSENT)
        if wrapped is not _ABSENT:
            out += b"w" + self.ident(wrapped)
        return out


def _dataclass_made(name: str, v: Any) -> bool:
    """A method the dataclass decorator wrote (its code is made from the fields)."""
    return (
        name in _DATACLASS_MADE
        and isinstance(v, types.FunctionType)
        and v.__code__.co_filename == "<string>"
    )


# ------------------------------------------------------------------ API
_state = threading.local()


def _active_tasks() -> set[int]:
    active = getattr(_state, "tasks", None)
    if active is None:
        active = _state.tasks = set()
    return active


def code_identity(func: types.FunctionType, owner: str = "") -> tuple[str, Watch | None]:
    """The code hash of ``func`` (hex SHA-256) and the watch that says when it is stale.

    ``owner`` names the task in error messages. Raises TaskDefinitionError
    when the code reads a value that cannot be part of an id.
    """
    active = _active_tasks()
    active.add(id(func))
    h = _Hasher(owner or _qualname(func))
    try:
        body = h.function(func, top=True)
    except RecursionError:
        raise TaskDefinitionError(
            f"{h.owner} reads values nested too deeply to hash (past Python's recursion "
            "limit): give the task a version= (then the version alone identifies its code)"
        ) from None
    finally:
        active.discard(id(func))
    digest = hashlib.sha256(b"python %d.%d\n" % sys.version_info[:2] + body).hexdigest()
    return digest, h.watch.build()


def code_hash(func: types.FunctionType) -> str:
    """Hex SHA-256 of what ``func`` computes (see the module docstring for what counts)."""
    return code_identity(func)[0]
