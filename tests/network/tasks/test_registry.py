"""The provider registry: which tasks a provider runs, by name, and nothing else."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kachery_tasks.errors import (
    CallRejectedError,
    KacheryError,
    TaskDefinitionError,
    TaskModuleError,
    UnknownTaskError,
)
from kachery_tasks.network.tasks import Provided
from kachery_tasks.runtime.call import Call
from tests.network.tasks import provided_helpers, provided_tasks

MODULE = "tests.network.tasks.provided_tasks"
P = "tests.network.tasks.provided_tasks."
H = "tests.network.tasks.provided_helpers."


@pytest.fixture(scope="module")
def provided() -> Provided:
    return Provided.from_modules([MODULE])


def test_registers_the_modules_tasks_and_the_tasks_they_call(provided):
    assert provided.names() == sorted([
        P + "double", P + "scaled", P + "via_helper", P + "how_many_notes", P + "note",
        P + "_make_caller.<locals>.uses_local",  # a module attribute, whatever its qualname
        H + "scale",  # called by scaled as helpers.scale
        H + "offset",  # called by via_helper through the plain function add_one
    ])
    assert H + "unused" not in provided  # in an imported module, but called by nothing provided
    assert P + "add_one" not in provided  # a plain function is not a task
    # local_step is called by uses_local but no import finds it again: not registered
    assert not any(name.endswith("local_step") for name in provided.names())


def test_lookup_gives_the_task_itself(provided):
    assert provided.lookup(P + "double") is provided_tasks.double
    assert provided.lookup(H + "scale") is provided_helpers.scale


def test_describe_is_what_a_provider_announces(provided):
    described = {d["name"]: d for d in provided.describe()}
    assert [d["name"] for d in provided.describe()] == provided.names()
    assert described[P + "scaled"] == {"name": P + "scaled", "kind": "pure", "version": "2",
                                       "code_hash": None}
    assert described[P + "note"]["kind"] == "action"
    assert described[P + "how_many_notes"]["kind"] == "query"
    assert described[P + "double"]["version"] is None
    assert described[P + "double"]["code_hash"] == provided_tasks.double.code_hash
    assert len(described[P + "double"]["code_hash"]) == 64


def test_an_unknown_function_is_a_clear_lookup_error(provided):
    with pytest.raises(UnknownTaskError, match=r"does not provide 'mylab\.other'.*--provide") as e:
        provided.lookup("mylab.other")
    assert isinstance(e.value, LookupError) and isinstance(e.value, KacheryError)
    assert "\n" not in str(e.value) and MODULE in str(e.value)


def test_a_registered_call_is_rebuilt_from_the_wire(provided):
    sent = provided_tasks.double.prepare(21)
    received = Call.from_bytes(sent.to_bytes(), lookup_task=provided.lookup)
    assert received.task is provided_tasks.double
    assert received.task_id == sent.task_id
    assert provided_tasks.double.run(received) == 42


def test_only_registered_functions_run(provided):
    # a task this very process has imported, but the provider did not register
    call = provided_helpers.unused.prepare(1).to_bytes()
    with pytest.raises(CallRejectedError, match="not a task on this node"):
        Call.from_bytes(call, lookup_task=provided.lookup)
    # a call naming any other importable function: nothing is imported from the wire
    forged = call.replace(H.encode() + b"unused", b"os.system")
    with pytest.raises(CallRejectedError, match=r"os\.system, which is not a task"):
        Call.from_bytes(forged, lookup_task=provided.lookup)


def test_two_tasks_with_one_name_are_refused():
    with pytest.raises(TaskDefinitionError, match=r"two tasks are named .*provided_tasks\.double"):
        Provided.from_modules([MODULE, "tests.network.tasks.clashing_tasks"])


def test_a_task_reexported_by_two_modules_is_registered_once():
    provided = Provided.from_modules([MODULE, "tests.network.tasks.provided_helpers"])
    assert provided.lookup(H + "scale") is provided_helpers.scale
    assert H + "unused" in provided  # now provided: its module was named


@pytest.mark.parametrize("module, message", [
    ("tests.network.tasks.broken_tasks",
     r"cannot import task module tests\.network\.tasks\.broken_tasks: RuntimeError: the lab "
     r"database is not reachable \(second line of the message\)$"),
    ("tests.network.tasks.needs_missing",
     r"cannot import task module tests\.network\.tasks\.needs_missing: ModuleNotFoundError: "
     r"No module named 'kachery_tasks_no_such_dependency'$"),
    ("mylab_no_such.pipelines", r"no module named mylab_no_such\.pipelines can be imported "
     r"here \(its package mylab_no_such is not found either\)"),
    ("tests.network.tasks.no_such",
     r"no module named tests\.network\.tasks\.no_such can be imported here; install"),
    ("tests.network.tasks.no_tasks", r"module tests\.network\.tasks\.no_tasks holds no task"),
    ("mylab/pipelines.py", r"'mylab/pipelines\.py' is not a module name"),
])
def test_a_module_that_cannot_provide_is_one_line_naming_it(module, message):
    with pytest.raises(TaskModuleError, match=message) as e:
        Provided.from_modules([MODULE, module])
    assert "\n" not in str(e.value)


def test_a_single_module_name_is_not_taken_letter_by_letter():
    assert P + "double" in Provided.from_modules(MODULE)


def test_a_task_whose_code_cannot_be_hashed_fails_at_registration():
    from kachery_tasks import pure

    handle = open(__file__)  # noqa: SIM115 - an open file: no code hash can cover it
    try:
        @pure
        def reads_a_file(x):
            return handle.name + x

        with pytest.raises(TaskDefinitionError, match="handle"):
            Provided([reads_a_file])
    finally:
        handle.close()


def test_only_tasks_can_be_added():
    with pytest.raises(TaskDefinitionError, match="not a task"):
        Provided([print])


@given(st.text(max_size=40).filter(lambda s: not s.isidentifier() and "." not in s))
def test_text_that_is_no_module_name_is_refused(text):
    with pytest.raises(TaskModuleError, match="is not a module name"):
        Provided.from_modules([text])
