"""A lab in one machine: providers compute the spike-sorting pipeline for an analyst, and a
collaborator then gets every result from the channel without anything being computed again.

Run it with ``python examples/pipelines/lab.py --temp``. It starts, as separate
processes, what a lab runs on separate machines:

* the pub/sub broker (``kachery-tasks broker start``) and a shared bucket directory
  (``file://``, standing in for ``gs://``);
* two provider nodes (``kachery-tasks node start --provide spike_sorting --workers 1``:
  each runs the pipeline's tasks for the channel on a Dask LocalCluster);
* an analyst node that runs the pipeline inside ``with kachery.channel("lab"):``, so
  every step it lacks is asked of a provider;
* then a fourth node, a collaborator, that runs the same pipeline: every step is
  served from the results the providers published, and no provider computes again.

Everything lives in a throwaway directory (--temp) or in --dir.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROVIDERS = ("provider-1", "provider-2")
MEMBERS = {  # every node but the owner (provider-1), with its permissions
    "provider-2": "download,upload,request_tasks,process_tasks,read_feeds",
    "analyst": "download,upload,request_tasks,read_feeds",
    "collaborator": "download,upload,request_tasks,read_feeds",
}
CLI = [sys.executable, "-m", "kachery_tasks"]


class Lab:
    """The processes and node directories of the demo, under ``root``."""

    def __init__(self, root: Path, duration: float) -> None:
        self.root = root
        self.duration = duration
        self.bucket = f"file://{root / 'bucket'}"
        self.port = _free_port()
        self.procs: list[subprocess.Popen] = []

    def env(self, node: str) -> dict[str, str]:
        path = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)
        return {**os.environ, "KACHERY_TASKS_DIR": str(self.root / node), "PYTHONPATH": path}

    def cli(self, node: str, *args: str) -> str:
        r = subprocess.run([*CLI, *args], env=self.env(node), capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"kachery-tasks {' '.join(args)} on {node} failed:\n{r.stderr}")
        return r.stdout

    def start(self, node: str, *args: str, log: str) -> subprocess.Popen:
        with open(self.root / f"{log}.log", "w") as out:  # the child keeps its own copy
            proc = subprocess.Popen([*CLI, *args], env=self.env(node), stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()

    # ---------------------------------------------------------------- setup
    def set_up(self) -> None:
        print(f"1. a broker on ws://127.0.0.1:{self.port} and a bucket at {self.bucket}")
        self.start("provider-1", "broker", "start", "--port", str(self.port), "--quiet",
                   log="broker")
        _wait_for_port(self.port)
        print("2. provider-1 creates channel 'lab' and adds the other nodes")
        out = self.cli("provider-1", "channel", "create", "lab", "--bucket", self.bucket,
                       "--pubsub", f"ws://127.0.0.1:{self.port}", "--label", "provider-1")
        invite = next(line for line in out.splitlines() if line.startswith("kachery-channel:"))
        for node, allow in MEMBERS.items():
            node_id = self.node_id(node)
            self.cli("provider-1", "channel", "add-node", "lab", node_id, "--label", node,
                     "--allow", allow, "--offline")
            self.cli(node, "channel", "join", invite)
            print(f"   {node:<13} {node_id[:16]}...  {allow}")
        print("3. both providers start serving spike_sorting on a Dask LocalCluster each")
        for node in PROVIDERS:
            self.start(node, "node", "start", "--provide", "spike_sorting", "--workers", "1",
                       "--quiet", log=node)
        self.wait_for_providers()

    def wait_for_providers(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            status = json.loads(self.cli("analyst", "channel", "status", "lab", "--json"))
            ready = [m["label"] for m in status["members"] if m.get("online") and m.get("provides")]
            if set(PROVIDERS) <= set(ready):
                print(f"   online and providing: {', '.join(sorted(ready))}")
                return
            for proc in self.procs:
                if proc.poll() is not None:
                    raise SystemExit(f"a process of the lab stopped; see the logs in {self.root}")
            if time.monotonic() > deadline:
                raise SystemExit(f"the providers did not come online; see {self.root}/*.log")
            time.sleep(0.5)

    # ------------------------------------------------------------- running
    def run_pipeline(self, node: str) -> dict:
        r = subprocess.run([sys.executable, __file__, "--role", node, "--duration",
                            str(self.duration)], env=self.env(node), capture_output=True,
                           text=True)
        if r.returncode != 0:
            raise SystemExit(f"the pipeline on {node} failed:\n{r.stderr}")
        return json.loads(r.stdout.splitlines()[-1])

    def computed_on(self, node: str) -> int:
        """How many runs the node computed itself: every run in its task records (a task
        computed again adds a run; ``tasks ls`` shows only the newest of each)."""
        from kachery_tasks.nodes import Node
        from kachery_tasks.runtime import cache

        here = Node(self.root / node)
        return sum(1 for r in cache.for_node(here).records.runs() if r.node == here.id)

    def node_id(self, node: str) -> str:
        return json.loads(self.cli(node, "node", "info", "--json"))["node_id"]


def pipeline_role(duration: float) -> None:
    """In a node's own process: run the pipeline through the channel; print a JSON line."""
    import spike_sorting

    import kachery_tasks as kachery
    from kachery_tasks.runtime import cache

    t0 = time.perf_counter()
    with kachery.channel("lab"):
        out = spike_sorting.run_pipeline(duration_s=duration)
    records = cache.current().records
    steps = [{"step": name, "ms": round(dt * 1000, 1),
              "computed_by": records.result(out["ids"][name]).node}
             for name, _, dt in out["steps"]]
    print(json.dumps({"seconds": time.perf_counter() - t0, "accuracy": out["accuracy"],
                      "spikes": len(out["spikes"]), "steps": steps}))


def report(name: str, out: dict, labels: dict[str, str]) -> None:
    print(f"   {name}: {out['seconds']:.2f} s, {out['spikes']} spikes, "
          f"{100 * out['accuracy']:.1f}% of true spikes found and labelled")
    for s in out["steps"]:
        print(f"      {s['step']:<22} {s['ms']:8.1f} ms   computed by "
              f"{labels.get(s['computed_by'], s['computed_by'][:16])}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--temp", action="store_true", help="work in a throwaway directory")
    where.add_argument("--dir", type=Path, help="work in this (new) directory and keep it")
    where.add_argument("--role", help=argparse.SUPPRESS)  # a node's pipeline process
    ap.add_argument("--duration", type=float, default=20.0,
                    help="seconds of synthetic recording (default 20)")
    args = ap.parse_args(argv)
    if args.role:
        pipeline_role(args.duration)
        return
    with _workdir(args.dir) as root:
        lab = Lab(root, args.duration)
        try:
            lab.set_up()
            print("4. the analyst runs the pipeline: each step is asked of the providers")
            labels = {m["node"]: m["label"] for m in json.loads(lab.cli(
                "analyst", "channel", "status", "lab", "--json", "--offline"))["members"]}
            report("analyst", lab.run_pipeline("analyst"), labels)
            before = {p: lab.computed_on(p) for p in PROVIDERS}
            print(f"   computed by the providers: {before}")
            print("5. a collaborator runs the same pipeline")
            report("collaborator", lab.run_pipeline("collaborator"), labels)
            after = {p: lab.computed_on(p) for p in PROVIDERS}
            again = sum(after.values()) - sum(before.values())
            print(f"   computed by the providers since: {again} "
                  f"({'nothing was computed again' if again == 0 else 'recomputed!'})")
        finally:
            lab.stop_all()
        if again:
            raise SystemExit(1)


@contextlib.contextmanager
def _workdir(path: Path | None) -> Iterator[Path]:
    if path is not None:
        path.mkdir(parents=True, exist_ok=False)
        yield path
        return
    tmp = tempfile.mkdtemp(prefix="kachery-lab-")
    try:
        yield Path(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise SystemExit(f"the broker did not start on port {port}")


if __name__ == "__main__":
    main()
