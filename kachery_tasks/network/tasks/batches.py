"""The provider's answers to a ``request_tasks``, gathered into few messages.

A batch of calls (:data:`~.protocol.TASKS`) is served call by call, like
``request_task``: each call gets a :class:`Slot` that the provider answers
through exactly as it answers an :class:`~..channels.requests.Incoming`
(``progress``, ``answer``). The :class:`Outbox` thread sends what the slots
said every :data:`FLUSH_EVERY` seconds, one ``tasks_progress`` per batch (split
to stay under the message size limit); a status superseded before it was sent
is dropped, so a call that finishes quickly costs one entry. Once every call
of a batch has its final answer, the last entries go as the batch's final
answer ``tasks_answered``, retried like any final answer.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from ...errors import KacheryError, PubSubAuthError
from ..channels.requests import PROGRESS_TIMEOUT, Incoming
from . import protocol

log = logging.getLogger("kachery_tasks.network.tasks")

FLUSH_EVERY = 0.05
"""Seconds the outbox gathers answers before it sends them."""

ANSWER_AFTER_CLOSE = 600.0
"""Seconds a closed outbox waits for the answers of calls still running (then it stops:
a requester that heard nothing for that long has looked in the bucket, or asked again)."""


class Slot:
    """One call of a batch, answered like a single request (see the module docstring)."""

    def __init__(self, batch: Batch, index: int, text: str) -> None:
        self.batch = batch
        self.index = index
        self.body: dict[str, Any] = {"call": text}
        self.sender: str = batch.incoming.sender
        self.id = f"{batch.incoming.id}.{index}"
        self.answered = False

    def progress(self, body: dict[str, Any]) -> None:
        self.batch.put(self, protocol.answer_entry("task_status", body), final=False)

    def answer(self, type: str, body: dict[str, Any], detail: str = "") -> None:
        self.batch.put(self, protocol.answer_entry(type, body), final=True)


class Batch:
    """The answers of one ``request_tasks`` not sent yet."""

    def __init__(self, outbox: Outbox, incoming: Incoming, calls: int) -> None:
        self.outbox = outbox
        self.incoming = incoming
        self.calls = calls
        self.finals = 0
        self.entries: dict[int, dict[str, Any]] = {}  # slot -> its latest entry not sent

    def slot(self, index: int, text: str) -> Slot:
        return Slot(self, index, text)

    def put(self, slot: Slot, entry: dict[str, Any], *, final: bool) -> None:
        with self.outbox.lock:
            if slot.answered:
                return  # a late status, or a second answer: the first one stands
            if final:
                slot.answered = True
                self.finals += 1
            self.entries[slot.index] = entry
            self.outbox.dirty[id(self)] = self
            self.outbox.lock.notify()


class Outbox:
    """Sends the gathered answers of every batch a provider serves (one thread)."""

    def __init__(self, every: float = FLUSH_EVERY) -> None:
        self.every = every
        self.lock = threading.Condition()
        self.dirty: dict[int, Batch] = {}
        self.unanswered: set[Batch] = set()  # batches some call of which has no answer yet
        self._closed = False
        self._give_up = 0.0
        self._thread = threading.Thread(target=self._run, name="kachery-batch-answers",
                                        daemon=True)
        self._thread.start()

    def open(self, incoming: Incoming, calls: int) -> Batch:
        batch = Batch(self, incoming, calls)
        with self.lock:
            self.unanswered.add(batch)
        return batch

    def close(self, wait_for_answers: float = ANSWER_AFTER_CLOSE) -> None:
        """Stop once every batch is answered and sent: calls still running when their
        provider closes are answered when they end (within ``wait_for_answers`` s)."""
        with self.lock:
            if not self._closed:
                self._closed = True
                self._give_up = time.monotonic() + wait_for_answers
            self.lock.notify()

    def _finished(self) -> bool:
        return self._closed and not self.dirty and (
            not self.unanswered or time.monotonic() >= self._give_up)

    def _run(self) -> None:
        while True:
            with self.lock:
                while not self.dirty and not self._finished():
                    self.lock.wait(None if not self._closed else
                                   max(self._give_up - time.monotonic(), 0.0))
                if self._finished():
                    return
                closing = self._closed and not self.unanswered
            if not closing:
                threading.Event().wait(self.every)  # let more answers gather
            with self.lock:
                todo = [(b, list(b.entries.values()), b.finals == b.calls)
                        for b in self.dirty.values()]
                for batch, _, done in todo:
                    batch.entries.clear()
                    if done:
                        self.unanswered.discard(batch)
                self.dirty.clear()
            for batch, entries, done in todo:
                try:
                    _send(batch, entries, done)
                except Exception:  # one batch's trouble must not stop the others' answers
                    log.exception("sending the answers of request %s... failed",
                                  batch.incoming.id[:8])


def _send(batch: Batch, entries: list[dict[str, Any]], done: bool) -> None:
    """Publish ``entries`` of ``batch`` in messages under the size limit; the last one as
    the batch's final answer when ``done``."""
    incoming = batch.incoming
    chunks = chunked(entries)
    last = chunks.pop() if done else None
    session = incoming.responder.session
    for chunk in chunks:
        try:
            session.publish("tasks_progress", {"answers": chunk, "request": incoming.id,
                                               "to": incoming.sender}, timeout=PROGRESS_TIMEOUT)
        except PubSubAuthError:
            raise
        except KacheryError as e:  # the requester asks again for what it did not hear
            log.info("could not send answers for request %s...: %s", incoming.id[:8], e)
    if last is not None:
        incoming.answer("tasks_answered", {"answers": last}, f"{batch.calls} calls answered")


def chunked(entries: list[dict[str, Any]],
            limit: int | None = None) -> list[list[dict[str, Any]]]:
    """``entries`` in consecutive groups whose JSON stays within ``limit`` characters
    (always at least one group, and at least one entry in each)."""
    return protocol.within_limit(entries, _json_size, limit) or [[]]


def _json_size(entry: dict[str, Any]) -> int:
    return len(json.dumps(entry, separators=(",", ":"))) + 1
