"""store_file and load_file beside their physical parts and the peer, in one run.

* store_file of a 1 GiB file vs. kachery-cloud's ``store_file_local`` (target:
  at most 0.8x its time) and vs. ``cp`` then ``sha256sum``;
* the parts of storing, each measured alone: the kernel copy, the fsync of a
  fresh 1 GiB copy, SHA-256 and SHA-1 of the cached GiB (hashlib);
* what storing leaves for later: ``info`` (the SHA-1 alias and the chunk
  manifest, computed when first needed);
* load_file per call vs. kachery-cloud's local load (target: under 50 us).

Every timed run starts from a synced disk and an emptied store (neither is
timed), and the runs of kachery-tasks and kachery-cloud alternate, so that
what one leaves behind (kachery-cloud's unflushed GiB, a deleted blob) does
not land on the other. Each line gives the best and the range.

Usage: python benchmarks/bench_store.py [--size-mib 1024] [--repeat 5]
(kachery-cloud comes from ``pip install -e '.[bench]'``.)
"""

from __future__ import annotations

import argparse
import hashlib
import mmap
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from kachery_tasks.nodes import current_node


class Timing:
    """Wall-clock times of one operation over several runs."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def run(
        self, fn: Callable[[], object], setup: Callable[[], object] | None = None,
        sync: bool = True,
    ) -> None:
        if setup is not None:
            setup()
        if sync:
            os.sync()
        t = time.perf_counter()
        fn()
        self.times.append(time.perf_counter() - t)

    @property
    def best(self) -> float:
        return min(self.times)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    def line(self, name: str, mb: float, note: str = "") -> str:
        lo, hi = min(self.times), max(self.times)
        return f"  {name:<30}{lo:7.3f} s  {mb / lo:6.0f} MB/s  (range {lo:.3f}-{hi:.3f}){note}"


def hash_cached(path: Path, name: str) -> None:
    """One hashlib pass over a cached file, through a map (no copy into Python)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        with mmap.mmap(fd, 0, prot=mmap.PROT_READ) as m:
            h, view = hashlib.new(name), memoryview(m)
            for off in range(0, len(view), 1 << 20):
                h.update(view[off : off + (1 << 20)])
            view.release()
    finally:
        os.close(fd)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    size = args.size_mib * 2**20
    mb = size / 1e6
    work = Path(tempfile.mkdtemp(prefix="kt-bench-", dir=os.environ.get("BENCH_DIR", "/tmp")))
    src = work / "source.bin"
    with open(src, "wb") as f:
        block = os.urandom(2**20)
        for i in range(args.size_mib):
            f.write(block[:-8] + i.to_bytes(8, "little"))
    subprocess.run(["cat", str(src)], stdout=subprocess.DEVNULL, check=True)  # warm the cache
    copy = work / "copy.bin"

    def remove_copy() -> None:
        copy.unlink(missing_ok=True)

    def kernel_copy() -> None:
        subprocess.run(["cp", str(src), str(copy)], check=True)

    def fsync_copy() -> None:
        fd = os.open(copy, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)

    def copy_then_sha256sum() -> None:
        kernel_copy()
        subprocess.run(["sha256sum", str(copy)], check=True, stdout=subprocess.DEVNULL)

    os.environ["KACHERY_TASKS_DIR"] = str(work / "node")
    os.environ["KACHERY_TASKS_PROGRESS"] = "0"

    store = current_node().store

    def empty_store() -> None:
        shutil.rmtree(store.blobs)
        store.blobs.mkdir()
        store.index._conn.execute("DELETE FROM blobs")

    stored: list[str] = []

    def ours() -> None:
        stored.append(store.store_file(src))

    try:
        os.environ["KACHERY_CLOUD_DIR"] = str(work / "kachery-cloud")
        import kachery_cloud
    except ImportError:
        kachery_cloud = None

    def empty_theirs() -> None:
        shutil.rmtree(work / "kachery-cloud" / "sha1", ignore_errors=True)
        os.utime(src)  # defeat its cache of hashes by path and mtime: hash for real

    def theirs() -> None:
        kachery_cloud.store_file_local(str(src))

    t = {k: Timing() for k in ("cp", "fsync", "cp+fsync", "sha256", "sha1", "cp+sum", "ours",
                               "theirs", "info")}
    for _ in range(args.repeat):
        t["cp"].run(kernel_copy, remove_copy)
        t["fsync"].run(fsync_copy, sync=False)
        t["cp+fsync"].run(lambda: (kernel_copy(), fsync_copy()), remove_copy)
        t["sha256"].run(lambda: hash_cached(src, "sha256"))
        t["sha1"].run(lambda: hash_cached(src, "sha1"))
        t["ours"].run(ours, empty_store)
        t["info"].run(lambda: store.info(stored[-1]))
        if kachery_cloud is not None:
            t["theirs"].run(theirs, empty_theirs)
    remove_copy()
    for _ in range(min(args.repeat, 2)):  # sha256sum is slow here (no SHA-NI): two runs
        t["cp+sum"].run(copy_then_sha256sum, remove_copy)
    remove_copy()

    print(f"store_file of {args.size_mib} MiB ({args.repeat} runs each, page cache warm, "
          f"load {os.getloadavg()[0]:.2f})")
    print("parts, each alone:")
    print(t["cp"].line("cp (kernel copy, no flush)", mb))
    print(t["fsync"].line("fsync of the fresh copy", mb))
    print(t["cp+fsync"].line("cp + fsync", mb))
    print(t["sha256"].line("SHA-256 (hashlib, cached)", mb))
    print(t["sha1"].line("SHA-1 (hashlib, cached)", mb))
    print("whole operations:")
    print(t["cp+sum"].line("cp + sha256sum", mb))
    print(t["ours"].line("kachery-tasks store_file", mb, "  copy + fsync + SHA-256"))
    if kachery_cloud is not None:
        print(t["theirs"].line("kachery-cloud store_file_local", mb, "  SHA-1 + copy, no fsync"))
        print(f"  ratio ours / kachery-cloud    {t['ours'].best / t['theirs'].best:7.2f}"
              f"   (target <= 0.80; best against best; median against median "
              f"{t['ours'].median / t['theirs'].median:.2f})")
    print(f"  ratio ours / (cp+sha256sum)   {t['ours'].best / t['cp+sum'].best:7.2f}")
    print(t["info"].line("info, first after storing", mb, "  SHA-1 alias + chunk manifest"))

    uri = stored[-1]
    n = 100_000
    store.load_file(uri)
    start = time.perf_counter()
    for _ in range(n):
        store.load_file(uri)
    per_ours = (time.perf_counter() - start) / n * 1e6
    print(f"\nload_file of a stored URI ({n} calls)")
    print(f"  kachery-tasks load_file     {per_ours:7.2f} us/call  (target < 50)")
    if kachery_cloud is not None:
        kc_uri = kachery_cloud.store_file_local(str(src))
        m = 20_000
        start = time.perf_counter()
        for _ in range(m):
            kachery_cloud.load_file(kc_uri, local_only=True)
        per_kc = (time.perf_counter() - start) / m * 1e6
        print(f"  kachery-cloud load_file     {per_kc:7.2f} us/call")
        print(f"  ratio ours / kachery-cloud  {per_ours / per_kc:7.3f}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
