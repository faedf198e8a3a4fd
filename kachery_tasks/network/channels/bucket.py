"""Channel configs in the channel's bucket: one create-only object per version.

``channels/<owner hex>/<name>/config/<version:012d>.json`` holds the signed
config of that version. Objects are never replaced, so a version, once
published, is what every node reads; two owners' processes racing for the
same version cannot both win (the loser sees ``put`` return False).

The key names the owner and the channel so that several channels can share a
bucket. Whoever can write to the bucket can add objects, but not sign them:
:func:`latest_config` takes the highest version that verifies, and skips (with
a warning) anything else.
"""

from __future__ import annotations

import logging
import re

from ...errors import ChannelError, ContentNotFoundError
from ...storage.buckets import Bucket
from .config import ChannelConfig, open_config

log = logging.getLogger("kachery_tasks.network.channels")

_VERSION_KEY = re.compile(r"(\d{1,16})\.json\Z")


def config_prefix(owner: str, name: str) -> str:
    """The bucket prefix under which the configs of channel ``name`` of ``owner`` live."""
    return f"channels/{owner}/{name}/config/"


def config_key(owner: str, name: str, version: int) -> str:
    """The object holding version ``version`` of the channel's config."""
    return f"{config_prefix(owner, name)}{version:012d}.json"


def config_versions(bucket: Bucket, owner: str, name: str) -> list[int]:
    """The versions that have an object in ``bucket``, highest first (verified or not)."""
    prefix = config_prefix(owner, name)
    versions = []
    for key in bucket.list(prefix):
        match = _VERSION_KEY.match(key[len(prefix):])
        if match:
            versions.append(int(match.group(1)))
    return sorted(set(versions), reverse=True)


def read_config(bucket: Bucket, owner: str, name: str, version: int) -> ChannelConfig:
    """Version ``version`` of the config, verified; ChannelError if absent or not trusted."""
    key = config_key(owner, name, version)
    source = f"{key} in {bucket.url}"
    try:
        data = bucket.get(key)
    except ContentNotFoundError:
        raise ChannelError(f"no config version {version} of channel {name} in {bucket.url}") \
            from None
    config = open_config(data, owner, name, source)
    if config.version != version:
        raise ChannelError(f"{source} holds version {config.version}, not {version}: refused")
    return config


def latest_config(bucket: Bucket, owner: str, name: str,
                  above: int = 0) -> ChannelConfig | None:
    """The highest version above ``above`` in ``bucket`` that verifies, or None.

    Objects that do not verify (another signer, a damaged or misplaced copy)
    are skipped with a warning naming them and why.
    """
    for version in config_versions(bucket, owner, name):
        if version <= above:
            return None
        try:
            return read_config(bucket, owner, name, version)
        except ChannelError as e:
            log.warning("skipping a config that is not trusted: %s", e)
    return None


def put_config(bucket: Bucket, config: ChannelConfig) -> bool:
    """Publish a signed config under its version, create-only; False if that version exists."""
    return bucket.put(config_key(config.owner, config.name, config.version), config.to_bytes())
