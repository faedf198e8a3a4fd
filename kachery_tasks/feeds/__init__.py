"""Feeds: signed, hash-chained, append-only logs with named subfeeds.

A feed is owned by an Ed25519 key pair kept in the node directory; its id is
the public key. Each subfeed is a chain of messages, each signed by the owner
and carrying the hash of the one before, so any node can check that what it
holds is exactly what the owner appended (see :mod:`.messages` and
``docs/feeds.md``). Messages live in SQLite (:mod:`.store`), travel as JSON
lines (:mod:`.transfer`), and are read, watched and replayed through
:class:`Feed` and :class:`Subfeed` (:mod:`.feed`).

The functions here take the :class:`~.store.FeedStore` they act on; the
public API's module-level functions (``kachery.create_feed``, ...) act on the
current node (see :mod:`kachery_tasks.feed_functions`).
"""

from .feed import (
    DEFAULT_SUBFEED,
    Feed,
    FeedInfo,
    Subfeed,
    create_feed,
    list_feeds,
    load_feed,
    load_subfeed,
)
from .messages import MAX_BODY_BYTES, Message
from .transfer import (
    ImportReport,
    export_feed,
    export_lines,
    import_feed,
    import_lines,
    import_messages,
)
from .uris import FeedURI, format_feed_uri, parse_feed_uri

__all__ = [
    "DEFAULT_SUBFEED",
    "MAX_BODY_BYTES",
    "Feed",
    "FeedInfo",
    "FeedURI",
    "ImportReport",
    "Message",
    "Subfeed",
    "create_feed",
    "export_feed",
    "export_lines",
    "format_feed_uri",
    "import_feed",
    "import_lines",
    "import_messages",
    "list_feeds",
    "load_feed",
    "load_subfeed",
    "parse_feed_uri",
]
