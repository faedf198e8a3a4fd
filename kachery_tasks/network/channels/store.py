"""The channels a node has joined, kept in its node directory.

Each channel has a directory ``<node>/channels/<owner[:16]>-<name>/`` with

* ``invite.txt`` — the invite string (name, owner, bucket, pub/sub URL) it was joined with;
* ``config.json`` — the highest config version this node trusts (a signed envelope);
* ``owner.key`` — the owner's private key (mode 0600), only on the node that created it;
* ``claims-left.jsonl`` — on a provider, the claims it left in the channel's bucket and has
  not deleted yet (:mod:`kachery_tasks.network.tasks.left`).

The trusted config only moves up: :meth:`JoinedChannel.adopt` takes a config
that verifies against the owner key and is newer, and refuses a lower version
(or a different document under the same version) with the reason. The
read-compare-write runs under a lock file (``.lock``), so concurrent
processes of one node (a CLI command, a long-running session) never take the
trusted version back down.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from ...config import NodeDir
from ...errors import ChannelError, ChannelNotFoundError, ChannelPermissionError, KacheryError
from ...fsutil import TMP_PREFIX, ensure_dir, os_error, write_atomic
from ...keys import KeyPair
from ...storage.locks import hold
from .config import ChannelConfig, open_config
from .invite import Invite, parse_invite

CHANNELS_DIR = "channels"


class JoinedChannel:
    """One channel in this node's directory: its invite, trusted config and owner key."""

    def __init__(self, node: NodeDir, path: Path, invite: Invite) -> None:
        self.node = node
        self.path = path
        self.invite = invite

    @property
    def name(self) -> str:
        return self.invite.name

    @property
    def owner(self) -> str:
        return self.invite.owner

    @property
    def key(self) -> str:
        """``<owner[:16]>-<name>``."""
        return self.invite.key

    @property
    def pubsub_name(self) -> str:
        return self.invite.pubsub_name

    @property
    def is_owner(self) -> bool:
        """True on the node that holds the owner key."""
        return (self.path / "owner.key").exists()

    def owner_key(self) -> KeyPair:
        """The owner's private key; ChannelPermissionError on any other node."""
        if not self.is_owner:
            raise ChannelPermissionError(
                f"only the owner's node can change channel {self.name}: this node does not "
                f"hold its owner key ({self.owner[:16]}...)")
        key = KeyPair.load(self.path / "owner.key")
        if key.public_hex != self.owner:
            raise ChannelError(f"{self.path / 'owner.key'} is not the owner key of {self.name}")
        return key

    def trusted_config(self) -> ChannelConfig | None:
        """The highest config version this node trusts, or None before the first one."""
        path = self.path / "config.json"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise os_error(e, f"cannot read {path}") from e
        return open_config(data, self.owner, self.name, str(path))

    def adopt(self, config: ChannelConfig) -> bool:
        """Trust ``config`` from now on if it is newer; True if it was adopted.

        The same version again changes nothing (False). A lower version, or a
        different document under the trusted version, raises ChannelError.
        ``config`` must be signed; it is verified against the owner key here.
        """
        config = open_config(config.to_bytes(), self.owner, self.name,
                             f"config version {config.version} of {self.name}")
        with hold(self.path / ".lock"):
            current = self.trusted_config()
            if current is not None:
                if config.version < current.version:
                    raise ChannelError(
                        f"config version {config.version} of {self.name} is older than the "
                        f"trusted version {current.version}: refused (a node never goes back)")
                if config.version == current.version:
                    if config.to_bytes() != current.to_bytes():
                        raise ChannelError(
                            f"two different configs of {self.name} claim version "
                            f"{config.version}: kept the one trusted first")
                    return False
            write_atomic(self.path / "config.json", config.to_bytes(), shared=self.node.shared)
        return True

    @property
    def bucket_url(self) -> str:
        """Where the channel's configs are: the trusted config's bucket, else the invite's."""
        config = self.trusted_config()
        return config.bucket if config is not None else self.invite.bucket

    def __repr__(self) -> str:
        return f"JoinedChannel({self.key!r})"


class ChannelStore:
    """The channels of one node directory."""

    def __init__(self, node: NodeDir) -> None:
        self.node = node
        self.root = node.sub(CHANNELS_DIR)

    def all(self) -> list[JoinedChannel]:
        """Every joined channel, by name."""
        try:
            dirs = sorted(p for p in self.root.iterdir()
                          if p.is_dir() and not p.name.startswith("."))
        except FileNotFoundError:
            return []
        except OSError as e:
            raise os_error(e, f"cannot list {self.root}") from e
        found = []
        for path in dirs:
            try:
                invite = parse_invite((path / "invite.txt").read_text())
            except (OSError, ChannelError):
                continue  # not a channel directory (or a damaged one): ls shows the others
            found.append(JoinedChannel(self.node, path, invite))
        return sorted(found, key=lambda c: (c.name, c.owner))

    def member_labels(self, members: Iterable[str]) -> dict[str, str | None]:
        """``<label> in channel <name>`` for each node of ``members``, from the first joined
        channel whose trusted config lists it; None when no such channel does (who computed
        a result, in words). Each channel's config is read once."""
        labels: dict[str, str | None] = dict.fromkeys(members)
        for joined in self.all():
            if all(labels.values()):
                break
            try:
                config = joined.trusted_config()
            except KacheryError:
                continue
            if config is None:
                continue
            for member, label in labels.items():
                info = config.members.get(member)
                if label is None and info is not None:
                    labels[member] = f"{info.label} in channel {config.name}"
        return labels

    def find(self, name: str) -> JoinedChannel:
        """The joined channel called ``name`` (or ``<owner[:16]>-<name>``)."""
        matches = [c for c in self.all() if name in (c.name, c.key)]
        if not matches:
            raise ChannelNotFoundError(
                f"this node has not joined a channel called {name!r}: see 'kachery-tasks "
                "channel ls', or join one with 'kachery-tasks channel join INVITE'")
        if len(matches) > 1:
            keys = ", ".join(c.key for c in matches)
            raise ChannelNotFoundError(
                f"{len(matches)} joined channels are called {name!r} (different owners): "
                f"name one as {keys}")
        return matches[0]

    def get(self, invite: Invite) -> JoinedChannel | None:
        """The joined channel ``invite`` points to, if this node has joined it."""
        path = self.root / invite.key
        return JoinedChannel(self.node, path, invite) if (path / "invite.txt").exists() else None

    def remove(self, channel: JoinedChannel) -> None:
        """Forget a joined channel (its directory goes, all at once).

        Refused (ChannelPermissionError) on the owner's node: the directory holds
        the owner key, and without it nobody can change the channel again.
        """
        if channel.is_owner:
            raise ChannelPermissionError(
                f"this node holds the owner key of channel {channel.name} "
                f"({channel.path / 'owner.key'}): leaving would destroy it; move the key "
                "somewhere safe first if you really mean to")
        gone = self.root / f"{TMP_PREFIX}left-{channel.key}.{os.getpid()}"
        try:
            os.rename(channel.path, gone)
        except FileNotFoundError:
            raise ChannelNotFoundError(f"channel {channel.name} was left already") from None
        except OSError as e:
            raise os_error(e, f"cannot remove {channel.path}") from e
        shutil.rmtree(gone, ignore_errors=True)

    def add(self, invite: Invite, config: ChannelConfig,
            owner_key: KeyPair | None = None) -> JoinedChannel:
        """Record a channel (its invite, first trusted config and maybe owner key), all or none.

        The files are written into a temporary directory renamed into place at
        the end, so a failure leaves nothing behind. A channel already joined
        keeps its directory; ``config`` is then adopted if newer.
        """
        existing = self.get(invite)
        if existing is not None:
            existing.adopt(config)
            return existing
        ensure_dir(self.root, self.node.shared)
        tmp = self.root / f"{TMP_PREFIX}{invite.key}.{os.getpid()}"
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            staged = JoinedChannel(self.node, tmp, invite)
            ensure_dir(tmp, self.node.shared)
            if owner_key is not None:
                owner_key.save(tmp / "owner.key")
            write_atomic(tmp / "invite.txt", str(invite).encode() + b"\n",
                         shared=self.node.shared)
            staged.adopt(config)
            (tmp / ".lock").unlink(missing_ok=True)
            os.rename(tmp, self.root / invite.key)
        except OSError as e:
            if (self.root / invite.key / "invite.txt").exists():  # joined meanwhile elsewhere
                shutil.rmtree(tmp, ignore_errors=True)
                return self.add(invite, config)
            raise os_error(e, f"cannot record channel {invite.name} in {self.root}") from e
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return JoinedChannel(self.node, self.root / invite.key, invite)
