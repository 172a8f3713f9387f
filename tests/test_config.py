"""Settings parsing."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from etl.config import DEFAULT_API_URL, Secret, load_settings
from etl.dburl import mask_url, url_passwords
from etl.errors import ConfigError


def test_defaults() -> None:
    """With nothing set, the real API URL, UTC and one-day windows are used."""
    settings = load_settings({})
    assert settings.api_url == DEFAULT_API_URL
    assert settings.api_timezone.key == "UTC"
    assert settings.window == timedelta(days=1)
    assert not settings.has_database_url


def test_every_problem_is_reported_at_once_naming_the_setting() -> None:
    """Three bad settings give one error listing all three by name."""
    with pytest.raises(ConfigError) as info:
        load_settings(
            {"TCXC_PAGE_SIZE": "0", "TCXC_API_TIMEZONE": "Mars/Base", "TCXC_WINDOW": "soon"}
        )
    text = str(info.value)
    assert "TCXC_PAGE_SIZE" in text and "TCXC_API_TIMEZONE" in text and "TCXC_WINDOW" in text


def test_secrets_never_show() -> None:
    """The API key is hidden in repr and in an error about a bad database URL."""
    settings = load_settings({"TCXC_API_KEY": "s3cr3t-key"})
    assert "s3cr3t-key" not in repr(settings)
    with pytest.raises(ConfigError) as info:
        load_settings({"DATABASE_URL": "mysql://u:p4ss@h/db"})
    assert "p4ss" not in str(info.value) and "DATABASE_URL" in str(info.value)


def test_toml_file_then_environment(tmp_path: Path) -> None:
    """A TOML file sets values; the environment overrides them."""
    path = tmp_path / "tcxc.toml"
    path.write_text('tcxc_api_login = "from-file"\ntcxc_page_size = 500\n')
    settings = load_settings({"TCXC_PAGE_SIZE": "200"}, path)
    assert settings.api_login == "from-file" and settings.page_size == 200


def test_unknown_toml_key_is_an_error(tmp_path: Path) -> None:
    """A misspelt setting in the file is reported, not ignored."""
    path = tmp_path / "tcxc.toml"
    path.write_text("tcxc_page_sise = 5\n")
    with pytest.raises(ConfigError, match="tcxc_page_sise"):
        load_settings({}, path)


def test_missing_credentials_name_both_settings() -> None:
    """A run against the API without login and key names both settings."""
    with pytest.raises(ConfigError) as info:
        load_settings({}).require_credentials()
    assert "TCXC_API_LOGIN" in str(info.value) and "TCXC_API_KEY" in str(info.value)


def test_mask_url_hides_the_password() -> None:
    """A database URL printed for the operator shows *** instead of the password."""
    assert mask_url("postgresql://u:pw@h:5432/d") == "postgresql://u:***@h:5432/d"
    assert repr(Secret("x")) == "Secret('********')"


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://h/d?user=u&password=Secret9", "postgresql://h/d?user=u&password=***"),
        ("postgresql://:Secret9@h/d?user=u", "postgresql://:***@h/d?user=u"),
        ("postgresql://u:Sec%40ret9@h/d", "postgresql://u:***@h/d"),
        ("postgresql://h/d?pass%77ord=Secret9", "postgresql://h/d?pass%77ord=***"),
        (
            "postgresql://u@h/d?sslpassword=Secret9&port=5",
            "postgresql://u@h/d?sslpassword=***&port=5",
        ),
    ],
)
def test_mask_url_hides_every_password_libpq_accepts(url: str, masked: str) -> None:
    """A password in the query string (its key %-encoded or not), after an empty user name or
    %-encoded is masked too (`db url` and `demo` printed them); ``url_passwords`` finds each,
    as written and decoded, for the log redactor."""
    assert mask_url(url) == masked
    assert "Secret9" in url_passwords(url) or "Sec@ret9" in url_passwords(url)
    assert mask_url("postgresql://u@h/d?host=/run") == "postgresql://u@h/d?host=/run"


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("TCXC_WINDOW_ROWS", "lots", "must be a whole number between 0 and 10000000"),
        ("TCXC_WORKERS", "2.5", "must be a whole number between 1 and 32"),
        ("TCXC_READ_TIMEOUT", "soon", "must be a positive number of seconds"),
        ("TCXC_REQUESTS_PER_SECOND", "fast", "must be 0 (no limit) or between 0.001 and 100000"),
    ],
)
def test_a_number_that_is_not_one_says_what_is_expected(name: str, value: str, says: str) -> None:
    """Not Python's own parsing message ("invalid literal for int() ...")."""
    with pytest.raises(ConfigError) as info:
        load_settings({name: value})
    assert name in str(info.value) and says in str(info.value)
    assert "invalid literal" not in str(info.value) and "could not convert" not in str(info.value)


@pytest.mark.parametrize("value", ["61 * * * *", "30 3 * * monday-ish", "* * 32 * *"])
def test_a_cron_expression_apscheduler_refuses_is_a_configuration_error(value: str) -> None:
    """Five fields are not enough: a TCXC_DEEP_SYNC_CRON the scheduler would refuse stops every
    command with the setting's name (the daemon used to fail later, as an internal error)."""
    with pytest.raises(ConfigError) as info:
        load_settings({"TCXC_DEEP_SYNC_CRON": value})
    assert "TCXC_DEEP_SYNC_CRON" in str(info.value) and "cron expression" in str(info.value)
    assert load_settings({"TCXC_DEEP_SYNC_CRON": "*/15 2-5 * * mon-fri"}).deep_sync_cron


@pytest.mark.parametrize(
    ("env", "missing"),
    [
        ({"TCXC_API_LOGIN": "demo"}, "TCXC_API_KEY"),
        ({"TCXC_API_KEY": "k3y-only"}, "TCXC_API_LOGIN"),
    ],
)
def test_half_the_credentials_is_a_configuration_error(env: dict[str, str], missing: str) -> None:
    """A login without a key (or a key without a login) names what is missing, instead of
    sending a request that is bound to fail as a bad signature (and leaves failed runs)."""
    settings = load_settings(env)
    with pytest.raises(ConfigError) as info:
        settings.require_credentials()
    assert missing in str(info.value) and "k3y-only" not in str(info.value)


def _account_with_key_file(folder: Path, key_bytes: bytes) -> Path:
    """A config file of one account whose key_file (mode 600) holds ``key_bytes``."""
    key = folder / "key"
    key.write_bytes(key_bytes)
    key.chmod(0o600)
    path = folder / "tcxc.toml"
    path.write_text(f'[[accounts]]\nlogin = "a"\nkey_file = "{key}"\n')
    return path


def test_an_empty_key_file_is_a_configuration_error(tmp_path: Path) -> None:
    """An [[accounts]] key_file holding nothing is refused when the settings load, as an
    empty key_env variable is."""
    with pytest.raises(ConfigError, match=r"key_file .* is empty"):
        load_settings({}, _account_with_key_file(tmp_path, b"\n"))


def test_files_that_are_not_utf8_are_configuration_errors(tmp_path: Path) -> None:
    """A config file or key file of other bytes is one line naming the file, not a crash."""
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="UTF-8"):
        load_settings({}, binary)
    with pytest.raises(ConfigError, match=r"key_file .*UTF-8"):
        load_settings({}, _account_with_key_file(tmp_path, b"\xff\xfe"))


def test_an_unknown_toml_key_does_not_hide_the_other_problems(tmp_path: Path) -> None:
    """Every problem at once: a misspelt key, a bad value in the file, a bad account and a
    bad environment value all show in one error."""
    path = tmp_path / "tcxc.toml"
    path.write_text('tcxc_windw = "6h"\ntcxc_page_size = 0\n[[accounts]]\nlogin = "a"\n')
    with pytest.raises(ConfigError) as info:
        load_settings({"TCXC_WORKERS": "0"}, path)
    text = str(info.value)
    for name in ("tcxc_windw", "TCXC_PAGE_SIZE", "key_env", "TCXC_WORKERS"):
        assert name in text, text


@pytest.mark.parametrize(
    ("name", "value", "secret"),
    [
        ("TCXC_API_URL", "http://user:s3cretpw@127.0.0.1/x", "s3cretpw"),
        ("DATABASE_URL", "postgresql://etl:pa@ss-w0rd@db.example.com/tcxc", "ss-w0rd"),
    ],
)
def test_credentials_in_a_url_are_never_echoed(name: str, value: str, secret: str) -> None:
    """A URL carrying credentials is refused (the API URL) or checked before libpq can
    quote part of the password as a host name (an unescaped '@' in it), and the message
    shows no part of the password."""
    with pytest.raises(ConfigError) as info:
        load_settings({name: value})
    assert name in str(info.value) and secret not in str(info.value)
    if name == "DATABASE_URL":
        assert "%40" in str(info.value)


@pytest.mark.parametrize(
    "env",
    [
        {"TCXC_DEEP_LOOKBACK": "1000000d"},
        {"TCXC_SETTLE_LAG": "3000000d"},
        {"TCXC_WINDOW": "3000000d"},
        {"DATABASE_URL": "postgresql://u@h:abc/db"},
        {"DATABASE_URL": "postgresql://u@[::1/db"},
        {"DATABASE_URL": "postgresql+asyncpg://u:pw@h/db"},
        {"DATABASE_URL": "postgresql+psycopg2://u:pw@h/db"},
        {"DATABASE_URL": "postgresqlxyz://u:pw@h/db"},
        {"DATABASE_URL": "postgresql://u:pw@h/db?port=abc"},
        {"DATABASE_URL": "postgresql://u:p%zzw@h/db"},
        {"TCXC_READ_TIMEOUT": "1e10"},
        {"TCXC_CONNECT_TIMEOUT": "1e10"},
        {"TCXC_REQUESTS_PER_SECOND": "1e-12"},
        {"TCXC_API_URL": "http://127.0.0.1:abc/buyers/callhistory"},
        {"TCXC_API_URL": "http://127.0.0.1:99999/buyers/callhistory"},
        {"TCXC_API_URL": "http://api example.com/buyers/callhistory"},
        {"TCXC_START_DATE": "0001-01-01"},
        {"TCXC_START_DATE": "2201-01-01"},
    ],
)
def test_values_that_would_overflow_or_not_parse_later_are_refused_now(
    env: dict[str, str],
) -> None:
    """A duration beyond any date arithmetic, a database URL of another driver or whose port or
    host cannot be read, a timeout or a pace a socket or a clock overflows on, an API URL with
    a bad port or host, a start date outside the years --from/--to take: each is a
    configuration error naming the setting (was an internal error later, or a late one)."""
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert next(iter(env)) in str(info.value)


def test_a_key_of_only_spaces_is_no_key_and_a_key_is_trimmed() -> None:
    """A key pasted with a trailing newline works; one of only spaces is missing (exit 2 naming
    TCXC_API_KEY), not a key that the API then refuses."""
    trimmed = load_settings({"TCXC_API_LOGIN": "demo", "TCXC_API_KEY": " k3y\n"})
    assert trimmed.api_key.reveal() == "k3y"
    blank = load_settings({"TCXC_API_LOGIN": "demo", "TCXC_API_KEY": "   "})
    with pytest.raises(ConfigError, match="TCXC_API_KEY"):
        blank.require_credentials()


@pytest.mark.parametrize("name", ["TCXC_DEEP_LOOKBACK", "TCXC_STOP_TIMEOUT", "TCXC_WINDOW"])
def test_a_duration_needs_its_unit(name: str) -> None:
    """'3' read as 3 seconds surprised an operator who meant days: a duration says its unit."""
    with pytest.raises(ConfigError, match=f"{name}.*30m, 6h or 1d"):
        load_settings({name: "3"})
    assert load_settings({name: "3s"})


def test_an_api_url_is_trimmed_as_the_key_and_the_login_are() -> None:
    """A pasted TCXC_API_URL's trailing newline or space is trimmed, not sent to the API; the
    limits of the numbers the check bounds are accepted."""
    settings = load_settings(
        {
            "TCXC_API_URL": "http://127.0.0.1:56210/buyers/callhistory \n",
            "TCXC_READ_TIMEOUT": "86400",
            "TCXC_REQUESTS_PER_SECOND": "0.001",
            "DATABASE_URL": "postgresql+psycopg://u@h/db?port=5432",
            "TCXC_START_DATE": "1900-01-01",
        }
    )
    assert settings.api_url == "http://127.0.0.1:56210/buyers/callhistory"
    assert load_settings({"TCXC_REQUESTS_PER_SECOND": "0"}).requests_per_second == 0


def test_an_empty_value_in_the_file_is_unset_as_in_the_environment(tmp_path: Path) -> None:
    """``tcxc_embedded_dir = ""`` made the current folder the embedded data folder: an empty
    value in the file now means unset (the default), as an empty environment variable does;
    a folder of only spaces, or an empty key_file, is refused."""
    path = tmp_path / "tcxc.toml"
    path.write_text('tcxc_embedded_dir = ""\ntcxc_prefix = ""\ndatabase_url = ""\n')
    settings = load_settings({}, path)
    assert settings.embedded_dir is None and settings.prefix == ""
    assert not settings.has_database_url
    with pytest.raises(ConfigError, match="TCXC_EMBEDDED_DIR"):
        load_settings({"TCXC_EMBEDDED_DIR": "  "})
    path.write_text('[[accounts]]\nlogin = "a"\nkey_file = ""\n')
    with pytest.raises(ConfigError, match="key_file is empty"):
        load_settings({}, path)


def test_a_setting_written_twice_in_the_file_is_refused(tmp_path: Path) -> None:
    """``tcxc_window`` and ``TCXC_WINDOW`` in one file: which one wins is not guessed."""
    path = tmp_path / "tcxc.toml"
    path.write_text('tcxc_window = "6h"\nTCXC_WINDOW = "1d"\n')
    with pytest.raises(ConfigError, match="TCXC_WINDOW is set twice"):
        load_settings({}, path)
    # unknown keys and [[accounts]] are not settings set twice
    path.write_text('foo = 1\nbar = 2\n[[accounts]]\nlogin = "a"\nkey_env = "K"\n')
    with pytest.raises(ConfigError) as refused:
        load_settings({"K": "k"}, path)
    assert "set twice" not in str(refused.value), refused.value
    assert "unknown setting 'foo'" in str(refused.value)


def test_tcxc_prefix_is_the_default_of_accounts_without_a_prefix(tmp_path: Path) -> None:
    """TCXC_PREFIX was ignored for [[accounts]] entries: it is now their default prefix (an
    entry's own ``prefix``, even ``""`` for all destinations, wins)."""
    path = tmp_path / "tcxc.toml"
    path.write_text(
        '[[accounts]]\nlogin = "a"\nkey_env = "K"\n'
        '[[accounts]]\nlogin = "b"\nkey_env = "K"\nprefix = "1"\n'
        '[[accounts]]\nlogin = "c"\nkey_env = "K"\nprefix = ""\n'
    )
    settings = load_settings({"K": "key", "TCXC_PREFIX": "44"}, path)
    assert [(a.login, a.prefix) for a in settings.accounts] == [("a", "44"), ("b", "1"), ("c", "")]


def test_api_credentials_beside_accounts_are_refused_naming_both(tmp_path: Path) -> None:
    """TCXC_API_LOGIN and TCXC_API_KEY were silently ignored when the file lists accounts (the
    account they name was never synced): one problem names both."""
    path = tmp_path / "tcxc.toml"
    path.write_text('[[accounts]]\nlogin = "a"\nkey_env = "K"\n')
    env = {"K": "key", "TCXC_API_LOGIN": "b", "TCXC_API_KEY": "k3y-b"}
    with pytest.raises(ConfigError) as info:
        load_settings(env, path)
    assert len(info.value.problems) == 1
    assert "TCXC_API_LOGIN and TCXC_API_KEY" in str(info.value) and "k3y-b" not in str(info.value)


def test_a_lag_alert_within_the_settle_lag_is_refused_naming_both() -> None:
    """Passes stop TCXC_SETTLE_LAG before now: a TCXC_LAG_ALERT no longer than it alerted
    forever."""
    with pytest.raises(ConfigError, match=r"TCXC_LAG_ALERT .* TCXC_SETTLE_LAG"):
        load_settings({"TCXC_LAG_ALERT": "5m"})
    with pytest.raises(ConfigError, match=r"TCXC_LAG_ALERT .* TCXC_SETTLE_LAG"):
        load_settings({"TCXC_SETTLE_LAG": "3h"})
    assert load_settings({"TCXC_LAG_ALERT": "11m"}).lag_alert == timedelta(minutes=11)


def test_missing_credentials_are_named_with_the_other_problems() -> None:
    """A command that calls the API names a missing TCXC_API_KEY beside the other bad
    settings, not only after they are fixed; one that calls none (``keys=False``) does not."""
    with pytest.raises(ConfigError) as info:
        load_settings({"TCXC_API_LOGIN": "a", "TCXC_PAGE_SIZE": "abc"})
    assert "TCXC_PAGE_SIZE" in str(info.value) and "TCXC_API_KEY" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_settings({"TCXC_PAGE_SIZE": "abc"}, keys=False)
    assert "TCXC_API_KEY" not in str(info.value)


@pytest.mark.parametrize("prefix", ["²", "٤4", "44 "])
def test_a_prefix_of_other_digits_is_refused(prefix: str) -> None:
    """'²' and '٤' pass str.isdigit(): a prefix is ASCII digits only (it matched nothing and
    the run succeeded with 0 rows)."""
    with pytest.raises(ConfigError, match="TCXC_PREFIX"):
        load_settings({"TCXC_PREFIX": prefix})


def test_a_readable_file_with_a_database_password_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A config file others can read warns when its database_url holds a password, as it does
    for an API key (in every form the URL may carry one); never showing the password."""
    path = tmp_path / "tcxc.toml"
    path.write_text('database_url = "postgresql://h/d?user=u&password=Secret9"\n')
    path.chmod(0o644)
    load_settings({}, path)
    assert "database password" in caplog.text and "Secret9" not in caplog.text
    path.chmod(0o600)
    caplog.clear()
    load_settings({}, path)
    assert "database password" not in caplog.text
