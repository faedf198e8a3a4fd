"""Ed25519 key pairs: the identity of a node and the ownership of a feed.

A private key is stored as its 32 raw bytes in hex, in a file of mode 0600.
A key file that other users can read is refused (with the command that fixes
it): whoever reads it can sign as this node or append to this feed.

A public key is written as 64 lowercase hex digits; node ids and feed ids are
public keys in that form.

Signing and verifying use libsodium (PyNaCl) when it is installed and
``cryptography`` otherwise; Ed25519 signatures are deterministic, so both give
the same bytes (the test vector in ``docs/feeds.md`` checks it).
"""

from __future__ import annotations

import os
import secrets
import stat
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, FeedPermissionError, InvalidValueError
from .fsutil import ensure_dir, os_error, write_atomic

if TYPE_CHECKING:
    from .config import NodeDir


_SODIUM: object = None
_BAD_SIGNATURE: type[BaseException] = ValueError


def _sodium() -> Any:
    """libsodium through PyNaCl when installed: here it signs 1.6x and verifies 2.2x
    faster than ``cryptography`` (same Ed25519, byte-identical signatures)."""
    global _SODIUM, _BAD_SIGNATURE
    if _SODIUM is None:
        try:
            from nacl import bindings
            from nacl.exceptions import BadSignatureError

            _SODIUM, _BAD_SIGNATURE = bindings, BadSignatureError
        except ImportError:
            _SODIUM = False
    return _SODIUM or None


def _raw_signer() -> Any:
    """A function (message, secret key) -> 64-byte signature calling libsodium directly.

    PyNaCl's ``crypto_sign`` allocates two buffers, copies the whole signed
    message out and checks its arguments in Python: 2.4 us of a 17 us
    signature here, on the sequential path of every feed append. This calls
    the same libsodium function through PyNaCl's compiled module (which
    ``nacl.bindings`` itself is built on) with one reused buffer per thread.
    Only called once :func:`_sodium` has found PyNaCl.
    """
    global _RAW_SIGNER
    if _RAW_SIGNER is None:
        from nacl._sodium import ffi, lib

        local = threading.local()

        def sign(message: bytes, sk: bytes) -> bytes:
            need = len(message) + 64
            buf = getattr(local, "buf", None)
            if buf is None or len(buf) < need:
                buf = local.buf = ffi.new("unsigned char[]", max(need, 4096))
            if lib.crypto_sign(buf, ffi.NULL, message, len(message), sk) != 0:
                raise ValueError("libsodium could not sign")
            return ffi.buffer(buf, 64)[:]

        _RAW_SIGNER = sign
    return _RAW_SIGNER


_RAW_SIGNER: Any = None


class KeyPair:
    """An Ed25519 key pair (or just a public key, for verifying)."""

    def __init__(self, public_hex: str, private_bytes: bytes | None = None) -> None:
        if len(public_hex) != 64:
            raise InvalidValueError(f"an Ed25519 public key has 64 hex digits: {public_hex!r}")
        self.public_hex = public_hex.lower()
        self._private_bytes = private_bytes
        self._signer = None
        self._verifier = None
        self._sodium_sk: bytes | None = None
        self._public_bytes: bytes | None = None

    @classmethod
    def generate(cls) -> KeyPair:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        return cls.from_private_bytes(Ed25519PrivateKey.generate().private_bytes_raw())

    @classmethod
    def from_private_bytes(cls, private_bytes: bytes) -> KeyPair:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        key = Ed25519PrivateKey.from_private_bytes(private_bytes)
        kp = cls(key.public_key().public_bytes_raw().hex(), private_bytes)
        kp._signer = key
        return kp

    @property
    def has_private(self) -> bool:
        return self._private_bytes is not None

    def sign(self, message: bytes) -> str:
        """The hex signature of ``message`` (needs the private key)."""
        sodium = _sodium()
        if sodium is not None and self._private_bytes is not None:
            if self._sodium_sk is None:
                self._sodium_sk = sodium.crypto_sign_seed_keypair(self._private_bytes)[1]
            return _raw_signer()(message, self._sodium_sk).hex()
        if self._signer is None:
            if self._private_bytes is None:
                raise FeedPermissionError(
                    f"no private key for {self.public_hex[:16]}...: this node cannot sign for it"
                )
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

            self._signer = Ed25519PrivateKey.from_private_bytes(self._private_bytes)
        return self._signer.sign(message).hex()

    def verify(self, message: bytes, signature_hex: str) -> bool:
        """True when ``signature_hex`` is this key's signature of ``message``."""
        sodium = _sodium()
        if sodium is not None:
            if self._public_bytes is None:
                self._public_bytes = bytes.fromhex(self.public_hex)
            try:
                sig = bytes.fromhex(signature_hex)
                if len(sig) != 64:
                    return False
                sodium.crypto_sign_open(sig + message, self._public_bytes)
            except (_BAD_SIGNATURE, ValueError, TypeError):
                return False
            return True
        from cryptography.exceptions import InvalidSignature

        if self._verifier is None:
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

            self._verifier = Ed25519PublicKey.from_public_bytes(bytes.fromhex(self.public_hex))
        try:
            self._verifier.verify(bytes.fromhex(signature_hex), message)
        except (InvalidSignature, ValueError):
            return False
        return True

    def save(self, path: Path) -> None:
        """Write the private key to ``path`` with mode 0600 (atomically)."""
        if self._private_bytes is None:
            raise FeedPermissionError("cannot save a key pair without its private key")
        ensure_dir(path.parent)
        write_atomic(path, self._private_bytes.hex().encode() + b"\n", mode=0o600)

    @classmethod
    def load(cls, path: Path) -> KeyPair:
        """Read a private key file, refusing one that other users can read."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise ConfigError(f"no key file at {path}") from None
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise FeedPermissionError(
                f"key file {path} is readable by other users (mode "
                f"{stat.S_IMODE(st.st_mode):o}); anyone who reads it can sign as its owner. "
                f"Fix it with: chmod 600 {path}"
            )
        text = path.read_text().strip()
        try:
            return cls.from_private_bytes(bytes.fromhex(text))
        except ValueError as e:
            raise ConfigError(f"key file {path} is not a hex Ed25519 private key: {e}") from e


def node_keypair(node: NodeDir) -> KeyPair:
    """The key that signs this node's records, created on first use.

    On a node used by one person it is ``<node>/identity/node.key``. On a
    group-shared node (see :mod:`kachery_tasks.fsutil`) every member signs
    with a key of their own, ``identity/users/<uid>.key`` (mode 0600, owned by
    the member), so records name the member who computed them and no private
    key is readable by the group; the member who created ``node.key`` before
    keeps it. Each member's public key is published as
    ``identity/users/<uid>.pub`` (see :func:`member_ids`).
    """
    path = signing_key_path(node)
    if not path.exists():
        if node.shared:
            _shared_identity_dir(node)
        create_key_file(path)
    kp = KeyPair.load(path)
    if node.shared:
        _publish_member_id(node, kp)
    return kp


def signing_key_path(node: NodeDir) -> Path:
    """Where this user's signing key for ``node`` is (see :func:`node_keypair`)."""
    legacy = node.sub("identity", "node.key")
    if not node.shared:
        return legacy
    try:
        if os.stat(legacy).st_uid == os.getuid():
            return legacy
    except FileNotFoundError:
        pass
    except OSError as e:
        raise os_error(e, f"cannot use {legacy}") from e
    return node.sub("identity", "users", f"{os.getuid()}.key")


def member_ids(node: NodeDir) -> set[str]:
    """Public keys (hex) of the members of a shared node who have signed with it."""
    try:
        paths = list(node.sub("identity", "users").glob("*.pub"))
    except OSError:
        return set()
    found = set()
    for p in paths:
        try:
            text = p.read_text().strip().lower()
        except OSError:
            continue
        if len(text) == 64 and all(c in "0123456789abcdef" for c in text):
            found.add(text)
    return found


def _shared_identity_dir(node: NodeDir) -> None:
    """``identity/users/``, group-writable so every member can add their key.

    ``identity/`` made by an older version (or another umask) may not be
    group-writable; its owner fixes it here, others get a StoragePermissionError
    naming it.
    """
    identity = node.sub("identity")
    for d in (identity, identity / "users"):
        ensure_dir(d, shared=True)
        try:
            st = os.stat(d)
            if st.st_uid == os.getuid() and st.st_mode & 0o2070 != 0o2070:
                os.chmod(d, 0o2775)
        except OSError as e:
            raise os_error(e, f"cannot share {d} with the group") from e


def _publish_member_id(node: NodeDir, kp: KeyPair) -> None:
    path = node.sub("identity", "users", f"{os.getuid()}.pub")
    try:
        if path.read_text().strip() == kp.public_hex:
            return
    except OSError:
        pass
    _shared_identity_dir(node)
    write_atomic(path, kp.public_hex.encode() + b"\n", mode=0o644, shared=True)


def create_key_file(path: Path) -> KeyPair:
    """Generate a key pair into ``path`` unless another process got there first.

    The key is written to a temporary file and hard-linked to its final name,
    which fails if the name exists: two processes never end up holding
    different keys for the same file.
    """
    kp = KeyPair.generate()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp")
    kp.save(tmp)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)
    return KeyPair.load(path)
