"""Compare-and-swap on a bucket object: exactly one writer over a generation, on every backend."""

from __future__ import annotations

import pytest

from kachery_tasks.canonical import canonical_json
from kachery_tasks.network.tasks import swap
from kachery_tasks.network.tasks.swap import BUSY, CHANGED, WRITTEN

TURNS = "claims/turns/"
TTL = 30.0


def options(writer: str, **extra) -> dict:
    return {"writer": writer, "turns": TURNS, "turn_ttl": TTL, **extra}


def turn_key(bucket, key: str, generation: str, n: int = 0) -> str:
    return f"{swap.turn_base(TURNS, key, generation)}.{n}"


def plant_turn(bucket, key, generation, n=0, *, writer="someone", time=None, raw=None):
    import time as clock

    data = raw if raw is not None else canonical_json(
        {"time": clock.time() if time is None else time, "writer": writer})
    assert bucket.put(turn_key(bucket, key, generation, n), data)


def test_read_gives_the_bytes_with_their_generation(bucket):
    assert swap.read(bucket, "k") is None
    bucket.put("k", b"one")
    got = swap.read(bucket, "k")
    assert got.data == b"one" and got.generation == bucket.stat("k").generation


def test_swap_writes_over_the_generation_read_and_nothing_else(bucket):
    bucket.put("k", b"one")
    first = bucket.stat("k").generation
    assert swap.swap(bucket, "k", b"two", first, **options("a")) == WRITTEN
    assert bucket.get("k") == b"two"
    assert swap.swap(bucket, "k", b"three", first, **options("a")) == CHANGED
    assert bucket.get("k") == b"two"
    assert list(bucket.list(TURNS)) == []  # the turns are gone once written


def test_remove_deletes_only_the_generation_read(bucket):
    bucket.put("k", b"one")
    first = bucket.stat("k").generation
    swap.swap(bucket, "k", b"two", first, **options("a"))
    assert swap.remove(bucket, "k", first, **options("a")) == CHANGED
    assert bucket.get("k") == b"two"
    assert swap.remove(bucket, "k", bucket.stat("k").generation, **options("a")) == WRITTEN
    assert bucket.stat("k") is None
    assert list(bucket.list(TURNS)) == []


def test_of_racing_writers_over_one_generation_exactly_one_writes(bucket, slow_renames, in_threads):
    for r in range(3):
        bucket.put(f"k{r}", b"old")
        generation = bucket.stat(f"k{r}").generation
        results = in_threads(lambda i, r=r, g=generation: swap.swap(
            bucket, f"k{r}", f"writer {i}".encode(), g, **options(f"w{i}")), 5)
        assert results.count(WRITTEN) == 1, results
        winner = results.index(WRITTEN)
        assert bucket.get(f"k{r}") == f"writer {winner}".encode()
        assert set(results) - {WRITTEN} <= {BUSY, CHANGED}


def test_of_racing_removers_and_writers_exactly_one_acts(bucket, slow_renames, in_threads):
    bucket.put("k", b"old")
    generation = bucket.stat("k").generation

    def act(i: int) -> str:
        if i % 2:
            return swap.remove(bucket, "k", generation, **options(f"w{i}"))
        return swap.swap(bucket, "k", f"writer {i}".encode(), generation, **options(f"w{i}"))

    results = in_threads(act, 4)
    assert results.count(WRITTEN) == 1, results


def test_a_live_turn_of_another_writer_makes_it_busy(bucket):
    bucket.put("k", b"old")
    generation = bucket.stat("k").generation
    plant_turn(bucket, "k", generation)
    assert swap.swap(bucket, "k", b"new", generation, **options("a")) == BUSY
    assert swap.remove(bucket, "k", generation, **options("a")) == BUSY
    assert bucket.get("k") == b"old"


def test_a_writer_uses_its_own_turn_left_by_a_failed_attempt(bucket):
    bucket.put("k", b"old")
    generation = bucket.stat("k").generation
    plant_turn(bucket, "k", generation, writer="a")
    assert swap.swap(bucket, "k", b"new", generation, **options("a")) == WRITTEN
    assert list(bucket.list(TURNS)) == []


@pytest.mark.parametrize("turn", [
    {"time": -1000.0},  # its writer died long ago
    {"time": 10**12},  # dated far in the future: blocks no one for longer than the TTL
    {"raw": b"not json"},  # planted, or cut short
    {"raw": b'{"time": "soon", "writer": "x"}'},
])
def test_a_stale_or_unreadable_turn_is_stepped_over(bucket, turn):
    import time

    bucket.put("k", b"old")
    generation = bucket.stat("k").generation
    if "time" in turn:
        plant_turn(bucket, "k", generation, time=time.time() + turn["time"]
                   if turn["time"] < 0 else turn["time"])
    else:
        plant_turn(bucket, "k", generation, raw=turn["raw"])
    assert swap.swap(bucket, "k", b"new", generation, **options("a")) == WRITTEN
    assert bucket.get("k") == b"new"
    assert list(bucket.list(TURNS)) == []  # the stale turn is cleaned up with ours


def test_the_latest_of_several_turns_decides(bucket):
    import time

    bucket.put("k", b"old")
    generation = bucket.stat("k").generation
    plant_turn(bucket, "k", generation, 0, time=time.time() - 1000)
    plant_turn(bucket, "k", generation, 1, time=time.time() - 1000)
    plant_turn(bucket, "k", generation, 2)  # a live writer took turn 2 over the stale ones
    assert swap.swap(bucket, "k", b"new", generation, **options("a")) == BUSY
    bucket.delete(turn_key(bucket, "k", generation, 2))
    plant_turn(bucket, "k", generation, 2, time=time.time() - 1000)
    assert swap.swap(bucket, "k", b"new", generation, **options("a")) == WRITTEN
    assert list(bucket.list(TURNS)) == []


def test_a_turn_taken_after_the_write_finds_nothing_to_write_over(bucket):
    bucket.put("k", b"old")
    generation = bucket.stat("k").generation
    assert swap.swap(bucket, "k", b"new", generation, **options("a")) == WRITTEN
    # a slow writer that read the old generation comes now: the turn is free, the object is not
    assert swap.swap(bucket, "k", b"late", generation, **options("b")) == CHANGED
    assert bucket.get("k") == b"new"


def test_the_clock_given_decides_staleness(bucket):
    bucket.put("k", b"old")
    generation = bucket.stat("k").generation
    plant_turn(bucket, "k", generation, time=1000.0)
    assert swap.swap(bucket, "k", b"new", generation,
                     **options("a", clock=lambda: 1000.0 + TTL / 2)) == BUSY
    assert swap.swap(bucket, "k", b"new", generation,
                     **options("a", clock=lambda: 1000.0 + TTL * 2)) == WRITTEN


def test_read_pairs_bytes_with_the_generation_they_belong_to(bucket):
    bucket.put("k", b"one")

    class Rewriting:
        """A bucket whose object is replaced between the first stat and the read."""

        url = bucket.url
        writes = 0

        def stat(self, key):
            return bucket.stat(key)

        def get(self, key):
            if self.writes < 2:
                self.writes += 1
                bucket.replace(key, f"v{self.writes}".encode(), bucket.stat(key).generation)
            return bucket.get(key)

    got = swap.read(Rewriting(), "k")
    assert got.data == b"v2" and got.generation == bucket.stat("k").generation
