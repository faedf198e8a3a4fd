"""The feed store poller of a daemon (kachery_tasks/network/channels/livefeeds.py).

Announcing new feed messages across a channel, end to end, is
tests/integration/test_channel_daemons.py::test_a_feed_message_appended_on_a_reaches_a_watcher_on_b.
"""

from __future__ import annotations

import threading
import time

from kachery_tasks import create_feed
from kachery_tasks.config import NodeDir
from kachery_tasks.feeds.store import FeedStore
from kachery_tasks.network.channels.livefeeds import FeedStorePoller
from kachery_tasks.nodes import current_node


def _looks(node_path, seconds: float, **options) -> int:
    """How many times a poller of ``node_path``'s feed store looked at it in ``seconds``."""
    poller = FeedStorePoller(FeedStore(NodeDir(node_path)), lambda: None, **options)
    looks = []
    version = poller._version

    def counted() -> int:
        looks.append(1)
        return version()

    poller._version = counted
    poller.start()
    time.sleep(seconds)
    poller.stop()
    return len(looks)


def test_a_poller_looks_often_only_while_busy(node_path):
    current_node()
    assert _looks(node_path, 0.6, interval=0.005, idle_every=0.5, busy=lambda: False) <= 3
    assert _looks(node_path, 0.6, interval=0.005, idle_every=0.5, busy=lambda: True) >= 20


def test_a_commit_wakes_an_idle_poller_at_once_and_another_process_s_is_seen(node_path):
    current_node()
    changed = threading.Event()
    store = FeedStore(NodeDir(node_path))
    poller = FeedStorePoller(store, changed.set, interval=0.005, idle_every=60,
                             busy=lambda: False).start()
    try:
        poller.poke()  # what a commit of this process does
        assert changed.wait(5)
        changed.clear()
        poller.busy = lambda: True  # a member now watches (the daemon pokes it then)
        poller.poke()
        assert changed.wait(5)
        changed.clear()
        create_feed("news").subfeed("s").append({"n": 1})  # its own connection: another writer
        assert changed.wait(5)
    finally:
        poller.stop()
