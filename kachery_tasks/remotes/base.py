"""The Remote interface: how a node asks others for what it lacks and offers what it has.

A node keeps an ordered list of remotes (see :class:`kachery_tasks.nodes.Node`).
When it lacks content, a pure result or a feed's messages, it asks each remote
in turn and takes the first answer that verifies; when it has something others
may want, it offers it to every remote. A bucket is one kind of remote
(:class:`~.bucket.BucketRemote`); the peers of a channel, reached over
pub/sub, are another.

Contract (tested once in :mod:`kachery_tasks.testing.remotes`, run against
every kind):

* **Content.** :meth:`fetch_content` brings content into the caller's store,
  verified against its id (chunk by chunk for large files), and returns its
  local path; it raises ContentNotFoundError when this remote cannot supply
  it. :meth:`offer_content` makes content in the caller's store available
  through this remote (uploads it); offering what the remote already has
  costs one check.
* **Pure results** travel as signed envelopes (:mod:`kachery_tasks.envelopes`)
  that the runtime builds and verifies; a remote only stores and finds the
  bytes. :meth:`get_result_records` answers many task ids at once (a
  ``map`` over a thousand items must not cost a thousand round trips in
  sequence); :meth:`put_result_record` is create-only: the first record
  published for an id stays, unless the publisher finds it ``replaceable``
  (a record it would never serve, e.g. planted by a non-member).
* **Feeds.** :meth:`pull_feed` imports what the remote has of a feed that the
  caller's feed store lacks (every message verified on import);
  :meth:`push_feed` sends what the remote lacks.
* Every method raises KacheryError subclasses only, and never puts a
  credential in a message. A remote that does not carry a kind of
  information keeps the default method, which says so (returns nothing or
  raises ContentNotFoundError).
"""

from __future__ import annotations

from abc import ABC
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from ..errors import ContentNotFoundError

if TYPE_CHECKING:
    from ..feeds.bucket import FeedSyncReport
    from ..feeds.store import FeedStore
    from ..storage.local import LocalStore
    from ..storage.sync import UploadReport


class Remote(ABC):  # noqa: B024 - every method has a default; a remote overrides what it carries
    """A source and destination of content, results and feeds; see the module docstring."""

    url: str = "?"
    per_node: bool = False
    """True for a remote that acts for one node (built as ``Class(url, node)``, see
    :func:`kachery_tasks.remotes.open_remote`)."""

    # ------------------------------------------------------------- content
    def has_content(self, sha256: str) -> bool:
        """Whether this remote can supply the content (a cheap check, no transfer)."""
        return False

    def fetch_content(self, store: LocalStore, uri: str, progress: bool | None = None) -> str:
        """Bring the content ``uri`` names into ``store``, verified; its local path."""
        raise ContentNotFoundError(f"{uri} cannot be fetched through {self.url}")

    def offer_content(
        self, store: LocalStore, uri: str, progress: bool | None = None, repair: bool = False
    ) -> UploadReport | None:
        """Make the content ``uri`` names (in ``store``) available through this remote.

        ``repair=True`` also checks what the remote holds of it and replaces
        what is damaged (where the remote can). None when this remote takes no
        content.
        """
        return None

    def offer_data(self, store: LocalStore, uri: str, data: bytes) -> UploadReport | None:
        """:meth:`offer_content` for small content held in memory (an inline result): a
        remote that can send it from memory does, others get it from ``store``."""
        from ..uris import parse_uri

        parsed = parse_uri(uri)
        store.store_bytes(data, label=parsed.label, expect_sha256=parsed.hex)
        return self.offer_content(store, uri, progress=False)

    def fetch_data(self, uri: str, max_size: int) -> bytes | None:
        """The verified bytes of ``uri`` when this remote can hand small content (at most
        ``max_size`` bytes) over in memory, for a record to keep inline; else None (then
        fetch it with :meth:`fetch_content`)."""
        return None

    def fetch_members(self, store: LocalStore, uri: str, progress: bool | None = None) -> int:
        """Fetch every blob of the zarr array ``uri`` that ``store`` lacks; how many.

        The default fetches them one at a time through :meth:`fetch_content`.
        """
        from ..storage.zarr_index import missing_members

        missing = missing_members(self.fetch_content(store, uri, progress=False), uri, store.has)
        if missing is None:
            return 0
        for h in missing:
            self.fetch_content(store, f"sha256://{h}", progress=False)
        return len(missing)

    # ------------------------------------------------------------- results
    def has_result_record(self, task_id: str) -> bool:
        """Whether a result record for ``task_id`` is published here."""
        return False

    def trusts_result_signer(self, signer: str) -> bool:
        """Whether results signed by ``signer`` may be served from this remote.

        A bucket alone trusts any signer that is the node its record names; a
        channel narrows that to its members allowed to process tasks.
        """
        return True

    def get_result_records(self, task_ids: Iterable[str]) -> dict[str, bytes]:
        """The published result records (signed envelope bytes) this remote has, by task id."""
        return {}

    def put_result_record(self, task_id: str, data: bytes,
                          replaceable: Callable[[bytes], bool] | None = None) -> bool:
        """Publish a result record unless one is there; True if this call wrote it.

        With ``replaceable``, a record already there for which
        ``replaceable(its bytes)`` is true (one the caller would never serve:
        garbled, or signed by a node it does not trust) is replaced, over that
        very object only: a record written meanwhile by someone else is
        judged in turn, never overwritten unseen.
        """
        return False

    # --------------------------------------------------------------- feeds
    def pull_feed(self, feeds: FeedStore, feed_id: str) -> FeedSyncReport | None:
        """Import (verified) what this remote has of ``feed_id`` that ``feeds`` lacks."""
        return None

    def push_feed(self, feeds: FeedStore, feed_id: str) -> FeedSyncReport | None:
        """Send what this remote lacks of ``feed_id`` (from ``feeds``)."""
        return None

    def feed_ids(self) -> list[str]:
        """The feeds this remote holds messages of."""
        return []

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"
