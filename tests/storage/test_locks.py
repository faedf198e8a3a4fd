"""flock-based locks between threads and processes of one node."""

from __future__ import annotations

import threading

from kachery_tasks.storage import locks


def test_an_exclusive_lock_excludes_every_other_holder(tmp_path):
    path = tmp_path / "x.lock"
    with locks.hold(path) as held:
        assert held
        with locks.hold(path, blocking=False) as other:
            assert not other
        with locks.hold(path, shared=True, blocking=False) as reader:
            assert not reader
    with locks.hold(path, shared=True) as a, locks.hold(path, shared=True, blocking=False) as b:
        assert a and b  # readers share
        with locks.hold(path, blocking=False) as writer:
            assert not writer


def test_a_waiter_never_shares_a_lock_whose_file_was_replaced(tmp_path):
    """The holder removes the lock file; a newcomer creates and locks a new one; the
    process that was waiting on the old file must then wait for the newcomer."""
    path = tmp_path / "x.lock"
    acquired = threading.Event()
    with locks.hold(path):

        def wait_for_it():
            with locks.hold(path):
                acquired.set()

        waiter = threading.Thread(target=wait_for_it)
        waiter.start()
        waiter.join(0.3)  # it is waiting on the file about to be removed
        locks.remove_held(path)
        newcomer = locks.hold(path, blocking=False)
        assert newcomer.__enter__()
    assert not acquired.wait(0.5)  # the old file's lock is free, but that is not the lock
    newcomer.__exit__(None, None, None)
    assert acquired.wait(30)
    waiter.join()
