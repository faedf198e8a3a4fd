"""Remote tasks across a channel: a tiny task asked of two providers, beside plain Dask.

Everything runs on this machine, each part as it would in a lab: the broker
(``bench_broker.start_broker``) in its own process; one Dask scheduler in its
own process, as a lab's ``dask scheduler`` is, with 2 worker processes x 2
threads (distributed's ``SubprocessCluster``; ``--workers`` and ``--threads``
change its shape); two provider
daemons (``kachery-tasks node start --provide _bench_remote_defs --dask
ADDR``), each a process, both running their tasks on that one scheduler; the
requester in this process (``with kachery.channel("lab"):``); the channel's
bucket a file:// directory. Prints, each beside plain ``distributed`` on the
same scheduler in the same run:

* latency of one tiny pure task with a fresh id, asked across the channel
  (request, claim, run on Dask, publish the signed record, answer, import),
  one call at a time: median and p90, beside ``Client.submit(...).result()``;
  the overhead (difference of medians; target under 30 ms) and the ratio;
* ``--concurrent`` (1,000) requests at once (``kachery.gather(tiny.map(...))``)
  spread over the 2 providers: all answered, each id computed once (runs are
  counted by lines the task appends in ``$KT_BENCH_RUNS``), tasks/s (target at
  least 200), beside ``client.gather(client.map(...))``, with the CPU time
  per task of each group of processes (requester, this process's Dask
  client, providers, broker, workers, scheduler: where the time goes) and the share of
  the CPUs' time the hypervisor of a virtual machine took (steal); ``--rounds``
  (3) rounds with fresh ids, each beside its own plain run, as a host's speed
  drifts within minutes: each round, then the lowest, median and highest rate;
* a shared hit: a second requester node of the lab calling ids the first one
  got computed, served from the signed records in the channel's bucket
  (target: median under 5 ms), beside a hit in the first node's own records.

With ``--dir /dev/shm`` the nodes and the bucket live in memory, where an
fsync and a file creation cost almost nothing: the difference from a run on
disk is what the disk costs (each run also prints what creating a file and one
durable write cost where it ran).

On ext4 without a journal, a file's creation skips every inode of its block
group freed in about the last minute (about 6 while anything keeps writing
there), one look each: after a run removed its thousands of files, creating
one costs 10 to 40 times as much (0.3-1.2 ms of CPU instead of 0.015-0.03 on
the VM of the figures in docs/remote-tasks.md). The cost of a creation is
therefore measured before the run, where the run meets it, and a note says
when it is over ``CHURNED``; let 6 minutes pass between runs on such a disk.

    python benchmarks/bench_remote_tasks.py [--requests N] [--concurrent N] [--rounds N]
        [--dir DIR] [--workers N] [--threads N]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(REPO))

import bench_broker  # noqa: E402
from bench_channel import make_lab, start_daemon, stop, summary  # noqa: E402

PROVIDERS = ("p1", "p2")
NODES = (*PROVIDERS, "alice", "bob")  # p1 owns the channel; alice and bob request


def wait_for_providers(node, providers: list, timeout: float = 120.0) -> None:
    """Until ``providers`` are online in ``node``'s session and announce what they provide."""
    session, _ = node.remotes[-1].session()
    want = {p.id for p in providers}
    deadline = time.monotonic() + timeout
    while True:
        ready = {n for n, data in session.members()
                 if isinstance(data, dict) and data.get("provides")}
        if want <= ready:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"the providers did not come online within {timeout:g} s")
        time.sleep(0.2)


def cpu_seconds(pids: dict[str, list[int]]) -> dict[str, float]:
    """CPU time (user + system) used so far by each group of processes."""
    import psutil

    out = {}
    for role, group in pids.items():
        times = [psutil.Process(pid).cpu_times() for pid in group]
        out[role] = sum(t.user + t.system for t in times)
    return out


def cpu_split(pids: dict[str, list[int]], loop_thread: int) -> dict[str, float]:
    """The CPU time of this process, its Dask client's thread apart from the rest (the
    requester), beside :func:`cpu_seconds` of the other processes ``pids``."""
    loop = time.clock_gettime(time.pthread_getcpuclockid(loop_thread))
    # this process from its own clock: psutil counts in ticks (10 ms), the thread in ns
    return {REQUESTER: time.process_time() - loop, CLIENT: loop, **cpu_seconds(pids)}


CHURNED = 0.05e-3
"""Seconds of CPU per file creation above which the benchmark says the disk was churned.
On the VM of docs/remote-tasks.md: 0.014-0.032 ms where nothing was removed lately,
0.04-1.2 ms before runs that followed others' removals."""

REQUESTER = "requester (this process)"
CLIENT = "this process's Dask client (a thread of it)"


async def _thread_ident() -> int:
    return threading.get_ident()


def host_times() -> tuple[int, int, int]:
    """This machine's CPU time so far, in clock ticks summed over its CPUs: (stolen, idle,
    all). "Stolen" is the time the hypervisor of a virtual machine ran something else
    while this machine's CPUs wanted to run (``steal`` in /proc/stat); zeros where there
    is no /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0, 0
    # user nice system idle iowait irq softirq steal (guest time is inside user)
    return fields[7] if len(fields) > 7 else 0, fields[3] + fields[4], sum(fields[:8])


def host_share(before: tuple[int, int, int], after: tuple[int, int, int]) -> str:
    """How the machine's CPU time between two :func:`host_times` was spent, in words."""
    stolen, idle, total = (a - b for a, b in zip(after, before, strict=True))
    if total <= 0:
        return "host CPU shares unknown"
    return (f"{stolen / total:.0%} of the CPUs' time stolen by the hypervisor, "
            f"{idle / total:.0%} idle")


class MessageCount:
    """Counts the channel messages of each type this node's session accepts, by status."""

    TYPES = ("task_status", "task_finished", "task_failed", "task_declined",
             "tasks_progress", "tasks_answered", "tasks_declined")

    def __init__(self, node) -> None:
        self.session, _ = node.remotes[-1].session()
        self.counts: collections.Counter = collections.Counter()
        for type in self.TYPES:
            self.session.on(type, self._seen)

    def _seen(self, msg) -> None:
        status = msg.body.get("status") if isinstance(msg.body, dict) else None
        self.counts[f"{msg.type} {status}" if status else msg.type] += 1

    def close(self) -> None:
        for type in self.TYPES:
            self.session.off(type, self._seen)


def flush_cost(where: Path, n: int = 300) -> tuple[float, float]:
    """Seconds of wall time and of this thread's CPU (user and kernel) per durable file
    write in ``where``, done as the store writes a blob: write a temporary file, fsync it,
    rename it, fsync the directory."""
    from kachery_tasks import fsutil

    where.mkdir(parents=True, exist_ok=True)
    t0, c0 = time.perf_counter(), time.thread_time()
    for i in range(n):
        tmp = fsutil.temp_path(where)
        fsutil.write_temp(tmp, b"x" * 64)
        os.replace(tmp, where / f"blob{i}")
        fsutil.fsync_dir(where)
    return (time.perf_counter() - t0) / n, (time.thread_time() - c0) / n


def create_cost(where: Path, n: int = 300) -> float:
    """Seconds of this thread's CPU to create one empty file in ``where`` (the files stay
    until the run's directory is removed: removing them would make the run's own
    creations dearer, see the module docstring). On the VM of the figures in
    docs/remote-tasks.md it ranged from 0.014 to 1.2 ms, the highest within minutes
    of many files' removal nearby."""
    scratch = where / "create-cost"
    scratch.mkdir(parents=True, exist_ok=True)
    c0 = time.thread_time()
    for i in range(n):
        os.close(os.open(scratch / f"f{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    return (time.thread_time() - c0) / n


def runs_of(runs: Path, xs: range) -> collections.Counter:
    """How many times each argument in ``xs`` was computed."""
    counts: collections.Counter = collections.Counter()
    for name in os.listdir(runs):
        for line in (runs / name).read_text().split():
            if int(line) in xs:
                counts[int(line)] += 1
    return counts


def latency(client, tiny, tiny_plain, xs: range, plain_xs: range) -> tuple[list, list]:
    """Per call: across the channel (fresh ids) and through the plain client."""
    import kachery_tasks as kachery

    remote_times, plain_times = [], []
    with kachery.channel("lab"):
        for x, px in zip(xs, plain_xs, strict=True):  # interleaved: the same load on both
            t0 = time.perf_counter()
            assert tiny(x) == x + 1
            remote_times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            assert client.submit(tiny_plain, px, pure=False).result() == px + 1
            plain_times.append(time.perf_counter() - t0)
    return remote_times, plain_times


def concurrent(client, tiny, tiny_plain, xs: range, plain_xs: range,
               pids: dict[str, list[int]], loop_thread: int,
               ) -> tuple[float, float, dict, dict, str, str]:
    """Seconds for all of ``xs`` at once across the channel, and for ``plain_xs`` on Dask;
    the CPU seconds this process and each group of ``pids`` used in each
    (:func:`cpu_split`); how the machine's CPU time was spent in each
    (:func:`host_share`)."""
    import kachery_tasks as kachery

    def cpu() -> dict[str, float]:
        return cpu_split(pids, loop_thread)

    cpu0, host0 = cpu(), host_times()
    with kachery.channel("lab"):
        t0 = time.perf_counter()
        got = kachery.gather(tiny.map(xs))
        t_remote = time.perf_counter() - t0
    cpu1, host1 = cpu(), host_times()
    assert got == [x + 1 for x in xs]
    t0 = time.perf_counter()
    plain = client.gather(client.map(tiny_plain, plain_xs, pure=False))
    t_plain = time.perf_counter() - t0
    cpu2, host2 = cpu(), host_times()
    assert plain == [x + 1 for x in plain_xs]
    return (t_remote, t_plain, {k: cpu1[k] - cpu0[k] for k in cpu0},
            {k: cpu2[k] - cpu1[k] for k in cpu0}, host_share(host0, host1),
            host_share(host1, host2))


def hits(tiny, xs: range) -> list[float]:
    """Per call of ids computed before, inside the channel block of the current node."""
    import kachery_tasks as kachery

    times = []
    with kachery.channel("lab"):
        for x in xs:
            t0 = time.perf_counter()
            assert tiny(x) == x + 1
            times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200,
                        help="calls one at a time (fresh ids), and shared hits of them")
    parser.add_argument("--concurrent", type=int, default=1000, help="requests at once")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of --concurrent requests (fresh ids), each beside plain Dask")
    parser.add_argument("--dir", default=None,
                        help="where the nodes and the bucket live (default: the temporary "
                             "directory; /dev/shm shows what the disk's flushes cost)")
    parser.add_argument("--workers", type=int, default=2, help="Dask worker processes")
    parser.add_argument("--threads", type=int, default=2, help="threads of each worker")
    args = parser.parse_args()
    if args.workers < 1 or args.threads < 1 or args.rounds < 1 or args.concurrent < 1:
        parser.error("--workers, --threads, --rounds and --concurrent are at least 1")
    os.environ["KACHERY_TASKS_PROGRESS"] = "0"
    os.environ["PYTHONPATH"] = os.pathsep.join(  # workers and daemons import the task module
        p for p in (str(BENCH), str(REPO), os.environ.get("PYTHONPATH")) if p)
    logging.getLogger("distributed").setLevel(logging.ERROR)

    import distributed
    from _bench_remote_defs import tiny, tiny_plain
    from distributed.deploy.subprocess import SubprocessCluster

    if args.dir is not None:
        Path(args.dir).mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="bench-remote-", dir=args.dir))
    runs = root / "runs"
    runs.mkdir()
    os.environ["KT_BENCH_RUNS"] = str(runs)  # inherited by the Dask workers
    broker, url = bench_broker.start_broker()
    daemons: list[subprocess.Popen] = []
    cluster = client = None
    nodes: list = []
    try:
        cluster = SubprocessCluster(n_workers=args.workers, threads_per_worker=args.threads,
                                    worker_class="distributed.Worker", dashboard_address=":0",
                                    # where the scheduler's process tells its address (by
                                    # default a file distributed leaves in /tmp)
                                    scheduler_kwargs={"scheduler_file": str(root / "scheduler")},
                                    silence_logs=logging.CRITICAL)
        client = distributed.Client(cluster)
        addr = cluster.scheduler_address
        created = create_cost(root / "bucket")
        print(f"broker {url} (own process); Dask scheduler {addr} (own process), "
              f"{args.workers} worker processes x {args.threads} threads (distributed "
              f"{distributed.__version__}); "
              f"{os.cpu_count()} CPUs; "
              f"nodes and bucket (file://) in {root.parent}, where creating a file costs "
              f"{created * 1e3:.3f} ms of CPU now; load average {os.getloadavg()[0]:.1f}")
        if created > CHURNED:
            print(f"  note: over {CHURNED * 1e3:.2f} ms per file created. On ext4 without a "
                  "journal a creation costs that much after files were removed near here in "
                  "the last minutes (by a test run, or this benchmark's previous run); each "
                  "computed call creates 2 files, so the figures below pay for those removals. "
                  "Let 6 minutes pass, or give --dir a directory elsewhere on the disk "
                  "(docs/remote-tasks.md)")
        nodes = make_lab(root, url, f"file://{root}/bucket", names=NODES)
        p1, p2, alice, bob = nodes
        for name in PROVIDERS:
            daemons.append(start_daemon(root / name, "--provide", "_bench_remote_defs",
                                        "--dask", addr))
        with alice:  # bob needs no session: his calls are served from the bucket
            wait_for_providers(alice, [p1, p2])
        client.gather(client.map(tiny_plain, range(-100, -50), pure=False))  # warm up
        with alice:
            latency(client, tiny, tiny_plain, range(10_000, 10_020), range(-200, -180))

        n = args.requests
        xs, plain_xs = range(100_000, 100_000 + n), range(-100_000 - n, -100_000)
        with alice:
            remote_t, plain_t = latency(client, tiny, tiny_plain, xs, plain_xs)
        overhead = statistics.median(remote_t) - statistics.median(plain_t)
        print(f"one tiny pure task at a time, fresh ids (n={n}):")
        print(f"  across the channel        {summary(remote_t)}")
        print(f"  plain Client.submit       {summary(plain_t)}")
        print(f"  overhead {overhead * 1e3:.1f} ms (target < 30 ms), "
              f"{statistics.median(remote_t) / statistics.median(plain_t):.1f}x plain")

        m, rounds = args.concurrent, args.rounds
        pids = {"provider daemons": [d.pid for d in daemons], "broker": [broker.pid],
                "Dask workers": list(client.run(os.getpid).values()),
                "Dask scheduler": [client.run_on_scheduler(os.getpid)]}
        print(f"{m} requests at once to 2 providers (kachery.gather(tiny.map(...))), "
              f"{rounds} round(s) with fresh ids, each beside plain client.map+gather:")
        rates, plain_rates = [], []
        cpu_remote: collections.Counter = collections.Counter()
        cpu_plain: collections.Counter = collections.Counter()
        seen = MessageCount(alice)
        loop_thread = client.sync(_thread_ident)
        for r in range(rounds):
            lo = 1_000_000 + r * m
            cxs, plain_cxs = range(lo, lo + m), range(-lo - m, -lo)
            with alice:
                t_remote, t_plain, used_remote, used_plain, host_remote, host_plain = \
                    concurrent(client, tiny, tiny_plain, cxs, plain_cxs, pids, loop_thread)
            cpu_remote.update(used_remote)
            cpu_plain.update(used_plain)
            counts = runs_of(runs, cxs)
            twice = sum(1 for c in counts.values() if c > 1)
            rates.append(m / t_remote)
            plain_rates.append(m / t_plain)
            print(f"  round {r + 1}: across the channel {t_remote:6.2f} s {m / t_remote:5.0f} "
                  f"tasks/s (target >= 200); all {m} answered; computed "
                  f"{sum(counts.values())} times, {len(counts)} distinct, {twice} computed "
                  f"twice; plain {t_plain:5.2f} s {m / t_plain:5.0f} tasks/s; channel "
                  f"{t_remote / t_plain:.1f}x the time of plain")
            print(f"    this machine meanwhile: across the channel {host_remote}; "
                  f"plain {host_plain}")
        seen.close()
        print(f"  across the channel: lowest {min(rates):.0f}, median "
              f"{statistics.median(rates):.0f}, highest {max(rates):.0f} tasks/s; plain "
              f"{min(plain_rates):.0f}, {statistics.median(plain_rates):.0f}, "
              f"{max(plain_rates):.0f}")
        n_all = m * rounds
        print("  messages the requester received per call: " + ", ".join(
            f"{what} {n / n_all:.1f}" for what, n in sorted(seen.counts.items())))
        for what, used in (("across the channel", cpu_remote), ("plain", cpu_plain)):
            print(f"  CPU per task, {what}: {sum(used.values()) / n_all * 1e3:.1f} ms (" +
                  ", ".join(f"{role} {n * 1e3 / n_all:.1f}" for role, n in used.items()) + ")")
        wall, cpu = flush_cost(root / "flush")
        print(f"  the disk in {root.parent}: creating a file in the bucket directory costs "
              f"{create_cost(root / 'bucket' / 'after') * 1e3:.3f} ms of CPU after the runs "
              f"({created * 1e3:.3f} before); one durable file write (write, fsync, rename, "
              f"fsync the directory), alone: {wall * 1e3:.2f} ms wall, {cpu * 1e3:.2f} ms "
              f"CPU. A computed call with a tiny result creates 2 files in the bucket (its "
              f"claim, left to expire, and the result record, which carries the result), "
              f"deletes none while the providers are busy, and flushes 1 (the record); its "
              f"result stays inline in the worker's and the requester's records. 200 tasks/s "
              f"on {os.cpu_count()} CPUs leaves {os.cpu_count() / 200 * 1e3:.0f} ms of CPU "
              f"per call for everything (compare a run with --dir /dev/shm)")

        with bob:
            shared = hits(tiny, xs)
            again = hits(tiny, xs)
        with alice:
            local = hits(tiny, xs)
        counts = runs_of(runs, xs)
        print(f"ids alice got computed, called again (n={n}):")
        print(f"  by bob, shared hit        {summary(shared)} (target median < 5 ms)")
        print(f"  by bob, again (now local) {summary(again)}")
        print(f"  by alice, local hit       {summary(local)}")
        print(f"  computed {sum(counts.values())} times for {len(counts)} distinct ids")
        print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    finally:
        with contextlib.ExitStack() as cleanup:  # last in, first out; each step runs even
            cleanup.callback(shutil.rmtree, root, ignore_errors=True)  # if one before failed
            cleanup.callback(broker.wait, 30)
            cleanup.callback(broker.terminate)
            if cluster is not None:
                cleanup.callback(cluster.close)
            if client is not None:
                cleanup.callback(client.close)
            for d in daemons:
                cleanup.callback(stop, d)
            for node in nodes:  # their sessions first, before the broker goes
                cleanup.callback(node.close)


if __name__ == "__main__":
    main()
