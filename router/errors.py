"""Errors the router raises toward its callers, each with the HTTP status and OpenAI error shape."""

from __future__ import annotations

from typing import Any


class RouterError(Exception):
    status = 500
    type = "server_error"
    code: str | None = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
            if status < 500 and self.type == "server_error":
                self.type = "invalid_request_error"
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class BadRequest(RouterError):
    status, type, code = 400, "invalid_request_error", "invalid_request"


class ConstraintsUnsatisfiable(BadRequest):
    code = "constraints_unsatisfiable"


class ContextTooLong(BadRequest):
    code = "context_length_exceeded"


class Unauthorized(RouterError):
    status, type, code = 401, "authentication_error", "invalid_api_key"


class Forbidden(RouterError):
    status, type, code = 403, "permission_error", "model_not_allowed"


class NotFound(RouterError):
    status, type, code = 404, "invalid_request_error", "model_not_found"


class PayloadTooLarge(RouterError):
    status, type, code = 413, "invalid_request_error", "request_too_large"


class RateLimited(RouterError):
    status, type, code = 429, "rate_limit_error", "rate_limit_exceeded"


class BudgetExceeded(RouterError):
    status, type, code = 429, "insufficient_quota", "budget_exceeded"


class UpstreamFailed(RouterError):
    """Every candidate failed. `status` is 502 (bad answers), 503 (unavailable) or 504 (timeouts)."""

    status, type, code = 502, "upstream_error", "upstream_error"


class ServiceUnavailable(RouterError):
    status, type, code = 503, "service_unavailable", "no_model_available"


class UnknownParameter(BadRequest):
    code = "unknown_parameter"


class ForbiddenParameter(BadRequest):
    code = "forbidden_parameter"


class RequestTimeout(RouterError):
    status, type, code = 408, "invalid_request_error", "request_timeout"
