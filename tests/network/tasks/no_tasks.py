"""A module that holds no task: naming it to provide tasks is a mistake."""

ANSWER = 42


def not_a_task(x):
    return x
