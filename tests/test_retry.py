"""Retries: which errors, how long, and fresh signatures."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest
import requests

from etl.client import ApiClient
from etl.errors import AuthError, FatalApiError, RateLimitedError, RetriableApiError
from etl.retry import RetryPolicy, call_with_retry
from etl.simulator import Fault, Simulator
from tests.conftest import free_port


class Clock:
    """Fake monotonic time advanced by sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def _policy(clock: Clock, **overrides: Any) -> RetryPolicy:
    base: dict[str, Any] = {
        "attempts": 5,
        "base_delay": 1.0,
        "max_delay": 30.0,
        "max_elapsed": 100.0,
        "sleep": clock.sleep,
        "clock": clock,
        "rng": random.Random(1),
    }
    return RetryPolicy(**{**base, **overrides})


def _failing(errors: list[Exception]) -> Any:
    def call() -> str:
        if errors:
            raise errors.pop(0)
        return "ok"

    return call


def test_backoff_is_exponential_with_jitter_and_bounded() -> None:
    """Waits stay under base * 2**(n-1) and max_delay; the call succeeds after the faults."""
    clock = Clock()
    errors: list[Exception] = [RetriableApiError("x") for _ in range(4)]
    assert call_with_retry(_failing(errors), _policy(clock), "here") == "ok"
    assert len(clock.sleeps) == 4
    for attempt, wait in enumerate(clock.sleeps, 1):
        assert 0 <= wait <= min(30.0, 2 ** (attempt - 1))


def test_retry_after_is_honoured() -> None:
    """A 429 with Retry-After: 7 waits at least 7 seconds."""
    clock = Clock()
    errors: list[Exception] = [RateLimitedError("429", retry_after=7.0)]
    call_with_retry(_failing(errors), _policy(clock), "here")
    assert clock.sleeps[0] >= 7.0


def test_attempts_are_bounded() -> None:
    """After `attempts` failures the last error is raised, saying how many attempts."""
    clock = Clock()
    errors: list[Exception] = [RetriableApiError("boom") for _ in range(10)]
    with pytest.raises(RetriableApiError, match="gave up after 5 attempts"):
        call_with_retry(_failing(errors), _policy(clock), "here")


def test_total_time_is_bounded() -> None:
    """A Retry-After beyond the time budget gives up instead of waiting."""
    clock = Clock()
    errors: list[Exception] = [RateLimitedError("429", retry_after=500.0)] * 3
    with pytest.raises(RateLimitedError):
        call_with_retry(_failing(list(errors)), _policy(clock, max_delay=1000.0), "here")
    assert clock.sleeps == []


@pytest.mark.parametrize("error", [AuthError("no"), FatalApiError("bad request", status=400)])
def test_auth_and_4xx_are_not_retried(error: Exception) -> None:
    """Errors that retrying cannot fix pass straight through on the first attempt."""
    clock = Clock()
    with pytest.raises(type(error)):
        call_with_retry(_failing([error]), _policy(clock), "here")
    assert clock.sleeps == []


class RecordingSession(requests.Session):
    """A real requests session that remembers the form of every request it sends."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict[str, str]] = []

    def post(self, url: str | bytes, data: Any = None, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        self.forms.append(dict(data))
        return super().post(url, data=data, **kwargs)


def test_every_attempt_is_freshly_signed(sim: Simulator) -> None:
    """Each retry carries its own ts and signature (computed at send time)."""
    ticks = iter(range(10))
    session = RecordingSession()
    base = int(time.time())
    client = ApiClient(
        sim.url, "buyer1", "key-one", clock=lambda: base + next(ticks), session=session
    )
    sim.inject(Fault("503"), Fault("500"))
    clock = Clock()
    page = call_with_retry(
        lambda: client.fetch_page({"pager": "10", "off": "0"}), _policy(clock), "here"
    )
    assert page.records
    assert len(session.forms) == 3
    assert len({form["ts"] for form in session.forms}) == 3
    assert len({form["signature"] for form in session.forms}) == 3
    assert session.verify is True, "TLS verification stays on"


def test_an_unreachable_api_names_its_url_and_setting() -> None:
    """Nothing listens: a retriable error naming TCXC_API_URL and where it points."""
    url = f"http://127.0.0.1:{free_port()}/buyers/callhistory"
    with pytest.raises(RetriableApiError, match="cannot reach the API") as caught:
        ApiClient(url, "b", "k-SECRET", connect_timeout=2).fetch_page({"off": "0"})
    assert "TCXC_API_URL" in str(caught.value) and url in str(caught.value)
    assert "k-SECRET" not in str(caught.value)
