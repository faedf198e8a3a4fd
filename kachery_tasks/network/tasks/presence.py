"""What a member provides, read from its presence data (``node start --provide``).

A provider's daemon enters presence with ``{"provides": [{"name", "kind",
"version", "code_hash"}, ...]}`` (:data:`~.protocol.PRESENCE_KEY`,
:meth:`~.registry.Provided.describe`) in each channel where it serves
``request_task``. Presence data comes from other members: read it with
:func:`provides_of`, which keeps well-formed entries only.
"""

from __future__ import annotations

from typing import Any

from .protocol import PRESENCE_KEY

_FIELDS = ("name", "kind", "version", "code_hash")


def provides_of(presence: Any) -> list[dict[str, Any]]:
    """``[{name, kind, version, code_hash}]`` a member's presence data announces ([] when
    it provides nothing, or announces something malformed)."""
    found = presence.get(PRESENCE_KEY) if isinstance(presence, dict) else None
    if not isinstance(found, list):
        return []
    return [{k: f.get(k) for k in _FIELDS} for f in found
            if isinstance(f, dict) and isinstance(f.get("name"), str)
            and all(f.get(k) is None or isinstance(f.get(k), str) for k in _FIELDS)]


def short(provided: dict[str, Any]) -> str:
    """``name (1a2b3c4d)``: a function and its short code hash (or ``vN`` for a version)."""
    if provided.get("version"):
        return f"{provided['name']} (v{provided['version']})"
    return f"{provided['name']} ({str(provided.get('code_hash') or '')[:8]})"
