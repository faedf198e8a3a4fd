"""A small module of tasks, provided in the registry tests (``--provide`` this module)."""

from kachery_tasks import action, pure, query
from tests.network.tasks import provided_helpers as helpers

NOTES: list[str] = []


@pure
def double(x):
    return 2 * x


@pure(version="2")
def scaled(x):
    return helpers.scale(x, 3)  # a task of another module, read as an attribute


def add_one(x):  # a plain helper (not a task) that calls a task
    return helpers.offset(x)


@pure
def via_helper(x):
    return add_one(x) * 10


@query
def how_many_notes():
    return len(NOTES)


@action
def note(text):
    NOTES.append(text)


def _make_caller():
    @pure
    def local_step(x):  # defined in a function: no import finds it again
        return x + 1

    @pure
    def uses_local(x):
        return local_step(x)

    return uses_local


uses_local = _make_caller()
