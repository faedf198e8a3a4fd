"""Tasks that provided_tasks calls but does not hold as attributes (the registry follows calls)."""

from kachery_tasks import pure


@pure
def scale(x, k):
    return x * k


@pure
def offset(x):
    return x + 1


@pure
def unused(x):  # called by nothing provided: a provider does not run it
    return -x
