"""The tasks runtime: ``@pure``, ``@query`` and ``@action`` with deterministic ids.

Modules, one job each: :mod:`.ids` (task ids), :mod:`.codehash` (what a
function computes, including what it reads), :mod:`.encoders` (argument
encodings), :mod:`.file_args` (``kachery.File``), :mod:`.wire` (argument values
another node can rebuild), :mod:`.results` (result codecs),
:mod:`.records` (records and provenance), :mod:`.leases` (one computation
per id at a time), :mod:`.cache` (the per-node cache of a process),
:mod:`.call` (one encoded call: id, preimage, arguments; sent to peers),
:mod:`.policies` (what differs between pure, query and action),
:mod:`.context` (the current executor, found by tasks), :mod:`.tasks`
(decorators and the Task object) and :mod:`.executors` (in-process and
Dask). Importing this package imports neither numpy nor Dask; they load
when first needed.
"""

from .call import Call, ResultRef
from .codehash import untracked
from .encoders import register_encoder
from .executors import (
    DaskExecutor,
    Executor,
    LocalExecutor,
    TaskFuture,
    current_executor,
    dask,
    gather,
    use_executor,
)
from .ids import compute_task_id
from .policies import ActionPolicy, PurePolicy, QueryPolicy, TaskPolicy
from .results import ResultCodec, allow_pickles_from, register_codec
from .tasks import (
    ActionOutcome,
    File,
    QueryResult,
    StaleResultWarning,
    Task,
    TaskIdWarning,
    action,
    again,
    pure,
    query,
)

__all__ = [
    "ActionOutcome",
    "ActionPolicy",
    "Call",
    "DaskExecutor",
    "Executor",
    "File",
    "LocalExecutor",
    "PurePolicy",
    "QueryPolicy",
    "QueryResult",
    "ResultCodec",
    "ResultRef",
    "StaleResultWarning",
    "Task",
    "TaskFuture",
    "TaskIdWarning",
    "TaskPolicy",
    "action",
    "again",
    "allow_pickles_from",
    "compute_task_id",
    "current_executor",
    "dask",
    "gather",
    "pure",
    "query",
    "register_codec",
    "register_encoder",
    "untracked",
    "use_executor",
]
