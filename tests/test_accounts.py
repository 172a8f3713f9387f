"""Several accounts from a TOML config file."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine

from etl import passes
from etl.client import ApiClient
from etl.config import load_settings
from etl.errors import ConfigError
from etl.simulator import Simulator, SimulatorConfig
from tests.conftest import make_job, make_settings, run_cli, sim_range, table_rows


def test_accounts_come_from_env_vars_and_files(tmp_path: Path) -> None:
    """Each account's key comes from its own variable or file; the keys never show."""
    key_file = tmp_path / "b.key"
    key_file.write_text("key-two\n")
    key_file.chmod(0o600)
    config = tmp_path / "tcxc.toml"
    config.write_text(
        '[[accounts]]\nlogin = "a"\nkey_env = "KEY_A"\n\n'
        f'[[accounts]]\nlogin = "b"\nkey_file = "{key_file}"\nprefix = "44"\n'
    )
    settings = load_settings({"KEY_A": "key-one"}, config)
    assert [(a.login, a.key.reveal(), a.prefix) for a in settings.accounts] == [
        ("a", "key-one", ""),
        ("b", "key-two", "44"),
    ]
    assert "key-one" not in repr(settings) and "key-two" not in repr(settings)


def test_account_problems_are_all_reported(tmp_path: Path) -> None:
    """A missing variable, an unreadable file and a missing login are named together."""
    config = tmp_path / "tcxc.toml"
    config.write_text(
        '[[accounts]]\nlogin = "a"\nkey_env = "NOPE"\n\n'
        '[[accounts]]\nlogin = "b"\nkey_file = "/nonexistent/key"\n\n'
        '[[accounts]]\nkey_env = "X"\n'
    )
    with pytest.raises(ConfigError) as info:
        load_settings({}, config)
    text = str(info.value)
    assert "NOPE is not set" in text and "/nonexistent/key" in text and "needs a login" in text


@pytest.mark.parametrize(
    ("toml", "says"),
    [
        # which of two keys would be used is not for the loader to guess
        ('[[accounts]]\nlogin = "a"\nkey_env = "KEY_A"\nkey_file = "/tmp/k"\n', "not both"),
        ("accounts = 5\n", "[[accounts]] tables"),
        ('accounts = ["a"]\n', "needs a login"),
    ],
)
def test_an_ambiguous_or_misshapen_account_is_a_configuration_error(
    tmp_path: Path, toml: str, says: str
) -> None:
    config = tmp_path / "tcxc.toml"
    config.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_settings({"KEY_A": "key-one"}, config)
    assert says in str(info.value) and "key-one" not in str(info.value)


def test_sync_runs_every_configured_account(
    sim_config: SimulatorConfig, database_url: str, tmp_path: Path
) -> None:
    """`sync --config` with two accounts loads both accounts' CDRs, each tagged with its login."""
    accounts = {"buyer1": "key-one", "buyer2": "key-two"}
    with Simulator(replace(sim_config, accounts=accounts)) as sim:
        config = tmp_path / "tcxc.toml"
        config.write_text(
            f'tcxc_api_url = "{sim.url}"\ntcxc_start_date = "2026-09-21"\ntcxc_window = "7d"\n'
            '[[accounts]]\nlogin = "buyer1"\nkey_env = "K1"\n'
            '[[accounts]]\nlogin = "buyer2"\nkey_env = "K2"\n'
        )
        env = {"K1": "key-one", "K2": "key-two", "DATABASE_URL": database_url}
        result = run_cli("--config", str(config), "sync", env=env)
        assert result.returncode == 0, result.stderr
        with psycopg.connect(database_url) as conn:
            loaded = dict(conn.execute("SELECT api_login, count(*) FROM cdr GROUP BY 1").fetchall())
        assert loaded == {login: len(sim.records(login)) for login in accounts}
        status = run_cli("--config", str(config), "status", env={**env, "TCXC_LAG_ALERT": "30d"})
        assert status.returncode == 0, status.stderr
        assert "buyer1" in status.stdout and "buyer2" in status.stdout


@pytest.mark.parametrize("parallel", [1, 2])
def test_accounts_of_a_pass_sync_at_once_up_to_the_setting(
    sim_config: SimulatorConfig, engine: Engine, parallel: int
) -> None:
    """Two accounts, one fetch slot each: TCXC_PARALLEL_ACCOUNTS decides how many requests
    are in flight at once, and each account loads all of its CDRs either way."""
    accounts = {"buyer1": "key-one", "buyer2": "key-two"}
    with Simulator(replace(sim_config, accounts=accounts, latency=0.03)) as sim:
        start, end = sim_range()
        settings = replace(
            make_settings(sim),
            workers=1,
            parallel_accounts=parallel,
            window=timedelta(days=2),
            start_date=start,
        )
        jobs = [
            replace(make_job(settings), client=ApiClient(sim.url, login, key))
            for login, key in accounts.items()
        ]
        results = passes.run_all(engine, jobs, passes.INCREMENTAL, now=end + timedelta(hours=1))
        in_flight = sim.stats()["max_in_flight"]
        truth = {login: len(sim.records(login)) for login in accounts}
    assert [r.api_login for r in results] == list(accounts) and all(r.ok for r in results)
    assert in_flight == parallel
    loaded = table_rows(engine, "SELECT api_login, count(*) FROM cdr GROUP BY 1 ORDER BY 1")
    assert dict(loaded) == truth


def test_one_login_listed_with_two_prefixes_syncs_both_in_one_pass(
    sim: Simulator, engine: Engine
) -> None:
    """Two [[accounts]] entries of one login (all destinations, and prefix 1 only): their
    passes share the login's lock, so a parallel pass runs them one after the other instead
    of skipping one as "locked by another run" on every pass (its watermark never moved)."""
    start, end = sim_range()
    settings = replace(
        make_settings(sim), parallel_accounts=4, window=timedelta(days=2), start_date=start
    )
    jobs = [make_job(settings), replace(make_job(settings), prefix="1")]
    results = passes.run_all(engine, jobs, passes.INCREMENTAL, now=end + timedelta(hours=1))
    assert [r.skipped for r in results] == [None, None], results
    assert all(r.ok and r.summary is not None for r in results)
    marks = table_rows(engine, "SELECT prefix, watermark IS NOT NULL FROM sync_state ORDER BY 1")
    assert marks == [("", True), ("1", True)]


def test_commands_that_call_no_api_need_no_account_keys(database_url: str, tmp_path: Path) -> None:
    """`status` (and the other commands that only read or manage the database) run with a
    config whose key variables are not set, as on an operator's shell without the secrets;
    a command that calls the API still stops with exit 2 naming the variable."""
    config = tmp_path / "tcxc.toml"
    config.write_text('[[accounts]]\nlogin = "carrier-c"\nkey_env = "TCXC_KEY_C"\n')
    env = {"DATABASE_URL": database_url}
    status = run_cli("--config", str(config), "status", env=env)
    assert status.returncode == 1, status.stderr  # (never synced: lagging)
    assert "carrier-c" in status.stdout and "TCXC_KEY_C" not in status.stderr
    sync = run_cli("--config", str(config), "sync", env=env)
    assert sync.returncode == 2 and "TCXC_KEY_C" in sync.stderr, sync.stderr
