"""Invites: the string a channel's owner hands to a node that should join it.

``kachery-channel:`` followed by the base64url (no padding) of the canonical
JSON ``{"bucket", "name", "owner", "pubsub"}``. It holds no secret: it says
where the channel's config is (the bucket), whose signature makes it trusted
(the owner key) and where its nodes talk (the pub/sub URL). Joining does not
make a node a member; the owner adds the node's id to the config.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from ...canonical import canonical_json, parse_json
from ...errors import ChannelError, InvalidValueError
from .config import (
    ChannelConfig,
    check_bucket_url,
    check_name,
    check_node_id,
    check_pubsub_url,
    pubsub_channel_name,
)

PREFIX = "kachery-channel:"
MAX_INVITE = 4096


@dataclass(frozen=True)
class Invite:
    """Where a channel is and whose it is."""

    name: str
    owner: str
    bucket: str
    pubsub: str

    @classmethod
    def of(cls, config: ChannelConfig) -> Invite:
        """The invite to the channel ``config`` describes (its current bucket and pub/sub)."""
        return cls(config.name, config.owner, config.bucket, config.pubsub)

    @property
    def key(self) -> str:
        """``<owner[:16]>-<name>``: how this node names the channel on disk and when in doubt."""
        return f"{self.owner[:16]}-{self.name}"

    @property
    def pubsub_name(self) -> str:
        return pubsub_channel_name(self.owner, self.name)

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "owner": self.owner, "bucket": self.bucket,
                "pubsub": self.pubsub}

    def __str__(self) -> str:
        data = canonical_json(self.to_json(), "invite")
        return PREFIX + base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def parse_invite(text: str) -> Invite:
    """The invite ``text`` holds; ChannelError saying what is wrong with it."""
    if not isinstance(text, str):
        raise ChannelError("an invite is a string starting with kachery-channel:")
    text = text.strip()
    if not text.startswith(PREFIX):
        raise ChannelError(f"an invite starts with {PREFIX} (ask the channel's owner for "
                           "the output of 'kachery-tasks channel invite NAME')")
    if len(text) > MAX_INVITE:
        raise ChannelError(f"the invite is {len(text)} characters long, more than an invite "
                           f"can be ({MAX_INVITE})")
    payload = text[len(PREFIX):]
    try:
        if not payload.isascii():
            raise ValueError("not base64url")
        data = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        doc = parse_json(data, "invite")
    except (ValueError, binascii.Error):  # InvalidValueError is a ValueError
        raise ChannelError("the invite is damaged (not base64url of JSON): copy it whole, "
                           "without line breaks") from None
    if not isinstance(doc, dict) or set(doc) != {"name", "owner", "bucket", "pubsub"}:
        raise ChannelError("the invite is damaged: it must hold name, owner, bucket and pubsub")
    try:
        return Invite(check_name(doc["name"]), check_node_id(doc["owner"], "channel owner key"),
                      check_bucket_url(doc["bucket"]), check_pubsub_url(doc["pubsub"]))
    except InvalidValueError as e:
        raise ChannelError(f"the invite is damaged: {e}") from None
