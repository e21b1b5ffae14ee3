"""`serve --processes N`: N API processes on one port, each accepting on a listening socket
of its own (`SO_REUSEPORT`), so the kernel spreads connections evenly over them.

uvicorn's own `workers=N` shares one listening socket between its processes: whichever
wakes first accepts, and a burst of new keep-alive connections (a product backend's pool
opening, a load generator starting) can land mostly on one process and stay there. With a
socket per process the kernel hashes each connection to one of them instead.

The parent holds no socket; it only supervises: a process that dies is started again (its
socket left the port's group when it died, so no connection waits on it meanwhile), and
SIGTERM or SIGINT stops every process gracefully (uvicorn's shutdown in each) before the
parent exits. A process that fails during start-up stops them all: its siblings would fail
the same way.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import time
from multiprocessing.context import SpawnProcess
from types import FrameType
from typing import Any

from uvicorn.config import STARTUP_FAILURE  # the exit code of an app that failed to start

logger = logging.getLogger(__name__)

_POLL_SECONDS = 0.2
_RESTART_PAUSE_SECONDS = 1.0  # between a death and the restart: no busy loop of crashes


def listening_socket(
    host: str, port: int, *, reuse_port: bool, backlog: int = 2048
) -> socket.socket:
    """A TCP socket bound to (host, port) and listening; with `reuse_port`, one of a group
    of such sockets among which the kernel spreads new connections."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _serve_one(options: dict[str, Any], log_level: str, log_json: bool) -> None:
    """One API process (run in a spawned child): its own socket in the port's group, the
    app built from the environment (`app.main.create_served_app`)."""
    import uvicorn

    from app.observability.logging import configure_logging

    configure_logging(log_level, json_lines=log_json)
    sock = listening_socket(options["host"], options["port"], reuse_port=True)
    config = uvicorn.Config("app.main:create_served_app", factory=True, **options)
    uvicorn.Server(config).run(sockets=[sock])


class ProcessGroup:
    """The parent of `serve --processes N` (see the module docstring)."""

    def __init__(
        self, options: dict[str, Any], processes: int, *, log_level: str, log_json: bool
    ) -> None:
        self.options = options
        self.size = processes
        self.log_level, self.log_json = log_level, log_json
        self.context = multiprocessing.get_context("spawn")
        self.processes: list[SpawnProcess] = []
        self.stopping = False

    def run(self) -> int:
        # Refuse a port that something else holds: with SO_REUSEPORT the processes could
        # otherwise join another program's group (same user) and share its traffic.
        host, port = self.options["host"], self.options["port"]
        try:
            listening_socket(host, port, reuse_port=False).close()
        except OSError as exc:
            logger.error("cannot listen on %s:%s: %s", host, port, exc)
            return 1
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop_on_signal)
        self.processes = [self._start() for _ in range(self.size)]
        logger.info(
            "serving on %s:%s with %d processes (SO_REUSEPORT): %s",
            host, port, self.size,
            ", ".join(str(p.pid) for p in self.processes),
        )  # fmt: skip
        code = 0
        while not self.stopping:
            time.sleep(_POLL_SECONDS)
            for index, process in enumerate(self.processes):
                if process.is_alive() or self.stopping:
                    continue
                if process.exitcode == STARTUP_FAILURE:
                    logger.error("API process %s failed to start: stopping", process.pid)
                    self.stopping, code = True, STARTUP_FAILURE
                    break
                logger.error(
                    "API process %s exited (code %s): starting another",
                    process.pid, process.exitcode,
                )  # fmt: skip
                time.sleep(_RESTART_PAUSE_SECONDS)
                if not self.stopping:
                    self.processes[index] = self._start()
        self._stop_all()
        return code

    def _start(self) -> SpawnProcess:
        process = self.context.Process(
            target=_serve_one,
            args=(self.options, self.log_level, self.log_json),
            name="agent-platform-api",
        )
        process.start()
        return process

    def _stop_on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.stopping = True

    def _stop_all(self) -> None:
        for process in self.processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + float(self.options.get("timeout_graceful_shutdown", 30)) + 5
        for process in self.processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                logger.error("API process %s did not stop in time: killing it", process.pid)
                process.kill()
                process.join()
