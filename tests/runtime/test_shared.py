"""Pure results shared through a bucket: computed once, anywhere."""

import base64
import hashlib
import json

import numpy as np
import pytest
import task_defs
from hypothesis import given
from hypothesis import strategies as st

from kachery_tasks.envelopes import seal
from kachery_tasks.errors import EnvelopeError
from kachery_tasks.keys import KeyPair
from kachery_tasks.remotes.bucket import BucketRemote
from kachery_tasks.runtime import cache as cache_mod
from kachery_tasks.runtime import shared as shared_mod
from kachery_tasks.storage.layout import result_key
from tests.network.tasks.planted import plant_record


@pytest.mark.parametrize("shared", ["file", "gs"], indirect=True)
def test_a_collaborators_result_is_loaded_not_recomputed(shared):
    use, bucket = shared
    x = np.arange(1000.0)
    use("a")
    before = task_defs.calls["scale"]
    y = task_defs.scale(x, 3.0)
    assert task_defs.calls["scale"] == before + 1
    tid = task_defs.scale.task_id(x, 3.0)
    doc = json.loads(bucket.get(result_key(tid)))
    node_a = doc["signer"]
    use("b")
    z = task_defs.scale(x, 3.0)
    assert task_defs.calls["scale"] == before + 1  # not computed again
    np.testing.assert_array_equal(y, z)
    row = cache_mod.current().records.result(tid)
    assert row.node == node_a != cache_mod.current().node_id


def _served_after_tampering(shared, a: int, b: int, tamper) -> bool:
    """Node a computes add(a, b) and publishes it, ``tamper(doc)`` edits the published
    document, node b calls add(a, b): True when b was served it (not computed it)."""
    use, bucket = shared
    use("a")
    task_defs.add(a, b)
    key = result_key(task_defs.add.task_id(a, b))
    doc = json.loads(bucket.get(key))
    tamper(doc)
    bucket.delete(key)
    bucket.put(key, json.dumps(doc).encode())
    use("b")
    before = task_defs.calls["add"]
    assert task_defs.add(a, b) == a + b
    return task_defs.calls["add"] == before


@pytest.mark.parametrize("shared", ["file"], indirect=True)
def test_a_forged_record_is_ignored(shared):
    def tamper(doc):
        doc["body"]["finished"] += 1  # tampered after signing: only the signature can tell

    assert not _served_after_tampering(shared, 5, 6, tamper)  # computed here instead


@pytest.mark.parametrize("shared", ["file", "gs"], indirect=True)
def test_a_forged_record_is_replaced_by_the_node_that_computes_the_result(shared):
    use, bucket = shared

    def tamper(doc):
        doc["body"]["finished"] += 1

    assert not _served_after_tampering(shared, 9, 10, tamper)  # b computed it...
    tid = task_defs.add.task_id(9, 10)
    doc = json.loads(bucket.get(result_key(tid)))
    assert doc["signer"] == cache_mod.current().node_id  # ...and its record replaced the forgery
    use("c")
    before = task_defs.calls["add"]
    assert task_defs.add(9, 10) == 19
    assert task_defs.calls["add"] == before  # so c is served b's result


@pytest.mark.parametrize("shared", ["file"], indirect=True)
def test_publish_replaces_a_record_whose_signer_the_caller_does_not_trust(shared):
    use, bucket = shared
    use("a")
    task_defs.add(11, 12)
    tid = task_defs.add.task_id(11, 12)
    bucket.delete(result_key(tid))
    plant_record(bucket, tid, task_defs.add.name, 0)  # well formed and validly signed
    c = cache_mod.current()
    remote = BucketRemote(bucket)
    assert not shared_mod.publish(c, tid, [remote])  # a plain bucket serves any signer
    assert shared_mod.publish(c, tid, [remote], trusts=lambda node: node == c.node_id)
    assert json.loads(bucket.get(result_key(tid)))["signer"] == c.node_id


@pytest.mark.parametrize("shared", ["file"], indirect=True)
def test_a_record_signed_by_another_key_than_its_node_is_ignored(shared):
    def tamper(doc):
        intruder = KeyPair.generate()  # a valid signature, but not by the node the record names
        doc.update(seal("result-record", doc["body"], intruder).to_dict())
        assert doc["signer"] == intruder.public_hex != doc["body"]["node"]

    assert not _served_after_tampering(shared, 7, 8, tamper)  # computed here instead
    tid = task_defs.add.task_id(7, 8)
    assert cache_mod.current().records.result(tid).node == cache_mod.current().node_id


@pytest.mark.parametrize("shared", ["file"], indirect=True)
def test_sync_publishes_results_computed_before_the_bucket(shared, monkeypatch, run_cli, tmp_path):
    use, bucket = shared
    use("a")
    monkeypatch.delenv("KACHERY_TASKS_BUCKET")
    task_defs.add(40, 2)
    tid = task_defs.add.task_id(40, 2)
    assert not bucket.exists(result_key(tid))
    r = run_cli("sync", "--bucket", bucket.url)
    assert r.returncode == 0, r.stderr
    assert b"published 1 task results" in r.stdout
    assert bucket.exists(result_key(tid))
    shown = run_cli("tasks", "show", tid)
    assert b"(this node)" in shown.stdout


@pytest.mark.parametrize("shared", ["file"], indirect=True)
def test_a_zarr_result_travels_with_its_chunks(shared, monkeypatch):
    import zarr

    use, _bucket = shared
    monkeypatch.setenv("KACHERY_TASKS_ZARR_THRESHOLD", str(64 * 1024))
    x = np.arange(40_000, dtype=np.float64)  # 320 kB: stored as zarr
    use("a")
    before = task_defs.calls["scale"]
    assert isinstance(task_defs.scale(x, 5.0), zarr.Array)
    use("b")
    z = task_defs.scale(x, 5.0)
    assert task_defs.calls["scale"] == before + 1  # not computed again
    assert isinstance(z, zarr.Array)
    np.testing.assert_array_equal(z[:], x * 5.0)  # every chunk came from the bucket


def test_a_node_without_remotes_does_not_read_records_to_publish(monkeypatch):
    """Every pure miss calls publish: with no remote to publish to, it costs no record read."""
    task_defs.add(40, 2)
    c = cache_mod.current()
    assert c.node.remotes == []

    def no_read(task_id):
        raise AssertionError(f"publish read the record of {task_id} with no remote")

    monkeypatch.setattr(c.records, "result", no_read)
    assert shared_mod.publish(c, task_defs.add.task_id(40, 2)) is False


def _kept_inline_as_imported(tid: str, row) -> None:
    """The current node recorded ``tid`` as ``row``'s node computed it, inline (no blob)."""
    c = cache_mod.current()
    imported = c.records.result(tid)
    assert imported.node == row.node and imported.data == row.data
    assert not c.store.has(row.result_uri)


@pytest.mark.parametrize("shared", ["file", "gs"], indirect=True)
def test_a_tiny_result_travels_in_its_record(shared):
    """Kept inline where it was computed, carried by its record (no content object in the
    bucket), kept inline where it is imported: neither node writes it to its store."""
    from kachery_tasks.storage.layout import blob_key
    from kachery_tasks.uris import parse_uri

    use, bucket = shared
    use("a")
    assert task_defs.add(70, 1) == 71
    tid = task_defs.add.task_id(70, 1)
    row = cache_mod.current().records.result(tid)
    assert row.data is not None and not cache_mod.current().store.has(row.result_uri)
    assert not bucket.exists(blob_key(parse_uri(row.result_uri).hex))
    body = json.loads(bucket.get(result_key(tid)))["body"]
    assert base64.b64decode(body["data"]) == row.data
    use("b")
    before = task_defs.calls["add"]
    assert task_defs.add(70, 1) == 71
    assert task_defs.calls["add"] == before  # served, not computed
    _kept_inline_as_imported(tid, row)


@pytest.mark.parametrize("shared", ["file"], indirect=True)
def test_a_tiny_result_is_published_without_a_look_for_a_record_first(shared, monkeypatch):
    """Its record's create-only write is the look (one request fewer on gs://), and judges
    a record there the same way: a trusted one stays, another is replaced."""
    use, bucket = shared
    use("a")
    task_defs.add(72, 1)
    tid = task_defs.add.task_id(72, 1)
    c = cache_mod.current()
    remote = BucketRemote(bucket)

    def no_look(task_ids):
        raise AssertionError("publish looked for the record first")

    monkeypatch.setattr(remote, "get_result_records", no_look)
    mine = bucket.get(result_key(tid))
    assert not shared_mod.publish(c, tid, [remote])  # its own record stays
    assert bucket.get(result_key(tid)) == mine
    bucket.delete(result_key(tid))
    plant_record(bucket, tid, task_defs.add.name, 0)
    assert shared_mod.publish(c, tid, [remote], trusts=lambda node: node == c.node_id)
    assert json.loads(bucket.get(result_key(tid)))["signer"] == c.node_id


@pytest.mark.parametrize("shared", ["file"], indirect=True)
def test_a_tiny_result_that_reads_as_a_zarr_index_travels_as_content(shared):
    """Bytes that open like a zarr array's index go through the store, as an index does
    (its members first), never inside a record."""
    from kachery_tasks.storage.layout import blob_key
    from kachery_tasks.storage.zarr_index import INDEX_FORMAT
    from kachery_tasks.uris import parse_uri

    use, bucket = shared
    lookalike = {"format": INDEX_FORMAT, "keys": {}}
    use("a")
    assert task_defs.echo(lookalike) == lookalike
    tid = task_defs.echo.task_id(lookalike)
    row = cache_mod.current().records.result(tid)
    assert row.data is not None and len(row.data) <= shared_mod.RECORD_DATA_MAX
    assert "data" not in json.loads(bucket.get(result_key(tid)))["body"]
    assert bucket.exists(blob_key(parse_uri(row.result_uri).hex))


@pytest.mark.parametrize("shared", ["file", "gs"], indirect=True)
def test_a_small_result_over_the_record_limit_travels_without_a_blob_on_either_node(shared):
    """Kept inline where it was computed, sent to the bucket from memory as content, kept
    inline where it is imported: neither node writes it to its store, both serve it."""
    from kachery_tasks.storage.layout import blob_key
    from kachery_tasks.uris import parse_uri

    use, bucket = shared
    n = shared_mod.RECORD_DATA_MAX // 8 + 50  # float64s: an .npy over the record's limit
    use("a")
    np.testing.assert_array_equal(task_defs.make_array(n), np.arange(n))
    tid = task_defs.make_array.task_id(n)
    row = cache_mod.current().records.result(tid)
    assert row.data is not None and len(row.data) > shared_mod.RECORD_DATA_MAX
    assert not cache_mod.current().store.has(row.result_uri)
    assert bucket.exists(blob_key(parse_uri(row.result_uri).hex))
    assert "data" not in json.loads(bucket.get(result_key(tid)))["body"]
    use("b")
    before = task_defs.calls["make_array"]
    np.testing.assert_array_equal(task_defs.make_array(n), np.arange(n))
    assert task_defs.calls["make_array"] == before  # served, not computed
    _kept_inline_as_imported(tid, row)


@pytest.mark.parametrize("shared", ["file"], indirect=True)
def test_a_record_whose_data_is_not_its_result_is_ignored_though_signed_by_its_node(shared):
    use, _ = shared
    use("a")
    key = cache_mod.current().node.key

    def tamper(doc):  # other bytes under the same result URI, signed again by the node
        doc["body"]["data"] = base64.b64encode(b"666").decode()
        doc.update(seal("result-record", doc["body"], key).to_dict())

    assert not _served_after_tampering(shared, 30, 3, tamper)  # computed here instead


@pytest.mark.parametrize("shared", ["file"], indirect=True)
@pytest.mark.parametrize("change", [
    lambda body: [1, "a"],  # not an object
    lambda body: {**body, "codec": ["json"]},
    lambda body: {**body, "finished": "yesterday"},
    lambda body: {**body, "finished": True},
], ids=["list-body", "codec-list", "finished-text", "finished-bool"])
def test_a_well_signed_record_of_the_wrong_shape_is_ignored(shared, change):
    intruder = KeyPair.generate()

    def tamper(doc):  # signed validly, by the node it names (a plain bucket trusts any)
        body = {**doc["body"], "node": intruder.public_hex}
        doc.update(seal("result-record", change(body), intruder).to_dict())

    assert not _served_after_tampering(shared, 40, 4, tamper)  # computed here instead


@given(st.one_of(st.text(max_size=60), st.binary(max_size=1500).map(
    lambda b: base64.b64encode(b).decode()), st.integers(), st.none()))
def test_record_data_is_the_bytes_of_its_uri_or_an_envelope_error(text):
    body = {"result_uri": f"sha256://{hashlib.sha256(b'71').hexdigest()}", "data": text}
    try:
        data = shared_mod.record_data(body, "a record")
    except EnvelopeError:
        return
    assert (data is None and text is None) or data == b"71"


def test_record_data_refuses_more_than_the_record_limit():
    data = b"x" * (shared_mod.RECORD_DATA_MAX + 1)
    body = {"result_uri": f"sha256://{hashlib.sha256(data).hexdigest()}",
            "data": base64.b64encode(data).decode()}
    with pytest.raises(EnvelopeError, match="at most"):
        shared_mod.record_data(body, "a record")
    body = {"result_uri": body["result_uri"], "data": base64.b64encode(data[:-1]).decode()}
    with pytest.raises(EnvelopeError, match="is not sha256://"):
        shared_mod.record_data(body, "a record")


@pytest.mark.parametrize("shared", ["file"], indirect=True)
def test_a_large_result_is_imported_into_the_store(shared):
    use, _ = shared
    x = np.arange(5000.0)  # 40 KB encoded: over the inline limit
    use("a")
    task_defs.scale(x, 7.0)
    tid = task_defs.scale.task_id(x, 7.0)
    use("b")
    before = task_defs.calls["scale"]
    task_defs.scale(x, 7.0)
    assert task_defs.calls["scale"] == before
    row = cache_mod.current().records.result(tid)
    assert row.data is None and cache_mod.current().store.has(row.result_uri)


@pytest.mark.parametrize("shared", ["file"], indirect=True)
@pytest.mark.parametrize("keeps_less", ["inline-limit", "codec"])
def test_a_small_result_goes_to_the_store_of_a_node_that_would_not_keep_it_inline(
        shared, monkeypatch, keeps_less):
    """Carried by its record, kept inline where computed: imported into the store of a
    node whose inline limit is lower, or whose codec of that name loads from files."""
    from kachery_tasks.runtime import results

    use, _ = shared
    use("a")
    assert task_defs.add(80, 1) == 81
    tid = task_defs.add.task_id(80, 1)
    use("b")
    if keeps_less == "inline-limit":
        monkeypatch.setenv("KACHERY_TASKS_INLINE_MAX", "1")  # "81" is 2 bytes
    else:
        monkeypatch.setattr(results.codec_named("json"), "inline", False)  # a custom codec's
    before = task_defs.calls["add"]
    assert task_defs.add(80, 1) == 81
    assert task_defs.calls["add"] == before
    row = cache_mod.current().records.result(tid)
    assert row.data is None and cache_mod.current().store.has(row.result_uri)
