"""Compare-and-swap on one bucket object that holds on every backend.

:meth:`Bucket.replace <kachery_tasks.storage.buckets.base.Bucket.replace>`
writes over an object only while it still is the generation the caller
read. On ``gs://`` that is one request with a generation precondition: of
several writers racing over one generation exactly one wins. On ``file://``
it is a check followed by a rename (see ``storage/buckets/local.py``): two
writers racing within that instant both "win". Repairs tolerate that (both
write the same verified bytes); claims cannot (both writers would believe
they hold the task).

So every write over generation ``G`` here first takes ``G``'s **turn**: a
small object ``<turns>/<hash of key and G>.<n>`` made with the create-only
:meth:`~kachery_tasks.storage.buckets.base.Bucket.put`, which on every
backend exactly one writer creates. Only the writer that created the turn
replaces (or deletes) ``G``; the others are told :data:`BUSY`. The writer
deletes its turn afterwards: the object is no longer ``G`` then, so a turn
for ``G`` taken later finds nothing to write over (``replace`` says so).

A writer that dies between taking its turn and writing leaves the turn
behind. A turn records its writer (a token) and the time the writer took it.
A turn whose time is more than ``turn_ttl`` seconds away from the reader's
clock (either way, so a turn dated in the future cannot block for longer) or
whose content is unreadable is *stale*: the next writer takes turn ``n+1``.
A writer meeting a live turn of its own token (left by its own failed
attempt) uses it. This rests on two assumptions, the ones claims make
(``docs/remote-tasks.md``): a writer does not stall for ``turn_ttl`` between
taking its turn and writing, and clocks agree to much better than
``turn_ttl``.

:func:`read` returns an object's bytes together with the generation they
belong to (a bucket has no single request for both: it reads the generation,
the bytes, and the generation again).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from ...canonical import canonical_json, parse_json
from ...errors import ContentNotFoundError, InvalidValueError, StorageError, TransferError
from ...storage.buckets import Bucket

#: The outcomes of :func:`swap` and :func:`remove`.
WRITTEN = "written"  # the object was generation G and now holds the new bytes (or is gone)
CHANGED = "changed"  # the object is no longer generation G (replaced or removed meanwhile)
BUSY = "busy"  # another writer holds G's turn: it is writing over G right now

_TURN_SUFFIX = re.compile(r"\.(\d{1,12})\Z")
_READ_ATTEMPTS = 20


@dataclass(frozen=True)
class Read:
    """An object's bytes and the generation they are the bytes of."""

    generation: str
    data: bytes


def read(bucket: Bucket, key: str) -> Read | None:
    """Object ``key`` with its generation, or None when it does not exist.

    The generation is read before and after the bytes; when they differ (a
    write landed in between) the read is repeated.
    """
    for _ in range(_READ_ATTEMPTS):
        before = bucket.stat(key)
        if before is None:
            return None
        try:
            data = bucket.get(key)
        except ContentNotFoundError:
            continue  # removed in between: look again
        after = bucket.stat(key)
        if after is not None and after.generation == before.generation:
            return Read(before.generation, data)
    raise TransferError(
        f"{key} in {bucket.url} changed on every one of {_READ_ATTEMPTS} reads; "
        "something writes it in a loop, try again later"
    )


def turn_base(turns: str, key: str, generation: str) -> str:
    """The key of ``generation``'s turns (``.<n>`` appended) under prefix ``turns``."""
    digest = hashlib.sha256(f"{key}\n{generation}".encode()).hexdigest()[:40]
    return f"{turns}{digest}"


def swap(
    bucket: Bucket, key: str, data: bytes, generation: str, *, writer: str, turns: str,
    turn_ttl: float, clock: Callable[[], float] = time.time,
) -> str:
    """Write ``data`` over ``key`` if it still is ``generation``: WRITTEN, CHANGED or BUSY.

    ``writer`` is the caller's token (its own turns are its to use again),
    ``turns`` the prefix under which turns are kept.
    """
    return _with_turn(
        bucket, key, generation, writer, turns, turn_ttl, clock,
        lambda: WRITTEN if bucket.replace(key, data, generation) else CHANGED,
    )


def remove(
    bucket: Bucket, key: str, generation: str, *, writer: str, turns: str,
    turn_ttl: float, clock: Callable[[], float] = time.time,
) -> str:
    """Delete ``key`` if it still is ``generation``: WRITTEN (deleted), CHANGED or BUSY."""

    def delete() -> str:
        info = bucket.stat(key)
        if info is None or info.generation != generation:
            return CHANGED
        bucket.delete(key)  # nobody else writes over G while we hold its turn
        return WRITTEN

    return _with_turn(bucket, key, generation, writer, turns, turn_ttl, clock, delete)


def _with_turn(
    bucket: Bucket, key: str, generation: str, writer: str, turns: str, turn_ttl: float,
    clock: Callable[[], float], write: Callable[[], str],
) -> str:
    if turn_ttl <= 0:
        raise InvalidValueError(f"turn_ttl must be positive seconds, not {turn_ttl!r}")
    held = _take_turn(bucket, turn_base(turns, key, generation), writer, turn_ttl, clock)
    if held is None:
        return BUSY
    try:
        return write()
    finally:
        for turn in held:  # ours, and the stale ones we stepped over
            try:
                bucket.delete(turn)
            except StorageError:  # left behind: ours to reuse, stale for others in turn_ttl
                pass


def _take_turn(
    bucket: Bucket, base: str, writer: str, turn_ttl: float, clock: Callable[[], float],
) -> list[str] | None:
    """Create a turn for ``base``: the turn keys to delete when done, or None when BUSY.

    Turns are numbered: the latest one decides. When it is stale, the next number
    is taken; the older ones are deleted with ours once the write is done.
    """
    n = 0
    passed: list[str] = []
    for _ in range(_READ_ATTEMPTS):
        key = f"{base}.{n}"
        if bucket.put(key, canonical_json({"time": clock(), "writer": writer}), flush=False):
            return [*passed, key]
        if n == 0:  # someone has (or had) a turn: find the latest one
            numbers = _turn_numbers(bucket, base)
            n = max(numbers, default=0)
            key = f"{base}.{n}"
            passed = [f"{base}.{m}" for m in numbers if m != n]  # older: stale once we write
        state = _turn_state(bucket, key, writer, turn_ttl, clock)
        if state == "gone":
            continue  # its writer finished meanwhile: try that number again
        if state == "mine":
            return [*passed, key]
        if state == "live":
            return None
        passed.append(key)  # stale: the next number is free to take
        n += 1
    return None


def _turn_numbers(bucket: Bucket, base: str) -> list[int]:
    numbers = []
    for key in bucket.list(base + "."):
        match = _TURN_SUFFIX.match(key[len(base):])
        if match:
            numbers.append(int(match.group(1)))
    return numbers


def _turn_state(bucket: Bucket, key: str, writer: str, turn_ttl: float,
                clock: Callable[[], float]) -> str:
    """``gone``, ``mine``, ``live`` (another writer's) or ``stale``."""
    try:
        data = bucket.get(key)
    except ContentNotFoundError:
        return "gone"
    try:
        doc = parse_json(data, "turn")
        taken, who = doc["time"], doc["writer"]
        if type(taken) not in (int, float) or type(who) is not str:
            return "stale"
    except (InvalidValueError, KeyError, TypeError):
        return "stale"  # unreadable (planted, or cut short): blocks no one
    if abs(clock() - taken) > turn_ttl:
        return "stale"
    return "mine" if who == writer else "live"
