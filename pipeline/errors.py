"""The error hierarchy. Each class has a stable IMM ``Code`` and an HTTP status; the docstring
is the default message. The API edge (``pipeline.api.app``) maps them to IMM error JSON in one
place; task failures store ``code``/``message`` on the task row.
"""

from __future__ import annotations


class ImmError(Exception):
    """An internal error occurred."""

    code = "InternalError"
    http_status = 500

    def __init__(self, message: str | None = None, *, code: str | None = None) -> None:
        self.message = message or (self.__doc__ or self.code).strip()
        if code:
            self.code = code
        super().__init__(self.message)


class InvalidArgument(ImmError):
    """The request has an invalid argument."""

    code = "InvalidArgument"
    http_status = 400


class MissingParameter(InvalidArgument):
    """A mandatory parameter is missing."""

    def __init__(self, name: str) -> None:
        super().__init__(f"{name} is mandatory for this action.", code=f"Missing{name}")


class InvalidParameter(InvalidArgument):
    """A parameter has an invalid value."""

    def __init__(self, name: str, detail: str = "") -> None:
        text = f"Specified parameter {name} is not valid."
        super().__init__(f"{text} {detail}".strip(), code=f"Invalid{name}")


class InvalidJSON(InvalidArgument):
    """A structured parameter is not valid JSON."""

    def __init__(self, name: str, detail: str = "") -> None:
        super().__init__(
            f"Array parsing error, {name} is not valid JSON. {detail}".strip(), code="InvalidJSON"
        )


class LimitExceeded(InvalidArgument):
    """Message: input quota exceed the max value"""

    code = "LimitExceededError"


class QuotaExceeded(LimitExceeded):
    """A per-owner quota is used up."""

    def __init__(self, message: str, *, mns_code: str) -> None:
        super().__init__(message)
        self.mns_code = mns_code  # the code MNS answers with on its own API


class ResourceNotFound(ImmError):
    """The specified resource is not found."""

    code = "ResourceNotFound"
    http_status = 404

    def __init__(self, resource: str, name: str = "") -> None:
        suffix = f" ({name})" if name else ""
        super().__init__(f"The specified resource {resource} is not found.{suffix}")


class ResourceAlreadyExists(ImmError):
    """The specified resource already exists."""

    code = "ResourceAlreadyExists"
    http_status = 409

    def __init__(self, resource: str, name: str = "") -> None:
        suffix = f" ({name})" if name else ""
        super().__init__(f"The specified resource {resource} already exists.{suffix}")


class StatusConflict(ImmError):
    """Message: the resource is in a state that does not allow this operation"""

    code = "StatusConflict"
    http_status = 409


class IdempotentParameterMismatch(ImmError):
    """The ClientToken was already used with different request parameters."""

    code = "IdempotentParameterMismatch"
    http_status = 409


class InvalidAction(ImmError):
    """The specified action is not supported."""

    code = "InvalidAction.NotFound"
    http_status = 404


class AuthError(ImmError):
    """The request could not be authenticated."""

    code = "Forbidden"
    http_status = 403


class MissingAuthorization(AuthError):
    """The request is not signed: an Authorization header is required."""

    code = "MissingAuthorization"
    http_status = 401


class InvalidAccessKeyId(AuthError):
    """The specified AccessKeyId is not found."""

    code = "InvalidAccessKeyId.NotFound"


class SignatureDoesNotMatch(AuthError):
    """The request signature does not conform to the ACS3-HMAC-SHA256 signature."""

    code = "SignatureDoesNotMatch"


class InvalidTimestamp(AuthError):
    """The request timestamp is missing or outside the allowed clock skew."""

    code = "InvalidTimeStamp.Expired"
    http_status = 400


class SignatureNonceUsed(AuthError):
    """The request was already received once (a replay): sign every request afresh."""

    code = "SignatureNonceUsed"


class AuthNotConfigured(AuthError):
    """The server has no AccessKeys and is not in dev mode: requests cannot be authenticated."""

    code = "Forbidden.NoAccessKeys"
    http_status = 503


class AmbiguousRequest(InvalidArgument):
    """A header or parameter that decides what the request does is given more than once."""

    code = "InvalidArgument.Duplicated"


class RequestTooLarge(InvalidArgument):
    """The request body exceeds the size limit of this endpoint."""

    code = "RequestEntityTooLarge"
    http_status = 413


class ConfigurationError(ImmError):
    """The server's configuration is unusable; it refuses to start."""

    code = "ServerMisconfigured"


class StorageError(ImmError):
    """The object store could not complete the operation."""

    code = "InvalidArgument"
    http_status = 400


class ObjectNotFound(StorageError):
    """The specified object does not exist."""

    code = "ResourceNotFound"
    http_status = 404


class BucketAccessDenied(ImmError):
    """Access denied: the bucket belongs to another owner and is not shared with you."""

    code = "AccessDenied"
    http_status = 403


class ForbiddenURI(InvalidArgument):
    """The URI is not allowed (path traversal, private address or unconfigured root)."""

    code = "InvalidURI"


class FileTooLarge(InvalidArgument):
    """The file exceeds the configured size limit."""

    code = "FileTooLarge"


class ServiceUnavailable(ImmError):
    """A service openimm depends on is unavailable; nothing was changed. Retry later."""

    code = "ServiceUnavailable"
    http_status = 503
    retry_after_seconds = 1  # the Retry-After header: outages openimm rides out are short


class NotCreated(ServiceUnavailable):
    """A dependency was unavailable when the task was to be created; the task was not
    created (a retry cannot duplicate it). Retry later."""

    def __init__(self, dependency: str) -> None:
        super().__init__(f"The {dependency} is unavailable; the task was not created. Retry later.")


class QueueUnavailable(NotCreated):
    """The task queue is unavailable; the task was not created. Retry later."""

    def __init__(self) -> None:
        super().__init__("task queue")


class TaskFailed(ImmError):
    """The operation failed."""

    http_status = 400


class SyncTimeout(ImmError):
    """The operation timed out."""

    code = "OperationTimeout"
    http_status = 504


class ContentDigestMismatch(InvalidArgument):
    """The body's SHA-256 differs from the signed x-acs-content-sha256; nothing was stored."""

    code = "InvalidDigest"


class ModelNotInstalled(ImmError):
    """The model this feature needs is not installed."""

    code = "ModelNotInstalled"
    http_status = 501


# MNS-compatible API errors (codes as MNS names them).
class QueueNotExist(ImmError):
    """The queue does not exist."""

    code = "QueueNotExist"
    http_status = 404


class QueueAlreadyExist(ImmError):
    """The queue already exists with different attributes."""

    code = "QueueAlreadyExist"
    http_status = 409


class MessageNotExist(ImmError):
    """Message not exist."""

    code = "MessageNotExist"
    http_status = 404


class ReceiptHandleError(ImmError):
    """The receipt handle is invalid or has expired."""

    code = "ReceiptHandleError"
    http_status = 400


class LongPollLimitExceeded(ImmError):
    """Too many long-polling receivers of this owner are waiting; retry later."""

    code = "LongPollLimitExceeded"
    http_status = 429


# Codes stored on tasks that fail inside the worker (not raised at the API edge).
TASK_TIME_LIMIT_EXCEEDED = "TaskTimeLimitExceeded"
TASK_MAX_ATTEMPTS = "TaskMaxAttemptsExceeded"
TASK_CANCELLED = "TaskCancelled"
