"""The embedded pub/sub broker: Ably's realtime JSON protocol over websockets.

``Broker`` serves on an asyncio loop (``kachery-tasks broker start`` runs one
in the foreground); ``BrokerThread`` runs one in a background thread. See
docs/pubsub.md for the frames it speaks and its limits.
"""

from .limits import Limits
from .router import Observer
from .server import Authorizer, Broker, BrokerThread, Grant, TokenExpired

__all__ = ["Authorizer", "Broker", "BrokerThread", "Grant", "Limits", "Observer", "TokenExpired"]
