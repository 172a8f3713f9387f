"""Settings: parsed once at the edge (CLI, daemon) into an immutable, typed object.

Sources, later ones winning: built-in defaults, a TOML file given with ``--config``
(``etl.config_file``), the environment. Each setting's text is read by its parser in
``etl.settings_values``. Every problem is collected and reported at once, each naming its
setting. Secrets are held in ``Secret`` so that no repr, log line or error can show them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from etl import dburl, payload
from etl.config_file import Account, read_accounts, read_toml
from etl.errors import ConfigError
from etl.settings_values import (
    DEFAULT_API_URL,
    SECRET_SETTINGS,
    SETTINGS,
    YEARS,
    Secret,
    check_prefix,
    parse_duration,
)

__all__ = [
    "DEFAULT_API_URL",
    "SETTINGS",
    "YEARS",
    "Account",
    "Secret",
    "Settings",
    "check_prefix",
    "load_settings",
    "parse_duration",
]

log = logging.getLogger(__name__)


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


def load_settings(
    env: Mapping[str, str], config_path: Path | None = None, *, keys: bool = True
) -> Settings:
    """Build Settings from a TOML file and the environment, or raise one ConfigError.
    ``keys=False`` (a command that calls no API): an account's key that cannot be read is
    left empty instead of being a problem (and missing API credentials are left to
    ``require_credentials``); with ``keys``, they are named beside any other problem."""
    problems: list[str] = []
    raw = read_toml(config_path, problems) if config_path else {}
    if config_path:
        _warn_if_readable(config_path, raw)
    raw.update({name: env[name] for name in SETTINGS if env.get(name, "") != ""})
    values: dict[str, Any] = {}
    if "accounts" in raw:
        key_problems: list[str] = problems if keys else []
        default = _valid_prefix(raw.get("TCXC_PREFIX", ""))
        entries = raw.pop("accounts")
        values["configured_accounts"] = tuple(
            read_accounts(entries, env, problems, key_problems, default)
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
