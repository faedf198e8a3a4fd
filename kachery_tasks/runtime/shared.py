"""Pure results shared through a node's remotes: signed result records.

A node that computes a pure result publishes it to each of its remotes:
first the result's bytes (as content, see :meth:`Remote.offer_content`), then
a **result record**, a signed envelope (:mod:`kachery_tasks.envelopes`) of
kind ``result-record`` whose body is::

    {"task_id", "kind": "pure", "function", "result_uri", "codec", "node", "finished"}

signed by the node that computed it (``signer`` equals ``node``). A result of
at most :data:`RECORD_DATA_MAX` encoded bytes that the node keeps inline
travels **in** its record instead, as one more field, ``"data"`` (base64 of
the bytes ``result_uri`` names, checked against it by every reader): no
content object is written, and a reader holding the record holds the
result. For the tiny results of many small tasks that is one durable bucket
write fewer per call where it is computed and one read fewer where it is
used. The record is written last and create-only, so its presence means its
result is there;
the first node to publish an id wins (pure results of one id are
interchangeable). The one exception: a record the remote would not serve
(garbled, or signed by a node the remote does not trust, such as a
non-member with write access to a channel's bucket) blocks nobody. A node
publishing that id writes its record over that very object (a generation
precondition, :meth:`Remote.put_result_record`), so a planted record cannot
keep a channel's members from sharing a result.

On a pure miss, a node asks its remotes for records before computing
(:func:`fetch_many` asks for a whole batch at once: a ``map`` over a thousand
items costs a few parallel round trips, not a thousand in sequence). A record
is used only when its envelope verifies, its signer is the node it names, it
is for the task id asked and for a pure task, and the remote trusts the
signer (a channel accepts only members allowed to process tasks); then the
result is fetched (verified against its id) and recorded locally as computed
by that node, so ``tasks show`` names it and a pickle from it still needs the
user's permission to load. Anything else is logged and ignored: the caller
computes instead.

Calls submitted to Dask share the same way: the client looks up a batch of
misses before submitting, and each worker publishes what it computed
through the client's remotes, signed by the worker's node.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from ..envelopes import open_envelope, seal
from ..errors import EnvelopeError, KacheryError
from ..storage.zarr_index import is_index
from ..uris import parse_uri

if TYPE_CHECKING:
    from ..remotes.base import Remote
    from .cache import NodeCache

log = logging.getLogger(__name__)

KIND = "result-record"
_FIELDS = ("task_id", "kind", "function", "result_uri", "codec", "node", "finished")
#: The largest encoded result a record carries itself (field ``data``): small enough that
#: a record stays a small object and a channel message holds many of them.
RECORD_DATA_MAX = 1024


def publish(c: NodeCache, task_id: str, remotes: Iterable[Remote] | None = None,
            trusts: Callable[[str], bool] | None = None) -> bool:
    """Publish the pure result of ``task_id`` to the node's remotes; True if a record was
    written. Only the node that computed a result signs it.

    A record already there stays when it verifies and its signer is trusted
    (``trusts``, by default each remote's :meth:`Remote.trusts_result_signer`);
    any other record is replaced by this node's."""
    targets = c.node.remotes if remotes is None else list(remotes)
    if not targets:  # every pure miss ends here: without remotes, no record is read
        return False
    row = c.records.result(task_id)
    if row is None or row.kind != "pure" or row.result_uri is None:
        return False
    if row.node != c.node_id:
        return False
    wrote = False
    uri = row.result_uri
    tiny = row.data if row.data is not None and len(row.data) <= RECORD_DATA_MAX \
        and not is_index(row.data) else None  # carried by the record
    for remote in targets:
        where = f"the published result of {task_id} in {remote.url}"

        def replaceable(data: bytes, remote: Remote = remote, where: str = where) -> bool:
            return trusted_record(data, task_id, trusts or remote.trusts_result_signer,
                                  where) is None

        if tiny is None:  # a record there spares the content's upload (the create-only
            # write of the record below judges a record there as this look would)
            existing = remote.get_result_records([task_id]).get(task_id)
            if existing is not None and not replaceable(existing):
                continue  # the first one wins
        body = {"task_id": task_id, "kind": row.kind, "function": row.function,
                "result_uri": uri, "codec": row.codec, "node": row.node,
                "finished": row.finished}
        if tiny is not None:
            body["data"] = base64.b64encode(tiny).decode("ascii")  # no content object
        elif row.data is not None:  # kept inline: sent from memory, no blob written here
            if remote.offer_data(c.store, uri, row.data) is None:
                continue  # a remote that takes no content cannot hold the result
        elif remote.offer_content(c.store, uri, progress=False) is None:
            continue
        wrote |= remote.put_result_record(task_id, seal(KIND, body, c.node.key).to_bytes(),
                                          replaceable=replaceable)
    return wrote


def fetch(c: NodeCache, task_id: str) -> bool:
    """Import a result published for ``task_id``; True when one was found and verified."""
    return task_id in fetch_many(c, [task_id])


def fetch_many(c: NodeCache, task_ids: Iterable[str], threads: int | None = None) -> set[str]:
    """Import the published results of ``task_ids`` that verify; the ids imported."""
    ids = list(dict.fromkeys(task_ids))
    if not ids or not c.node.remotes:
        return set()
    found = c.node.get_result_records(ids)
    todo = [(tid, candidates) for tid, candidates in found.items()]
    if not todo:
        return set()
    threads = min(len(todo), threads or c.node.config.transfer_threads)

    def one(item: tuple[str, list[tuple[Remote, bytes]]]) -> bool:
        tid, candidates = item
        return any(import_record(c, tid, remote, data) for remote, data in candidates)

    if threads <= 1:
        ok = [one(item) for item in todo]
    else:
        with ThreadPoolExecutor(threads, thread_name_prefix="kachery-results") as pool:
            ok = list(pool.map(one, todo))
    return {tid for (tid, _), good in zip(todo, ok) if good}


def read_record(data: bytes, task_id: str, source: str) -> dict[str, Any]:
    """The body of a result record for ``task_id``, checked; EnvelopeError otherwise."""
    env = open_envelope(data, KIND, source=source)
    body = env.body
    if not isinstance(body, dict):
        raise EnvelopeError(f"{source}: not a result record (its body is a "
                            f"{type(body).__name__})")
    if set(body) - {"data"} != set(_FIELDS):
        raise EnvelopeError(f"{source}: not a result record (fields {sorted(body)})")
    if body["task_id"] != task_id:
        raise EnvelopeError(f"{source}: the record is for {body['task_id']}, not {task_id}")
    if body["kind"] != "pure":
        raise EnvelopeError(f"{source}: only pure results are shared, not {body['kind']!r}")
    if body["node"] != env.signer:
        raise EnvelopeError(
            f"{source}: signed by {env.signer[:16]}..., not by the node it names "
            f"({str(body['node'])[:16]}...)"
        )
    finished = body["finished"]
    if not isinstance(body["result_uri"], str) or not isinstance(body["function"], str) \
            or not isinstance(body["codec"], str) or isinstance(finished, bool) \
            or not isinstance(finished, int | float | None):
        raise EnvelopeError(f"{source}: malformed result record")
    if "data" in body:
        record_data(body, source)
    return body


def record_data(body: dict[str, Any], source: str) -> bytes | None:
    """The result bytes a checked record body carries (its ``data``), or None when it
    names content kept elsewhere. EnvelopeError when they are not the bytes its
    ``result_uri`` names, or not base64 of at most :data:`RECORD_DATA_MAX` bytes."""
    text = body.get("data")
    if text is None:
        return None
    if not isinstance(text, str) or len(text) > 4 * ((RECORD_DATA_MAX + 2) // 3):
        raise EnvelopeError(f"{source}: the data a result record carries is base64 of at "
                            f"most {RECORD_DATA_MAX} bytes")
    try:
        data = base64.b64decode(text, validate=True)
        sha256 = parse_uri(body["result_uri"]).hex
    except (binascii.Error, ValueError, KacheryError) as e:
        raise EnvelopeError(f"{source}: malformed result record ({e})") from None
    if len(data) > RECORD_DATA_MAX:
        raise EnvelopeError(f"{source}: the data a result record carries is base64 of at "
                            f"most {RECORD_DATA_MAX} bytes, not {len(data)}")
    if hashlib.sha256(data).hexdigest() != sha256:
        raise EnvelopeError(f"{source}: the data it carries is not {body['result_uri']}")
    return data


def trusted_record(data: bytes, task_id: str, trusts: Callable[[str], bool],
                   where: str) -> dict[str, Any] | None:
    """The body of the result record ``data`` for ``task_id`` when it verifies and
    ``trusts`` its signer; None otherwise (logged: such a record is never served)."""
    try:
        body = read_record(data, task_id, where)
    except EnvelopeError as e:
        log.warning("ignoring %s", e)
        return None
    if not trusts(body["node"]):
        log.warning("ignoring %s: its signer %s... may not publish results there",
                    where, body["node"][:16])
        return None
    return body


def import_record(c: NodeCache, task_id: str, remote: Remote, data: bytes,
                  where: str | None = None) -> bool:
    """Check a result record for ``task_id`` that came through ``remote`` (read from its
    bucket, or sent by a provider in a ``task_finished``) and, when it verifies and
    ``remote`` trusts its signer, fetch its result and record it here as computed by
    that node; True then. Anything else is logged and ignored (False)."""
    where = where or f"the published result of {task_id} in {remote.url}"
    body = trusted_record(data, task_id, remote.trusts_result_signer, where)
    if body is None:
        return False
    uri = body["result_uri"]
    data = base64.b64decode(body["data"]) if "data" in body else None  # read_record checked it
    try:
        if data is not None and not _stays_inline(c, data, body["codec"]):
            parsed = parse_uri(uri)  # (checked by read_record)
            c.store.store_bytes(data, label=parsed.label, expect_sha256=parsed.hex)
            data = None  # the result goes to the store, as this node keeps such results
        elif data is None:
            data = _inline_data(c, remote, uri, body["codec"])
        if data is None:  # large, kept as a file by its codec, or not in that remote's bucket
            c.node.local_path(uri)  # fetched (verified) through the remotes
    except KacheryError as e:
        log.warning("ignoring %s: %s", where, e)
        return False
    c.records.import_result(
        task_id, "pure", body["function"], uri, body["codec"], body["node"],
        body.get("finished"), data=data,
    )
    return True


def _inline_data(c: NodeCache, remote: Remote, uri: str, codec_name: str) -> bytes | None:
    """A small result's bytes, for the records to keep inline as this node keeps the small
    results it computes (its codec allows it), when ``remote`` hands them over in memory;
    else None (the result goes to the store)."""
    try:
        if not _keeps_inline(codec_name) or c.store.has(uri):
            return None
        return remote.fetch_data(uri, c.inline_max)
    except KacheryError as e:  # the store's way tries every remote
        log.info("%s: fetching it from the store's remotes instead (%s)", uri, e)
        return None


def publish_all(c: NodeCache, remotes: Iterable[Remote] | None = None) -> int:
    """Publish every pure result this node computed that a remote lacks; the count."""
    targets = list(c.node.remotes if remotes is None else remotes)
    return sum(publish(c, tid, targets) for tid in c.records.pure_results_of(c.node_id))


def _stays_inline(c: NodeCache, data: bytes, codec_name: str | None) -> bool:
    """Whether result bytes a record carried are kept inline in this node's records, as
    it keeps the small results it computes (else they go to its store)."""
    return (len(data) <= c.inline_max and _keeps_inline(codec_name)
            and not is_index(data))


def _keeps_inline(codec_name: str | None) -> bool:
    """Whether a result of codec ``codec_name`` may stay inline in the records (a codec
    unknown here, or one whose results load as files, may not)."""
    from . import results

    try:
        return results.codec_named(codec_name or "").inline
    except KacheryError:
        return False
