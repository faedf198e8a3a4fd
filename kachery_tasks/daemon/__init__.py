"""The long-running node (``kachery-tasks node start``): a node that serves others while it runs.

* :mod:`.service` — :class:`~.service.NodeDaemon`, one channel service per joined channel;
* :mod:`.pidfile` — ``<node>/daemon/pid``, one daemon per node directory;
* :mod:`.api` — the FastAPI application (``create_app``): routes in :mod:`.routes`,
  errors mapped to HTTP status codes in :mod:`.statuses`, authentication in :mod:`.auth`;
* :mod:`.http` — serving it with uvicorn, the ``<node>/daemon/http.json`` and
  ``<node>/daemon/token`` files;
* :mod:`.events` — server-sent events fed by the channel services, feeds and task runs;
* ``hub/`` — the web page (plain HTML, JavaScript and CSS, no build step).

FastAPI and uvicorn are imported here only (``pip install 'kachery-tasks[daemon]'``),
never by ``import kachery_tasks``. See docs/daemon.md.
"""
