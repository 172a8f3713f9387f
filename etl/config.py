"""Settings: parsed once at the edge (CLI, daemon) into an immutable, typed object.

Sources, later ones winning: built-in defaults, a TOML file given with ``--config``, the
environment. Every problem is collected and reported at once, each naming its setting.
Secrets are held in ``Secret`` so that no repr, log line or error can show them.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from etl import dburl, payload
from etl.errors import ConfigError

log = logging.getLogger(__name__)
DEFAULT_API_URL = "https://api.telecomsxchange.com/buyers/callhistory"


class Secret:
    """A string that never shows itself in repr() or str()."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The real value; call only where it is sent, never where it is printed."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')" if self._value else "Secret('')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class Account:
    """One buyer account: its login, its key and the destination prefix it syncs."""

    login: str
    key: Secret
    prefix: str = ""


@dataclass(frozen=True)
class Settings:
    """Everything a run needs to know; built by ``load_settings``."""

    api_url: str = DEFAULT_API_URL
    api_login: str = ""
    api_key: Secret = field(default_factory=lambda: Secret(""))
    database_url: Secret = field(default_factory=lambda: Secret(""))
    api_timezone: ZoneInfo = field(default_factory=lambda: ZoneInfo("UTC"))
    page_size: int = 1000
    window: timedelta = timedelta(days=1)
    window_rows: int = 50_000  # join planned windows up to this many rows (etl.windows)
    prefix: str = ""
    connect_timeout: float = 10.0
    read_timeout: float = 120.0
    max_pages_per_window: int = 100_000
    raw_payload: str = payload.COMPACT  # what cdr.raw keeps: etl/payload.py
    embedded_dir: Path | None = None
    embedded_port: int = 54329
    configured_accounts: tuple[Account, ...] = ()
    start_date: datetime | None = None
    lookback: timedelta = timedelta(hours=3)
    settle_lag: timedelta = timedelta(minutes=10)
    deep_lookback: timedelta = timedelta(days=7)
    sync_interval: timedelta = timedelta(minutes=15)
    deep_sync_cron: str = "30 3 * * *"
    lag_alert: timedelta = timedelta(hours=2)
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    stop_timeout: timedelta = timedelta(seconds=60)
    workers: int = 2
    parallel_accounts: int = 4
    requests_per_second: float = 10.0
    requests_per_hour: int = 20_000

    @property
    def accounts(self) -> tuple[Account, ...]:
        """The accounts from the config file, or the single TCXC_API_LOGIN account."""
        if self.configured_accounts:
            return self.configured_accounts
        if self.api_login or self.api_key:
            return (Account(self.api_login, self.api_key, self.prefix),)
        return ()

    def account(self, login: str | None) -> Account:
        """The account named ``login`` (or the only one), or a ConfigError."""
        accounts = self.accounts
        if not accounts:
            self.require_credentials()
        if login is None:
            if len(accounts) > 1:
                names = ", ".join(a.login for a in accounts)
                raise ConfigError([f"several accounts are configured ({names}): pick one"])
            return accounts[0]
        for account in accounts:
            if account.login == login:
                return account
        raise ConfigError([f"account {login!r} is not configured"])

    @property
    def has_database_url(self) -> bool:
        return bool(self.database_url)

    def require_credentials(self) -> None:
        """Raise ConfigError naming each API credential that is missing (the accounts of a
        config file were checked when it was read)."""
        if self.configured_accounts:
            return
        problems = _missing_credentials(self.api_login, self.api_key)
        if problems:
            raise ConfigError(problems)


MAX_DURATION_DAYS = 36_500


def parse_duration(text: str) -> timedelta:
    """Parse '90s', '15m', '6h', '1d' into a timedelta. The unit is required: a bare '3'
    (seconds? days?) is refused rather than guessed."""
    match = re.fullmatch(r"\s*([0-9]+)\s*([smhd])\s*", text)
    if not match:
        raise ValueError(f"{text!r} is not a duration such as 90s, 30m, 6h or 1d")
    amount, unit = int(match.group(1)), match.group(2)
    seconds = amount * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
    if seconds <= 0:
        raise ValueError("must be longer than zero")
    if seconds > MAX_DURATION_DAYS * 86400:  # beyond it, date arithmetic overflows
        raise ValueError(f"must be at most {MAX_DURATION_DAYS}d")
    return timedelta(seconds=seconds)


# The years a CDR's times may hold: TCXC_START_DATE, --from and --to are refused outside them.
YEARS = range(1900, 2201)


def _start_date(text: str) -> datetime:
    for fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d"):
        try:
            moment = datetime.strptime(text.strip(), fmt)
        except ValueError:
            continue
        if moment.year not in YEARS:
            raise ValueError(f"is out of range: give a year from {YEARS[0]} to {YEARS[-1]}")
        return moment
    raise ValueError("must be a date such as 2026-01-01 (in TCXC_API_TIMEZONE)")


def _cron(text: str) -> str:
    expected = "must be a 5-field cron expression such as '30 3 * * *'"
    if len(text.split()) != 5:
        raise ValueError(expected)
    # What the daemon's scheduler will make of it, checked now (imported only when the
    # setting is given: most commands never schedule anything).
    from apscheduler.triggers.cron import CronTrigger

    try:
        CronTrigger.from_crontab(text, timezone=UTC)
    except ValueError as exc:
        raise ValueError(f"{expected} ({exc})") from None
    return text


def _int_in(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        expected = f"must be a whole number between {low} and {high}"
        try:
            value = int(text)
        except ValueError:
            raise ValueError(expected) from None
        if not low <= value <= high:
            raise ValueError(expected)
        return value

    return parse


def _number(text: str, expected: str) -> float:
    """``text`` as a finite float, or a ValueError saying ``expected``."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(expected) from None
    if not math.isfinite(value):
        raise ValueError(expected)
    return value


MAX_TIMEOUT = 86_400.0  # a day; far beyond it a socket's timeout overflows


def _timeout(text: str) -> float:
    expected = f"must be a positive number of seconds, at most {MAX_TIMEOUT:.0f} (a day)"
    value = _number(text, expected)
    if not 0 < value <= MAX_TIMEOUT:
        raise ValueError(expected)
    return value


MIN_RATE = 0.001  # one request per 1000 s; a slower pace would wait longer than a clock holds


def _rate(text: str) -> float:
    expected = f"must be 0 (no limit) or between {MIN_RATE} and 100000 requests per second"
    value = _number(text, expected)
    if not (value == 0 or MIN_RATE <= value <= 100_000):
        raise ValueError(expected)
    return value


_HOST = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=%-]+|[0-9A-Fa-f:.]+")  # (an IPv6 one without [])


def _api_url(text: str) -> str:
    text = text.strip()  # a pasted value's newline, as the key's and the login's
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an http(s) URL such as " + DEFAULT_API_URL)
    if parts.username or parts.password:
        raise ValueError("must not carry credentials; use TCXC_API_LOGIN and TCXC_API_KEY")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise ValueError("its port must be a number from 1 to 65535")
    if any(char.isspace() for char in text):
        raise ValueError("must not hold spaces (write one in its path as %20)")
    if not _HOST.fullmatch(parts.hostname or ""):
        raise ValueError("its host name holds a character a host name cannot")
    return text


def _bind_address(text: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text.strip()))
    except ValueError:
        raise ValueError(
            "must be an IPv4 address to listen on, such as 127.0.0.1 (0.0.0.0: every interface)"
        ) from None


def _database_url(text: str) -> Secret:
    return Secret(dburl.check_database_url(text))


def _timezone(text: str) -> ZoneInfo:
    try:
        return ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"{text!r} is not an IANA time zone such as UTC or Europe/London"
        ) from None


def _raw_payload(text: str) -> str:
    if text not in payload.MODES:
        raise ValueError("must be one of " + ", ".join(payload.MODES))
    return text


def _folder(text: str) -> Path:
    if not text.strip():
        raise ValueError("must be a folder path (leave it unset for the default)")
    return Path(text)


def check_prefix(text: str) -> str:
    """A destination prefix: digits, or '' for all (TCXC_PREFIX, an account's, --prefix)."""
    if text and not re.fullmatch("[0-9]+", text):  # not str.isdigit: '²' and '٤' are digits
        raise ValueError("must be digits (0-9), such as 44")
    return text


# setting name (env var; the TOML key is the same in lower case) -> (field, parser)
SETTINGS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "TCXC_API_URL": ("api_url", _api_url),
    "TCXC_API_LOGIN": ("api_login", str.strip),
    "TCXC_API_KEY": ("api_key", lambda text: Secret(text.strip())),
    "DATABASE_URL": ("database_url", _database_url),
    "TCXC_API_TIMEZONE": ("api_timezone", _timezone),
    "TCXC_PAGE_SIZE": ("page_size", _int_in(1, 100_000)),
    "TCXC_WINDOW": ("window", parse_duration),
    "TCXC_WINDOW_ROWS": ("window_rows", _int_in(0, 10_000_000)),
    "TCXC_PREFIX": ("prefix", check_prefix),
    "TCXC_CONNECT_TIMEOUT": ("connect_timeout", _timeout),
    "TCXC_READ_TIMEOUT": ("read_timeout", _timeout),
    "TCXC_MAX_PAGES_PER_WINDOW": ("max_pages_per_window", _int_in(1, 10_000_000)),
    "TCXC_RAW_PAYLOAD": ("raw_payload", _raw_payload),
    "TCXC_EMBEDDED_DIR": ("embedded_dir", _folder),
    "TCXC_EMBEDDED_PORT": ("embedded_port", _int_in(1024, 65535)),
    "TCXC_START_DATE": ("start_date", _start_date),
    "TCXC_LOOKBACK": ("lookback", parse_duration),
    "TCXC_SETTLE_LAG": ("settle_lag", parse_duration),
    "TCXC_DEEP_LOOKBACK": ("deep_lookback", parse_duration),
    "TCXC_SYNC_INTERVAL": ("sync_interval", parse_duration),
    "TCXC_DEEP_SYNC_CRON": ("deep_sync_cron", _cron),
    "TCXC_LAG_ALERT": ("lag_alert", parse_duration),
    "TCXC_METRICS_PORT": ("metrics_port", _int_in(1024, 65535)),
    "TCXC_METRICS_HOST": ("metrics_host", _bind_address),
    "TCXC_STOP_TIMEOUT": ("stop_timeout", parse_duration),
    "TCXC_WORKERS": ("workers", _int_in(1, 32)),
    "TCXC_PARALLEL_ACCOUNTS": ("parallel_accounts", _int_in(1, 64)),
    "TCXC_REQUESTS_PER_SECOND": ("requests_per_second", _rate),
    "TCXC_REQUESTS_PER_HOUR": ("requests_per_hour", _int_in(0, 100_000_000)),
}
SECRET_SETTINGS = frozenset({"TCXC_API_KEY", "DATABASE_URL"})


def _read_toml(path: Path, problems: list[str]) -> dict[str, Any]:
    """The file's settings by their environment names; what is wrong with it joins
    ``problems`` (so that the environment's own problems are reported with them)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([f"--config {path}: cannot read the file ({exc.strerror})"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"--config {path}: not a UTF-8 text file"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"--config {path}: not valid TOML ({exc})"]) from None
    known = {name.lower(): name for name in SETTINGS}
    values: dict[str, Any] = {}
    seen: set[str] = set()
    for key, value in data.items():
        name = known.get(key.lower())  # (None: [[accounts]] or an unknown key, named below)
        if name is not None:
            if name in seen:
                problems.append(f"--config {path}: {name} is set twice (once as {key!r})")
            seen.add(name)
        if key == "accounts":
            if isinstance(value, list):
                values["accounts"] = value
            else:
                problems.append(f"--config {path}: accounts must be [[accounts]] tables")
        elif key.lower() not in known:
            problems.append(f"--config {path}: unknown setting {key!r}")
        elif isinstance(value, dict | list):
            problems.append(f"--config {path}: {key} must be a single value")
        elif str(value) != "":  # '' is unset, as in the environment
            values[known[key.lower()]] = str(value)
    return values


def _accounts(
    entries: list[Any],
    env: Mapping[str, str],
    problems: list[str],
    key_problems: list[str],
    default_prefix: str,
) -> list[Account]:
    """Accounts from the TOML ``[[accounts]]`` tables; keys come from env vars or files
    (what is wrong with a key joins ``key_problems``); an entry without ``prefix`` takes
    ``default_prefix`` (TCXC_PREFIX)."""
    accounts: list[Account] = []
    for number, entry in enumerate(entries, 1):
        where = f"--config [[accounts]] #{number}"
        if not isinstance(entry, dict) or not str(entry.get("login", "")).strip():
            problems.append(f"{where}: needs a login")
            continue
        login = str(entry["login"]).strip()
        unknown = set(entry) - {"login", "key_env", "key_file", "prefix"}
        if unknown:
            problems.append(f"{where} ({login}): unknown keys {sorted(unknown)}")
        key = _account_key(entry, env, f"{where} ({login})", key_problems)
        try:
            prefix = check_prefix(str(entry.get("prefix", default_prefix)))
        except ValueError as exc:
            problems.append(f"{where} ({login}): prefix {exc}")
            continue
        if any(a.login == login and a.prefix == prefix for a in accounts):
            problems.append(f"{where}: account {login} is listed twice")
        accounts.append(Account(login, Secret(key), prefix))
    return accounts


def _account_key(
    entry: dict[str, Any], env: Mapping[str, str], where: str, problems: list[str]
) -> str:
    if "key_env" in entry and "key_file" in entry:
        problems.append(f"{where}: give key_env or key_file, not both")
        return ""
    if "key_env" in entry:
        key = env.get(str(entry["key_env"]), "").strip()
        if not key:
            problems.append(f"{where}: environment variable {entry['key_env']} is not set")
        return key
    if "key_file" in entry:
        return _key_file(str(entry["key_file"]), where, problems)
    problems.append(f"{where}: needs key_env (an environment variable) or key_file")
    return ""


def _key_file(name: str, where: str, problems: list[str]) -> str:
    """The key an account's ``key_file`` holds ('' and a problem if it holds none)."""
    if not name.strip():
        problems.append(f"{where}: key_file is empty: give the path of a file holding the key")
        return ""
    path = Path(name)
    try:
        key = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        problems.append(f"{where}: cannot read key_file {path} ({exc.strerror})")
        return ""
    except UnicodeDecodeError:
        problems.append(f"{where}: key_file {path} is not UTF-8 text")
        return ""
    if path.stat().st_mode & 0o077:
        log.warning("key_file %s can be read by other users: chmod 600 it", path)
    if not key:
        problems.append(f"{where}: key_file {path} is empty")
    return key


def load_settings(
    env: Mapping[str, str], config_path: Path | None = None, *, keys: bool = True
) -> Settings:
    """Build Settings from a TOML file and the environment, or raise one ConfigError.
    ``keys=False`` (a command that calls no API): an account's key that cannot be read is
    left empty instead of being a problem (and missing API credentials are left to
    ``require_credentials``); with ``keys``, they are named beside any other problem."""
    problems: list[str] = []
    raw = _read_toml(config_path, problems) if config_path else {}
    if config_path:
        _warn_if_readable(config_path, raw)
    raw.update({name: env[name] for name in SETTINGS if env.get(name, "") != ""})
    values: dict[str, Any] = {}
    if "accounts" in raw:
        key_problems: list[str] = problems if keys else []
        default = _valid_prefix(raw.get("TCXC_PREFIX", ""))
        entries = raw.pop("accounts")
        values["configured_accounts"] = tuple(
            _accounts(entries, env, problems, key_problems, default)
        )
        problems.extend(_replaced_by_accounts(raw, config_path))
    for name, text in raw.items():
        attr, parse = SETTINGS[name]
        try:
            values[attr] = parse(text)
        except ValueError as exc:
            shown = "(hidden)" if name in SECRET_SETTINGS else repr(dburl.without_userinfo(text))
            problems.append(f"{name}={shown}: {exc}")
    problems.extend(_conflicts(values))
    if problems and keys and "configured_accounts" not in values:
        problems.extend(_missing_credentials(values.get("api_login"), values.get("api_key")))
    if problems:
        raise ConfigError(list(dict.fromkeys(problems)))
    return Settings(**values)


def _warn_if_readable(path: Path, raw: Mapping[str, Any]) -> None:
    """Warn when the file holds a secret (an API key, a database password) that other users
    can read."""
    if not path.stat().st_mode & 0o077:
        return
    if raw.get("TCXC_API_KEY"):
        log.warning("%s holds an API key and can be read by other users: chmod 600 it", path)
    if dburl.url_passwords(str(raw.get("DATABASE_URL", ""))):
        log.warning(
            "%s holds a database password (in database_url) and can be read by other users: "
            "chmod 600 it",
            path,
        )


def _valid_prefix(text: str) -> str:
    """``text`` if it is a valid prefix, else '' (its problem is reported as TCXC_PREFIX's)."""
    try:
        return check_prefix(text)
    except ValueError:
        return ""


def _replaced_by_accounts(raw: Mapping[str, str], path: Path | None) -> list[str]:
    """TCXC_API_LOGIN and TCXC_API_KEY mean nothing beside [[accounts]]: name them rather
    than ignore them (the account they name would silently not be synced)."""
    given = [name for name in ("TCXC_API_LOGIN", "TCXC_API_KEY") if raw.get(name)]
    if not given:
        return []
    return [
        f"{' and '.join(given)} {'are' if len(given) > 1 else 'is'} set, but --config {path} "
        "lists [[accounts]], which replace them: unset "
        f"{'them' if len(given) > 1 else 'it'} or add that account to the file"
    ]


def _conflicts(values: Mapping[str, Any]) -> list[str]:
    """Settings that are each valid but cannot work together."""
    lag_alert = values.get("lag_alert", Settings.lag_alert)
    settle_lag = values.get("settle_lag", Settings.settle_lag)
    if lag_alert <= settle_lag:
        return [
            f"TCXC_LAG_ALERT ({lag_alert}) must be longer than TCXC_SETTLE_LAG ({settle_lag}): "
            "passes stop TCXC_SETTLE_LAG before now, so status would alert forever"
        ]
    return []


def _missing_credentials(login: str | None, key: Secret | None) -> list[str]:
    problems = []
    if not login:
        problems.append("TCXC_API_LOGIN is not set: give the TCXC buyer login")
    if not key:
        problems.append("TCXC_API_KEY is not set: give the API key from the TCXC portal")
    return problems
