"""A task that takes the name of one in provided_tasks: providing both must fail."""

from kachery_tasks import pure


@pure(name="tests.network.tasks.provided_tasks.double")
def double_too(x):
    return x + x
