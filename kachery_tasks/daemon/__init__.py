"""The node daemon (``kachery-tasks node start``): a node that serves others while it runs.

* :mod:`.service` — :class:`~.service.NodeDaemon`, the channel services;
* :mod:`.pidfile` — ``<node>/daemon/pid``, one daemon per node directory.
"""
