"""Typed errors of the function runtime: one base class; HTTP status decided in `protocol`.

Whether a fault is retried follows from its type alone: `retryable` is True only for faults that
are transient by meaning (storage unavailable or throttled, a timeout, a busy instance, no model
loaded yet). Those answer 5xx (or 429) so Knative delivers again; every other error is permanent
and answers a status Knative does not retry, or 2xx with a `failed` reply event for an event.
"""

from __future__ import annotations


class LeptonError(Exception):
    """Base of every error raised by lepton_runtime."""

    code = "error"
    retryable = False


class ConfigurationError(LeptonError):
    """The environment describes an impossible or unsafe setup (raised at start-up)."""

    code = "configuration_error"


class BadRequestError(LeptonError):
    """The request is malformed (bad JSON, wrong shape, missing field)."""

    code = "bad_request"


class PayloadTooLargeError(BadRequestError):
    code = "payload_too_large"


class UnsupportedMediaTypeError(BadRequestError):
    code = "unsupported_media_type"


class NotFoundError(LeptonError):
    """An HTTP route or a named model that does not exist."""

    code = "not_found"


class EventFormatError(BadRequestError):
    """A body that is no event shape we know."""

    code = "invalid_event"


class UnauthorizedError(LeptonError):
    """An event without a valid OIDC token for this function (missing, expired, for another
    audience or issuer, badly signed): nothing it names is read. Permanent (401): a
    redelivery carries the same token."""

    code = "unauthorized"


class AuthUnavailableError(LeptonError):
    """The keys that verify event tokens could not be fetched (the issuer's JWKS endpoint is
    down): transient, the sender delivers again."""

    code = "auth_unavailable"
    retryable = True


class ForbiddenLocationError(LeptonError):
    """An event points at a bucket/prefix this function does not serve (or must never read)."""

    code = "forbidden_location"


class ModelNotReadyError(LeptonError):
    """No model is loaded yet (readiness is 503 until one is)."""

    code = "model_not_ready"
    retryable = True


class StorageError(LeptonError):
    """Base of object-store faults; permanent unless a subclass says otherwise."""

    code = "storage_error"


class StorageRequestError(StorageError):
    """The store refused the request itself (a 4xx such as KeyTooLong or InvalidArgument, or
    parameters botocore rejects): the same request would fail again."""

    code = "storage_request_rejected"


class ObjectFormatError(StorageError):
    """An object does not hold what it must (e.g. a manifest or pointer that is not JSON)."""

    code = "invalid_object"


class ObjectNotFoundError(StorageError):
    """The referenced object (or bucket) does not exist: permanent."""

    code = "object_not_found"


class ObjectChangedError(StorageError):
    """The object is no longer the one an event named (overwritten since): permanent, and the
    newer object's own event does the work."""

    code = "object_changed"


class ObjectTooLargeError(StorageError):
    """The object is bigger than the configured limit: permanent, nothing is downloaded."""

    code = "object_too_large"


class AccessDeniedError(StorageError):
    """The credentials may not read or write the object: permanent until someone fixes IAM."""

    code = "access_denied"


class StorageUnavailableError(StorageError):
    """The store could not be reached or failed (timeouts, 5xx, throttling): transient."""

    code = "storage_unavailable"
    retryable = True


class DiskUnavailableError(LeptonError):
    """A local file could not be written (the model cache's disk is full, read-only or gone):
    transient, 503. Space frees as the cache evicts old versions, and a redelivery may reach
    another replica; a replica that stays this way dead-letters its events, never fails them."""

    code = "disk_unavailable"
    retryable = True


class TrainingBusyError(LeptonError):
    """This instance is already training (concurrency 1): retry later (429, retried)."""

    code = "training_busy"
    retryable = True


def is_retryable(error: BaseException) -> bool:
    """Transient by meaning, from the error's type alone (lepton_model's errors carry the same
    attribute): the caller should deliver again. Everything else is permanent."""
    return bool(getattr(type(error), "retryable", False))


def raise_if_transient(error: BaseException) -> None:
    """Raise `error` again when it is transient, so the request is answered 5xx/429 and
    delivered again; return when it is permanent, for the caller to record as a failure."""
    if is_retryable(error):
        raise error
