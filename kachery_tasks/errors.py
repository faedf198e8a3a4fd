"""Every failure a user can cause, as one exception tree rooted at KacheryError.

Each message says what was wrong and what to do about it. Where a builtin
exception is the natural thing to catch (``ValueError`` for bad input,
``LookupError`` for something absent, ``TypeError`` for an unsupported type),
the class derives from it too, so generic handlers keep working.

::

    KacheryError
    ├── ConfigError                 bad node directory or config.toml
    ├── InvalidURIError             (ValueError) a URI that does not parse
    ├── InvalidValueError           (ValueError) bad argument: size, key, JSON value
    ├── EnvelopeError               a signed document that is malformed or does not verify
    ├── StorageError                the content store could not do its job
    │   ├── ContentNotFoundError    (LookupError) content is not in the store
    │   ├── SourceFileError         the file to store is missing or not a file
    │   ├── LinkedFileError         a linked original changed or disappeared
    │   ├── CorruptContentError     bytes no longer match their content id
    │   ├── StorageFullError        no space left on the device
    │   ├── StoragePermissionError  the operating system refused access
    │   └── BucketError             a bucket could not be used
    │       ├── BucketNotFoundError     (LookupError) no such bucket
    │       ├── BucketAccessError       missing credentials or no permission
    │       └── TransferError           network failure that retries did not cure
    ├── FeedError                   feeds: keys, messages, verification
    │   ├── FeedNotFoundError       (LookupError)
    │   ├── FeedPermissionError     append without the key, unsafe key file
    │   └── FeedVerificationError   forged, edited, reordered or missing message
    ├── TaskError                   tasks: definition, arguments, execution
    │   ├── TaskDefinitionError     a function that cannot be a task
    │   ├── UnsupportedArgumentError (TypeError) an argument with no encoder
    │   ├── ResultEncodingError     a result that cannot be stored
    │   ├── TaskNotCachedError      (LookupError) no result recorded for a task id
    │   ├── UntrustedPickleError    a pickle from another node, not allowed
    │   ├── ExecutorError           the executor (e.g. a Dask cluster) failed
    │   ├── CallRejectedError       a call sent by another node does not match the task here
    │   ├── UnknownTaskError        (LookupError) a function this node does not provide
    │   ├── TaskModuleError         a module named to provide tasks cannot be imported
    │   └── ClaimError              a channel-wide claim on a task id (see docs/remote-tasks.md)
    │       ├── ClaimHeldError          another node holds the claim
    │       ├── ClaimLostError          another node took over this node's claim
    │       └── ClaimTimeoutError       (TimeoutError) waiting for another node's claim ran out
    ├── PubSubError                 pub/sub: connect, publish (nack, timeout), presence
    │   └── PubSubAuthError         the broker refused this client's credentials
    ├── ChannelError                channels: config, invite, token or message that is not valid
    │   ├── ChannelNotFoundError    (LookupError) this node has not joined that channel
    │   ├── ChannelPermissionError  not the owner's node, not a member, or a missing permission
    │   └── ChannelTimeoutError     (TimeoutError) members did not answer a request in time
    │       └── ChannelMemberLeftError  the members asked left the channel without answering
    └── DaemonError                 the node daemon cannot start (one is running already, ...)
"""

from __future__ import annotations


class KacheryError(Exception):
    """Base of every error kachery-tasks raises on purpose."""


class ConfigError(KacheryError):
    """The node directory or its config.toml is unusable."""


class InvalidURIError(KacheryError, ValueError):
    """A URI (sha256://, sha1://, feed://, task id) does not parse."""


class InvalidValueError(KacheryError, ValueError):
    """An argument has the right type but a value that cannot be used."""


class EnvelopeError(KacheryError):
    """A signed document (result record, channel config or message) is malformed or forged."""


class StorageError(KacheryError):
    """The content store could not complete an operation."""


class ContentNotFoundError(StorageError, LookupError):
    """The requested content is not in this node's store."""


class SourceFileError(StorageError):
    """A file given to be stored is missing, unreadable, or not a regular file."""


class LinkedFileError(StorageError):
    """A file registered with link_file changed or disappeared since it was linked."""


class CorruptContentError(StorageError):
    """Stored bytes do not hash to their content id (disk corruption or tampering)."""


class StorageFullError(StorageError):
    """The device holding the store has no space left."""


class StoragePermissionError(StorageError, PermissionError):
    """The operating system refused to read or write a path the store needs."""


class BucketError(StorageError):
    """A bucket (file:// directory or gs:// bucket) could not be used."""


class BucketNotFoundError(BucketError, LookupError):
    """The bucket named by a URL does not exist."""


class BucketAccessError(BucketError):
    """Credentials are missing or do not allow the operation."""


class TransferError(BucketError):
    """A transfer failed for a transient reason (network, 5xx, 429) after all retries."""


class FeedError(KacheryError):
    """A feed operation failed."""


class FeedNotFoundError(FeedError, LookupError):
    """No feed with that id is known to this node."""


class FeedPermissionError(FeedError):
    """This node may not do that to the feed (no private key, unsafe key file)."""


class FeedVerificationError(FeedError):
    """A feed message failed verification (signature, sequence or hash chain).

    ``feed``, ``subfeed`` and ``seq`` name the message (None when unknown);
    an import that stopped at it sets ``report`` to what it imported before.
    """

    def __init__(
        self, message: str, *, feed: str | None = None, subfeed: str | None = None,
        seq: int | None = None,
    ) -> None:
        super().__init__(message)
        self.feed = feed
        self.subfeed = subfeed
        self.seq = seq
        self.report: object = None  # an ImportReport, set by imports
        self.partial: object = None  # what a store batch wrote before the failure


class TaskError(KacheryError):
    """A task could not be defined, identified or run."""


class TaskDefinitionError(TaskError):
    """A function cannot be made into a task as written."""


class UnsupportedArgumentError(TaskError, TypeError):
    """A task argument has a type that has no deterministic encoder."""


class ResultEncodingError(TaskError):
    """A task result could not be encoded into the content store."""


class TaskNotCachedError(TaskError, LookupError):
    """No result is recorded for the task id."""


class UntrustedPickleError(TaskError):
    """A pickled result produced elsewhere may not be loaded without permission."""


class ExecutorError(TaskError):
    """The executor failed (for example a Dask cluster that is gone)."""


class CallRejectedError(TaskError):
    """A call received from another node names a task, code or id this node does not match."""


class UnknownTaskError(TaskError, LookupError):
    """A call names a function that this node does not provide (not registered)."""


class TaskModuleError(TaskError):
    """A module named to provide tasks cannot be imported, or defines no task."""


class ClaimError(TaskError):
    """A channel-wide claim on a task id could not be taken, kept or used."""


class ClaimHeldError(ClaimError):
    """Another node holds the claim on the task id; ``holder`` says who and until when."""

    def __init__(self, message: str, holder: object = None) -> None:
        super().__init__(message)
        self.holder = holder


class ClaimLostError(ClaimError):
    """This node's claim was taken over by another node (its renewals came too late)."""


class ClaimTimeoutError(ClaimError, TimeoutError):
    """Another node's claim was still held, and no result came, when the wait ended."""


class NoProviderError(TaskError, LookupError):
    """No member online in the channel provides the function a call needs (``kachery.channel``
    without ``fallback="local"``); the message names the channel and what is provided."""


class RemoteTaskError(TaskError):
    """A task asked of a channel's provider raised there.

    ``remote_type`` and ``remote_message`` are the remote exception's type name
    and message, ``provider`` and ``label`` the node that ran it, and
    ``remote_traceback`` the traceback text it sent (shown by ``str()``).
    """

    def __init__(self, message: str, *, remote_type: str = "", remote_message: str = "",
                 remote_traceback: str = "", provider: str = "", label: str = "") -> None:
        super().__init__(message)
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback
        self.provider = provider
        self.label = label

    def __str__(self) -> str:
        text = super().__str__()
        if not self.remote_traceback:
            return text
        return f"{text}\n\nremote traceback (on {self.label or self.provider[:16]}):\n" \
               f"{self.remote_traceback.rstrip()}"


class PubSubError(KacheryError):
    """A pub/sub operation failed: no connection, a nack, or no acknowledgement in time.

    ``code`` is the Ably-style error code when the broker gave one (e.g. 40009
    for a message too large), else None.
    """

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class PubSubAuthError(PubSubError):
    """The pub/sub broker refused this client's token or key (not retried)."""


class ChannelError(KacheryError):
    """A channel config, invite, admission token or channel message is not valid or not trusted."""


class ChannelNotFoundError(ChannelError, LookupError):
    """This node has not joined (or created) a channel of that name."""


class ChannelPermissionError(ChannelError):
    """This node may not do that in the channel: not its owner's node, not a member, or
    a member without the permission the operation needs."""


class ChannelTimeoutError(ChannelError, TimeoutError):
    """A request sent to a channel's members got no final answer in time; the message
    names the channel, how many members were online and how many answered."""


class ChannelMemberLeftError(ChannelTimeoutError):
    """Every member asked left the channel (its connection closed: stopped, killed,
    cut off) before answering, so no answer will come; the message names them."""


class DaemonError(KacheryError):
    """The node daemon cannot start or run: another one serves the node directory, ..."""


def one_line(e: BaseException, limit: int = 300) -> str:
    """``Type: message`` on one line, at most about ``limit`` characters: an error as a
    status row or a wrapping error shows it."""
    text = " ".join(str(e).split()) or "(no message)"
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(e).__name__}: {text}"
