"""Every error tcxc-etl raises, grouped by what the caller should do about it.

- ConfigError: fix the settings; exit code 2.
- ApiError and subclasses: the API call failed. RetriableApiError may succeed if tried again
  (timeouts, 429, 5xx, truncated bodies); AuthError and FatalApiError will not.
- InvalidRecordError: one record cannot be normalised; it is set aside, the run goes on.
- DatabaseError: TransientDatabaseError (connection lost, serialization) or a fatal one.
- PaginationError: the API's paging behaved in a way that could lose or repeat data forever.

Messages say what failed, where (account, window, page) and what to try next. They never
contain the API key or a signature: build them from values that are safe to print.
"""

from __future__ import annotations


class EtlError(Exception):
    """Root of every error raised on purpose by tcxc-etl."""

    exit_code = 1


class ConfigError(EtlError):
    """A setting is missing or invalid; ``problems`` lists every one found."""

    exit_code = 2

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


class UsageError(EtlError):
    """The command line asks for something impossible (bad date range, unknown account)."""

    exit_code = 2


class ApiError(EtlError):
    """The TCXC API call failed. ``where`` says account, window and page when known."""

    kind = "api"

    def __init__(self, message: str, *, where: str = "", status: int | None = None) -> None:
        self.message = message
        self.where = where
        self.status = status
        super().__init__(f"{message} ({where})" if where else message)

    def located(self, where: str) -> ApiError:
        """Return a copy of this error that names where it happened."""
        clone = type(self)(self.message, where=where, status=self.status)
        clone.__cause__ = self.__cause__
        return clone


class RetriableApiError(ApiError):
    """A failure that may pass if the same request is tried again later."""

    kind = "retriable"

    def __init__(
        self,
        message: str,
        *,
        where: str = "",
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, where=where, status=status)
        self.retry_after = retry_after

    def located(self, where: str) -> ApiError:
        clone = type(self)(
            self.message, where=where, status=self.status, retry_after=self.retry_after
        )
        clone.__cause__ = self.__cause__
        return clone


class RateLimitedError(RetriableApiError):
    """HTTP 429: the API's per-second or hourly limit was hit."""

    kind = "rate_limited"


class AuthError(ApiError):
    """The API refused our credentials ("Wrong signature"); retrying will not help."""

    kind = "auth"


class FatalApiError(ApiError):
    """The API answered in a way we must not interpret as data (unknown shape, 4xx, error)."""

    kind = "fatal"


class PaginationError(FatalApiError):
    """Paging could not be completed safely (a page repeated, a page too large, no progress)."""

    kind = "pagination"


class ResultChangedError(PaginationError):
    """The window's result lost records before the current offset while it was paged."""


class StopRequestedError(EtlError):
    """A stop (SIGTERM/SIGINT) was requested; the current window is abandoned cleanly."""


class InvalidRecordError(EtlError):
    """One CDR cannot be normalised; ``reason`` is stored beside its raw payload."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class DatabaseError(EtlError):
    """A database operation failed for a reason that retrying will not fix."""


class TransientDatabaseError(DatabaseError):
    """The database connection dropped or a transaction must be retried."""


class EmbeddedDatabaseError(DatabaseError):
    """The embedded PostgreSQL could not be initialised, started or stopped."""

    exit_code = 1
