"""Admission tokens: how a node proves to the embedded broker that it is a channel member.

The token the node's SDK presents (its auth callback's token) is the
base64url (no padding) of the canonical JSON::

    {"claim": <envelope kind "pubsub-token", signed by the node key, body
               {"node": <node id>, "channel": "kt:<owner[:32]>:<name>",
                "time": <unix seconds>, "nonce": <32 hex>}>,
     "config": <the newest channel-config envelope the node trusts>}

The claim proves the holder of the node key asked, for which pub/sub channel
and when; the config (signed by the owner) says the node is a member. The
broker needs no state of its own to check it (see :mod:`.admission`), only
its clock. A token holds no secret beyond its freshness: it is a bearer
credential for :data:`~.messages.WINDOW` seconds, and everything a member
then sends is a signed message checked by the receivers.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import time
from dataclasses import dataclass

from ...canonical import canonical_json, parse_json
from ...envelopes import open_envelope, seal
from ...errors import ChannelError, EnvelopeError, InvalidValueError
from ...keys import KeyPair
from .config import MAX_CONFIG_BYTES, ChannelConfig, open_config, parse_pubsub_channel_name

TOKEN_KIND = "pubsub-token"

MAX_TOKEN_CHARS = (MAX_CONFIG_BYTES + 2048) * 4 // 3
"""The longest token: a config at its limit, a claim, and base64's third more. The
broker's request line limit (``Limits.max_request_line``) is above it."""


@dataclass(frozen=True)
class TokenClaim:
    """A token whose signatures verified: node ``node`` asks at ``time`` for ``channel``."""

    node: str
    channel: str
    time: int
    nonce: str
    config: ChannelConfig


def make_token(key: KeyPair, config: ChannelConfig, *, now: float | None = None) -> str:
    """A token admitting the node of ``key`` to ``config``'s pub/sub channel (signed now)."""
    claim = seal(TOKEN_KIND, {
        "node": key.public_hex, "channel": config.pubsub_name,
        "time": int(time.time() if now is None else now), "nonce": secrets.token_hex(16),
    }, key)
    if config.envelope is None:
        raise InvalidValueError("a token needs a signed config")
    data = canonical_json({"claim": claim.to_dict(), "config": config.envelope.to_dict()})
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def read_token(token: str) -> TokenClaim:
    """The claim ``token`` makes, with both signatures checked; ChannelError saying why not.

    Checked here: the claim is a ``pubsub-token`` signed by the node it names,
    for a well-formed pub/sub channel name; the config verifies, is signed by
    the owner that name's key prefix designates, and is that channel's. Not
    checked here: the time (against which clock?) and membership (against
    which version?): that is the admission's job.
    """
    if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
        raise ChannelError(f"the token is not a channel admission token (at most "
                           f"{MAX_TOKEN_CHARS} characters)")
    try:
        if not token.isascii():
            raise ValueError("not ASCII")
        doc = parse_json(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)), "token")
    except (ValueError, binascii.Error):
        raise ChannelError("the token is not a channel admission token (not base64url JSON)") \
            from None
    if not isinstance(doc, dict) or set(doc) != {"claim", "config"}:
        raise ChannelError("the token is not a channel admission token (needs claim and config)")
    try:
        claim = open_envelope(doc["claim"], TOKEN_KIND, "the token's claim")
    except EnvelopeError as e:
        raise ChannelError(str(e)) from None
    body = claim.body
    if (not isinstance(body, dict) or set(body) != {"node", "channel", "time", "nonce"}
            or type(body["time"]) is not int or not isinstance(body["nonce"], str)):
        raise ChannelError("the token's claim must be {node, channel, time, nonce}")
    if body["node"] != claim.signer:
        raise ChannelError("the token's claim names another node than the key that signed it")
    prefix, name = parse_pubsub_channel_name(body["channel"])
    config_doc = doc["config"]
    signer = config_doc.get("signer") if isinstance(config_doc, dict) else None
    if not isinstance(signer, str) or not signer.startswith(prefix):
        raise ChannelError(f"the token's config is not signed by the owner of "
                           f"{body['channel']!r}: refused")
    config = open_config(config_doc, signer, name, "the token's config")
    return TokenClaim(node=body["node"], channel=body["channel"], time=body["time"],
                      nonce=body["nonce"], config=config)
