"""Feeds in a bucket: append-only segments of JSON lines.

Layout (under the bucket's prefix)::

    feeds/<feed id>/<subfeed>/<first seq>-<last seq>.jsonl

with both seqs written as 12 digits, so keys sort in seq order. A segment
holds messages ``first..last`` of one subfeed in the export format of
:mod:`.transfer` (one signed message per line). Segments are written
create-only and never changed; a push writes one new segment holding what
the bucket lacks, so a feed of a million messages is not a million objects.

A pull lists the subfeed's segments, fetches only those that reach beyond
what this node holds, and imports them through
:func:`~.transfer.import_messages`, which checks every signature and the
hash chain: a forged, edited, reordered or missing message stops the pull
with FeedVerificationError, and nothing after it is accepted. Overlapping
segments (two relays pushing at once) are harmless, since importing a
message that is already here changes nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..storage.buckets.base import Bucket
from .feed import known_feed
from .store import FeedStore
from .transfer import import_lines

_SEGMENT = re.compile(r"^(\d{12})-(\d{12})\.jsonl$")


@dataclass
class FeedSyncReport:
    """What a push or pull did."""

    segments: int = 0
    messages: int = 0
    feeds: set[str] = field(default_factory=set)

    def add(self, other: FeedSyncReport) -> None:
        self.segments += other.segments
        self.messages += other.messages
        self.feeds |= other.feeds


def _segments(bucket: Bucket, feed_id: str) -> dict[str, list[tuple[int, int, str]]]:
    """Segments in the bucket per subfeed: (first, last, key), in seq order."""
    found: dict[str, list[tuple[int, int, str]]] = {}
    for key in bucket.list(f"feeds/{feed_id}/"):
        parts = key.split("/")
        if len(parts) != 4:
            continue
        m = _SEGMENT.match(parts[3])
        if m:
            found.setdefault(parts[2], []).append((int(m.group(1)), int(m.group(2)), key))
    for segs in found.values():
        segs.sort()
    return found


def push_feed(store: FeedStore, bucket: Bucket, feed_id: str) -> FeedSyncReport:
    """Write what the bucket lacks of every subfeed of a feed, as one segment each."""
    feed = known_feed(store, feed_id)  # this node's copy: nothing to pull before pushing
    report = FeedSyncReport()
    remote = _segments(bucket, feed_id)
    for name, count in feed.subfeeds().items():
        have = max((last + 1 for _, last, _ in remote.get(name, [])), default=0)
        if count <= have:
            continue
        lines = list(feed.subfeed(name).export_lines(start=have))
        key = f"feeds/{feed_id}/{name}/{have:012d}-{have + len(lines) - 1:012d}.jsonl"
        if bucket.put(key, b"".join(line + b"\n" for line in lines)):
            report.segments += 1
            report.messages += len(lines)
            report.feeds.add(feed_id)
    return report


def pull_feed(store: FeedStore, bucket: Bucket, feed_id: str) -> FeedSyncReport:
    """Fetch and verify what ``store`` lacks of a feed from the bucket."""
    report = FeedSyncReport()
    for name, segs in sorted(_segments(bucket, feed_id).items()):
        have = store.count(feed_id, name)
        for first, last, key in segs:
            if last < have:
                continue
            lines = [line for line in bucket.get(key).split(b"\n") if line]
            if first < have:
                lines = lines[have - first :]
            imported = import_lines(store, lines)
            report.segments += 1
            report.messages += imported.added
            if imported.added:
                report.feeds.add(feed_id)
            have = max(have, last + 1)
    return report


def bucket_feed_ids(bucket: Bucket) -> list[str]:
    """The ids of every feed the bucket holds segments of."""
    return sorted({key.split("/")[1] for key in bucket.list("feeds/") if key.count("/") == 3})
