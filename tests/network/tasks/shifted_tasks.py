"""``shifted``, provided next to remote_tasks by one provider of the process tests; its
edited twin (same ``name=``, another body, so another code hash) is in edited_tasks."""

import kachery_tasks as kachery
from tests.network.tasks.remote_tasks import _ran

NAME = "tests.network.tasks.shifted"


@kachery.pure(name=NAME)
def shifted(x):
    _ran("shifted")
    return x + 1000
