"""The edited twin of shifted_tasks.shifted: the same name, another body (another code
hash). A provider of this module must refuse calls made with the original's code."""

import kachery_tasks as kachery
from tests.network.tasks.remote_tasks import _ran
from tests.network.tasks.shifted_tasks import NAME


@kachery.pure(name=NAME)
def shifted(x):
    _ran("shifted_edited")
    return x + 2000
