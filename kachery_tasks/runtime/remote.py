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
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from ..canonical import canonical_json
from ..errors import ContentNotFoundError, KacheryError
from ..keys import KeyPair, node_keypair
from ..storage.buckets import Bucket, default_bucket
from ..storage.sync import download, upload

if TYPE_CHECKING:
    from .cache import NodeCache

log = logging.getLogger(__name__)


def result_key(task_id: str) -> str:
    return f"results/{task_id.split(':', 1)[-1]}.json"


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


def publish_all(c: NodeCache, bucket: Bucket) -> int:
    """Publish every pure result this node computed that the bucket lacks; the count."""
    return sum(publish(c, tid, bucket) for tid in c.records.pure_results_of(c.node_id))
