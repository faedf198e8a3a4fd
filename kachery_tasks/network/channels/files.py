"""Files asked of a channel's members: ``request_file`` and its answers.

The asker (:func:`ask_for_file`, used by the channel remote) publishes
``request_file {"request", "uri"}`` and expects an answer from each member
whose daemon is present (presence data ``"daemon": true``) and that may
upload (this node's own processes are not asked). Each of them
(:func:`serve_file_request`) answers, addressed to the asker (``"to"``):

* ``file_absent {"sha256"}`` when its store lacks the content;
* small content (up to :data:`INLINE_MAX` bytes) rides in the answer:
  ``file_uploaded {"sha256", "size", "data": <base64>}``; the asker checks the
  bytes against the id before storing them;
* larger content is uploaded to the channel's bucket as
  :meth:`~kachery_tasks.remotes.bucket.BucketRemote.offer_content` does
  (verified chunks, manifest last), with ``file_upload_progress {"sha256",
  "bytes", "total"}`` at most every :data:`PROGRESS_EVERY` seconds (each one
  extends the asker's wait), then ``file_uploaded {"sha256", "size"}``; the
  asker downloads it from the bucket, verified chunk by chunk.

While it waits, the asker also looks in the bucket every second: content
uploaded while the broker was down (its answer lost) is found there anyway.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import threading
import time
from typing import Any

from ...errors import (
    ChannelPermissionError,
    ContentNotFoundError,
    CorruptContentError,
    InvalidURIError,
)
from ...remotes.bucket import BucketRemote
from ...sizes import format_size
from ...storage.local import LocalStore
from ...storage.sync import upload
from ...uris import parse_uri
from .config import grant_command
from .messages import ChannelMessage
from .requests import Asker, Exchange, Incoming, Pending

log = logging.getLogger("kachery_tasks.network.channels")

FILE = Exchange("request_file", final=frozenset({"file_uploaded"}),
                progress=frozenset({"file_upload_progress"}),
                decline=frozenset({"file_absent"}), answerer_needs="upload")

INLINE_MAX = 32 * 1024
"""Content up to this size rides in the answer (base64: 43,692 characters, well inside a
60 KiB message) instead of going through the bucket."""

MAX_INLINE = 40 * 1024
"""The most a node may send inline: base64 makes it 54,614 characters, which leaves room
for the envelope within a 60 KiB message."""

PROGRESS_EVERY = 0.5
"""Seconds between two ``file_upload_progress`` messages of one upload."""

DEFAULT_TIMEOUT = 20.0
"""Seconds an asker waits for a sign of life (the request, then each progress message)."""


def content_sha256(uri: Any) -> str:
    """The SHA-256 hex a ``sha256://`` URI names; InvalidURIError for anything else."""
    parsed = parse_uri(uri)
    if parsed.algorithm != "sha256":
        raise InvalidURIError(f"{uri}: only sha256:// content can be asked of a channel")
    return parsed.hex


def ask_for_file(asker: Asker, bucket: BucketRemote, store: LocalStore, uri: str, *,
                 timeout: float = DEFAULT_TIMEOUT, progress: bool | None = None) -> str:
    """Bring the content ``uri`` names into ``store`` through the channel's members.

    Call after the bucket was found to lack it. Returns the local path.
    Raises ChannelPermissionError when this node may not ask (no
    ``download``), ContentNotFoundError when no member online that may
    upload has it, ChannelTimeoutError when they did not answer in time.
    """
    session = asker.session
    config, me = session.config, session.node_id
    sha256 = content_sha256(uri)
    if "download" not in config.permissions_of(me):
        raise ChannelPermissionError(
            f"this node may not ask channel {config.name} for files (it lacks the download "
            f"permission in config version {config.version}): ask the owner to run "
            f"'{grant_command(config, me, 'download')}'")
    present = [(n, d) for n, d in session.members() if n != me]
    online = {n for n, _ in present}
    asked = {n for n, d in present if isinstance(d, dict) and d.get("daemon")
             and FILE.answerer_needs in config.permissions_of(n)}

    def in_bucket() -> bool | None:
        return True if bucket.has_content(sha256) else None

    pending = asker.ask(FILE, {"uri": f"sha256://{sha256}"}, asked=asked, online=len(online),
                        timeout=timeout, what=f"the request for sha256://{sha256}",
                        poll=in_bucket, on_progress=_log_progress)
    if pending.status == "declined":
        raise ContentNotFoundError(_not_found(uri, config.name, bucket.url, online, asked))
    answer = pending.final
    if answer is not None and isinstance(answer.body, dict) and "data" in answer.body:
        return _store_inline(store, uri, sha256, answer)
    return bucket.fetch_content(store, uri, progress=progress)


def _not_found(uri: str, channel: str, bucket_url: str, online: set[str],
               asked: set[str]) -> str:
    where = f"{uri} is neither in the bucket of channel {channel} ({bucket_url})"
    if not online:
        return f"{where} nor can any member be asked: no other member is online"
    if not asked:
        return (f"{where} nor can any member be asked: none of the {_members(len(online))} "
                "online runs a daemon allowed to upload ('kachery-tasks node start')")
    return (f"{where} nor held by any of the {_members(len(asked))} online that may upload "
            "(each answered file_absent)")


def _members(n: int) -> str:
    return f"{n} member{'s' if n != 1 else ''}"


def _store_inline(store: LocalStore, uri: str, sha256: str, answer: ChannelMessage) -> str:
    refused = CorruptContentError(
        f"the bytes member {answer.sender[:16]}... sent for {uri} do not match its id; "
        "nothing was stored (ask again: other members may answer)")
    try:
        data = base64.b64decode(answer.body["data"], validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise refused from None
    try:  # hashes the bytes once and stores them only if they match
        store.store_bytes(data, label=parse_uri(uri).label, expect_sha256=sha256)
    except CorruptContentError:
        raise refused from None
    return store.load_file(f"sha256://{sha256}")


def _log_progress(pending: Pending, msg: ChannelMessage) -> None:
    body = msg.body
    if isinstance(body.get("bytes"), int) and isinstance(body.get("total"), int):
        log.info("channel %s: %s of %s of sha256://%s... uploaded by %s...", pending.channel,
                 format_size(body["bytes"]), format_size(body["total"]),
                 str(body.get("sha256", ""))[:12], msg.sender[:16])


def serve_file_request(incoming: Incoming, store: LocalStore, bucket: BucketRemote, *,
                       inline_max: int = INLINE_MAX) -> None:
    """Answer a ``request_file`` (see the module docstring); the caller checked that this
    node may upload and the asker may download."""
    try:
        sha256 = content_sha256(incoming.body.get("uri"))
    except InvalidURIError as e:
        incoming.status, incoming.detail = "failed", str(e)
        log.warning("ignored a request_file from %s...: %s", incoming.sender[:16], e)
        return
    uri = f"sha256://{sha256}"
    if not store.has(uri):
        incoming.answer("file_absent", {"sha256": sha256}, "not here")
        return
    size = store.info(uri).size
    if size <= inline_max:
        data = store.load_bytes(uri)
        if hashlib.sha256(data).hexdigest() != sha256:
            raise store.discard_corrupt(sha256, store.load_file(uri),
                                        "do not match their id; nothing was sent")
        incoming.answer("file_uploaded", {"sha256": sha256, "size": size,
                                          "data": base64.b64encode(data).decode()},
                        f"sent {format_size(size)} inline")
        return
    done = [0]
    last = [0.0]
    lock = threading.Lock()

    def sent(n: int) -> None:
        with lock:
            done[0] += n
            now = time.monotonic()
            if now - last[0] < PROGRESS_EVERY and done[0] < size:
                return
            last[0] = now
            got = done[0]
        incoming.progress({"sha256": sha256, "bytes": min(got, size), "total": size})

    incoming.progress({"sha256": sha256, "bytes": 0, "total": size})
    report = upload(store, bucket.bucket, uri, progress=False, on_progress=sent)
    incoming.answer("file_uploaded", {"sha256": sha256, "size": size},
                    f"{report.summary()} to {bucket.url}")
