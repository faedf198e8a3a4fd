"""TEST DOUBLE of a task provider, for the requester tests only.

The real provider (``kachery_tasks/network/tasks/provider.py``, served by
``node start --provide``) is built and tested separately. This one is the
smallest thing that speaks :mod:`kachery_tasks.network.tasks.protocol`: a
:class:`Responder` on ``request_task`` that rebuilds the call with
``Call.from_bytes`` from a registry, runs it on its own node, publishes a pure
result to the channel's bucket and answers. No claims, no Dask. Switches make
it misbehave the ways the tests need (decline, stay silent, forge a record).
"""

from __future__ import annotations

import json
import threading
import traceback

from kachery_tasks.envelopes import seal
from kachery_tasks.keys import KeyPair
from kachery_tasks.network.channels import ChannelSession, ChannelStore
from kachery_tasks.network.channels.requests import Incoming, Responder
from kachery_tasks.network.tasks import Provided, protocol
from kachery_tasks.runtime import Call, cache, results, shared

from ..channels.conftest import FAST_SESSION, Lab


class FakeProvider:
    """Serves ``request_task`` for node ``name`` of ``lab`` with ``tasks`` (a test double)."""

    def __init__(self, lab: Lab, name: str, tasks, *, decline: tuple[str, str] | None = None,
                 silent: bool = False, stall: bool = False, forge: bool = False,
                 lose: bool = False, announce=None, ran_on: str | None = None) -> None:
        self.node = lab.nodes[name]
        self.provided = Provided(tasks)
        self.decline, self.silent, self.stall, self.forge = decline, silent, stall, forge
        self.lose = lose  # a batch's answers are lost on the way (its final answer is empty)
        self.ran_on = ran_on  # said to have run an action served from its outcome
        self.requests: list[dict] = []
        self.release = threading.Event()
        session = ChannelSession(ChannelStore(self.node.dir).find("lab"), self.node.key,
                                 **FAST_SESSION)
        session.present(daemon=True, **{protocol.PRESENCE_KEY: announce if announce is not None
                                        else self.provided.describe()})
        lab.sessions.append(session)
        self.session = session.start()
        self.responder = Responder(session, protocol.TASK, self._serve, workers=8)
        self.batch_responder = Responder(session, protocol.TASKS, self._serve_batch, workers=8)
        self.batches: list[dict] = []

    def close(self) -> None:
        self.release.set()
        self.responder.close()
        self.batch_responder.close()
        self.session.close()

    def _serve_batch(self, incoming: Incoming) -> None:
        """Each call of a ``request_tasks`` as a ``request_task``; every answer at the end."""
        body = incoming.body
        if body.get("provider") != self.node.id:
            return
        self.batches.append(body)
        answers: list[dict] = []
        for text in body["calls"]:
            self._serve(_Entries(incoming, answers), {**body, "call": text})
        if not self.silent and not self.stall:
            incoming.answer("tasks_answered", {"answers": [] if self.lose else answers})

    def _serve(self, incoming: Incoming, body: dict | None = None) -> None:
        body = incoming.body if body is None else body
        if body.get("provider") != self.node.id:
            return
        self.requests.append(body)
        if self.silent:
            return
        if self.decline is not None:
            code, reason = self.decline
            tid = json.loads(body["call"])["task_id"]
            incoming.answer("task_declined", protocol.declined_body(tid, code, reason))
            return
        with self.node:
            call = Call.from_bytes(body["call"].encode(), self.provided.lookup,
                                   load_path=self.node.local_path)
            tid = call.task_id
            incoming.progress(protocol.status_body(tid, "running", "on the test provider"))
            if self.stall:
                self.release.wait(30)
                return
            if self.forge:  # a result signed by a stranger, never published
                incoming.answer("task_finished", self._forged(call))
                return
            try:
                outcome = call.task.outcome(call, body["mode"])
            except Exception as e:
                incoming.answer("task_failed", protocol.failed_body(
                    tid, type=type(e).__name__, message=str(e),
                    traceback=traceback.format_exc(), provider=self.node.id,
                    label="test-provider"))
                return
            incoming.answer("task_finished", self._finished(call, outcome))

    def _finished(self, call: Call, outcome) -> dict:
        c = cache.current()
        tid = call.task_id
        row = c.records.result(tid)
        if call.kind == "action":  # ran here now, or served from its recorded outcome
            return protocol.finished_body(tid, "action", None, None, None, ran=outcome.ran,
                                          finished=outcome.finished,
                                          ran_on=None if outcome.ran else self.ran_on)
        if row is None:
            return protocol.finished_body(tid, call.kind, None, None, None)
        uri = c.materialize(tid)
        remote = self.node.remotes[-1]
        if call.kind != "pure":
            remote.offer_content(c.store, uri, progress=False)
            return protocol.finished_body(tid, call.kind, uri, row.codec, None)
        shared.publish(c, tid, [remote])
        record = remote.get_result_records([tid])[tid]
        return protocol.finished_body(tid, "pure", uri, row.codec, record.decode())

    def _forged(self, call: Call) -> dict:
        """A right result in the bucket, with a record signed by a stranger (not a member)."""
        c = cache.current()
        codec, data = results.encode(call.task.func(*call.args, **call.kwargs))
        uri = c.store.store_bytes(bytes(data), label="forged")
        self.node.remotes[-1].offer_content(c.store, uri, progress=False)
        stranger = KeyPair.generate()
        record = seal(shared.KIND, {
            "task_id": call.task_id, "kind": "pure", "function": call.function,
            "result_uri": uri, "codec": codec.name, "node": stranger.public_hex,
            "finished": 1767000000.0}, stranger).to_bytes()
        return protocol.finished_body(call.task_id, "pure", uri, codec.name, record.decode())


class _Entries:
    """Answers to one call of a batch, gathered as entries (statuses sent at once)."""

    def __init__(self, incoming: Incoming, answers: list[dict]) -> None:
        self.incoming, self.answers = incoming, answers

    def progress(self, body: dict) -> None:
        self.incoming.progress({"answers": [protocol.answer_entry("task_status", body)]})

    def answer(self, type: str, body: dict) -> None:
        self.answers.append(protocol.answer_entry(type, body))
