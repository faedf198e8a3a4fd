import os

import pytest

from kachery_tasks.config import node_dir
from kachery_tasks.errors import FeedPermissionError
from kachery_tasks.keys import KeyPair, node_keypair


def test_sign_and_verify():
    kp = KeyPair.generate()
    sig = kp.sign(b"message")
    assert kp.verify(b"message", sig)
    assert not kp.verify(b"messagE", sig)
    public_only = KeyPair(kp.public_hex)
    assert public_only.verify(b"message", sig)
    with pytest.raises(FeedPermissionError):
        public_only.sign(b"x")


def test_node_key_is_stable_and_private():
    node = node_dir()
    a = node_keypair(node)
    b = node_keypair(node)
    assert a.public_hex == b.public_hex
    path = node.sub("identity", "node.key")
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_readable_key_file_is_refused_with_fix():
    node = node_dir()
    node_keypair(node)
    path = node.sub("identity", "node.key")
    os.chmod(path, 0o644)
    with pytest.raises(FeedPermissionError) as e:
        KeyPair.load(path)
    assert f"chmod 600 {path}" in str(e.value)


def test_node_key_created_once_under_threads():
    import threading

    node = node_dir()
    seen = []
    threads = [threading.Thread(target=lambda: seen.append(node_keypair(node).public_hex))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 8 and len(set(seen)) == 1


def test_both_backends_agree(monkeypatch):
    from kachery_tasks import keys

    kp = KeyPair.generate()
    fast = kp.sign(b"abc")
    monkeypatch.setattr(keys, "_SODIUM", False)
    slow_kp = KeyPair.from_private_bytes(kp._private_bytes)
    assert slow_kp.sign(b"abc") == fast
    assert slow_kp.verify(b"abc", fast) and not slow_kp.verify(b"abd", fast)
    monkeypatch.undo()
    assert keys._sodium() is not None
    assert KeyPair(kp.public_hex).verify(b"abc", fast)
    assert not KeyPair(kp.public_hex).verify(b"abc", "00" * 64)
    assert not KeyPair(kp.public_hex).verify(b"abc", "zz")
