"""The bootstrap that runs INSIDE the run_python sandbox, before and around the model's code.

It is not imported by the service: `app.tools.sandbox` copies this file into the sandbox
(as /sandbox/runner.py) and runs it with the sandbox's interpreter, standard library only.

It lowers its own resource limits (nothing inside can raise them again: that needs
CAP_SYS_RESOURCE in the host's user namespace), says "started" on the status pipe, then
runs /sandbox/main.py as `__main__`. When the code dies of a limit that Python reports as
an exception (MemoryError, a failed fork, a file over the size limit) it writes that
limit's name to the status pipe. The code runs in the same process and could write there
too, so a report is only as trustworthy as the code itself: it labels the code's own
result and grants nothing. The limits that matter are enforced by the kernel, and the
wall-clock and output limits from outside.

Usage: python -I /sandbox/runner.py '<limits json>' <status fd>
"""

from __future__ import annotations

import errno
import json
import os
import resource
import sys
import traceback

CODE_PATH = "/sandbox/main.py"


def _lower(kind: int, soft: int, hard: int | None = None) -> None:
    """Set a limit, never above the one already in force (raising it would fail)."""
    hard = soft if hard is None else hard
    _, ceiling = resource.getrlimit(kind)
    if ceiling != resource.RLIM_INFINITY:
        soft, hard = min(soft, ceiling), min(hard, ceiling)
    resource.setrlimit(kind, (soft, hard))


def _apply_limits(limits: dict[str, int]) -> None:
    # CPU: SIGXCPU at the soft limit (which kills Python: it has no handler), SIGKILL one
    # second later in case the code catches or ignores SIGXCPU.
    _lower(resource.RLIMIT_CPU, limits["cpu_seconds"], limits["cpu_seconds"] + 1)
    _lower(resource.RLIMIT_AS, limits["memory_bytes"])
    _lower(resource.RLIMIT_FSIZE, limits["file_size_bytes"])
    # Counted per (user namespace, uid) and enforced because the sandbox uid is not root
    # outside: the whole sandbox, this process and the sandbox's init included.
    _lower(resource.RLIMIT_NPROC, limits["max_processes"])
    _lower(resource.RLIMIT_NOFILE, limits["max_open_files"])
    _lower(resource.RLIMIT_CORE, 0)


def _limit_behind(exc: BaseException) -> str | None:
    """The limit an uncaught exception is the symptom of, if any."""
    if isinstance(exc, MemoryError):
        return "memory"
    if isinstance(exc, OSError):
        if exc.errno == errno.EAGAIN:  # fork/clone refused: RLIMIT_NPROC
            return "processes"
        if exc.errno in (errno.EFBIG, errno.ENOSPC):  # RLIMIT_FSIZE, or the scratch is full
            return "file_size"
    return None


def main() -> None:
    limits = json.loads(sys.argv[1])
    status_fd = int(sys.argv[2])
    _apply_limits(limits)
    os.write(status_fd, b"started\n")
    sys.argv = [CODE_PATH]
    namespace = {"__name__": "__main__", "__file__": CODE_PATH, "__builtins__": __builtins__}
    try:
        with open(CODE_PATH, "rb") as source:
            code = compile(source.read(), CODE_PATH, "exec")
        exec(code, namespace)
    except SystemExit:
        raise
    except BaseException as exc:
        limit = _limit_behind(exc)
        if limit is not None:
            os.write(status_fd, f"limit={limit}\n".encode())
        # The traceback as `python main.py` would print it: without this runner's frame.
        traceback.print_exception(
            type(exc), exc, exc.__traceback__.tb_next if exc.__traceback__ else None
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
