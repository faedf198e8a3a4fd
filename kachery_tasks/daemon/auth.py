"""Who may use the API: a bearer token, or a hub session cookie bought with it.

The daemon makes a new random token each time it starts and keeps it in
``<node>/daemon/token`` (mode 0600): whoever can read that file (the node's
user) can use the API. Programs send ``Authorization: Bearer <token>``.

The hub page cannot put a header on every request (an ``EventSource`` has no
headers), so it logs in once: it POSTs the token to ``/api/login`` in the
request *body* and gets a random session id back in a cookie (HttpOnly,
SameSite=Strict), which then authenticates its requests. The token never
travels in a URL the server sees: ``kachery-tasks node url --login`` prints a
link with the token in the URL *fragment* (``/#token=...``), which browsers
do not send; the page posts it and removes it from the address bar.

A request that changes something and authenticates with the cookie must
come from the page's own origin (its ``Origin`` header, when present, names
the host it was sent to), so another site cannot make the browser act.
"""

from __future__ import annotations

import hmac
import secrets
import threading

from ..errors import KacheryError

COOKIE = "kt_session"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


class NotAuthenticated(KacheryError):
    """No valid token or session came with a request (answered 401)."""


class ForeignOrigin(KacheryError):
    """A cookie-authenticated change sent from another site's page (answered 403)."""


def new_token() -> str:
    """A fresh random API token (43 URL-safe characters, 256 bits)."""
    return secrets.token_urlsafe(32)


class Auth:
    """Checks a request's credentials against the daemon's token and hub sessions."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()
        self._sessions: set[str] = set()
        self._lock = threading.Lock()

    def token_ok(self, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token.encode(), self._token)

    def login(self, token: str) -> str:
        """A new session id for the hub, given the right token; NotAuthenticated otherwise."""
        if not self.token_ok(token):
            raise NotAuthenticated("wrong token: use the one in <node>/daemon/token, or the "
                                   "link 'kachery-tasks node url --login' prints")
        session = secrets.token_urlsafe(32)
        with self._lock:
            self._sessions.add(session)
        return session

    def logout(self, session: str | None) -> None:
        with self._lock:
            self._sessions.discard(session or "")

    def check(self, method: str, authorization: str | None, session: str | None,
              origin: str | None, host: str | None) -> None:
        """Raise NotAuthenticated / ForeignOrigin unless the request may go on."""
        if authorization is not None:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() == "bearer" and self.token_ok(value.strip()):
                return
            raise NotAuthenticated("wrong API token: send 'Authorization: Bearer <token>' with "
                                   "the token in <node>/daemon/token")
        with self._lock:
            known = session is not None and session in self._sessions
        if not known:
            raise NotAuthenticated("not logged in: send 'Authorization: Bearer <token>' (the "
                                   "token is in <node>/daemon/token), or open the link "
                                   "'kachery-tasks node url --login' prints")
        if method not in SAFE_METHODS and origin is not None and host is not None \
                and origin.split("://", 1)[-1] != host:
            raise ForeignOrigin(f"a change sent from {origin[:100]} is not accepted: only "
                                    "the hub page served here may send changes with its cookie")
