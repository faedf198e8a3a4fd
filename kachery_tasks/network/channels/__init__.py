"""Channels: communities of nodes with an owner key, a bucket, a pub/sub and members.

* :mod:`.config` — the owner-signed config (members and their permissions);
* :mod:`.invite` — the ``kachery-channel:`` string that tells a node where a channel is;
* :mod:`.bucket` — configs in the channel's bucket, one create-only object per version;
* :mod:`.store` — the channels this node joined, and the highest config it trusts;
* :mod:`.membership` — the owner's operations (create, add/remove nodes, permissions);
* :mod:`.tokens`, :mod:`.admission` — how the embedded broker admits members;
* :mod:`.messages` — signed channel messages and the checks receivers make;
* :mod:`.session` — a node's live connection to a channel (:class:`ChannelSession`).

See docs/channels.md.
"""

from .admission import ChannelAdmission
from .config import PERMISSIONS, ChannelConfig, MemberInfo, open_config, pubsub_channel_name
from .invite import Invite, parse_invite
from .messages import ChannelMessage, MessageChecker, MessageDropped, parse_message, seal_message
from .session import ChannelSession
from .store import ChannelStore, JoinedChannel
from .tokens import make_token, read_token

__all__ = [
    "PERMISSIONS", "ChannelAdmission", "ChannelConfig", "ChannelMessage", "ChannelSession",
    "ChannelStore", "Invite", "JoinedChannel", "MemberInfo", "MessageChecker", "MessageDropped",
    "make_token", "open_config", "parse_invite", "parse_message", "pubsub_channel_name",
    "read_token", "seal_message",
]
