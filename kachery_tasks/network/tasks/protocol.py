"""Tasks asked of a channel's providers: ``request_task`` and its answers.

A requester publishes one request per call, addressed to one provider it
chose from presence (a member allowed to ``process_tasks`` whose daemon
announces the function, see :data:`PRESENCE_KEY`)::

    request_task {"request", "provider", "call", "mode"}

``call`` is :meth:`~kachery_tasks.runtime.call.Call.to_bytes` decoded as
UTF-8 (canonical JSON); values too large for a message were put in the
requester's store and uploaded to the channel's bucket before the request
was sent, so the provider fetches them through its channel remote.
``mode`` is ``call`` (serve what is recorded), ``force`` (compute a pure
call again) or ``again`` (run an action again). Members other than
``provider`` ignore the request.

The provider answers, addressed to the requester (``"to"``), always naming
``task_id``:

* ``task_status {"status", "detail"}`` (progress; each one extends the
  requester's wait): ``queued``, ``running``, ``waiting`` (another provider
  holds the claim: ``detail`` names it), ``progress``;
* ``task_finished {"kind", "result_uri", "codec", "record"}`` (final): the
  outcome is in the channel's bucket as content ``result_uri`` (``codec``
  says how it decodes; ``result_uri`` is None for an action or query that
  returned None). ``record`` is the signed result-record envelope (text) of
  a pure result, which the requester checks as it checks one read from the
  bucket (signer a member allowed to ``process_tasks``), else None; a pure
  result of at most 1,024 bytes is carried by that record (its ``data``,
  :mod:`kachery_tasks.runtime.shared`) instead of the bucket. The
  ``task_finished`` of an action also carries ``ran`` (false when the
  provider answered from an outcome recorded earlier in the channel) and
  ``finished`` (when the action ended, seconds since the epoch), so every
  requester reports the one run's time, and, when it did not run for this
  request, ``ran_on`` (the node that ran it, recorded by the requester as its
  producer if that node is a member allowed to ``process_tasks``);
* ``task_failed {"error": {"type", "message", "traceback", "provider",
  "label"}}`` (final): the task raised; the requester raises an error with
  that type name, message, the remote traceback text and the provider's
  label;
* ``task_declined {"reason", "code"}`` (decline): the provider will not run
  it. ``code`` is one of :data:`DECLINE_CODES`; ``reason`` is the sentence
  shown to the user (for ``code_hash``, it names both hashes and both nodes).

**Batches.** ``map`` sends the calls it must ask of one provider together, as
``request_tasks {"request", "provider", "calls", "mode"}`` (``calls`` a list of
at most :data:`BATCH_MAX` call texts, the message within the pub/sub's size
limit), so that a thousand calls cost a few dozen messages rather than several
thousand. The provider treats each call as it treats a ``request_task`` and
answers with the same bodies, gathered: ``tasks_progress {"answers"}`` as
answers come (each entry is the body of a ``task_status``, ``task_finished``,
``task_failed`` or ``task_declined`` with its ``"type"``; a status superseded
before it was sent is dropped), and ``tasks_answered {"answers"}`` (final) once
every call of the batch has its final answer or decline.
``tasks_declined {"code", "reason"}`` declines the whole batch (``not_allowed``,
``busy``, ``rejected``). A call left without an answer (a lost progress
message, a timeout) is asked again on its own by the requester.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..channels.requests import Exchange

TASK = Exchange(
    "request_task",
    final=frozenset({"task_finished", "task_failed"}),
    progress=frozenset({"task_status"}),
    decline=frozenset({"task_declined"}),
    answerer_needs="process_tasks",
)

REQUESTER_NEEDS = "request_tasks"
"""The permission a member needs for a provider to take its request."""

TASKS = Exchange(
    "request_tasks",
    final=frozenset({"tasks_answered"}),
    progress=frozenset({"tasks_progress"}),
    decline=frozenset({"tasks_declined"}),
    answerer_needs="process_tasks",
)
"""A batch of calls to one provider (see the module docstring)."""

BATCH_MAX = 100
"""Calls in one ``request_tasks``."""

BATCH_BYTES = 40 * 1024
"""Characters of call text (and of answer entries) in one batch message: the signed
message stays under the pub/sub's limit (60 KiB of JSON)."""

ANSWER_TYPES = frozenset({"task_status", "task_finished", "task_failed", "task_declined"})
"""The ``type`` of an entry in ``tasks_progress``/``tasks_answered``."""

PRESENCE_KEY = "provides"
"""Presence data of a provider's daemon: ``{"provides": [{"name", "kind", "version",
"code_hash"}, ...]}`` (:meth:`~kachery_tasks.network.tasks.registry.Provided.describe`)."""

MODES = frozenset({"call", "force", "again"})
STATUSES = frozenset({"queued", "running", "waiting", "progress"})
DECLINE_CODES = frozenset({
    "not_allowed",    # the requester lacks request_tasks
    "unknown",        # the function is not registered on this provider
    "code_hash",      # registered, with other code (or another version)
    "rejected",       # the call does not check (task id mismatch, malformed arguments)
    "busy",           # the provider is shutting down or over its limit: ask another
})


def request_body(provider: str, call_bytes: bytes, mode: str = "call") -> dict[str, Any]:
    """The body of a ``request_task`` (the plumbing adds ``request``)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {sorted(MODES)}, not {mode!r}")
    return {"provider": provider, "call": call_bytes.decode("utf-8"), "mode": mode}


def within_limit(items: list[Any], size: Callable[[Any], int],
                 limit: int | None = None) -> list[list[Any]]:
    """``items`` in consecutive groups whose ``size`` adds up to at most ``limit`` (by
    default :data:`BATCH_BYTES`; an item over the limit alone in its group): what fits in
    one batch message. No items, no groups."""
    limit = BATCH_BYTES if limit is None else limit
    groups: list[list[Any]] = []
    total = limit
    for item in items:
        n = size(item)
        if groups and total + n <= limit:
            groups[-1].append(item)
            total += n
        else:
            groups.append([item])
            total = n
    return groups


def batch_body(provider: str, call_texts: list[str], mode: str = "call") -> dict[str, Any]:
    """The body of a ``request_tasks`` (the plumbing adds ``request``)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {sorted(MODES)}, not {mode!r}")
    if not 0 < len(call_texts) <= BATCH_MAX:
        raise ValueError(f"a batch holds 1 to {BATCH_MAX} calls, not {len(call_texts)}")
    return {"provider": provider, "calls": list(call_texts), "mode": mode}


def answer_entry(type: str, body: dict[str, Any]) -> dict[str, Any]:
    """One answer in a ``tasks_progress``/``tasks_answered``: a single-call body and its type."""
    if type not in ANSWER_TYPES:
        raise ValueError(f"an answer entry is one of {sorted(ANSWER_TYPES)}, not {type!r}")
    return {**body, "type": type}


def finished_body(task_id: str, kind: str, result_uri: str | None, codec: str | None,
                  record: str | None, *, ran: bool | None = None,
                  finished: float | None = None, ran_on: str | None = None) -> dict[str, Any]:
    """The body of a ``task_finished``; ``ran``, ``finished`` and ``ran_on`` describe an
    action's run."""
    body: dict[str, Any] = {"task_id": task_id, "kind": kind, "result_uri": result_uri,
                            "codec": codec, "record": record}
    for key, value in (("ran", ran), ("finished", finished), ("ran_on", ran_on)):
        if value is not None:
            body[key] = value
    return body


def action_run(body: dict[str, Any], now: float) -> tuple[bool, float]:
    """Whether a ``task_finished`` says its action ran for this request, and when it
    ended; a body without them (or with malformed ones) ran now."""
    ran, finished = body.get("ran", True), body.get("finished", now)
    if type(ran) is not bool:
        ran = True
    if type(finished) not in (int, float) or not 0 < finished <= now + 86400:
        finished = now
    return ran, float(finished)


def failed_body(task_id: str, *, type: str, message: str, traceback: str, provider: str,
                label: str) -> dict[str, Any]:
    return {"task_id": task_id, "error": {"type": type, "message": message,
                                          "traceback": traceback, "provider": provider,
                                          "label": label}}


def status_body(task_id: str, status: str, detail: str = "") -> dict[str, Any]:
    if status not in STATUSES:
        raise ValueError(f"status must be one of {sorted(STATUSES)}, not {status!r}")
    return {"task_id": task_id, "status": status, "detail": detail}


def declined_body(task_id: str | None, code: str, reason: str) -> dict[str, Any]:
    if code not in DECLINE_CODES:
        raise ValueError(f"code must be one of {sorted(DECLINE_CODES)}, not {code!r}")
    return {"task_id": task_id, "code": code, "reason": reason}
