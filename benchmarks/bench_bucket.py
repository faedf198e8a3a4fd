"""Bucket transfers against a GCS emulator, beside the plain client calls, in one run.

* download of a large file (chunks in parallel, verified) vs. one plain
  ``blob.download_to_filename`` of the same object (target: at least 1.5x faster);
* upload vs. one plain ``blob.upload_from_filename`` (target: no slower);
* re-upload of content the bucket already has (target: under 100 ms).

Starts fake-gcs-server itself. Usage: python benchmarks/bench_bucket.py [--size-mib 1024]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.gcs_emulator


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=8)
    args = ap.parse_args()
    from tests.gcs_emulator import Emulator

    work = Path(tempfile.mkdtemp(prefix="kt-bench-bucket-"))
    emu = Emulator(work / "gcs")
    emu.start()
    try:
        os.environ["STORAGE_EMULATOR_HOST"] = emu.url
        os.environ["KACHERY_TASKS_PROGRESS"] = "0"
        emu.create_bucket("bench")
        from google.cloud import storage

        from kachery_tasks.config import init_node_dir
        from kachery_tasks.storage.buckets.gcs import GCSBucket
        from kachery_tasks.storage.local import get_store
        from kachery_tasks.storage.sync import download, upload

        src = work / "src.bin"
        with open(src, "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(2**20))
        size_mb = args.size_mib * 2**20 / 1e6
        a = get_store(init_node_dir(work / "a"))
        uri = a.store_file(src)

        client = storage.Client()
        plain = client.bucket("bench").blob("plain/src.bin")
        t = time.perf_counter()
        plain.upload_from_filename(str(src))
        t_plain_up = time.perf_counter() - t

        bucket = GCSBucket("gs://bench/kachery")
        t = time.perf_counter()
        upload(a, bucket, uri, threads=args.threads)
        t_up = time.perf_counter() - t
        t = time.perf_counter()
        upload(a, bucket, uri, threads=args.threads)
        t_reup = time.perf_counter() - t

        # Best of two, alternating; the disk is synced before each so that writes
        # left by the step before do not land on whichever download runs next.
        t_plain_down = t_down = float("inf")
        for rep in range(2):
            os.sync()
            t = time.perf_counter()
            plain.download_to_filename(str(work / "plain-copy.bin"))
            t_plain_down = min(t_plain_down, time.perf_counter() - t)
            (work / "plain-copy.bin").unlink()

            b = get_store(init_node_dir(work / f"b{rep}"))
            os.sync()
            t = time.perf_counter()
            download(b, bucket, uri, threads=args.threads)
            t_down = min(t_down, time.perf_counter() - t)

        print(f"{args.size_mib} MiB through fake-gcs-server on 127.0.0.1, {args.threads} threads")
        print(f"  plain upload_from_filename     {t_plain_up:7.2f} s  "
              f"{size_mb / t_plain_up:7.0f} MB/s")
        print(f"  kachery-tasks upload           {t_up:7.2f} s  {size_mb / t_up:7.0f} MB/s"
              f"   ratio {t_up / t_plain_up:5.2f} (target <= 1)")
        print(f"  kachery-tasks re-upload        {t_reup * 1000:7.1f} ms (target < 100 ms)")
        print(f"  plain download_to_filename     {t_plain_down:7.2f} s  "
              f"{size_mb / t_plain_down:7.0f} MB/s")
        print(f"  kachery-tasks download         {t_down:7.2f} s  {size_mb / t_down:7.0f} MB/s"
              f"   speed-up {t_plain_down / t_down:5.2f}x (target >= 1.5, verification included)")
    finally:
        emu.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

# Note on the download figure: against an emulator on loopback with 2 cores the
# transfer is CPU-bound, not latency-bound. Per GiB, the download must do three
# SHA-256/SHA-1 passes (each chunk's SHA-256, the whole file's SHA-256 and SHA-1:
# about 0.6 s of CPU each even from cache with SHA-NI), receive the bytes, write
# them and read them back, while fake-gcs-server spends about 0.4 s of CPU
# sending them: about 3 CPU-seconds, so about 1.5 s on two cores. The plain
# client does one receive, one write and a CRC32C (about 1.8 CPU-seconds on one
# thread), so 1.5x faster than it is out of reach here. Parallel chunks pay off
# where each stream is limited by the network (a real bucket over a WAN).
