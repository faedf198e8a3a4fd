"""Which HTTP status each KacheryError becomes: the one place that decides.

Every failure a user can cause is a KacheryError; the API answers it with
the status of the nearest class listed here (walking the error's class
hierarchy) and a JSON body ``{"error": "<its one-line message>"}``. An
error class not listed falls back to its nearest listed base, and
KacheryError itself to 400, so a new error class never becomes a 500.
"""

from __future__ import annotations

from .. import errors as e
from .auth import ForeignOrigin, NotAuthenticated
from .ranges import RangeNotSatisfiable

STATUS: dict[type[e.KacheryError], int] = {
    e.KacheryError: 400,
    e.ConfigError: 503,  # the node directory is unusable: nothing the request can change
    e.InvalidURIError: 400,
    e.InvalidValueError: 400,
    e.EnvelopeError: 400,
    e.StorageError: 503,  # the store could not do its job (an I/O failure, say); 500 is a bug
    e.ContentNotFoundError: 404,
    e.SourceFileError: 400,
    e.LinkedFileError: 410,  # the original changed or went away: this content is gone
    e.CorruptContentError: 409,
    e.StorageFullError: 507,
    e.StoragePermissionError: 403,
    e.BucketError: 502,
    e.BucketNotFoundError: 404,
    e.BucketAccessError: 403,
    e.TransferError: 502,
    e.FeedError: 400,
    e.FeedNotFoundError: 404,
    e.FeedPermissionError: 403,
    e.FeedVerificationError: 409,
    e.TaskError: 400,
    e.TaskDefinitionError: 400,
    e.UnsupportedArgumentError: 400,
    e.ResultEncodingError: 400,
    e.TaskNotCachedError: 404,
    e.UntrustedPickleError: 403,
    e.CallRejectedError: 409,
    e.UnknownTaskError: 404,
    e.TaskModuleError: 400,
    e.ClaimError: 409,
    e.ClaimHeldError: 409,
    e.ClaimLostError: 409,
    e.ClaimTimeoutError: 504,
    e.NoProviderError: 503,  # nobody online provides the function: try later
    e.RemoteTaskError: 502,  # the task raised on the provider that ran it
    e.ExecutorError: 502,
    e.PubSubError: 502,
    e.PubSubAuthError: 403,
    e.ChannelError: 400,
    e.ChannelNotFoundError: 404,
    e.ChannelPermissionError: 403,
    e.ChannelTimeoutError: 504,
    e.ChannelMemberLeftError: 504,
    e.DaemonError: 409,  # another daemon serves the node
    NotAuthenticated: 401,
    ForeignOrigin: 403,
    RangeNotSatisfiable: 416,
}


MEANING: dict[int, str] = {
    400: "bad request", 401: "no valid token or session", 403: "not allowed",
    404: "not found", 409: "conflict (damaged or changed content, or another daemon)",
    410: "gone", 415: "a body of another content type is wanted",
    416: "range not satisfiable", 422: "the request does not match the API",
    502: "a bucket, the pub/sub, the cluster or a provider's task failed",
    503: "the node cannot do it now", 504: "no answer in time", 507: "no space left",
}
"""What each error status means, as the API description lists it (every status of
:data:`STATUS` is here, and 422 for a request FastAPI refuses before any route)."""


def status_of(error: e.KacheryError) -> int:
    """The HTTP status for ``error``: that of the nearest listed class in its hierarchy."""
    for cls in type(error).__mro__:
        if cls in STATUS:
            return STATUS[cls]  # type: ignore[index]
    return 400


def error_body(message: str) -> dict[str, str]:
    """The JSON body of every error answer."""
    return {"error": message}



class NotFound(e.KacheryError, LookupError):
    """What a request names is not on this node (answered 404)."""


STATUS[NotFound] = 404


class UnsupportedMediaType(e.KacheryError, ValueError):
    """A request body of a type the operation does not take (answered 415)."""


STATUS[UnsupportedMediaType] = 415
