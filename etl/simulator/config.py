"""The simulator's settings: one immutable object, validated when it is built."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

ORDERS = ("asc", "desc", "shuffled", "ties", "unstable")
FILTER_FIELDS = ("setup_time", "connect_time", "disconnect_time")


def _default_accounts() -> Mapping[str, str]:
    return {"demo": "demo-key"}


@dataclass(frozen=True)
class SimulatorConfig:
    """How the simulated TCXC API behaves and which CDRs it holds.

    ``start`` and ``end`` are naive datetimes in the API's zone (UTC). Left as ``None`` they
    resolve to ``end = today 00:00 UTC`` and ``start = end - days``; use :meth:`window` to get
    the resolved pair.

    ``live``: the calls run on past ``end`` at the same rate, day after day, and a call is
    served only once it has ended (its disconnect time has passed on ``clock``), as a real API
    shows calls: a daemon pointed at it finds new calls on every pass. A live simulator has
    no ``end`` of its own and filters on ``setup_time``. ``clock`` (Unix seconds) is the time
    the simulator believes it is: the default end's "today", and what a live one serves.
    """

    accounts: Mapping[str, str] = field(default_factory=_default_accounts)
    cdrs: int = 10_000
    seed: int = 1
    start: datetime | None = None
    end: datetime | None = None
    days: int = 30
    max_page_size: int | None = None
    max_offset: int | None = None  # an API that serves nothing from this offset on
    # An API that silently cuts a request's date range to this many seconds after date_from.
    max_span: int | None = None
    order: str = "asc"
    duplicate_every: int = 0
    skew_seconds: int = 300
    latency: float = 0.0
    filter_field: str = "setup_time"
    # Both date bounds exclusive (date_from < t < date_to), as an API may compare them.
    exclusive_bounds: bool = False
    port: int = 0
    host: str = "127.0.0.1"  # only a container (docker-compose) should listen elsewhere
    live: bool = False
    clock: Callable[[], float] = field(default=time.time, compare=False)

    def __post_init__(self) -> None:
        problems = _problems(self)
        if problems:
            raise ValueError("invalid SimulatorConfig: " + "; ".join(problems))

    def window(self) -> tuple[datetime, datetime]:
        """The resolved ``[start, end)`` span the generated CDRs' setup times fall in."""
        end = self.end
        if end is None:
            now = datetime.fromtimestamp(self.clock(), UTC)
            end = datetime(now.year, now.month, now.day)
        start = self.start if self.start is not None else end - timedelta(days=self.days)
        return start, end

    def __repr__(self) -> str:
        # API keys never appear in a repr.
        names = [name for name in self.__dataclass_fields__ if name not in ("accounts", "clock")]
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in names)
        return f"SimulatorConfig(accounts=<{len(self.accounts)} logins>, {shown})"


# Generated calls per second of the range at most (etl.simulator.data.ICDR_PER_SECOND).
MAX_CDRS_PER_SECOND = 20


def _problems(config: SimulatorConfig) -> list[str]:
    problems = _window_problems(config)
    if not config.accounts:
        problems.append("accounts must name at least one login")
    if config.cdrs < 0:
        problems.append("cdrs must be >= 0")
    if config.max_page_size is not None and config.max_page_size < 1:
        problems.append("max_page_size must be >= 1 or None")
    if config.max_offset is not None and config.max_offset < 1:
        problems.append("max_offset must be >= 1 or None")
    if config.order not in ORDERS:
        problems.append(f"order must be one of {ORDERS}")
    if config.filter_field not in FILTER_FIELDS:
        problems.append(f"filter_field must be one of {FILTER_FIELDS}")
    if config.live and config.end is not None:
        problems.append("a live simulator has no end: its calls run on with the clock")
    if config.live and config.filter_field != "setup_time":
        problems.append("a live simulator filters on setup_time")
    if config.duplicate_every < 0:
        problems.append("duplicate_every must be >= 0")
    if config.skew_seconds < 0:
        problems.append("skew_seconds must be >= 0")
    if config.latency < 0:
        problems.append("latency must be >= 0")
    if not 0 <= config.port <= 65535:
        problems.append("port must be 0..65535")
    return problems


def _window_problems(config: SimulatorConfig) -> list[str]:
    problems: list[str] = []
    if config.days < 1 and config.start is None:
        problems.append("days must be >= 1")
    for name in ("start", "end"):
        value = getattr(config, name)
        if value is not None and value.tzinfo is not None:
            problems.append(f"{name} must be a naive datetime (API zone)")
    if config.start is not None and config.end is not None and config.start >= config.end:
        problems.append("start must be before end")
    if problems:
        return problems
    start, end = config.window()
    if start >= end:  # (end not given: today 00:00 UTC)
        return [f"start must be before end ({end:%Y-%m-%d %H:%M:%S})"]
    if start < datetime(1970, 1, 1):
        problems.append("start must be in 1970 or later")
    most = int(MAX_CDRS_PER_SECOND * (end - start).total_seconds())
    if config.cdrs > most:  # (denser, a second could hold more calls than i_cdr has room for)
        problems.append(f"cdrs must be at most {MAX_CDRS_PER_SECOND} a second: {most} here")
    return problems
