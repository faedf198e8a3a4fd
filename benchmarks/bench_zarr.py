"""store_zarr / load_zarr beside zarr's own LocalStore, same array and chunking.

* store: a float32 array (default 2 GiB) written with store_zarr vs.
  ``zarr.create_array(LocalStore(dir), data=...)``; ratio printed (1.0 = parity).
* load: the whole array read back through load_zarr vs. zarr.open_array on the
  LocalStore.
* one chunk: the time to read one chunk through each (best of many).

Defaults: a 2 GiB array in 1 MiB chunks (the issue's figures); ``--chunk-mib 4``
shows the effect of bigger chunks (one chunk then costs ~5 ms in zarr's own
decoding, whichever the store).

Each run starts from a fresh node directory, so store_zarr pays for writing
every blob: SHA-256 of every chunk, and a flush of all of them to disk when
the array is sealed (zarr's LocalStore neither hashes nor flushes, which is
the store-side gap). Run with PYTHONPATH set to the checkout if the
installed package is elsewhere.

Usage: python benchmarks/bench_zarr.py [--size-mib 2048] [--chunk-mib 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path


def best(fn, repeat: int) -> float:
    t_best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        t_best = min(t_best, time.perf_counter() - t)
    return t_best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=2048)
    ap.add_argument("--chunk-mib", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kt-bench-zarr-", dir=os.environ.get("BENCH_DIR", "/tmp")))
    os.environ["KACHERY_TASKS_PROGRESS"] = "0"

    import numpy as np
    import zarr

    from kachery_tasks.storage.local import _stores
    from kachery_tasks.zarr_arrays import load_zarr, store_zarr

    n = args.size_mib * 2**20 // 4
    cols = 1024
    rows = n // cols
    chunk_rows = args.chunk_mib * 2**20 // 4 // cols
    data = np.random.default_rng(0).standard_normal((rows, cols), dtype="f4")
    chunks = (chunk_rows, cols)
    mb = data.nbytes / 1e6
    print(f"array {data.shape} float32 = {mb:.0f} MB, chunks {chunks} "
          f"({args.chunk_mib} MiB, {rows // chunk_rows} chunks)")

    counter = iter(range(10**6))
    uris: list[str] = []

    def kt_store() -> None:
        os.environ["KACHERY_TASKS_DIR"] = str(work / f"node{next(counter)}")
        _stores.clear()
        uris.append(store_zarr(data, chunks=chunks))

    def zarr_store() -> None:
        d = work / "local.zarr"
        shutil.rmtree(d, ignore_errors=True)
        zarr.create_array(zarr.storage.LocalStore(d), data=data, chunks=chunks)

    t_kt = best(kt_store, args.repeat)
    t_z = best(zarr_store, args.repeat)
    print(f"store  kachery {t_kt:7.3f} s ({mb / t_kt:6.0f} MB/s)   zarr LocalStore "
          f"{t_z:7.3f} s ({mb / t_z:6.0f} MB/s)   ratio {t_kt / t_z:.2f}")

    # zarr's LocalStore leaves its writes in the page cache; let the kernel write them
    # now, so that its disk work does not land on whichever load happens to run next.
    os.sync()
    uri = uris[-1]
    kz = load_zarr(uri)
    lz = zarr.open_array(zarr.storage.LocalStore(work / "local.zarr"), mode="r")
    assert np.array_equal(kz[:chunk_rows], data[:chunk_rows])
    t_kl = best(lambda: kz[:], args.repeat)
    t_zl = best(lambda: lz[:], args.repeat)
    print(f"load   kachery {t_kl:7.3f} s ({mb / t_kl:6.0f} MB/s)   zarr LocalStore "
          f"{t_zl:7.3f} s ({mb / t_zl:6.0f} MB/s)   ratio {t_kl / t_zl:.2f}")

    row = chunk_rows * (rows // chunk_rows // 2)
    t_k1 = best(lambda: kz[row:row + chunk_rows], 20)
    t_z1 = best(lambda: lz[row:row + chunk_rows], 20)
    t_open = best(lambda: load_zarr(uri)[row:row + chunk_rows], 20)
    print(f"1 chunk kachery {t_k1 * 1e3:6.2f} ms (with load_zarr {t_open * 1e3:6.2f} ms)   "
          f"zarr LocalStore {t_z1 * 1e3:6.2f} ms   ratio {t_k1 / t_z1:.2f}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
