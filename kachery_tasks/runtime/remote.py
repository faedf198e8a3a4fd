"""Pure-task results shared through the node's bucket.

A node that computes a pure result publishes it: first the result's bytes
(as content, see :mod:`kachery_tasks.storage.sync`), then the record
``results/<task id hex>.json``::

    {"record": {"task_id", "kind", "function", "result_uri", "codec", "node",
                "finished"},
     "signer": "<node id>", "signature": "<Ed25519 over canonical JSON of record>"}

The record is written last and create-only, so its presence means its result
is in the bucket; the first node to publish an id wins (pure results of one id
are interchangeable). On a pure miss, a node looks for the record before
computing: it checks the signature, that the signer is the node the record
names, and downloads the result (verified against its id). The result is then
recorded locally as computed by that node, so ``tasks show`` names it and a
pickle from it still needs the user's permission to load.

Calls submitted to Dask share the same way: the client looks up a batch of
misses with :func:`fetch_many` (parallel requests, one per id: the cost
follows the batch, not the number of results the bucket holds, which a
listing of ``results/`` would read) before submitting, and each worker
publishes what it computed to the client's bucket (:func:`use_bucket`
sets it for the call), signed by the worker's node: the node that
computed the result.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from ..canonical import canonical_json
from ..errors import ContentNotFoundError, KacheryError
from ..keys import KeyPair, node_keypair
from ..storage.buckets import Bucket, default_bucket, open_bucket
from ..storage.sync import download, upload

if TYPE_CHECKING:
    from .cache import NodeCache

log = logging.getLogger(__name__)


_call_bucket: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "kachery_call_bucket", default=None
)


def result_key(task_id: str) -> str:
    return f"results/{task_id.split(':', 1)[-1]}.json"


def current_bucket() -> Bucket | None:
    """The bucket pure results are shared through here: the caller's on a Dask worker
    (see :func:`use_bucket`), else this node's configured one (None without one)."""
    url = _call_bucket.get()
    return open_bucket(url) if url is not None else default_bucket()


@contextlib.contextmanager
def use_bucket(url: str | None) -> Iterator[None]:
    """Share pure results through the bucket at ``url`` inside the block (None: no change)."""
    if url is None:
        yield
        return
    token = _call_bucket.set(url)
    try:
        yield
    finally:
        _call_bucket.reset(token)


def publish(c: NodeCache, task_id: str, bucket: Bucket | None = None) -> bool:
    """Publish the pure result of ``task_id`` to the bucket; True if this call wrote it."""
    bucket = bucket or default_bucket()
    if bucket is None:
        return False
    row = c.records.result(task_id)
    if row is None or row.kind != "pure" or row.result_uri is None:
        return False
    key = node_keypair(c.node)
    if row.node != key.public_hex or bucket.exists(result_key(task_id)):
        return False  # only the computing node signs its results; the first one wins
    uri = c.materialize(task_id)
    upload(c.store, bucket, uri, progress=False)
    record = {
        "task_id": task_id, "kind": row.kind, "function": row.function, "result_uri": uri,
        "codec": row.codec, "node": row.node, "finished": row.finished,
    }
    doc = {"record": record, "signer": key.public_hex,
           "signature": key.sign(canonical_json(record))}
    return bucket.put(result_key(task_id), canonical_json(doc))


def fetch(c: NodeCache, task_id: str, bucket: Bucket | None = None) -> bool:
    """Import a result published for ``task_id``; True when one was found and verified.

    A record that is malformed, unsigned by the node it names, or whose result
    cannot be fetched is logged and ignored: the caller computes instead.
    """
    bucket = bucket or default_bucket()
    if bucket is None:
        return False
    try:
        doc = json.loads(bucket.get(result_key(task_id)))
    except ContentNotFoundError:
        return False
    except (KacheryError, ValueError) as e:
        log.warning("ignoring the published result of %s: %s", task_id, e)
        return False
    try:
        record, signer = doc["record"], doc["signer"]
        valid = (
            record["task_id"] == task_id and record["kind"] == "pure"
            and record["node"] == signer
            and KeyPair(signer).verify(canonical_json(record), doc["signature"])
        )
    except (KeyError, TypeError, KacheryError):
        valid = False
    if not valid:
        log.warning("ignoring the published result of %s: bad signature or record", task_id)
        return False
    try:
        download(c.store, bucket, record["result_uri"], progress=False)
    except KacheryError as e:
        log.warning("ignoring the published result of %s: %s", task_id, e)
        return False
    c.records.import_result(
        task_id, "pure", record["function"], record["result_uri"], record["codec"],
        record["node"], record.get("finished"),
    )
    return True


def fetch_many(c: NodeCache, task_ids: Iterable[str], bucket: Bucket,
               threads: int | None = None) -> set[str]:
    """Import the published results of ``task_ids`` (in parallel); the ids found."""
    ids = list(dict.fromkeys(task_ids))
    if not ids:
        return set()
    threads = min(len(ids), threads or c.node.config.transfer_threads)
    if threads == 1:
        return {tid for tid in ids if fetch(c, tid, bucket)}
    with ThreadPoolExecutor(threads, thread_name_prefix="kachery-results") as pool:
        found = pool.map(lambda tid: fetch(c, tid, bucket), ids)
        return {tid for tid, ok in zip(ids, found) if ok}


def publish_all(c: NodeCache, bucket: Bucket) -> int:
    """Publish every pure result this node computed that the bucket lacks; the count."""
    return sum(publish(c, tid, bucket) for tid in c.records.pure_results_of(c.node_id))
