"""A provider process for the claims tests: ``python -m tests.integration.claims_proc MODE ...``.

* ``race BUCKET_URL GO_FILE COUNT [slow]`` -- prints ``ready``, waits until GO_FILE exists,
  then tries to claim task ids 0..COUNT-1 (see ``task_id``) and prints one line
  ``claim <i> won|held <node>`` per id. ``slow`` makes file:// renames wait 20 ms after their
  generation check, where file:// replace races.
* ``hold BUCKET_URL TTL`` -- claims task id 0 with a renewal thread, prints
  ``holding <node>`` and then sleeps until it is killed.

Every node is trusted (trust is tested in tests/network/tasks).
"""

from __future__ import annotations

import hashlib
import os
import sys
import time

from kachery_tasks.keys import KeyPair
from kachery_tasks.network.tasks import Claim, Claims
from kachery_tasks.storage.buckets import open_bucket

FUNCTION = "mylab.pipelines.spikes"


def task_id(i: int) -> str:
    return "sha256:" + hashlib.sha256(f"process test {i}".encode()).hexdigest()


def say(line: str) -> None:
    print(line, flush=True)


def _slow_renames() -> None:
    import types

    from kachery_tasks.storage.buckets import local

    def replace(src, dst):
        time.sleep(0.02)
        os.replace(src, dst)

    local.os = types.SimpleNamespace(**{**vars(os), "replace": replace})


def main() -> None:
    mode, url = sys.argv[1], sys.argv[2]
    key = KeyPair.generate()
    if mode == "race":
        go, count = sys.argv[3], int(sys.argv[4])
        if sys.argv[5:] == ["slow"]:
            _slow_renames()
        claims = Claims(open_bucket(url), key, 30.0, lambda node: True)
        say("ready")
        while not os.path.exists(go):
            time.sleep(0.001)
        for i in range(count):
            got = claims.acquire(task_id(i), FUNCTION)
            say(f"claim {i} won" if isinstance(got, Claim) else f"claim {i} held {got.node}")
    elif mode == "hold":
        claims = Claims(open_bucket(url), key, float(sys.argv[3]), lambda node: True)
        with claims.holding(task_id(0), FUNCTION):
            say(f"holding {key.public_hex}")
            while True:
                time.sleep(60)
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
