"""One call of a task: its id, the pieces the id is made of, and how it travels.

``task.prepare(*args, **kwargs)`` encodes a call and returns a :class:`Call`:
the task, its kind, function name, version and code hash, the task id and
its preimage (``parts``, with ``marks`` saying where each argument's
encoding starts), and the arguments as given (:meth:`Call.arguments` binds
them, defaults applied). Executors run it with ``task.run(call, mode)``;
the records get :meth:`Call.start`.

A call travels to another node as :meth:`Call.to_bytes`: canonical JSON of
``{"function", "version", "code_hash", "kind", "task_id", "args"}`` where
``args`` maps every parameter to the wire form of its bound value (see
:mod:`.wire`: large values go to the content store and travel by URI).
:meth:`Call.from_bytes` rebuilds it on the receiver: it finds the task by
name, refuses another version or code hash, rebuilds the arguments,
prepares the call again and refuses it unless the recomputed task id is the
one that was sent. So what runs is exactly the call that was asked for, and
its result is recorded under the id the sender expects.

The result of another task travels by its task id (``{"$result": id}``); the
receiver stands a :class:`ResultRef` in for it, which the task id encodes as
it encodes a TaskFuture (tag ``r``) and which resolves to the value when the
task runs.
"""

from __future__ import annotations

import hashlib
import inspect
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..canonical import canonical_json, parse_json
from ..errors import CallRejectedError, InvalidValueError
from ..uris import is_content_uri
from . import encoders, ids, wire
from .file_args import File
from .records import RunStart

_sha256 = hashlib.sha256
_TASK_ID = re.compile(r"sha256:[0-9a-f]{64}")
_FIELDS = frozenset({"function", "version", "code_hash", "kind", "task_id", "args"})

LookupTask = Callable[[str], Any]
"""``function name -> Task`` (None, or a LookupError, when there is no such task)."""


@dataclass(frozen=True, slots=True, eq=False, repr=False, init=False)
class Call:
    """One call of a task, encoded (built by ``Task.prepare``; see the module docstring).

    ``code_hash`` is the one the id was computed with (None for a task with a
    version). ``parts`` joined are the id's preimage; argument ``i`` in
    encoding order (parameters sorted by their encoded names) starts at
    ``parts[marks[i]]``.
    """

    task: Any
    task_id: str
    code_hash: str | None
    parts: list[bytes]
    marks: list[int]
    args: tuple
    kwargs: dict

    def __init__(self, task: Any, task_id: str, code_hash: str | None, parts: list[bytes],
                 marks: list[int], args: tuple, kwargs: dict) -> None:
        # A frozen dataclass's own __init__ goes through object.__setattr__ once per field
        # (0.8 us here); writing the slots directly costs half, and every submitted call
        # builds a Call.
        _set_task(self, task)
        _set_task_id(self, task_id)
        _set_code_hash(self, code_hash)
        _set_parts(self, parts)
        _set_marks(self, marks)
        _set_args(self, args)
        _set_kwargs(self, kwargs)

    @property
    def kind(self) -> str:
        return self.task.kind

    @property
    def function(self) -> str:
        return self.task.name

    @property
    def version(self) -> str | None:
        return self.task.version

    @property
    def policy(self) -> Any:
        """The task's :class:`~kachery_tasks.runtime.policies.TaskPolicy`."""
        return self.task.policy

    def arguments(self) -> dict[str, Any]:
        """Every parameter's value, defaults applied, in the signature's order."""
        bound = self.task.signature.bind(*self.args, **self.kwargs)  # cannot fail: encoded
        bound.apply_defaults()
        return dict(bound.arguments)

    def components(self) -> dict[str, str]:
        """Per-argument hashes (hex SHA-256 of each argument's encoding), for ``why``."""
        return self._components(sorted(self.arguments(), key=ids.name_key))

    def _components(self, names: list[str]) -> dict[str, str]:
        parts, marks = self.parts, self.marks
        if not marks:  # a task without parameters
            return {}
        ends = [m - 1 for m in marks[1:]] + [len(parts)]
        return {
            name: _sha256(b"".join(parts[m:end])).hexdigest()
            for name, m, end in zip(names, marks, ends, strict=True)
        }

    def start(self, reason: str, node: str) -> RunStart:
        """What the records need about this call as it starts to run on ``node``."""
        arguments = self.arguments()
        return RunStart(
            task_id=self.task_id,
            kind=self.kind,
            function=self.function,
            version=self.version,
            code_hash=self.code_hash,
            components={"args": self._components(sorted(arguments, key=ids.name_key))},
            args={k: summarize(v) for k, v in arguments.items()},
            inputs=inputs(arguments.values()),
            reason=reason,
            node=node,
        )

    # ---------------------------------------------------------------- wire
    def to_bytes(self, store_bytes: wire.StoreBytes | None = None,
                 encoded: list[wire.Encoded] | None = None) -> bytes:
        """The call as canonical JSON another node can check and run.

        Bytes values and arrays larger than :data:`~.wire.INLINE_MAX` go to
        ``store_bytes(data, label) -> sha256 URI`` (the sender's content store);
        without it they travel inline. Each argument's :class:`~.wire.Encoded` is
        appended to ``encoded`` when given: what the transport must make available
        (stored values, files, zarr arrays, content URIs, other tasks' results).
        Raises :class:`~.wire.WireError` for an argument that cannot travel.
        """
        args = {}
        for name, v in self.arguments().items():
            enc = wire.encode(v, store_bytes, what=f"argument {name!r} of {self.function}")
            args[name] = enc.value
            if encoded is not None:
                encoded.append(enc)
        doc = {"function": self.function, "version": self.version,
               "code_hash": self.code_hash, "kind": self.kind, "task_id": self.task_id,
               "args": args}
        return canonical_json(doc, f"call of {self.function}")

    @classmethod
    def from_bytes(cls, data: bytes, lookup_task: LookupTask,
                   load_path: wire.LoadPath | None = None,
                   results: Callable[[str], Any] | None = None) -> Call:
        """Rebuild a call sent by :meth:`to_bytes`, checked against the task here.

        ``lookup_task(name)`` gives the task; ``load_path(uri)`` fetches content
        (large values, files); ``results(task_id)`` gives a stand-in for another
        task's result (a :class:`ResultRef`). Raises :class:`CallRejectedError`
        for an unknown function, another kind, version or code hash, or a task id
        that does not match the arguments; :class:`~.wire.WireError` (an
        InvalidValueError) for a malformed document.
        """
        doc = parse_json(data, "received call")
        if type(doc) is not dict or set(doc) != _FIELDS or type(doc["args"]) is not dict:
            raise wire.WireError(
                f"received call is malformed: it needs exactly the fields {sorted(_FIELDS)}, "
                "with args an object"
            )
        function, sent_id = doc["function"], doc["task_id"]
        if type(function) is not str or type(sent_id) is not str or not _TASK_ID.fullmatch(
                sent_id):
            raise wire.WireError("received call is malformed: function or task_id")
        task = _find_task(lookup_task, function)
        _check_identity(task, doc)
        where = f" of {function}"
        names = list(task.signature.parameters)
        if sorted(doc["args"]) != sorted(names):
            raise CallRejectedError(
                f"received call of {function} has arguments {sorted(doc['args'])}, but the "
                f"task here takes {names}; the sender runs another definition of it"
            )
        refs = None if results is None else _checked_results(results)
        values = {name: wire.decode(doc["args"][name], load_path, refs,
                                    what=f"argument {name!r}{where}") for name in names}
        bound = inspect.BoundArguments(task.signature, values)  # type: ignore[arg-type]
        call = task.prepare(*bound.args, **bound.kwargs)
        if call.task_id != sent_id:
            raise CallRejectedError(
                f"received call of {function} says task id {sent_id}, but its arguments give "
                f"{call.task_id} here; it was altered or encoded differently, so it is refused"
            )
        return call

    def __repr__(self) -> str:
        return f"<Call {self.function} {self.task_id[:19]}...>"


_set_task = Call.task.__set__  # type: ignore[attr-defined]
_set_task_id = Call.task_id.__set__  # type: ignore[attr-defined]
_set_code_hash = Call.code_hash.__set__  # type: ignore[attr-defined]
_set_parts = Call.parts.__set__  # type: ignore[attr-defined]
_set_marks = Call.marks.__set__  # type: ignore[attr-defined]
_set_args = Call.args.__set__  # type: ignore[attr-defined]
_set_kwargs = Call.kwargs.__set__  # type: ignore[attr-defined]


def _find_task(lookup_task: LookupTask, function: str) -> Any:
    try:
        task = lookup_task(function)
    except LookupError:
        task = None
    if task is None or not getattr(task, "_kachery_task", False):
        raise CallRejectedError(
            f"received a call of {function}, which is not a task on this node; import or "
            "register the module that defines it"
        )
    if task.name != function:
        raise CallRejectedError(
            f"received a call of {function}, but the task found for it is {task.name}"
        )
    return task


def _check_identity(task: Any, doc: dict) -> None:
    """Refuse a call of another kind, version or code than the task here."""
    function = doc["function"]
    if doc["kind"] != task.kind:
        raise CallRejectedError(
            f"received a {doc['kind']!r} call of {function}, which is a {task.kind} task here"
        )
    if doc["version"] != task.version:
        raise CallRejectedError(
            f"received a call of {function} version {doc['version']!r}, but this node has "
            f"version {task.version!r}; update the code on one side"
        )
    here = task.code_hash
    if doc["code_hash"] != here:
        raise CallRejectedError(
            f"received a call of {function} with code hash {doc['code_hash']}, but its code "
            f"here hashes to {here}; the two nodes run different code"
        )


def _checked_results(results: Callable[[str], Any]) -> Callable[[str], Any]:
    def ref(task_id: Any) -> Any:
        if type(task_id) is not str or not _TASK_ID.fullmatch(task_id):
            raise wire.WireError(f"received call refers to a result of {str(task_id)[:80]!r}, "
                                 "which is not a task id")
        return results(task_id)

    return ref


# ------------------------------------------------------- results by reference
def encode_result(v: Any, out: list) -> None:
    """The task-id encoding of another task's result: tag ``r`` and its id's hex."""
    out.append(b"r" + v.task_id[7:].encode("ascii"))


class ResultRef:
    """The result of the task ``task_id``, in a call received from another node.

    Its task-id encoding is a TaskFuture's (tag ``r``), so the call keeps its
    id; when the task runs, it is replaced by ``load(task_id)`` (for example
    the result recorded on this node).
    """

    _kachery_future = True  # resolved like a TaskFuture before the function runs
    __slots__ = ("_load", "task_id")

    def __init__(self, task_id: str, load: Callable[[str], Any]) -> None:
        if type(task_id) is not str or not _TASK_ID.fullmatch(task_id):
            raise InvalidValueError(f"{task_id!r} is not a task id ('sha256:<64 hex>')")
        self.task_id = task_id
        self._load = load

    def result(self, timeout: float | None = None) -> Any:
        """The result, loaded now."""
        return self._load(self.task_id)

    def __repr__(self) -> str:
        return f"ResultRef({self.task_id!r})"


encoders.register_special(ResultRef, encode_result)


# ------------------------------------------------------------ futures in args
def is_future(v: Any) -> bool:
    """A TaskFuture or a ResultRef: a value resolved only when the task runs."""
    return getattr(type(v), "_kachery_future", False)


def resolve_futures(args: tuple) -> tuple:
    """``args`` with futures (also inside lists, tuples and dicts) replaced by results."""
    if not any(is_future(a) or type(a) in (list, tuple, dict) for a in args):
        return args
    return tuple(_resolve_value(a) for a in args)


def resolve_futures_kw(kwargs: dict) -> dict:
    """``kwargs`` with futures replaced by their results."""
    if not kwargs:
        return kwargs
    return {k: _resolve_value(v) for k, v in kwargs.items()}


def _resolve_value(v: Any) -> Any:
    if is_future(v):
        return v.result()
    t = type(v)
    if t is list:
        return [_resolve_value(x) for x in v] if any(is_future(x) for x in v) else v
    if t is tuple:
        return tuple(_resolve_value(x) for x in v) if any(is_future(x) for x in v) else v
    if t is dict and any(is_future(x) for x in v.values()):
        return {k: _resolve_value(x) for k, x in v.items()}
    return v


# ----------------------------------------------------------- summaries
def summarize(v: Any, limit: int = 80) -> str:
    """A short human-readable description of an argument (for records and the CLI)."""
    t = type(v)
    if hasattr(v, "dtype") and hasattr(v, "shape") and t.__module__.startswith("numpy"):
        if getattr(v, "ndim", 0) == 0:
            return f"{v.dtype}({v!r})"[:limit]
        return f"ndarray({v.dtype}, shape={tuple(v.shape)})"
    if isinstance(v, bytes | bytearray | memoryview):
        return f"{t.__name__}[{len(v)}]"
    if isinstance(v, File):
        return f"File({str(v.path)!r}, {v.uri})"[: limit * 2]
    if is_future(v):
        return f"result of {v.task_id}"
    if t is str and v.startswith("sha256://") and len(v) < 300:
        return repr(v)  # a content URI: kept whole, it names an input
    try:
        text = repr(v)
    except Exception:  # repr refuses ints of over 4300 digits, also inside containers
        if t is int:
            return f"int of {v.bit_length()} bits"
        return f"{t.__name__} that cannot be shown"  # a summary must never fail
    if len(text) > limit:
        if isinstance(v, list | tuple | dict | set | frozenset):
            return f"{t.__name__} of {len(v)} items"
        return text[: limit - 3] + "..."
    return text


def _leaves(values: Iterable[Any], depth: int = 0) -> Iterable[Any]:
    """The values of an argument list, with containers opened three levels deep."""
    for v in values:
        t = type(v)
        if depth < 3 and t in (list, tuple, set, frozenset):
            yield from _leaves(v, depth + 1)
        elif depth < 3 and t is dict:
            yield from _leaves(v.values(), depth + 1)
        else:
            yield v


def inputs(values: Iterable[Any]) -> list[str]:
    """Content URIs and task ids an argument list refers to."""
    found: list[str] = []
    for v in _leaves(values):
        if type(v) is str:
            if v.startswith("sha256://") and is_content_uri(v):
                found.append(v)
        elif isinstance(v, File):
            found.append(v.uri)
        elif is_future(v):
            found.append(v.task_id)
    return list(dict.fromkeys(found))
