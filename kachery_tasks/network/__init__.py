"""Talking to other nodes: pub/sub transport and the embedded broker.

* :mod:`.pubsub` — the :class:`~.pubsub.base.PubSub` interface, found by URL
  scheme (``ws://host:port`` for the embedded broker, ``ably:`` for the Ably
  service), implemented once over the ``ably`` SDK's realtime client.
* :mod:`.broker` — the embedded broker (``kachery-tasks broker start``), which
  speaks the part of Ably's realtime protocol the SDK uses.

Nothing here is imported by ``import kachery_tasks``; ``ably`` and
``websockets`` are imported only when a connection or a broker is made.
"""
