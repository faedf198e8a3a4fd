"""ably and websockets are imported only when a client connects or a broker starts."""

from __future__ import annotations

import os
import subprocess
import sys


def test_importing_the_package_and_the_network_modules_stays_light():
    code = (
        "import sys, kachery_tasks, kachery_tasks.cli\n"
        "kachery_tasks.cli.build_parser()\n"
        "import kachery_tasks.network.pubsub, kachery_tasks.network.broker\n"
        "from kachery_tasks.network.pubsub import open_pubsub\n"
        "open_pubsub('ws://127.0.0.1:7654')\n"
        "print(sorted(m for m in ('ably', 'websockets') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=os.environ.copy(), check=True).stdout
    assert out.strip() == "[]"
