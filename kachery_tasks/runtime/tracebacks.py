"""The traceback text of a task's exception, as the node that asked for the call sees it.

A call that raised on a provider (in its process, or on a Dask worker) is
answered with the traceback text of the task's exception. The frames of the
code it ran under -- this package, Dask, the thread pools -- say nothing to
the task's author, so the text starts at the first frame of the task's own
code.
"""

from __future__ import annotations

import concurrent.futures
import os
import sys
import traceback


def _internal_dirs() -> tuple[str, ...]:
    """Directories of the code a task runs under (this package, the executors'
    libraries), whose frames say nothing to the task's author."""
    dirs = [os.path.dirname(os.path.dirname(__file__)),
            os.path.dirname(concurrent.futures.__file__)]
    for name in ("distributed", "dask", "tornado"):
        module = sys.modules.get(name)
        if module is not None and getattr(module, "__file__", None):
            dirs.append(os.path.dirname(module.__file__))
    return tuple(d + os.sep for d in dirs)


def remote_traceback(e: BaseException) -> str:
    """The traceback text of a task's exception as its requester sees it: from the first
    frame of the task's own code (the provider's and the executor's frames before it are
    left out); the whole of it when no frame is the task's."""
    internal = _internal_dirs()
    tb = first = e.__traceback__
    while first is not None and first.tb_frame.f_code.co_filename.startswith(internal):
        first = first.tb_next
    return "".join(traceback.TracebackException(type(e), e, first or tb).format())


__all__ = ["remote_traceback"]
