"""A task module whose import fails (as one that needs an unreachable database would)."""

from kachery_tasks import pure


@pure
def never(x):
    return x


raise RuntimeError("the lab database is not reachable\n  (second line of the message)")
