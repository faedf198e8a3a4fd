"""A channel member in its own process: ``python -m tests.integration.channel_node_proc NAME``.

Uses the node directory $KACHERY_TASKS_DIR, starts a ChannelSession on the
joined channel NAME and prints, one per line:

* ``ready <config version>`` once connected and present;
* ``delivered <type> <sender[:8]> <body as JSON>`` for each accepted message;
* ``config <version>`` each time it adopts a newer config;
* ``log: <message>`` for each warning of the channel layer (dropped messages say why).

Commands on standard input, one per line: ``send <type> <JSON body>`` (a
message signed here), ``raw <type> <JSON>`` (published as is, e.g. a
replayed or tampered envelope), ``quit``.
"""

from __future__ import annotations

import json
import logging
import sys

from kachery_tasks.config import node_dir
from kachery_tasks.keys import node_keypair
from kachery_tasks.network.channels import ChannelSession, ChannelStore
from kachery_tasks.network.channels.messages import REQUIRED_PERMISSION


def say(line: str) -> None:
    print(line, flush=True)


class Echo(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        say(f"log: {record.getMessage()}")


def main() -> None:
    logging.getLogger("kachery_tasks.network.channels").addHandler(Echo(logging.WARNING))
    node = node_dir()
    session = ChannelSession(ChannelStore(node).find(sys.argv[1]), node_keypair(node),
                             request_timeout=5, connect_timeout=15, retry_interval=0.2)
    for type in REQUIRED_PERMISSION:
        session.on(type, lambda m: say(f"delivered {m.type} {m.sender[:8]} "
                                       f"{json.dumps(m.body, sort_keys=True)}"))
    session.on_config(lambda c: say(f"config {c.version}"))
    session.start()
    say(f"ready {session.config.version}")
    for line in sys.stdin:
        command, _, rest = line.strip().partition(" ")
        if command == "quit":
            break
        type, _, payload = rest.partition(" ")
        if command == "send":
            session.publish(type, json.loads(payload))
        elif command == "raw":
            session.pubsub.publish(session.pubsub_name, type, json.loads(payload))
        say(f"done {command}")
    session.close()


if __name__ == "__main__":
    main()
