"""Listeners: callbacks added and removed from any thread; one that fails does not stop
the others, nor the source that calls them."""

from __future__ import annotations

import logging

from kachery_tasks.listeners import Listeners


def test_each_listener_is_called_until_removed_and_a_failing_one_is_logged(caplog):
    listeners = Listeners("test listener")
    heard: list = []

    def failing(event):
        raise RuntimeError("broken")

    remove_a = listeners.add(lambda event: heard.append(("a", event)))
    listeners.add(failing)
    listeners.add(lambda event: heard.append(("b", event)))
    with caplog.at_level(logging.ERROR):
        listeners(1)
    assert heard == [("a", 1), ("b", 1)] and len(listeners) == 3
    assert "a test listener failed" in caplog.text
    remove_a()
    remove_a()  # twice changes nothing
    listeners(2)
    assert heard[-1] == ("b", 2) and ("a", 2) not in heard and len(listeners) == 2
