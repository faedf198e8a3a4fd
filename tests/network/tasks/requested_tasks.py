"""Tasks the requester tests call across a channel (the test double of a provider registers
them)."""

from kachery_tasks import action, pure, query, untracked

RAN: list[str] = untracked([])  # names of the calls that ran, in the process (either node)
COUNTER = untracked([0])


@pure
def double(x):
    RAN.append(f"double({x})")
    return 2 * x


@pure
def fails(x):
    raise ValueError(f"cannot handle {x}")


@pure
def inner(x):
    RAN.append(f"inner({x})")
    return x + 1


@pure
def outer(x):
    return inner(x) * 10


@action
def note(text):
    RAN.append(f"note({text})")


@query
def count():
    COUNTER[0] += 1
    return COUNTER[0]
