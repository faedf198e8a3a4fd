"""The provider registry: the tasks a node runs for other nodes, by name.

A provider (``kachery-tasks node start --provide mylab.pipelines``) runs only
functions it registered: :meth:`Provided.from_modules` imports the named
modules and registers every task they hold as module attributes, plus the
tasks those tasks call (read from their code, as code hashes read it) when
such a task can be found again by importing its module and qualified name.
A received call names its function; :meth:`Provided.lookup` is what
:meth:`Call.from_bytes <kachery_tasks.runtime.call.Call.from_bytes>` takes as
``lookup_task``, so a call of anything else is refused. No code travels with
a call: what runs is the registered function, and the call is refused unless
its version and code hash are this one's.

:meth:`Provided.describe` is what a provider announces (in presence): name,
kind, version and code hash of each function.
"""

from __future__ import annotations

import importlib
import re
import types
from collections.abc import Iterable, Iterator
from typing import Any

from ...errors import TaskDefinitionError, TaskModuleError, UnknownTaskError, one_line
from ...runtime import codehash
from ...runtime.tasks import Task

_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")


class Provided:
    """Tasks by name (see the module docstring); build it with :meth:`from_modules`."""

    def __init__(self, tasks: Iterable[Task] = (), modules: Iterable[str] = ()) -> None:
        self._tasks: dict[str, Task] = {}
        self.modules = tuple(modules)
        for task in tasks:
            self.add(task)

    @classmethod
    def from_modules(cls, modules: Iterable[str]) -> Provided:
        """Import ``modules`` and register their tasks and the tasks those call.

        Raises TaskModuleError for a module that cannot be imported or holds
        no task, TaskDefinitionError for two tasks of one name (or a task
        whose code cannot be hashed).
        """
        names = [modules] if isinstance(modules, str) else list(modules)
        provided = cls(modules=names)
        for name in names:
            module = import_module(name)
            found = [v for v in vars(module).values() if isinstance(v, Task)]
            if not found:
                raise TaskModuleError(
                    f"module {name} holds no task (no @pure, @query or @action function at its "
                    "top level); name the module that defines them"
                )
            for task in found:
                provided.add(task)
            for task in found:
                for called in called_tasks(task):
                    if importable(called):
                        provided.add(called)
        return provided

    def add(self, task: Task) -> None:
        """Register ``task`` under its name; TaskDefinitionError if the name is taken."""
        if not isinstance(task, Task):
            raise TaskDefinitionError(f"{task!r} is not a task; decorate it with @pure, @query "
                                      "or @action")
        other = self._tasks.get(task.name)
        if other is task:
            return
        if other is not None:
            raise TaskDefinitionError(
                f"two tasks are named {task.name} ({_where(other)} and {_where(task)}); a "
                "provider runs tasks by name: give one another name= or provide one module"
            )
        task.code_hash  # noqa: B018 - a task whose code cannot be hashed fails here, at start
        self._tasks[task.name] = task

    def lookup(self, name: str) -> Task:
        """The task registered as ``name``; UnknownTaskError (a LookupError) if there is none."""
        task = self._tasks.get(name) if isinstance(name, str) else None
        if task is None:
            where = f" (from {', '.join(self.modules)})" if self.modules else ""
            raise UnknownTaskError(
                f"this node does not provide {str(name)[:200]!r}; it provides {len(self)} "
                f"functions{where}. Add the module that defines it to --provide"
            )
        return task

    def describe(self) -> list[dict[str, Any]]:
        """``[{name, kind, version, code_hash}]`` of every task, by name: what is announced."""
        return [{"name": t.name, "kind": t.kind, "version": t.version, "code_hash": t.code_hash}
                for t in (self._tasks[n] for n in sorted(self._tasks))]

    def names(self) -> list[str]:
        return sorted(self._tasks)

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def __iter__(self) -> Iterator[Task]:
        return iter([self._tasks[n] for n in sorted(self._tasks)])

    def __len__(self) -> int:
        return len(self._tasks)

    def __repr__(self) -> str:
        return f"<Provided {len(self)} tasks from {', '.join(self.modules) or 'no module'}>"


def import_module(name: str) -> types.ModuleType:
    """Import module ``name``; a one-line TaskModuleError naming it when that fails."""
    if not isinstance(name, str) or not _MODULE_NAME.match(name):
        raise TaskModuleError(
            f"{str(name)[:200]!r} is not a module name; give a dotted Python module name such as "
            "mylab.pipelines"
        )
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name is not None and (name == e.name or name.startswith(e.name + ".")):
            missing = "" if e.name == name else f" (its package {e.name} is not found either)"
            raise TaskModuleError(
                f"no module named {name} can be imported here{missing}; install the package "
                "that provides it, run from the directory that holds it, or fix the name"
            ) from None
        raise TaskModuleError(f"cannot import task module {name}: {one_line(e)}") from None
    except (Exception, SystemExit) as e:  # its code failed: say where, in one line
        raise TaskModuleError(f"cannot import task module {name}: {one_line(e)}") from None


def called_tasks(task: Task) -> list[Task]:
    """The tasks ``task`` calls, directly or through helper functions of the user's code.

    Read from the code as code hashes read it: the globals the code loads,
    attributes read from modules (``helpers.scale``), closure cells and
    default values; helper functions (not library code) are followed.
    """
    found: dict[int, Task] = {}
    seen: set[int] = set()
    stack: list[types.FunctionType] = [task.func]
    while stack:
        func = stack.pop()
        if id(func) in seen:
            continue
        seen.add(id(func))
        for value in _values_read(func):
            if isinstance(value, Task):
                if value is not task and id(value) not in found:
                    found[id(value)] = value
                    stack.append(value.func)
            elif type(value) is types.FunctionType and not codehash._is_library_function(value):
                # (library code, as code hashes tell it, calls none of the user's tasks)
                stack.append(value)
    return list(found.values())


def importable(task: Task) -> bool:
    """True when importing the task's module and walking its qualname finds this very task."""
    qualname = task.func.__qualname__
    if task.func.__module__ == "__main__" or "<locals>" in qualname:
        return False
    try:
        obj: Any = importlib.import_module(task.func.__module__)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except Exception:
        return False
    return obj is task


def _values_read(func: types.FunctionType) -> Iterator[Any]:
    names, chains = codehash.reads(func.__code__)
    space = func.__globals__
    for name in names:
        if name in space:
            yield space[name]
    for chain in chains:
        obj = space.get(chain[0])
        for attr in chain[1:]:
            if not isinstance(obj, types.ModuleType):
                break
            obj = getattr(obj, attr, None)
            yield obj
    for cell in func.__closure__ or ():
        try:
            yield cell.cell_contents
        except ValueError:  # an empty cell
            continue
    yield from func.__defaults__ or ()
    yield from (func.__kwdefaults__ or {}).values()


def _where(task: Task) -> str:
    return f"{task.func.__module__}.{task.func.__qualname__}"
