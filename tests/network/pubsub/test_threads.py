"""The event loop thread and the callback thread behind the sync API."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

from kachery_tasks.network.pubsub.threads import CallbackThread, LoopThread, shared_loop


class Delivery:
    def __init__(self, fn) -> None:
        self.active = True
        self.callback = fn


def test_run_returns_results_and_raises_errors():
    loop = LoopThread("test-loop")

    async def add(a, b):
        await asyncio.sleep(0)
        return a + b

    async def fail():
        raise KeyError("x")

    assert loop.run(add(1, 2), 5) == 3
    with pytest.raises(KeyError):
        loop.run(fail(), 5)
    loop.stop()
    assert not loop.thread.is_alive()


def test_a_timeout_cancels_the_coroutine():
    loop = LoopThread("test-loop")
    cancelled = threading.Event()

    async def forever():
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(TimeoutError):
        loop.run(forever(), 0.1)
    assert cancelled.wait(5)
    loop.stop()


def test_run_from_the_loop_thread_is_refused_instead_of_hanging():
    loop = LoopThread("test-loop")

    async def nested():
        async def inner():
            return 1

        with pytest.raises(RuntimeError, match="cannot run on the pub/sub event loop"):
            loop.run(inner(), 1)
        return "ok"

    assert loop.run(nested(), 5) == "ok"
    loop.stop()


def test_the_shared_loop_is_one_thread_per_process():
    assert shared_loop() is shared_loop()
    assert shared_loop().thread.name == "kachery-pubsub-loop"


def test_callbacks_run_in_order_on_one_thread_and_survive_errors(caplog):
    calls = []
    thread = CallbackThread("test-callbacks")

    def record(x):
        calls.append((x, threading.current_thread().name))
        if x == 2:
            raise RuntimeError("callback bug")

    delivery = Delivery(record)
    with caplog.at_level(logging.ERROR, logger="kachery_tasks.network.pubsub"):
        for i in range(5):
            thread.submit(delivery, i)
        thread.stop()
    assert calls == [(i, "test-callbacks") for i in range(5)]
    assert "a pub/sub callback raised" in caplog.text


def test_an_inactive_delivery_is_skipped():
    calls = []
    gate = threading.Event()
    thread = CallbackThread("test-callbacks")
    first, second = Delivery(lambda x: (gate.wait(5), calls.append(x))), Delivery(calls.append)
    thread.submit(first, "a")
    thread.submit(second, "b")
    second.active = False  # e.g. unsubscribed while "b" was queued
    gate.set()
    thread.stop()
    assert calls == ["a"]


def test_stop_from_the_callback_thread_does_not_deadlock():
    done = threading.Event()
    thread = CallbackThread("test-callbacks")
    thread.submit(Delivery(lambda _: (thread.stop(), done.set())), None)
    assert done.wait(5)
    time.sleep(0.05)
    assert not thread.thread.is_alive()
