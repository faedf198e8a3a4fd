"""Moving feeds between nodes: export to and import from JSON lines.

**Format** (the one bucket sync uses too): UTF-8 text, one message
per line, each line the message's signed bytes exactly as hashed (canonical
JSON, see ``docs/feeds.md``), ending in ``\\n``. An export holds the subfeeds
of one feed one after another, in name order, each from seq 0 in seq order.

**Import** trusts nothing. :func:`import_messages` takes any iterable of
message dicts, in order, and accepts a message only if its structure and
signature are valid, it is the next seq of its subfeed in the stream, its
``prev`` is the hash of the message before it (in the stream or already
stored), and a message already stored with that seq is byte-identical. At
the first message that fails, everything before it is kept, a
FeedVerificationError names the feed, subfeed and seq, and nothing after it
is accepted. Importing what is already here changes nothing, so an import
can be repeated or resumed; a feed without a key on this node becomes
readable (read-only).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

from ..errors import FeedVerificationError, InvalidValueError
from .feed import known_feed
from .lines import write_lines
from .messages import (
    MAX_BODY_DEPTH,
    Message,
    SignedMessage,
    message_from_mapping,
    verification_error,
)
from .store import ExtendResult, FeedStore
from .uris import parse_feed_uri

BATCH_MESSAGES = 1000
BATCH_BYTES = 16 << 20


@dataclass
class ImportReport:
    """What an import did: messages added, messages already present, feeds touched."""

    added: int = 0
    present: int = 0
    feeds: set[str] = field(default_factory=set)

    def __str__(self) -> str:
        return (
            f"imported {self.added} new messages ({self.present} already present) "
            f"into {len(self.feeds)} feed{'s' if len(self.feeds) != 1 else ''}"
        )


def import_messages(
    store: FeedStore, messages: Iterable[Mapping[str, Any] | Message]
) -> ImportReport:
    """Verify and store messages received from elsewhere (a file or a bucket).

    See the module docstring for what is checked. On the first bad message,
    the messages before it are committed and FeedVerificationError is raised
    (with the partial :class:`ImportReport` as its ``report`` attribute).
    """
    report = ImportReport()
    last: dict[tuple[str, str], tuple[int, str]] = {}
    pending: list[SignedMessage] = []
    pending_bytes = 0

    def flush() -> None:
        nonlocal pending_bytes
        if not pending:
            return
        batch = list(pending)
        pending.clear()
        pending_bytes = 0
        try:
            result = store.extend(batch)
        except FeedVerificationError as e:
            count(batch, e.partial)  # type: ignore[arg-type]
            raise
        count(batch, result)

    def count(batch: list[SignedMessage], result: ExtendResult) -> None:
        report.added += result.added
        report.present += result.present
        report.feeds.update(m.feed for m in batch[: result.added + result.present])

    try:
        for obj in messages:
            m = message_from_mapping(obj.to_dict() if isinstance(obj, Message) else obj)
            key = (m.feed, m.subfeed)
            before = last.get(key)
            if before is not None:
                seq, hash_hex = before
                if m.seq != seq + 1:
                    why = (
                        "duplicated"
                        if m.seq == seq
                        else f"out of order: expected seq {seq + 1} after seq {seq} (a message "
                        "is missing, repeated or reordered)"
                    )
                    raise verification_error(
                        m.feed, m.subfeed, m.seq, why, "nothing from this message on was imported"
                    )
                if m.prev != hash_hex:
                    raise verification_error(
                        m.feed,
                        m.subfeed,
                        m.seq,
                        "'prev' is not the hash of the message before it (edited or forged)",
                        "nothing from this message on was imported",
                    )
            last[key] = (m.seq, m.hash)
            pending.append(m)
            pending_bytes += len(m.data)
            if len(pending) >= BATCH_MESSAGES or pending_bytes >= BATCH_BYTES:
                flush()
        flush()
    except BaseException as e:
        failure = e
        try:
            flush()  # keep the good messages before the failure (a no-op if none wait)
        except FeedVerificationError as earlier:  # the store found an earlier bad one
            failure = earlier
        if isinstance(failure, FeedVerificationError):
            failure.report = report
        if failure is e:
            raise
        raise failure from None
    return report


def parse_lines(lines: Iterable[bytes | str]) -> Iterator[dict[str, Any]]:
    """Decode JSON lines into message dicts (blank lines are skipped).

    A line that is not a JSON object raises FeedVerificationError naming its
    line number, after the lines before it have been yielded.
    """
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise verification_error(
                None,
                None,
                None,
                f"line {n} is not JSON ({e})",
                "nothing from this line on was imported",
            ) from None
        except RecursionError:
            raise verification_error(
                None,
                None,
                None,
                f"line {n} nests arrays and objects too deeply to decode (a message body "
                f"may have at most {MAX_BODY_DEPTH} levels)",
                "nothing from this line on was imported",
            ) from None
        if not isinstance(obj, dict):
            raise verification_error(
                None,
                None,
                None,
                f"line {n} is not a JSON object",
                "nothing from this line on was imported",
            )
        yield obj


def import_lines(store: FeedStore, lines: Iterable[bytes | str]) -> ImportReport:
    """Import messages from JSON lines (the export format) into ``store``."""
    return import_messages(store, parse_lines(lines))


def import_feed(store: FeedStore, path: str | os.PathLike[str]) -> ImportReport:
    """Import a JSON-lines file written by :func:`export_feed` (or a feed snapshot)."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below, errors translated
    except OSError as e:
        raise InvalidValueError(f"cannot read {path}: {e.strerror}") from e
    with f:
        return import_lines(store, f)


def export_lines(store: FeedStore, uri: str) -> Iterator[bytes]:
    """The signed bytes of every message of a feed (every subfeed) or of one subfeed.

    Messages are checked as they are read (``verify="chain"``): a damaged
    local copy raises FeedVerificationError instead of being exported.
    """
    parsed = parse_feed_uri(uri)
    feed = known_feed(store, parsed.feed_id)  # this node's copy, as it is
    if parsed.subfeed is not None:
        return feed.subfeed(parsed.subfeed).export_lines()
    return feed.export_lines()


def export_feed(store: FeedStore, uri: str, out: str | os.PathLike[str] | IO[bytes]) -> int:
    """Write a feed (or one subfeed) as JSON lines to ``out``; return the message count.

    ``out`` is a binary file object or a path; a path is written atomically
    (readers never see a partial export).
    """
    return write_lines(export_lines(store, uri), out)
