"""Sandboxed code execution: the built-in tool `run_python`.

The boundary is the operating system, not a filtered Python. Each run is a bubblewrap
(`bwrap`) sandbox started as an unprivileged uid (65534 when the service is root) in fresh
user, PID, network, mount, IPC, UTS and cgroup namespaces:

- no network: the network namespace holds only its own loopback, so the host's 127.0.0.1
  (PostgreSQL, Redis, ...) is unreachable and everything else is "network unreachable";
- the filesystem is a read-only view of what the interpreter needs (/usr/bin, /usr/lib,
  the interpreter's prefix): no /etc, no /home, no service code. /proc is the sandbox's own;
- the only writable place is /tmp, a fresh size-capped tmpfs (the scratch directory and
  working directory) that disappears with the sandbox's mount namespace. /dev is read-only;
- the environment is empty apart from PATH, HOME, TMPDIR, LANG (and PWD, set by bwrap);
- limits: CPU seconds, address space, file size and process count are rlimits set inside
  (see `sandbox_runner`); the process count holds because the uid is not root outside. The
  wall clock and the stdout/stderr caps are enforced from here by killing the sandbox's
  process group; its init then dies (--die-with-parent) and takes every process of the PID
  namespace with it, including any that started its own session.

Memory is limited per process, so the worst case for one run is max_processes x
memory_bytes (plus the scratch tmpfs); a cgroup would bound the sum but is not available
to an unprivileged service.

If the host cannot provide this (no bwrap, user namespaces disabled, ...) the tool is not
registered and `availability()` says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.tools.spec import SideEffect, ToolContext, ToolSpec, TransientToolError

logger = logging.getLogger(__name__)

LimitName = Literal["wall_clock", "cpu", "memory", "file_size", "processes", "output"]

KiB = 1024
MiB = 1024 * KiB

SANDBOX_UID = 65534  # "nobody": what the code runs as, inside and (when we are root) outside
SCRATCH_DIR = "/tmp"
_RUNNER_SOURCE = Path(__file__).with_name("sandbox_runner.py").read_bytes()
_DRAIN_GRACE_SECONDS = 1.0
_INSTALL_HINT = "run scripts/install-system-packages.sh (apt package bubblewrap)"


@dataclass(frozen=True)
class SandboxLimits:
    cpu_seconds: int = 5
    memory_bytes: int = 256 * MiB  # address space, per process
    file_size_bytes: int = 10 * MiB  # largest file the code may write
    scratch_bytes: int = 32 * MiB  # all files in the scratch directory together
    max_processes: int = 32  # processes and threads of the whole sandbox
    max_open_files: int = 256
    wall_seconds: float = 10.0
    stdout_max_bytes: int = 64 * KiB
    stderr_max_bytes: int = 64 * KiB


@dataclass(frozen=True)
class SandboxResult:
    """How a run ended. `exit_code` is the program's status; 128+N when signal N ended it
    inside the sandbox; negative (-9) when we killed the sandbox for its wall clock or
    output. `limit` names the limit that stopped it, if one did."""

    exit_code: int
    stdout: str
    stderr: str
    limit: LimitName | None
    duration_seconds: float
    stdout_truncated: bool = False
    stderr_truncated: bool = False

    def as_tool_result(self) -> dict[str, Any]:
        result = asdict(self)
        result["duration_seconds"] = round(self.duration_seconds, 3)
        return result


class SandboxError(Exception):
    """The sandbox itself could not run (not the code in it failing)."""


def truncation_marker(stream: str, cap_bytes: int) -> str:
    return f"\n…[{stream} truncated at {cap_bytes} bytes]"


def _bwrap() -> str | None:
    return shutil.which("bwrap")


def _interpreter() -> tuple[str, str]:
    """The base interpreter and its prefix: not the virtualenv, whose packages (the service
    and its dependencies) stay outside the sandbox."""
    executable = getattr(sys, "_base_executable", None) or sys.executable
    return os.path.realpath(executable), os.path.realpath(sys.base_prefix)


def _filesystem() -> list[str]:
    """bwrap arguments for a read-only view of what the interpreter needs."""
    args: list[str] = []
    for directory in ("/usr/bin", "/usr/lib", "/usr/lib64"):
        args += ["--ro-bind-try", directory, directory]
    for top in ("/bin", "/lib", "/lib64"):  # merged-/usr hosts: symlinks into /usr
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        else:
            args += ["--ro-bind-try", top, top]
    _, prefix = _interpreter()
    if prefix != "/usr":  # e.g. /usr/local (python images) or a pyenv under /root
        args += ["--ro-bind", prefix, prefix]
    return args


def _command(limits: SandboxLimits, *, runner_fd: int, code_fd: int, status_fd: int) -> list[str]:
    bwrap = _bwrap()
    if bwrap is None:
        raise SandboxError(f"bubblewrap (bwrap) is not installed: {_INSTALL_HINT}")
    python, _ = _interpreter()
    uid = str(SANDBOX_UID)
    isolation = ["--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent"]
    identity = ["--new-session", "--uid", uid, "--gid", uid, "--hostname", "sandbox"]
    scratch = ["--size", str(limits.scratch_bytes), "--tmpfs", SCRATCH_DIR]
    files = [
        *("--ro-bind-data", str(runner_fd), "/sandbox/runner.py"),
        *("--ro-bind-data", str(code_fd), "/sandbox/main.py"),
    ]
    environment = ["--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "LANG", "C.UTF-8"]
    environment += ["--setenv", "HOME", SCRATCH_DIR, "--setenv", "TMPDIR", SCRATCH_DIR]
    runner_limits = {
        "cpu_seconds": limits.cpu_seconds,
        "memory_bytes": limits.memory_bytes,
        "file_size_bytes": limits.file_size_bytes,
        "max_processes": limits.max_processes,
        "max_open_files": limits.max_open_files,
    }
    runner = ["/sandbox/runner.py", json.dumps(runner_limits), str(status_fd)]
    # bwrap applies these in order: the mounts first, the read-only remounts after them.
    return [
        bwrap,
        *isolation,
        *identity,
        *_filesystem(),
        *("--proc", "/proc", "--dev", "/dev"),
        *scratch,
        *files,
        *("--remount-ro", "/dev", "--remount-ro", "/", "--chdir", SCRATCH_DIR),
        *environment,
        *("--", python, "-I", *runner),
    ]


def _spawn_options(pass_fds: tuple[int, ...]) -> dict[str, Any]:
    options: dict[str, Any] = {
        "stdin": subprocess.DEVNULL,
        "stdout": subprocess.PIPE,
        "stderr": subprocess.PIPE,
        "env": {},  # bwrap itself inherits no secrets either
        "pass_fds": pass_fds,
        "start_new_session": True,  # its own process group, killed as one
    }
    if os.geteuid() == 0:
        # RLIMIT_NPROC does not apply to uid 0, and a root-owned sandbox would own files as
        # root: drop to nobody before bwrap (which then needs unprivileged user namespaces).
        options |= {"user": SANDBOX_UID, "group": SANDBOX_UID, "extra_groups": []}
    return options


def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


class _Launch:
    """The files one run hands to bwrap: the runner, the code and the status pipe's write
    end (closed here once the sandbox has them), and the status pipe's read end."""

    def __init__(self, code: str, limits: SandboxLimits) -> None:
        self.status_read, status_write = os.pipe()
        runner_fd = _memfd("sandbox-runner", _RUNNER_SOURCE)
        code_fd = _memfd("sandbox-code", code.encode())
        self._handed_over = (runner_fd, code_fd, status_write)
        try:
            self.command = _command(
                limits, runner_fd=runner_fd, code_fd=code_fd, status_fd=status_write
            )
        except SandboxError:
            self.handed_over()
            os.close(self.status_read)
            raise
        self.options = _spawn_options(self._handed_over)

    def handed_over(self) -> None:
        for fd in self._handed_over:
            os.close(fd)

    def read_status(self) -> list[str]:
        """The runner's status lines. Called once the sandbox is gone: every writer is dead."""
        os.set_blocking(self.status_read, False)
        data = b""
        try:
            while len(data) < 64 * KiB and (chunk := os.read(self.status_read, 4096)):
                data += chunk
        except BlockingIOError:
            pass
        finally:
            os.close(self.status_read)
        return data.decode(errors="replace").splitlines()


class _Capture:
    """One output stream, kept up to its cap; past the cap it calls `on_overflow` once."""

    def __init__(self, cap_bytes: int) -> None:
        self.cap_bytes = cap_bytes
        self.data = bytearray()
        self.truncated = False

    async def drain(
        self, stream: asyncio.StreamReader | None, on_overflow: Callable[[], None]
    ) -> None:
        assert stream is not None
        while chunk := await stream.read(64 * KiB):
            if self.truncated:
                continue  # the sandbox is being killed: read on to end-of-file, discarding
            self.data += chunk
            if len(self.data) > self.cap_bytes:
                del self.data[self.cap_bytes :]
                self.truncated = True
                on_overflow()

    def text(self, stream: str) -> str:
        text = self.data.decode(errors="replace")
        return text + truncation_marker(stream, self.cap_bytes) if self.truncated else text


def _kill_group(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):  # the group is already gone
            os.killpg(process.pid, signal.SIGKILL)


def _limit_from(status: list[str], exit_code: int) -> LimitName | None:
    reported = {line.removeprefix("limit=") for line in status if line.startswith("limit=")}
    for limit in ("memory", "processes", "file_size"):
        if limit in reported:
            return limit
    if exit_code == 128 + signal.SIGXCPU:
        return "cpu"
    if exit_code == 128 + signal.SIGKILL:
        return "cpu"  # the hard CPU limit, for code that ignored SIGXCPU
    if exit_code == 128 + signal.SIGXFSZ:
        return "file_size"
    return None


async def run_python(code: str, limits: SandboxLimits = SandboxLimits()) -> SandboxResult:
    """Run `code` as `__main__` in a fresh sandbox under `limits` (see the module docstring).
    Never blocks the event loop. Every process of the sandbox is killed by the time it
    returns or, when cancelled, re-raises (SIGKILL sent; the kernel reaps them at once).
    Raises SandboxError only when the sandbox itself cannot start."""
    started = time.monotonic()
    launch = _Launch(code, limits)
    try:
        process = await asyncio.create_subprocess_exec(*launch.command, **launch.options)
    except OSError as exc:
        os.close(launch.status_read)
        raise SandboxError(f"could not start bwrap: {exc}") from exc
    finally:
        launch.handed_over()

    stopped_by: list[LimitName] = []

    def stop(limit: LimitName) -> None:
        stopped_by.append(limit)
        _kill_group(process)

    stdout = _Capture(limits.stdout_max_bytes)
    stderr = _Capture(limits.stderr_max_bytes)
    readers = [
        asyncio.create_task(stdout.drain(process.stdout, lambda: stop("output"))),
        asyncio.create_task(stderr.drain(process.stderr, lambda: stop("output"))),
    ]
    try:
        async with asyncio.timeout(limits.wall_seconds):
            await asyncio.wait(readers)  # unlike gather, a timeout here leaves them running
            await process.wait()
    except TimeoutError:
        stop("wall_clock")
    finally:
        _kill_group(process)
        exit_code = await process.wait()
        # Every writer is dead now, so the pipes are at end-of-file: this keeps what was
        # still in flight and leaves no pipe open. Bounded all the same.
        await asyncio.wait(readers, timeout=_DRAIN_GRACE_SECONDS)
        for reader in readers:
            reader.cancel()
        status = launch.read_status()

    if "started" not in status and not stopped_by:
        reason = stderr.data.decode(errors="replace").strip()
        raise SandboxError(f"the sandbox did not start (exit {exit_code}): {reason}")
    return SandboxResult(
        exit_code=exit_code,
        stdout=stdout.text("stdout"),
        stderr=stderr.text("stderr"),
        limit=stopped_by[0] if stopped_by else _limit_from(status, exit_code),
        duration_seconds=time.monotonic() - started,
        stdout_truncated=stdout.truncated,
        stderr_truncated=stderr.truncated,
    )


# What the probe checks from inside: the properties the tool promises that bwrap's flags
# alone do not prove (it fails loudly if it cannot create a namespace at all).
_PROBE_CODE = """
import os, socket, time
interfaces = sorted(name for _, name in socket.if_nameindex())
assert interfaces == ["lo"], f"network interfaces are visible: {interfaces}"
assert not os.path.exists("/etc/passwd"), "the host's /etc is visible"
try:
    bytearray(1024**3)
    raise AssertionError("the memory limit is not enforced")
except MemoryError:
    pass
try:
    for _ in range(8):
        if os.fork() == 0:
            time.sleep(30)
            os._exit(0)
    raise AssertionError("the process limit is not enforced")
except BlockingIOError:
    print("ok")
"""
_PROBE_LIMITS = SandboxLimits(max_processes=4, wall_seconds=10)


@functools.cache
def availability() -> tuple[bool, str]:
    """Whether run_python can run here, and why not. Runs a probe sandbox once (about a
    tenth of a second, synchronously: call it at start-up, not on the event loop)."""
    if not sys.platform.startswith("linux"):
        return False, f"the sandbox needs Linux namespaces; this is {sys.platform}"
    if _bwrap() is None:
        return False, f"bubblewrap (bwrap) is not installed: {_INSTALL_HINT}"
    python, _ = _interpreter()
    if not os.access(python, os.X_OK):
        return False, f"the interpreter {python} is not executable"
    launch = _Launch(_PROBE_CODE, _PROBE_LIMITS)
    try:
        probe = subprocess.run(
            launch.command, **launch.options, timeout=_PROBE_LIMITS.wall_seconds, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"the sandbox probe could not run: {exc}"
    finally:
        launch.handed_over()
        launch.read_status()  # unused: the probe answers on stdout; this closes the pipe
    if probe.stdout.strip() != b"ok":
        output = (probe.stdout + probe.stderr).decode(errors="replace").strip()
        return False, f"the sandbox probe failed (exit {probe.returncode}): {output[-500:]}"
    return True, "bwrap sandbox: own user/pid/net/mount namespaces, unprivileged uid"


MAX_CODE_CHARS = 20_000
_PYTHON_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"
MAX_WALL_SECONDS = 30.0
# What the model sees must fit the tool's output cap (stdout + stderr, JSON-escaped).
TOOL_LIMITS = SandboxLimits(stdout_max_bytes=12 * KiB, stderr_max_bytes=4 * KiB)


class RunPythonInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str = Field(
        min_length=1,
        max_length=MAX_CODE_CHARS,
        description=f"A complete Python {_PYTHON_VERSION} program (standard library); print results.",
    )
    timeout_seconds: float | None = Field(
        default=None,
        gt=0,
        le=MAX_WALL_SECONDS,
        description=f"Wall-clock limit in seconds (default {TOOL_LIMITS.wall_seconds:g}).",
    )


async def run_python_tool(arguments: dict[str, Any], context: ToolContext) -> dict[str, Any]:
    limits = TOOL_LIMITS
    if arguments.get("timeout_seconds") is not None:
        limits = replace(limits, wall_seconds=float(arguments["timeout_seconds"]))
    try:
        result = await run_python(arguments["code"], limits)
    except SandboxError as exc:
        raise TransientToolError(str(exc)) from exc
    return result.as_tool_result()


def _schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema()
    schema.pop("title", None)
    return schema


RUN_PYTHON_TOOL = ToolSpec(
    name="run_python",
    description=(
        "Run a Python program in an isolated sandbox and get its exit code, stdout and "
        "stderr. No network, no access to other systems, an empty scratch directory (the "
        f"working directory, discarded afterwards). Limits: {TOOL_LIMITS.cpu_seconds} s CPU, "
        f"{TOOL_LIMITS.memory_bytes // MiB} MiB memory, {TOOL_LIMITS.max_processes} "
        f"processes, {TOOL_LIMITS.stdout_max_bytes // KiB} KiB of output; `limit` in the "
        "result names the one that stopped the program, if any."
    ),
    input_schema=_schema(RunPythonInput),
    input_model=RunPythonInput,
    executor=run_python_tool,
    # Nothing outlives a run (no network, scratch discarded): running it again has no
    # further effect, so it is a read and safe to retry (only a failure to start the
    # sandbox, or the executor's own timeout, is retried; a limit is a result).
    side_effect=SideEffect.READ,
    idempotent=True,
    # Above the sandbox's own wall clock so the sandbox reports that limit itself.
    timeout_seconds=MAX_WALL_SECONDS + 10,
    max_output_bytes=32 * KiB,
)


def sandbox_tools() -> list[ToolSpec]:
    """The sandbox's tools to register next to the built-ins: none, with the reason logged,
    when this host cannot isolate them."""
    available, reason = availability()
    if not available:
        logger.warning("run_python is not registered: %s", reason)
        return []
    logger.info("run_python is registered (%s)", reason)
    return [RUN_PYTHON_TOOL]
