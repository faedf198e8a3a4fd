"""A subscriber in its own process (``python -m tests.network.pubsub.subscriber_proc URL``).

Prints ``ready`` once subscribed to channel "room", then the data of each
message it receives, and the adapter's warnings, one per line.
"""

from __future__ import annotations

import logging
import sys
import threading

from kachery_tasks.network.pubsub import connect_pubsub


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="log: %(message)s")
    logging.getLogger("ably").setLevel(logging.CRITICAL)
    client = connect_pubsub(sys.argv[1], "slow", request_timeout=2, retry_interval=0.2)
    client.subscribe("room", lambda m: print(m.data if len(m.data) < 100 else "big", flush=True))
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
