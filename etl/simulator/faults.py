"""Faults the simulator can inject: rate limits, server errors, broken bodies, resets.

Queued faults (``inject``) hit the next requests in order; a fault rate hits a seeded random
share of the requests that no queued fault took.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from etl.simulator.protocol import HTML, Reply, error_reply

FAULT_KINDS = (
    "429",
    "500",
    "502",
    "503",
    "slow",
    "truncated",
    "html",
    "error_envelope",
    "temporary_error",
    "reset",
)
# Kinds that still compute the normal answer and then alter it.
ALTERING_KINDS = ("slow", "truncated")

_STATUS_TEXT = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}


@dataclass(frozen=True)
class Fault:
    """One fault to apply to one request; ``kind`` is one of ``FAULT_KINDS``."""

    kind: str
    retry_after: float = 1.0
    delay: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {FAULT_KINDS}")
        if self.retry_after < 0 or self.delay < 0:
            raise ValueError("retry_after and delay must be >= 0")


class FaultPlan:
    """Which fault, if any, the next request gets. Not locked: the engine's lock guards it."""

    def __init__(self) -> None:
        self._queue: deque[Fault] = deque()
        self._rate = 0.0
        self._kinds: tuple[Fault, ...] = ()
        self._rng = random.Random(0)

    def inject(self, faults: Iterable[Fault]) -> None:
        """Queue faults for the next requests, in order."""
        self._queue.extend(faults)

    def set_rate(
        self, rate: float, kinds: Sequence[str], seed: int, retry_after: float, delay: float
    ) -> None:
        """Give a seeded random ``rate`` share of requests a fault drawn from ``kinds``."""
        if not 0.0 <= rate <= 1.0:
            raise ValueError("fault rate must be between 0 and 1")
        if rate > 0 and not kinds:
            raise ValueError("a fault rate needs at least one kind")
        self._kinds = tuple(Fault(kind, retry_after=retry_after, delay=delay) for kind in kinds)
        self._rate = rate
        self._rng = random.Random(seed)

    def clear(self) -> None:
        """Drop queued faults and the random rate."""
        self._queue.clear()
        self._rate = 0.0
        self._kinds = ()

    def take(self) -> Fault | None:
        """The fault for the request being handled now, if any."""
        if self._queue:
            return self._queue.popleft()
        if self._rate > 0 and self._rng.random() < self._rate:
            return self._rng.choice(self._kinds)
        return None


def fault_reply(fault: Fault) -> Reply:
    """The answer of a fault that replaces the normal one."""
    kind = fault.kind
    if kind == "429":
        seconds = fault.retry_after
        value = str(int(seconds)) if float(seconds).is_integer() else str(seconds)
        reply = error_reply("Too Many Requests", status=429)
        return Reply(429, reply.body, headers=(("Retry-After", value),))
    if kind in ("500", "502", "503"):
        status = int(kind)
        return Reply(status, _html_page(f"{status} {_STATUS_TEXT[status]}"), content_type=HTML)
    if kind == "html":
        return Reply(200, _html_page("Service temporarily unavailable"), content_type=HTML)
    if kind == "error_envelope":
        return error_reply("There was an error.")
    if kind == "temporary_error":
        return error_reply("Temporary failure, please retry")
    if kind == "reset":
        return Reply(0, b"", reset=True)
    raise ValueError(f"fault {kind!r} alters the normal answer; it has no reply of its own")


def altered(reply: Reply, fault: Fault) -> Reply:
    """The normal answer changed by a ``slow`` or ``truncated`` fault."""
    if fault.kind == "slow":
        return replace(reply, delay=reply.delay + fault.delay)
    return replace(reply, body=reply.body[: len(reply.body) // 2])


def _html_page(title: str) -> bytes:
    return (
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
        f"<center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    ).encode()
