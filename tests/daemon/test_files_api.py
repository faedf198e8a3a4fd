"""Files over HTTP: upload streamed to disk, download with one Range, info, search by label."""

from __future__ import annotations

import hashlib
import os
import threading
import time

import httpx
import pytest

from tests.daemon.conftest import OCTETS, token_of


def _store(client, data: bytes, label: str | None = None) -> str:
    r = client.post("/api/files", content=data, headers=OCTETS,
                    params={"label": label} if label else None)
    assert r.status_code == 200, r.text
    return r.json()["uri"]


def test_upload_then_download_and_info(client, node):
    data = os.urandom(300_000)
    uri = _store(client, data, "raw.dat")
    sha = hashlib.sha256(data).hexdigest()
    assert uri == f"sha256://{sha}?label=raw.dat&size={len(data)}"
    assert node.load_bytes(uri) == data
    r = client.get(f"/api/files/{sha}")
    assert r.status_code == 200 and r.content == data
    assert r.headers["accept-ranges"] == "bytes" and r.headers["etag"] == f'"{sha}"'
    assert r.headers["content-length"] == str(len(data))
    assert "filename*=UTF-8''raw.dat" in r.headers["content-disposition"]
    info = client.get(f"/api/files/{sha}/info").json()
    assert (info["size"], info["label"], info["sha256"]) == (len(data), "raw.dat", sha)


@pytest.mark.parametrize(("header", "span"), [
    ("bytes=0-0", (0, 1)), ("bytes=100-199", (100, 200)), ("bytes=999-", (999, 1000)),
    ("bytes=-10", (990, 1000)), ("bytes=500-5000", (500, 1000)),
])
def test_a_range_is_206_with_exactly_those_bytes(client, header, span):
    data = os.urandom(1000)
    sha = hashlib.sha256(data).hexdigest()
    _store(client, data)
    r = client.get(f"/api/files/{sha}", headers={"Range": header})
    assert r.status_code == 206
    assert r.content == data[span[0]:span[1]]
    assert r.headers["content-range"] == f"bytes {span[0]}-{span[1] - 1}/1000"
    assert r.headers["content-length"] == str(span[1] - span[0])


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=2000-3000", "bytes=0-1,5-6",
                                    "bytes=x-", "lines=1-2"])
def test_a_bad_range_is_416_with_the_size(client, header):
    data = os.urandom(1000)
    sha = hashlib.sha256(data).hexdigest()
    _store(client, data)
    r = client.get(f"/api/files/{sha}", headers={"Range": header})
    assert r.status_code == 416
    assert r.headers["content-range"] == "bytes */1000"
    assert r.json()["error"]


def test_a_large_file_arrives_whole_in_pieces(client, monkeypatch):
    from kachery_tasks.daemon import blobs

    monkeypatch.setattr(blobs, "PIECE", 4096)  # many pieces for a small file
    data = os.urandom(50_000)
    sha = hashlib.sha256(data).hexdigest()
    _store(client, data)
    assert client.get(f"/api/files/{sha}").content == data
    assert client.get(f"/api/files/{sha}", headers={"Range": "bytes=4000-12000"}).content \
        == data[4000:12001]


def test_missing_content_is_404_and_a_bad_id_422(client):
    r = client.get("/api/files/" + "ab" * 32)
    assert r.status_code == 404 and "not in this node's store" in r.json()["error"]
    r = client.get("/api/files/xyz")
    assert r.status_code == 422 and "sha256" in r.json()["error"]


def test_list_and_search_by_label(client):
    a = _store(client, b"alpha", "Spikes-2024.npy")
    b = _store(client, b"beta", "raw.dat")
    found = client.get("/api/files", params={"label": "spikes"}).json()
    assert [f["uri"] for f in found["files"]] == [a.split("?")[0]] and found["total"] == 1
    every = client.get("/api/files").json()
    assert {f["uri"] for f in every["files"]} == {a.split("?")[0], b.split("?")[0]}
    assert client.get("/api/files", params={"limit": 1}).json()["total"] == 2


def test_a_bad_label_is_refused_before_anything_is_stored(client, node):
    r = client.post("/api/files", params={"label": "x" * 1001}, content=b"data",
                    headers=OCTETS)
    assert r.status_code == 422 and "label" in r.json()["error"]
    assert list(node.store.list()) == [] and _incoming(node) == []


@pytest.mark.parametrize("kind", [None, "application/json", "text/plain"])
def test_an_upload_of_another_content_type_is_415(client, node, kind):
    r = client.post("/api/files", content=b"data",
                    headers={"Content-Type": kind} if kind else {})
    assert r.status_code == 415 and "application/octet-stream" in r.json()["error"]
    assert list(node.store.list()) == []


def test_an_empty_file_is_content_too(client):
    uri = _store(client, b"")
    assert uri.startswith("sha256://e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b")


def _incoming(node) -> list[str]:
    return os.listdir(node.store.incoming)


def test_an_upload_is_written_to_disk_as_it_arrives(served):
    """The server holds at most a piece of the body in memory: the first megabyte is on
    disk, in the store's incoming directory, before the client sends the rest."""
    node = served.node
    first = os.urandom(2**20)
    rest = os.urandom(2**20)
    seen: list[int] = []

    def body():
        yield first
        deadline = time.monotonic() + 10
        while True:  # wait until the server wrote what it received
            sizes = [os.path.getsize(node.store.incoming / n) for n in _incoming(node)]
            if sizes and max(sizes) >= len(first):
                seen.append(max(sizes))
                break
            assert time.monotonic() < deadline, "the first megabyte never reached the disk"
            time.sleep(0.01)
        yield rest

    r = httpx.post(f"{served.url}/api/files", content=body(), timeout=30,
                   headers={**OCTETS, "Authorization": f"Bearer {token_of(served)}"})
    assert r.status_code == 200, r.text
    assert seen and seen[0] < len(first) + len(rest)
    assert node.load_bytes(r.json()["uri"]) == first + rest
    assert _incoming(node) == []


def test_an_upload_cut_short_leaves_nothing(served):
    node = served.node
    started = threading.Event()

    class Cut(Exception):
        pass

    def body():
        yield os.urandom(2**20)
        started.set()
        deadline = time.monotonic() + 10
        while not _incoming(node):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        raise Cut

    with pytest.raises(Cut):
        httpx.post(f"{served.url}/api/files", content=body(), timeout=30,
                   headers={**OCTETS, "Authorization": f"Bearer {token_of(served)}"})
    deadline = time.monotonic() + 10
    while _incoming(node):
        assert time.monotonic() < deadline, "the partial upload was left in incoming/"
        time.sleep(0.02)
    assert list(node.store.list()) == []
