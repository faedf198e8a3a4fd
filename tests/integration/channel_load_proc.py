"""Load one file in a node's own process: ``python -m tests.integration.channel_load_proc URI``.

Uses the node directory $KACHERY_TASKS_DIR (its remotes: the configured bucket, then the
channels it joined) through the public ``kachery_tasks.load_file``, and prints, one per
line:

* ``log: <message>`` for each message of the channel layer at INFO level and above
  (the upload progress an answering member reports, dropped messages, ...);
* ``loaded <path>`` once the content is here, or ``error <ErrorClass>: <message>``.
"""

from __future__ import annotations

import logging
import sys

import kachery_tasks as kachery
from tests.integration.channel_node_proc import Echo, say


def main() -> None:
    logger = logging.getLogger("kachery_tasks.network.channels")
    logger.addHandler(Echo(logging.INFO))
    logger.setLevel(logging.INFO)
    try:
        path = kachery.load_file(sys.argv[1])
    except kachery.KacheryError as e:
        say(f"error {type(e).__name__}: {e}")
        sys.exit(1)
    say(f"loaded {path}")


if __name__ == "__main__":
    main()
