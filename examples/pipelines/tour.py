"""A short tour of kachery-tasks: store content, load it back, run a cached pipeline twice.

Run it with ``python examples/pipelines/tour.py``. It uses your node directory
($KACHERY_TASKS_DIR, or ~/.kachery-tasks), or a throwaway one with --temp.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from kachery_tasks.nodes import current_node


def files_tour(workdir: Path) -> None:
    import numpy as np

    import kachery_tasks as kachery

    print("1. Store a file: its URI is the SHA-256 of its bytes.")
    raw = workdir / "raw.dat"
    rng = np.random.default_rng(0)
    raw.write_bytes(rng.integers(-2000, 2000, size=(30_000, 8), dtype=np.int16).tobytes())
    uri = kachery.store_file(raw, label="raw.dat")
    print(f"   {uri}")

    print("2. Load it back: the path of the stored blob, no copy.")
    path = kachery.load_file(uri)
    print(f"   {path}")
    assert Path(path).read_bytes() == raw.read_bytes()

    print("3. Storing the same bytes again gives the same URI.")
    assert kachery.store_file(raw, label="raw.dat") == uri
    print("   same URI")

    info = kachery.load_file_info(uri)
    print(f"4. Info: {info.size} bytes, sha1 alias {info.sha1}, {info.chunks} chunks.")

    print("5. Values: JSON and arrays are stored deterministically.")
    meta = kachery.store_json({"sampling_rate": 30000, "channels": 8, "raw": uri})
    arr = kachery.store_npy(np.arange(10))
    print(f"   {meta}\n   {arr}")
    kachery.set_mutable("tour/latest-recording", meta)
    print("6. A mutable names the latest recording on this node:")
    print(f"   tour/latest-recording -> {kachery.get_mutable('tour/latest-recording')}")
    print(f"   {kachery.load_json(kachery.get_mutable('tour/latest-recording'))}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--temp", action="store_true", help="use a throwaway node directory")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="kachery-tour-") as tmp:
        if args.temp:
            os.environ["KACHERY_TASKS_DIR"] = str(Path(tmp) / "node")

        print(f"node directory: {current_node().dir.path}\n")
        files_tour(Path(tmp))
        print("\n7. Tasks: a spike-sorting pipeline of cached @pure steps, run twice.")
        import spike_sorting  # beside this file

        spike_sorting.main([])


if __name__ == "__main__":
    main()
