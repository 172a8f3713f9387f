"""The TOML file given with ``--config``: its settings by their environment names, and the
buyer accounts of its ``[[accounts]]`` tables with their keys (from an environment variable or
a file). What is wrong is appended to the caller's list of problems, so that every problem of
a run's settings is reported at once."""

from __future__ import annotations

import logging
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from etl.errors import ConfigError
from etl.settings_values import SETTINGS, Secret, check_prefix

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Account:
    """One buyer account: its login, its key and the destination prefix it syncs."""

    login: str
    key: Secret
    prefix: str = ""


def read_toml(path: Path, problems: list[str]) -> dict[str, Any]:
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


def read_accounts(
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
