"""store_file and load_file beside their physical limit and the peer, in one run.

* store_file of a 1 GiB file vs. ``cp`` then ``sha256sum`` (two passes; target:
  at most 0.8x their time) and vs. kachery-cloud's ``store_file_local``.
* load_file per call vs. kachery-cloud's local load (target: under 50 us).
* MB/s beside ``sha256sum`` alone, the machine's own hashing speed.

Usage: python benchmarks/bench_store.py [--size-mib 1024]
(kachery-cloud comes from ``pip install -e '.[bench]'``.)
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(fn, repeat: int = 3) -> float:
    """Best of ``repeat`` wall-clock times of fn() (fn may clean up before each run)."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    size = args.size_mib * 2**20
    work = Path(tempfile.mkdtemp(prefix="kt-bench-", dir=os.environ.get("BENCH_DIR", "/tmp")))
    src = work / "source.bin"
    with open(src, "wb") as f:
        block = os.urandom(2**20)
        for i in range(args.size_mib):
            f.write(block[:-8] + i.to_bytes(8, "little"))
    subprocess.run(["cat", str(src)], stdout=subprocess.DEVNULL, check=True)  # warm the cache
    mb = size / 1e6

    def cp_then_sha256sum() -> None:
        dst = work / "cp.bin"
        dst.unlink(missing_ok=True)
        subprocess.run(["cp", str(src), str(dst)], check=True)
        subprocess.run(["sha256sum", str(dst)], check=True, stdout=subprocess.DEVNULL)

    def sha256sum_only() -> None:
        subprocess.run(["sha256sum", str(src)], check=True, stdout=subprocess.DEVNULL)

    os.environ["KACHERY_TASKS_DIR"] = str(work / "node")
    os.environ["KACHERY_TASKS_PROGRESS"] = "0"
    from kachery_tasks.storage.local import get_store

    store = get_store()

    def ours() -> None:
        shutil.rmtree(store.blobs)
        store.blobs.mkdir()
        store.index._conn.execute("DELETE FROM blobs")
        store.store_file(src)

    t_cp = timed(cp_then_sha256sum, args.repeat)
    (work / "cp.bin").unlink(missing_ok=True)
    t_sum = timed(sha256sum_only, args.repeat)
    t_ours = timed(ours, args.repeat)
    uri = store.store_file(src)

    try:
        os.environ["KACHERY_CLOUD_DIR"] = str(work / "kachery-cloud")
        import kachery_cloud

        def theirs() -> None:
            shutil.rmtree(work / "kachery-cloud" / "sha1", ignore_errors=True)
            os.utime(src)  # defeat its cache of hashes by path and mtime: hash for real
            kachery_cloud.store_file_local(str(src))

        t_kc = timed(theirs, args.repeat)
        kc_uri = kachery_cloud.store_file_local(str(src))
    except ImportError:
        kachery_cloud = None
        t_kc = None

    print(f"store_file of {args.size_mib} MiB (best of {args.repeat}, page cache warm)")
    print(f"  sha256sum alone (limit)     {t_sum:7.3f} s  {mb / t_sum:8.0f} MB/s")
    print(f"  cp + sha256sum              {t_cp:7.3f} s  {mb / t_cp:8.0f} MB/s")
    print(f"  kachery-tasks store_file    {t_ours:7.3f} s  {mb / t_ours:8.0f} MB/s"
          f"  (copy + fsync + sha256 + sha1 + chunk hashes)")
    if t_kc is not None:
        print(f"  kachery-cloud store_local   {t_kc:7.3f} s  {mb / t_kc:8.0f} MB/s")
    print(f"  ratio ours / (cp+sha256sum) {t_ours / t_cp:7.2f}   (target <= 0.80)")
    if t_kc is not None:
        print(f"  ratio ours / kachery-cloud  {t_ours / t_kc:7.2f}   (target < 1)")

    n = 100_000
    store.load_file(uri)
    t = time.perf_counter()
    for _ in range(n):
        store.load_file(uri)
    per_ours = (time.perf_counter() - t) / n * 1e6
    print(f"\nload_file of a stored URI ({n} calls)")
    print(f"  kachery-tasks load_file     {per_ours:7.2f} us/call  (target < 50)")
    if kachery_cloud is not None:
        m = 20_000
        t = time.perf_counter()
        for _ in range(m):
            kachery_cloud.load_file(kc_uri, local_only=True)
        per_kc = (time.perf_counter() - t) / m * 1e6
        print(f"  kachery-cloud load_file     {per_kc:7.2f} us/call")
        print(f"  ratio ours / kachery-cloud  {per_ours / per_kc:7.3f}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
