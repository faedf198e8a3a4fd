"""A requester process of the remote-task process tests.

``python -m tests.integration.remote_tasks_proc SPEC`` with SPEC a JSON object:
``module`` and ``function`` (the task), ``items`` (mapped over), ``args`` (further
arguments), ``threads`` (that many threads each run the whole map in its own
``with kachery.channel("lab"):`` block), ``timeout`` (the block's), ``go`` (print
``ready`` and wait for a line on stdin first, so that several processes start
together), ``reverse_providers`` (ask the providers in the reverse of the usual
order, as a requester that sees presence differently would: then two requesters
ask two providers for one id at once) and ``skip_own_check`` (a modified client
that does not check its own permission before asking). Prints one JSON line: per
thread the results and the nodes that computed them, or the error's type and message.
"""

from __future__ import annotations

import importlib
import json
import sys
import threading

import kachery_tasks as kachery
from kachery_tasks.errors import KacheryError
from kachery_tasks.network.tasks import protocol, requester
from kachery_tasks.runtime import cache


def main() -> None:
    spec = json.loads(sys.argv[1])
    task = getattr(importlib.import_module(spec["module"]), spec["function"])
    if spec.get("reverse_providers"):
        usual = requester.choose_providers
        requester.choose_providers = lambda *a: usual(*a)[::-1]
    if spec.get("skip_own_check"):
        protocol.REQUESTER_NEEDS = "download"  # this client asks whatever its config says
    out: list[dict] = [{} for _ in range(spec.get("threads", 1))]

    def run(i: int) -> None:
        try:
            with kachery.channel("lab", timeout=spec.get("timeout", 60.0)):
                futures = task.map(spec["items"], *spec.get("args", []))
                values = kachery.gather(futures)
            records = cache.current().records
            out[i] = {"results": values,
                      "nodes": [records.result(f.task_id).node for f in futures]}
        except KacheryError as e:
            out[i] = {"error": type(e).__name__, "message": str(e)}

    if spec.get("go"):
        print("ready", flush=True)
        sys.stdin.readline()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(out))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
