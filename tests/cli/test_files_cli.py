import hashlib
import json
import os

import pytest

from kachery_tasks.nodes import current_node


def _ok(result):
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


def test_store_load_cat_info(run_cli, tmp_path):
    data = os.urandom(1000)
    src = tmp_path / "raw.dat"
    src.write_bytes(data)
    uri = _ok(run_cli("store", str(src), "--label", "raw.dat")).strip()
    assert uri == f"sha256://{hashlib.sha256(data).hexdigest()}?label=raw.dat&size=1000"
    dest = tmp_path / "copy.dat"
    assert _ok(run_cli("load", uri, "--dest", str(dest))).strip() == str(dest)
    assert dest.read_bytes() == data
    assert run_cli("cat", uri, "--start", "100", "--end", "200").stdout == data[100:200]
    assert run_cli("cat", uri).stdout == data
    info = json.loads(_ok(run_cli("info", uri, "--json")))
    assert info["size"] == 1000 and info["label"] == "raw.dat" and info["chunks"] == 0
    text = _ok(run_cli("info", uri))
    assert "size:" in text and "path:" in text and "label:" in text


def test_mutables(run_cli):
    _ok(run_cli("mutable", "set", "alias/latest", "sha256://" + "a" * 64))
    _ok(run_cli("mutable", "set", "n", "3"))
    _ok(run_cli("mutable", "set", "s", "3", "--string"))
    assert _ok(run_cli("mutable", "get", "alias/latest")).strip() == "sha256://" + "a" * 64
    assert _ok(run_cli("mutable", "get", "n", "--json")).strip() == "3"
    assert _ok(run_cli("mutable", "get", "s", "--json")).strip() == '"3"'
    assert "alias/latest" in _ok(run_cli("mutable", "ls"))
    _ok(run_cli("mutable", "delete", "n"))
    missing = run_cli("mutable", "get", "n")
    assert missing.returncode == 1 and b"no mutable named" in missing.stderr


def test_gc_pin_ls(run_cli, tmp_path):
    uris = []
    for i in range(3):
        p = tmp_path / f"f{i}"
        p.write_bytes(bytes([i]) * 1000)
        uris.append(_ok(run_cli("store", str(p))).strip())
    _ok(run_cli("pin", uris[0]))
    out = _ok(run_cli("gc", "--max-size", "0"))
    assert "evicted 0 blobs" in out and "kept 2 blobs used in the last minute" in out
    _age_the_store()
    out = _ok(run_cli("gc", "--max-size", "0"))
    assert "evicted 2 blobs" in out
    listing = _ok(run_cli("ls"))
    assert uris[0].split("?")[0] in listing and uris[1].split("?")[0] not in listing


def _age_the_store():
    """As if the node's content was last used long ago."""

    store = current_node().store
    for row in list(store.index.rows()):
        store.index.touch(row.sha256, 1000.0)


def test_gc_without_a_size_cleans_up_and_evicts_nothing(run_cli, tmp_path, node_path):
    src = tmp_path / "f"
    src.write_bytes(b"kept")
    uri = _ok(run_cli("store", str(src))).strip()
    _age_the_store()
    partial = node_path / "store" / "incoming" / f"partial-{'e' * 64}"
    partial.write_bytes(os.urandom(10_000))
    os.utime(partial, (0, 0))
    out = _ok(run_cli("gc"))
    assert "evicted nothing" in out and "removed 1 abandoned partial downloads" in out
    assert not partial.exists()
    assert uri.split("?")[0] in _ok(run_cli("ls"))


@pytest.mark.parametrize("command", ["store", "link"])
def test_a_named_pipe_is_refused_in_one_line(command, tmp_path):
    import subprocess
    import sys

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    try:
        r = subprocess.run([sys.executable, "-m", "kachery_tasks", command, str(fifo)],
                           capture_output=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"'kachery-tasks {command}' blocked on a named pipe")
    assert r.returncode == 1 and b"named pipe" in r.stderr
    assert r.stderr.decode().count("\n") == 1 and b"Traceback" not in r.stderr


@pytest.mark.parametrize(
    "args,message",
    [
        (("load", "sha256://abc"), b"64 hex digits"),
        (("load", "sha256://" + "0" * 64), b"not in this node's store"),
        (("store", "/nonexistent/file"), b"no such file"),
        (("store", "/"), b"is a directory"),
        (("gc", "--max-size", "lots"), b"not a size"),
        (("cat", "sha256://" + "0" * 64, "--start", "-4"), b"--start: must be a whole number"),
    ],
)
def test_errors_are_one_line_without_traceback(run_cli, args, message):
    r = run_cli(*args)
    assert r.returncode == 1
    assert message in r.stderr
    assert b"Traceback" not in r.stderr
    assert r.stderr.decode().count("\n") == 1


def test_debug_shows_traceback(run_cli):
    r = run_cli("--debug", "load", "sha256://abc")
    assert r.returncode != 0 and b"Traceback" in r.stderr


def test_every_command_has_help_with_an_example(run_cli):
    from kachery_tasks.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        assert "example" in (p.epilog or ""), name
    top = _ok(run_cli("--help"))
    assert "store" in top and "examples:" in top


def test_verify_reports_corruption(run_cli, tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"will be corrupted")
    uri = _ok(run_cli("store", str(p))).strip()
    blob = _ok(run_cli("load", uri)).strip()
    os.chmod(blob, 0o644)
    with open(blob, "r+b") as f:
        f.write(b"W")
    r = run_cli("verify")
    assert r.returncode == 1 and b"corrupt, removed" in r.stdout
    assert _ok(run_cli("verify")).startswith("checked 0 blobs")


def test_progress_bar_only_when_asked(run_cli, tmp_path):
    p = tmp_path / "big"
    p.write_bytes(os.urandom(3 * 2**20))
    quiet = run_cli("store", str(p))
    assert quiet.stderr == b""
    loud = run_cli("store", str(p), "--progress")
    assert b"100.0%" in loud.stderr


def test_import_kachery(run_cli, tmp_path):
    data = b"from kachery"
    sha1 = hashlib.sha1(data).hexdigest()
    d = tmp_path / "kc" / "sha1" / sha1[:2] / sha1[2:4] / sha1[4:6]
    d.mkdir(parents=True)
    (d / sha1).write_bytes(data)
    assert "imported 1 files" in _ok(run_cli("import-kachery", str(tmp_path / "kc")))
    assert run_cli("cat", f"sha1://{sha1}").stdout == data


def test_info_describes_a_zarr_array(run_cli, tmp_path):
    import json

    import numpy as np

    from kachery_tasks.zarr_arrays import store_zarr

    uri = store_zarr(np.zeros((20, 30)), chunks=(10, 10))
    out = _ok(run_cli("info", uri))
    assert "zarr array, shape (20, 30), float64, chunks (10, 10)" in out
    assert "blobs:" in out and "here" in out
    doc = json.loads(_ok(run_cli("info", uri, "--json")))
    assert doc["zarr"]["shape"] == [20, 30] and doc["zarr"]["blobs"] == doc["zarr"]["blobs_here"]
    plain = tmp_path / "plain.txt"
    plain.write_text("not an array")
    other = _ok(run_cli("store", str(plain))).strip()
    assert not [row for row in _ok(run_cli("info", other)).splitlines()
                if row.startswith(("zarr:", "blobs:"))]


@pytest.mark.parametrize(
    "text,stored",
    [("NaN", "NaN"), ("Infinity", "Infinity"), ("[1, NaN]", "[1, NaN]"), ("1e400", "1e400"),
     ("3", 3), ("1.5", 1.5), ('"x"', "x"), ('{"a": [1]}', {"a": [1]}), ("text", "text")],
)
def test_mutable_set_stores_what_json_cannot_hold_as_a_string(text, stored):
    from kachery_tasks import get_mutable
    from tests.cli.inprocess import run_main

    r = run_main("mutable", "set", "k", "--", text)  # "--": argparse takes -x for an option
    assert r.status == 0, r.stderr
    assert get_mutable("k") == stored and type(get_mutable("k")) is type(stored)


def test_mutable_set_too_deep_is_refused_unless_as_a_string():
    from kachery_tasks import get_mutable
    from tests.cli.inprocess import run_main

    deep = "[" * 101 + "]" * 101
    r = run_main("mutable", "set", "k", deep)
    assert r.status == 1 and "more than 100 levels deep" in r.stderr and "--string" in r.stderr
    assert get_mutable("k") is None
    assert run_main("mutable", "set", "k", "[" * 100 + "]" * 100).status == 0
    assert run_main("mutable", "set", "k", deep, "--string").status == 0
    assert get_mutable("k") == deep


@pytest.mark.parametrize("unpin", [False, True])
def test_pin_checks_every_uri_before_changing_any(tmp_path, unpin):
    from kachery_tasks import store_file
    from tests.cli.inprocess import run_main

    (tmp_path / "a").write_bytes(b"a" * 100)
    a = store_file(tmp_path / "a")
    if unpin:
        current_node().store.pin(a)
    action = "unpin" if unpin else "pin"
    for bad in ("bad", "sha256://" + "0" * 64):
        r = run_main(action, a, bad)
        assert r.status == 1 and r.stderr.startswith("error: ")
        assert current_node().store.info(a).pinned is unpin  # unchanged
    assert run_main(action, a).status == 0
    assert current_node().store.info(a).pinned is not unpin


def test_verify_makes_a_damaged_manifest_again(run_cli, tmp_path, node_path):
    """After verify removes a damaged manifest, the file still works everywhere."""
    node_path.mkdir()
    (node_path / "config.toml").write_text('[store]\nchunk_size = "4KiB"\n')
    data = os.urandom(4096 * 2 + 10)
    src = tmp_path / "big"
    src.write_bytes(data)
    uri = _ok(run_cli("store", str(src))).strip()
    info = json.loads(_ok(run_cli("info", uri, "--json")))  # chunks and alias made now
    assert info["chunks"] == 3 and info["sha1"] == hashlib.sha1(data).hexdigest()
    manifest = _ok(run_cli("load", info["manifest_uri"])).strip()
    os.chmod(manifest, 0o644)
    with open(manifest, "r+b") as f:
        f.write(b"W")
    r = run_cli("verify")
    out = r.stdout.decode()
    assert r.returncode == 1 and f"corrupt, removed: {info['manifest_uri']}" in out
    assert f"made again from the intact file: sha256://{info['sha256']}" in out
    assert "chunks:    3 (manifest" in _ok(run_cli("info", uri))
    up = run_cli("upload", uri, "--bucket", f"file://{tmp_path}/bucket")
    assert up.returncode == 0, up.stderr.decode()
    assert _ok(run_cli("verify")) == "checked 2 blobs\n"
