import os

import pytest

from kachery_tasks.errors import FeedPermissionError
from kachery_tasks.keys import KeyPair, node_keypair
from kachery_tasks.nodes import current_node


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
    node = current_node().dir
    a = node_keypair(node)
    b = node_keypair(node)
    assert a.public_hex == b.public_hex
    path = node.sub("identity", "node.key")
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_readable_key_file_is_refused_with_fix():
    node = current_node().dir
    node_keypair(node)
    path = node.sub("identity", "node.key")
    os.chmod(path, 0o644)
    with pytest.raises(FeedPermissionError) as e:
        KeyPair.load(path)
    assert f"chmod 600 {path}" in str(e.value)


def test_node_key_created_once_under_threads():
    import threading

    node = current_node().dir
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


def test_the_direct_libsodium_signer_matches_pynacl_from_several_threads():
    import os as _os
    import threading

    from nacl import bindings

    from kachery_tasks import keys

    raw = keys._raw_signer()
    assert raw is not None  # PyNaCl is a dependency: the fast path is taken here
    kp = KeyPair.generate()
    sk = bindings.crypto_sign_seed_keypair(kp._private_bytes)[1]
    messages = [_os.urandom(n) for n in (0, 1, 200, 4031, 4032, 4033, 70_000, 300)]
    expected = [bindings.crypto_sign(m, sk)[:64] for m in messages]
    results: list[list[bytes]] = []

    def run() -> None:
        results.append([raw(m, sk) for m in messages * 20])

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [expected * 20] * 4
    assert [kp.sign(m) for m in messages] == [e.hex() for e in expected]


def test_a_shared_node_gives_each_member_a_key_of_their_own(tmp_path):
    from kachery_tasks.config import init_node_dir
    from kachery_tasks.keys import member_ids, signing_key_path

    private = init_node_dir(tmp_path / "mine")
    assert signing_key_path(private) == private.path / "identity" / "node.key"
    shared = init_node_dir(tmp_path / "lab", shared=True)
    mine = shared.path / "identity" / "users" / f"{os.getuid()}.key"
    assert signing_key_path(shared) == mine
    kp = node_keypair(shared)
    assert oct(os.stat(mine).st_mode & 0o777) == "0o600"
    assert os.stat(mine.parent).st_mode & 0o2070 == 0o2070  # others may add theirs
    (mine.parent / "999.pub").write_text("not a key\n")
    (mine.parent / "998.pub").write_text("AB" * 32 + "\n")
    assert member_ids(shared) == {kp.public_hex, "ab" * 32}
