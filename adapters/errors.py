"""Backend failures, classified so the dispatcher can decide: retry, fall back, or give up."""

from __future__ import annotations

from adapters.redact import redact


class BackendError(Exception):
    """A backend could not answer.

    `retryable`: the same backend may succeed if asked again (timeouts, 429, 5xx).
    `status`: the HTTP status the failure maps to at the gateway when no fallback is left.
    `retry_after`: seconds the backend asked us to wait (Retry-After), if any.
    `secrets`: the adapter's credential values, masked in the message with token-shaped strings.
    """

    status = 502
    retryable = True

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        upstream_status: int | None = None,
        secrets: frozenset[str] = frozenset(),
    ):
        message = redact(message, secrets)  # upstream text may quote a credential (adapters.redact)
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        self.upstream_status = upstream_status


class BackendTimeout(BackendError):
    status = 504


class BackendUnavailable(BackendError):
    """Cannot connect, or the backend says it is overloaded / not loaded."""

    status = 503


class BackendRateLimited(BackendError):
    status = 429


class BackendRejected(BackendError):
    """The backend refused this request as invalid (4xx other than 429): asking again will not help,
    but another model may accept it."""

    status = 400
    retryable = False


class BackendNotConfigured(BackendError):
    """The backend lacks what it needs to run (API key, weights, optional package)."""

    status = 503
    retryable = False
