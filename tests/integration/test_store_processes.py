"""The content store under several processes, a killed writer and a second user."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from kachery_tasks.config import init_node_dir, node_dir
from kachery_tasks.storage.local import get_store

STORE_SCRIPT = """
import sys
from kachery_tasks.nodes import current_node
for path in sys.argv[1:]:
    print(current_node().store.store_file(path, progress=False), flush=True)
"""


def _spawn(*paths: str, env=None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", STORE_SCRIPT, *paths],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )


def test_kill_during_store_leaves_no_partial_blob(tmp_path):
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        for _ in range(64):
            f.write(os.urandom(2**20) * 4)  # 256 MiB, fast to write, slow enough to copy
    store = get_store(node_dir())
    proc = _spawn(str(big))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # wait until the copy is under way
        temps = list(store.incoming.iterdir())
        if temps and temps[0].stat().st_size > 0:
            break
        time.sleep(0.005)
    else:
        pytest.fail("the store never started writing")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    blobs = [p for p in store.blobs.rglob("*") if p.is_file()]
    assert blobs == []
    assert store.index.stored_bytes() == (0, 0)
    # The next store of the same file succeeds and the store verifies clean.
    uri = store.store_file(big, progress=False)
    assert store.verify(progress=False).corrupt == []
    with open(store.load_file(uri), "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == uri[9:73]


def test_several_processes_storing_at_once_lose_nothing(tmp_path):
    same = tmp_path / "same.bin"
    same.write_bytes(os.urandom(3 * 2**20))
    own = []
    for i in range(4):
        p = tmp_path / f"own{i}.bin"
        p.write_bytes(os.urandom(2**20 + i))
        own.append(p)
    procs = [_spawn(str(same), str(own[i])) for i in range(4)]
    outputs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
        outputs.append(out.decode().split())
    assert len({o[0] for o in outputs}) == 1  # everyone got the same URI for the same bytes
    store = get_store(node_dir())
    report = store.verify(progress=False)
    assert report.checked == 5 and report.corrupt == [] and report.adopted == 0
    for o in outputs:
        for uri in o:
            assert store.has(uri)
    assert list(store.incoming.iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_group_shared_node_dir_works_for_another_member():
    """One user's blob directories must not block another member's writes."""
    tmp_path = Path(tempfile.mkdtemp(prefix="kachery-shared-"))  # reachable by other users
    os.chmod(tmp_path, 0o755)
    shared = tmp_path / "lab"
    node = init_node_dir(shared, shared=True)
    os.chown(shared, 0, 65534)  # group "nogroup": both root and nobody write through it
    node = init_node_dir(shared)
    old = os.umask(0o022)
    try:
        store = get_store(node)
        store.store_bytes(b"stored by the first member")  # creates sha256/xx/yy dirs, index.db
    finally:
        os.umask(old)
    src = tmp_path / "second.txt"
    src.write_bytes(b"stored by the second member")
    os.chmod(src, 0o644)
    # The same two-level directory as the first blob, to hit the dirs the first user made.
    first = hashlib.sha256(b"stored by the first member").hexdigest()
    script = f"""
import os, sys
from pathlib import Path
from kachery_tasks.config import NodeDir
from kachery_tasks.storage.local import LocalStore
# Import everything first: after the switch the interpreter's own files may be unreadable.
os.setgroups([]); os.setgid(65534); os.setuid(65534); os.umask(0o022)
store = LocalStore(NodeDir(Path({str(shared)!r})))
print(store.store_file({str(src)!r}, progress=False))
print(store.load_file('sha256://{first}'))
"""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    uri = r.stdout.decode().split()[0]
    assert get_store(node).has(uri)
    shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_private_node_dir_of_another_user_is_a_clear_permission_error():
    tmp_path = Path(tempfile.mkdtemp(prefix="kachery-private-"))
    os.chmod(tmp_path, 0o755)
    node = init_node_dir(tmp_path / "node")
    get_store(node).store_bytes(b"root's content")
    src = tmp_path / "f.txt"
    src.write_bytes(b"x")
    os.chmod(src, 0o644)
    script = f"""
from pathlib import Path
import os
from kachery_tasks.config import NodeDir
from kachery_tasks.errors import StoragePermissionError
from kachery_tasks.storage.local import LocalStore
os.setgroups([]); os.setgid(65534); os.setuid(65534)
try:
    LocalStore(NodeDir(Path({str(node.path)!r}))).store_file({str(src)!r})
except StoragePermissionError as e:
    print("permission:", e)
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    out = r.stdout.decode()
    assert out.startswith("permission:") and "chmod" in out and str(node.path) in out
    shutil.rmtree(tmp_path, ignore_errors=True)


DOWNLOAD_SCRIPT = """
import sys
from kachery_tasks.storage.buckets import open_bucket
from kachery_tasks.nodes import current_node
from kachery_tasks.storage.sync import download
store, bucket = current_node().store, open_bucket(sys.argv[1])
sys.stdin.readline()  # everyone starts at once
print(download(store, bucket, sys.argv[2], progress=False, threads=2), flush=True)
"""


def test_processes_downloading_one_file_at_once_all_get_it(tmp_path):
    from kachery_tasks.storage.buckets import open_bucket
    from kachery_tasks.storage.sync import upload

    a = tmp_path / "a"
    a.mkdir()
    (a / "config.toml").write_text('[store]\nchunk_size = "1MiB"\n')
    data = os.urandom(48 * 2**20)
    uri = get_store(init_node_dir(a)).store_bytes(data)
    bucket_url = f"file://{tmp_path}/bucket"
    upload(get_store(init_node_dir(a)), open_bucket(bucket_url), uri)
    env = {**os.environ, "KACHERY_TASKS_DIR": str(tmp_path / "b")}
    procs = [
        subprocess.Popen([sys.executable, "-c", DOWNLOAD_SCRIPT, bucket_url, uri], env=env,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(3)
    ]
    for p in procs:
        p.stdin.write(b"go\n")
    for p in procs:
        p.stdin.flush()
    paths = set()
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
        paths.add(out.decode().strip())
    assert len(paths) == 1
    with open(paths.pop(), "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == hashlib.sha256(data).hexdigest()
    assert list((tmp_path / "b" / "store" / "incoming").iterdir()) == []
