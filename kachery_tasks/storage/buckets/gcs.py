"""``gs://bucket/prefix`` buckets through ``google-cloud-storage``.

Credentials are found the usual Google way (application default credentials,
``GOOGLE_APPLICATION_CREDENTIALS``); ``STORAGE_EMULATOR_HOST`` points the
client at an emulator such as fake-gcs-server. Create-only writes use the
generation precondition ``if_generation_match=0``: the service refuses to
replace an existing object, so racing writers of the same content are
harmless; a repair replaces a damaged object with
``if_generation_match=<its generation>``, so it never clobbers another write.
Transient failures (429, 5xx, dropped connections, timeouts) are retried with
exponential backoff; permanent ones (403, 404) fail at once with a message
that never includes a credential.

No request waits forever: each gives up after ``[bucket] request_timeout``
seconds without an answer or a byte, and one object's transfer, retries
included, is given up at its deadline (``deadline`` seconds plus one per
``min_rate`` bytes of the object; see :class:`~kachery_tasks.config.TransferLimits`).

:meth:`GCSBucket.get_into` (what downloads use) does not go through
``download_as_bytes``, which reads the body 8 KiB at a time into a growing
buffer (about 1 s of CPU per GiB): it sends the same media request on the
client's own authorized session and reads the body in 1 MiB pieces into one
reused buffer. A read that drops is resumed with a ``Range`` request from
the first byte not yet handed over. No checksum is computed there: callers
verify SHA-256 themselves.
"""

from __future__ import annotations

import http.client
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlparse

from ...errors import (
    BucketAccessError,
    BucketError,
    BucketNotFoundError,
    ContentNotFoundError,
    InvalidValueError,
    TransferError,
)
from .base import READ_PIECE, Bucket, ObjectInfo, check_key

if TYPE_CHECKING:
    from ...config import TransferLimits

T = TypeVar("T")

RETRIES = 6
BACKOFF = 0.25

# Google's rules: 3-63 characters (up to 222 with dots, 63 between dots) of lowercase
# letters, digits, dashes, underscores and dots, starting and ending with a letter or digit.
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{1,220}[a-z0-9]")


class GCSBucket(Bucket):
    """A prefix inside a Google Cloud Storage bucket."""

    def __init__(self, url: str, limits: TransferLimits | None = None) -> None:
        parsed = urlparse(url)
        if not parsed.netloc:
            raise BucketNotFoundError(f"{url}: expected gs://BUCKET[/PREFIX]")
        _check_name(parsed.netloc, url)
        self.url = url
        self.bucket_name = parsed.netloc
        self.prefix = parsed.path.strip("/")
        self._local = threading.local()
        self._checked = False
        self._limits = limits

    @property
    def limits(self) -> TransferLimits:
        """The transfer limits: given, else those of this process's node directory."""
        if self._limits is None:
            from ...config import node_dir

            self._limits = node_dir().config.transfer_limits
        return self._limits

    # A client per thread: the underlying HTTP sessions are not shared between threads.
    def _bucket(self):
        b = getattr(self._local, "bucket", None)
        if b is None:
            from google.auth.exceptions import DefaultCredentialsError
            from google.cloud import storage

            try:
                client = storage.Client()
            except DefaultCredentialsError:
                raise BucketAccessError(
                    f"no Google Cloud credentials found for {self.url}: run "
                    "'gcloud auth application-default login' or set "
                    "GOOGLE_APPLICATION_CREDENTIALS to a service account key file"
                ) from None
            except OSError as e:
                raise BucketAccessError(
                    f"cannot load Google Cloud credentials for {self.url}: {e.strerror or e}"
                ) from None
            b = self._local.bucket = client.bucket(self.bucket_name)
        if not self._checked:
            self._call(lambda t: b.reload(retry=None, timeout=t), "open the bucket")
            self._checked = True
        return b

    def _name(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(
        self, fn: Callable[[float], T], what: str, key: str | None = None, size: int = 0,
        clock: _Clock | None = None,
    ) -> T:
        """Run one request, retrying transient failures until the deadline; translate errors.

        ``fn`` gets the timeout (seconds) for each attempt. ``clock`` keeps
        the deadline (default: that of an object of ``size`` bytes, from now).
        """
        from google.api_core import exceptions as gexc
        from google.auth.exceptions import RefreshError, TransportError

        clock = clock or _Clock(self.limits, size)
        delay = BACKOFF
        for attempt in range(RETRIES + 1):
            try:
                return fn(max(min(self.limits.request_timeout, clock.left()), 0.01))
            except gexc.NotFound:
                if key is None:
                    raise BucketNotFoundError(f"bucket {self.bucket_name} does not exist") from None
                raise ContentNotFoundError(f"{key} is not in bucket {self.url}") from None
            except (gexc.Forbidden, gexc.Unauthorized, RefreshError) as e:
                raise BucketAccessError(
                    f"not allowed to {what} in {self.url} ({type(e).__name__}); check that "
                    "the credentials in use have access to this bucket"
                ) from None
            except (gexc.TooManyRequests, gexc.ServerError, gexc.ServiceUnavailable,
                    gexc.RetryError, TransportError, ConnectionError, TimeoutError,
                    *_requests_errors()) as e:
                if attempt == RETRIES or clock.left() < delay:
                    timed_out = isinstance(e, (TimeoutError, *_timeout_errors()))
                    raise self._gave_up(what, (
                        f"no answer within {self.limits.request_timeout:g} s" if timed_out
                        else type(e).__name__
                    ) + f", after {attempt + 1} attempts") from None
                time.sleep(delay)
                delay = min(delay * 2, 8.0)
            except gexc.GoogleAPICallError as e:
                raise BucketError(f"could not {what} in {self.url}: {e.code} {e.message}") from None
        raise AssertionError("unreachable")

    def _gave_up(self, what: str, why: str) -> TransferError:
        return TransferError(
            f"could not {what} in {self.url} ({why}); check the network and that the "
            "bucket's service is up, then try again (a download resumes where it stopped); "
            "[bucket] request_timeout, deadline and min_rate in config.toml set how long "
            "transfers may take"
        )

    def put(self, key: str, data: bytes | memoryview, *, flush: bool = True) -> bool:
        return self._write(key, data, 0) is not None

    def create(self, key: str, data: bytes | memoryview, *, flush: bool = True) -> str | None:
        generation = self._write(key, data, 0)  # the upload's answer names the generation
        return None if generation == "" else generation  # (unless it did not: read to tell)

    def replace(self, key: str, data: bytes | memoryview, generation: str) -> bool:
        return self._write(key, data, int(generation)) is not None

    def _write(self, key: str, data: bytes | memoryview, generation: int) -> str | None:
        """Write object ``key`` if its generation is ``generation`` (0: if it does not
        exist): the generation written ("" if the answer named none), or None when the
        precondition failed."""
        from google.api_core.exceptions import PreconditionFailed

        blob = self._bucket().blob(self._name(key))
        body = bytes(data)

        def upload(timeout: float) -> str | None:
            try:
                blob.upload_from_string(
                    body, if_generation_match=generation, checksum=None, retry=None,
                    timeout=timeout,
                )
            except PreconditionFailed:
                return None
            return "" if blob.generation is None else str(blob.generation)

        return self._call(upload, f"write {key}", key, len(body))

    def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        blob = self._bucket().blob(self._name(key))
        if end is not None and end <= start:
            return b""
        # download_as_bytes takes an inclusive end.
        return self._call(
            lambda t: blob.download_as_bytes(
                start=start or None, end=None if end is None else end - 1, checksum=None,
                retry=None, timeout=t,
            ),
            f"read {key}",
            key,
            0 if end is None else end - start,
        )

    def get_into(
        self, key: str, consume: Callable[[memoryview], object], start: int = 0,
        end: int | None = None,
    ) -> int:
        if end is not None and end <= start:
            return 0
        blob = self._bucket().blob(self._name(key))
        client = blob.client
        session = getattr(client, "_http", None)
        url_of = getattr(blob, "_get_download_url", None)
        if session is None or url_of is None:  # pragma: no cover - another client version
            return super().get_into(key, consume, start, end)
        url = url_of(client)
        buf = getattr(self._local, "buf", None)
        if buf is None:
            buf = self._local.buf = memoryview(bytearray(READ_PIECE))
        got = 0
        clock = _Clock(self.limits, 0 if end is None else end - start)

        def read(timeout: float) -> None:
            nonlocal got
            first = start + got
            headers = {"Accept-Encoding": "identity"}
            if first or end is not None:
                headers["Range"] = f"bytes={first}-{'' if end is None else end - 1}"
            with session.request(
                "GET", url, headers=headers, stream=True, timeout=timeout
            ) as response:
                if response.status_code == 416 and end is None:
                    return  # the object ends at (or before) the first byte asked for
                if response.status_code >= 300:
                    from google.api_core.exceptions import from_http_response

                    raise from_http_response(response)
                if first and response.status_code != 206:
                    raise BucketError(f"{self.url} ignored a byte-range read of {key}")
                encoding = response.headers.get("Content-Encoding", "identity")
                if encoding != "identity":
                    raise BucketError(
                        f"{self.url} sent {key} {encoding}-encoded; objects are read as stored"
                    )
                # The http.client response under urllib3's: its readinto receives straight
                # into buf (urllib3's would read into fresh bytes, then copy).
                raw = getattr(response.raw, "_fp", None)
                if not hasattr(raw, "readinto"):  # pragma: no cover - another urllib3
                    raw = response.raw
                length = response.headers.get("Content-Length")
                expected = int(length) if length and length.isdigit() else None
                if expected is not None:
                    clock.learn_size(got + expected)
                received = 0
                while end is None or start + got < end:
                    n = raw.readinto(buf if end is None else buf[: end - start - got])
                    if not n:
                        break
                    if clock.left() < 0:
                        raise self._gave_up(f"read {key}", (
                            f"{got + n} bytes in {clock.elapsed():.0f} s, past its deadline"
                        ))
                    consume(buf[:n])
                    got += n
                    received += n
                if expected is not None and received < expected:
                    # the connection ended early: retried from the first byte not handed over
                    raise http.client.IncompleteRead(b"", expected - received)

        self._call(read, f"read {key}", key, clock=clock)
        return got

    def stat(self, key: str) -> ObjectInfo | None:
        bucket = self._bucket()
        name = self._name(key)
        blob = self._call(
            lambda t: bucket.get_blob(name, retry=None, timeout=t), f"look up {key}", key
        )
        return None if blob is None else ObjectInfo(blob.size, str(blob.generation))

    def list(self, prefix: str = "") -> Iterator[str]:
        bucket = self._bucket()
        full = (f"{self.prefix}/" if self.prefix else "") + prefix
        skip = len(self.prefix) + 1 if self.prefix else 0
        names = self._call(
            lambda t: [
                b.name
                for b in bucket.client.list_blobs(bucket, prefix=full, retry=None, timeout=t)
            ], "list objects"
        )
        return iter(sorted(n[skip:] for n in names))

    def delete(self, key: str) -> bool:
        blob = self._bucket().blob(self._name(key))
        try:
            self._call(lambda t: blob.delete(retry=None, timeout=t), f"delete {key}", key)
        except ContentNotFoundError:
            return False
        return True


class _Clock:
    """The deadline of one object's transfer (it grows once the object's size is known)."""

    def __init__(self, limits: TransferLimits, size: int) -> None:
        self.limits = limits
        self.start = time.monotonic()
        self.at = self.start + limits.deadline_for(size)

    def learn_size(self, size: int) -> None:
        self.at = max(self.at, self.start + self.limits.deadline_for(size))

    def left(self) -> float:
        return self.at - time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start


def _check_name(name: str, url: str) -> None:
    """Refuse what Google would refuse as a bucket name, before any request."""
    parts = name.split(".")
    if (
        not _NAME.fullmatch(name) or (len(name) > 63 and len(parts) == 1)
        or not all(0 < len(p) <= 63 for p in parts)
    ):
        raise InvalidValueError(
            f"{name!r} in {url!r} is not a valid Cloud Storage bucket name: use 3-63 "
            "lowercase letters, digits, dashes, underscores and dots, starting and ending "
            "with a letter or digit"
        )


def _timeout_errors() -> tuple[type[BaseException], ...]:
    """What a request that timed out raises inside requests and urllib3."""
    try:
        import requests
        import urllib3.exceptions

        return (requests.Timeout, urllib3.exceptions.TimeoutError)
    except ImportError:  # pragma: no cover
        return ()


def _requests_errors() -> tuple[type[BaseException], ...]:
    """What a dropped connection raises inside requests, urllib3 and http.client."""
    try:
        import requests
        import urllib3.exceptions

        return (
            requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
            urllib3.exceptions.ProtocolError, urllib3.exceptions.ReadTimeoutError,
            http.client.IncompleteRead,
        )
    except ImportError:  # pragma: no cover
        return (http.client.IncompleteRead,)
