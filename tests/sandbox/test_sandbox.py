"""The run_python sandbox, on the real kernel: the escape suite and the plumbing.

Each escape test asserts both that the attempt was contained and how: the limit named in
the result, or the failure the code itself observed inside. Limits are kept small so a
failing containment cannot take the machine down.
"""

from __future__ import annotations

import ast
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from redis.asyncio import Redis
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import async_sessionmaker

from app.tools.executor import execute, validate_arguments
from app.tools.sandbox import (
    RUN_PYTHON_TOOL,
    KiB,
    MiB,
    SandboxLimits,
    SandboxResult,
    availability,
    run_python,
    sandbox_tools,
    truncation_marker,
)
from app.tools.spec import ToolContext, ToolInputError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
INSTALL_SCRIPT = PROJECT_ROOT / "scripts" / "install-system-packages.sh"

LIMITS = SandboxLimits(
    cpu_seconds=1,
    memory_bytes=128 * MiB,
    file_size_bytes=1 * MiB,
    scratch_bytes=4 * MiB,
    max_processes=16,
    # Generous: under a loaded CI host a CPU-bound limit must still be the one that stops
    # the program. Tests that want the wall clock set their own.
    wall_seconds=20,
    stdout_max_bytes=8 * KiB,
    stderr_max_bytes=64 * KiB,
)

# Prints the sandbox's PID namespace first, so the test can look for survivors from outside.
SHOW_NAMESPACE = "import os; print(os.readlink('/proc/self/ns/pid'), flush=True)\n"


@pytest.fixture(scope="module", autouse=True)
def sandbox_installed() -> None:
    """bwrap is installed by the project's own script; skip only if that is impossible."""
    if shutil.which("bwrap") is None:
        installed = subprocess.run(
            [str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=600, check=False
        )
        if installed.returncode != 0:
            pytest.skip(f"cannot install bubblewrap here: {installed.stderr.strip()}")
        availability.cache_clear()
    available, reason = availability()
    assert available, reason


def host_pids_in(namespace: str) -> list[int]:
    """Host processes still alive in the PID namespace `namespace` ("pid:[inode]").
    Zombies are dead: the sandbox's init can be one until the host's init reaps it."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "ns" / "pid") != namespace:
                    continue
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue  # exited while we looked
            if state not in ("Z", "X"):
                pids.append(int(entry.name))
    return pids


def assert_no_survivors(result: SandboxResult) -> None:
    namespace = result.stdout.splitlines()[0]
    assert namespace.startswith("pid:["), result.stdout
    # Every process of the sandbox has a SIGKILL pending when run_python returns (its init
    # dies with bwrap, and the namespace with its init); give the kernel a moment.
    deadline = time.monotonic() + 2
    while (survivors := host_pids_in(namespace)) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert survivors == []


# --- ordinary programs -------------------------------------------------------------------


async def test_a_program_returns_its_output() -> None:
    result = await run_python("import sys\nprint(6 * 7)\nprint('note', file=sys.stderr)", LIMITS)
    assert (result.exit_code, result.stdout, result.stderr, result.limit) == (
        0,
        "42\n",
        "note\n",
        None,
    )
    assert 0 < result.duration_seconds < LIMITS.wall_seconds


async def test_a_non_zero_exit_is_reported() -> None:
    exited = await run_python("raise SystemExit(3)", LIMITS)
    assert (exited.exit_code, exited.limit) == (3, None)

    raised = await run_python("def f():\n    raise ValueError('boom')\nf()", LIMITS)
    assert (raised.exit_code, raised.limit) == (1, None)
    assert raised.stderr.startswith("Traceback (most recent call last):\n")
    assert 'File "/sandbox/main.py", line 2, in f' in raised.stderr
    assert "runner" not in raised.stderr  # the bootstrap's own frame is not shown
    assert raised.stderr.endswith("ValueError: boom\n")

    broken = await run_python("def (", LIMITS)
    assert broken.exit_code == 1
    assert "SyntaxError: invalid syntax" in broken.stderr


SANDBOX_ENVIRON = {
    "PATH": "/usr/bin:/bin",
    "HOME": "/tmp",
    "TMPDIR": "/tmp",
    "LANG": "C.UTF-8",
    "PWD": "/tmp",
}


def parse_environ(raw: str) -> dict[str, str]:
    """`repr(bytes)` of a /proc/<pid>/environ file, as a dict."""
    entries = ast.literal_eval(raw).decode().split("\0")
    return dict(entry.split("=", 1) for entry in entries if entry)


async def test_the_environment_is_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = f"secret-{uuid.uuid4().hex}"
    monkeypatch.setenv("SANDBOX_TEST_SECRET", secret)
    code = (
        "import os\n"
        "print(sorted(os.environ))\n"
        "for pid in ('1', 'self'):\n"  # the sandbox's init (bwrap) and the program
        "    print(open(f'/proc/{pid}/environ', 'rb').read())\n"
    )
    result = await run_python(code, LIMITS)
    assert result.exit_code == 0, result.stderr
    names, init_environ, own_environ = result.stdout.splitlines()
    assert names == "['HOME', 'LANG', 'PATH', 'PWD', 'TMPDIR']"
    assert parse_environ(init_environ) == {}  # bwrap itself was started with nothing
    assert parse_environ(own_environ) == SANDBOX_ENVIRON
    assert secret not in result.stdout


async def test_the_scratch_directory_is_fresh_private_and_the_only_writable_place() -> None:
    code = (
        "import os\n"
        "print(os.getcwd(), os.listdir('.'))\n"
        "open('left-behind.txt', 'w').write('x')\n"
        "for path in ['/left.txt', '/usr/lib/left.txt', '/sandbox/main.py', '/dev/shm/left',\n"
        "             '/proc/sys/kernel/hostname']:\n"
        "    try:\n"
        "        open(path, 'w').write('x')\n"
        "        print(path, 'WRITTEN')\n"
        "    except OSError as exc:\n"
        "        print(path, type(exc).__name__, exc.strerror)\n"
    )
    first = await run_python(code, LIMITS)
    assert first.exit_code == 0, first.stderr
    lines = first.stdout.splitlines()
    assert lines[0] == "/tmp []"
    assert "WRITTEN" not in first.stdout
    assert "/left.txt OSError Read-only file system" in lines
    assert "/usr/lib/left.txt OSError Read-only file system" in lines
    assert "/sandbox/main.py OSError Read-only file system" in lines
    assert "/dev/shm/left OSError Read-only file system" in lines
    assert "/proc/sys/kernel/hostname PermissionError Permission denied" in lines

    # The scratch was a tmpfs of the first sandbox's own mount namespace: gone with it.
    second = await run_python("import os; print(os.listdir('/tmp'))", LIMITS)
    assert second.stdout == "[]\n"


async def test_concurrent_runs_do_not_see_each_others_scratch() -> None:
    code = (
        "import os, sys, time\n"
        "open('mine-{name}', 'w').write('{name}')\n"
        "time.sleep(0.5)\n"
        "print(sorted(os.listdir('.')))\n"
    )
    first, second = await asyncio.gather(
        run_python(code.format(name="first"), LIMITS),
        run_python(code.format(name="second"), LIMITS),
    )
    assert first.stdout == "['mine-first']\n"
    assert second.stdout == "['mine-second']\n"


# --- the escape suite --------------------------------------------------------------------


async def test_etc_passwd_is_not_there() -> None:
    result = await run_python("print(open('/etc/passwd').read())", LIMITS)
    assert result.exit_code == 1
    assert "FileNotFoundError: [Errno 2] No such file or directory: '/etc/passwd'" in result.stderr
    assert "root:" not in result.stdout


async def test_proc_self_environ_shows_only_the_sandbox() -> None:
    code = "import os\nprint(open('/proc/self/environ', 'rb').read())\nprint(os.listdir('/proc'))"
    result = await run_python(code, LIMITS)
    assert result.exit_code == 0, result.stderr
    environ, listing = result.stdout.splitlines()
    assert parse_environ(environ) == SANDBOX_ENVIRON
    # A PID namespace of its own: only its init (1) and the program (2) exist.
    assert sorted(name for name in ast.literal_eval(listing) if name.isdigit()) == ["1", "2"]


async def test_os_system_runs_inside_the_sandbox_as_nobody() -> None:
    code = (
        "import os\nstatus = os.system('id -u; hostname; cat /etc/passwd; ls /home')\nprint(status)"
    )
    result = await run_python(code, LIMITS)
    assert result.exit_code == 0
    uid, hostname, status = result.stdout.splitlines()
    assert (uid, hostname) == ("65534", "sandbox")
    assert int(status) != 0
    assert "cat: /etc/passwd: No such file or directory" in result.stderr
    assert "ls: cannot access '/home': No such file or directory" in result.stderr


async def test_ctypes_reaches_libc_but_not_privilege() -> None:
    code = (
        "import ctypes, resource\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "print('setuid', libc.setuid(0), ctypes.get_errno())\n"
        "print('unshare', libc.unshare(0x40000000), ctypes.get_errno())\n"  # CLONE_NEWNET
        "print('mount', libc.mount(b'none', b'/tmp', b'tmpfs', 0, None), ctypes.get_errno())\n"
        "try:\n"
        "    resource.setrlimit(resource.RLIMIT_NPROC, (100000, 100000))\n"
        "except ValueError as exc:\n"
        "    print('setrlimit', exc)\n"
        "import sys; sys.stdout.flush()\n"
        "ctypes.string_at(0)\n"  # and a crash stays a crash of this program only
    )
    result = await run_python(code, LIMITS)
    lines = result.stdout.splitlines()
    assert lines[0] == "setuid -1 22"  # EINVAL: no uid 0 exists in this user namespace
    assert lines[1] == "unshare -1 1"  # EPERM: --disable-userns, no capabilities
    assert lines[2] == "mount -1 1"  # EPERM
    assert lines[3] == "setrlimit not allowed to raise maximum limit"
    assert result.exit_code == 128 + 11  # SIGSEGV
    assert result.limit is None


async def test_the_subclasses_walk_reaches_os_but_the_os_is_the_boundary() -> None:
    code = (
        "wrap = next(c for c in ().__class__.__base__.__subclasses__()\n"
        "            if c.__name__ == '_wrap_close')\n"
        "system = wrap.__init__.__globals__['system']\n"
        "popen = wrap.__init__.__globals__['popen']\n"
        "print(popen('id -u').read().strip())\n"
        "print(system('cat /etc/passwd /proc/1/environ'))\n"
    )
    result = await run_python(code, LIMITS)
    assert result.exit_code == 0, result.stderr
    uid, status = result.stdout.splitlines()
    assert uid == "65534"
    assert int(status) != 0
    assert "cat: /etc/passwd: No such file or directory" in result.stderr
    assert "root:" not in result.stdout + result.stderr


@pytest.fixture(scope="module")
def loopback_services(server_database_url: str, redis_url: str) -> list[tuple[str, int]]:
    """The test run's real PostgreSQL and Valkey as the host reaches them on 127.0.0.1."""
    url = make_url(server_database_url)
    postgres_port = int(url.port or url.query["port"])

    async def redis_port() -> int:
        client = Redis.from_url(redis_url)
        try:
            return int((await client.info("server"))["tcp_port"])
        finally:
            await client.aclose()

    services = [("postgres", postgres_port), ("redis", asyncio.run(redis_port()))]
    for _, port in services:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass  # reachable from the host: the sandbox below is refused by its namespace
    return services


async def test_loopback_postgres_and_redis_are_unreachable(
    loopback_services: list[tuple[str, int]], server_database_url: str, redis_url: str
) -> None:
    socket_paths = [
        f"{make_url(server_database_url).query['host']}/.s.PGSQL.{loopback_services[0][1]}",
        redis_url.removeprefix("unix://").split("?")[0],
    ]
    code = (
        "import socket\n"
        f"for name, port in {loopback_services!r}:\n"
        "    try:\n"
        "        socket.create_connection(('127.0.0.1', port), timeout=2)\n"
        "        print(name, 'CONNECTED')\n"
        "    except OSError as exc:\n"
        "        print(name, type(exc).__name__)\n"
        f"for path in {socket_paths!r}:\n"
        "    try:\n"
        "        socket.socket(socket.AF_UNIX).connect(path)\n"
        "        print(path, 'CONNECTED')\n"
        "    except OSError as exc:\n"
        "        print('unix', type(exc).__name__)\n"
        "try:\n"
        "    socket.create_connection(('1.1.1.1', 53), timeout=2)\n"
        "except OSError as exc:\n"
        "    print('internet', exc.strerror)\n"
        "print(sorted(name for _, name in socket.if_nameindex()))\n"
    )
    result = await run_python(code, LIMITS)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [
        "postgres ConnectionRefusedError",
        "redis ConnectionRefusedError",
        "unix FileNotFoundError",
        "unix FileNotFoundError",
        "internet Network is unreachable",
        "['lo']",
    ]


async def test_a_fork_bomb_hits_the_process_limit_and_the_host_stays_healthy() -> None:
    # An unbounded bomb: safe because availability() (asserted by the fixture) has already
    # seen the process limit hold in a probe sandbox.
    result = await run_python(SHOW_NAMESPACE + "while True:\n    os.fork()\n", LIMITS)
    assert result.limit == "processes"
    assert result.exit_code == 1
    assert "BlockingIOError: [Errno 11] Resource temporarily unavailable" in result.stderr
    assert result.duration_seconds < LIMITS.wall_seconds
    assert_no_survivors(result)
    healthy = await asyncio.create_subprocess_exec("true")  # the host can still fork
    assert await healthy.wait() == 0


async def test_a_memory_bomb_hits_the_memory_limit() -> None:
    at_once = await run_python("block = bytearray(1024**3)", LIMITS)
    assert (at_once.limit, at_once.exit_code) == ("memory", 1)
    assert at_once.stderr.endswith("MemoryError\n")

    # Bounded at 1 GiB so that a broken limit fails this test rather than the host.
    code = "blocks = []\nfor _ in range(1024):\n    blocks.append(b'x' * 2**20)"
    growing = await run_python(code, LIMITS)
    assert (growing.limit, growing.exit_code) == ("memory", 1)
    assert growing.stderr.endswith("MemoryError\n")


async def test_a_cpu_loop_hits_the_cpu_limit() -> None:
    result = await run_python("while True:\n    pass", LIMITS)
    assert (result.limit, result.exit_code) == ("cpu", 128 + 24)  # SIGXCPU
    assert LIMITS.cpu_seconds <= result.duration_seconds < LIMITS.wall_seconds


async def test_a_cpu_loop_that_ignores_sigxcpu_is_killed_at_the_hard_limit() -> None:
    code = "import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True:\n    pass"
    result = await run_python(code, LIMITS)
    assert (result.limit, result.exit_code) == ("cpu", 128 + 9)  # SIGKILL, one second later
    assert result.duration_seconds < LIMITS.wall_seconds


async def test_sleeping_past_the_deadline_kills_the_whole_sandbox() -> None:
    code = SHOW_NAMESPACE + (
        "import subprocess, time\n"
        "subprocess.Popen(['sleep', '1000'], start_new_session=True)\n"  # its own group
        "os.setsid()\n"  # and leave ours
        "time.sleep(1000)\n"
    )
    limits = SandboxLimits(wall_seconds=1.5)
    result = await run_python(code, limits)
    assert result.limit == "wall_clock"
    assert result.exit_code == -9
    assert 1.5 <= result.duration_seconds < 1.5 + 2
    assert_no_survivors(result)


def host_pids_running(token: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if token.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


async def test_cancelling_a_run_kills_the_sandbox() -> None:
    token = f"sandbox-cancel-{uuid.uuid4().hex}"
    code = f"import os\nos.execv('/bin/sh', ['sh', '-c', 'sleep 1000; : {token}'])"
    run = asyncio.create_task(run_python(code, LIMITS))
    deadline = time.monotonic() + 5
    while not host_pids_running(token):
        assert time.monotonic() < deadline, "the sandboxed program never started"
        await asyncio.sleep(0.02)

    run.cancel()  # what the tool executor's own timeout does
    with pytest.raises(asyncio.CancelledError):
        await run
    for _ in range(100):  # the SIGKILL is sent; allow the kernel two seconds to reap
        if not host_pids_running(token):
            break
        await asyncio.sleep(0.02)
    assert host_pids_running(token) == []


async def test_huge_output_is_cut_at_the_cap() -> None:
    result = await run_python("while True:\n    print('x' * 1000)", LIMITS)
    assert result.limit == "output"
    assert result.stdout_truncated
    marker = truncation_marker("stdout", LIMITS.stdout_max_bytes)
    assert result.stdout == "x" * 1000 + "\n" + ("x" * 1000 + "\n") * 7 + "x" * 184 + marker
    assert len(result.stdout.removesuffix(marker).encode()) == LIMITS.stdout_max_bytes

    noisy = await run_python("import sys\nsys.stderr.write('e' * 10**6)", LIMITS)
    assert (noisy.limit, noisy.stderr_truncated) == ("output", True)
    assert noisy.stderr.endswith(truncation_marker("stderr", LIMITS.stderr_max_bytes))


async def test_big_files_hit_the_file_size_limit() -> None:
    one_file = await run_python("open('big', 'wb').write(b'x' * 2 * 1024**2)", LIMITS)
    assert (one_file.limit, one_file.exit_code) == ("file_size", 1)
    assert one_file.stderr.endswith("OSError: [Errno 27] File too large\n")

    # Files under the per-file limit still cannot fill more than the scratch size.
    code = "for i in range(8):\n    open(f'part-{i}', 'wb').write(b'x' * (1024**2 - 1))"
    many_files = await run_python(code, LIMITS)
    assert (many_files.limit, many_files.exit_code) == ("file_size", 1)
    assert many_files.stderr.endswith("OSError: [Errno 28] No space left on device\n")


# --- the tool ----------------------------------------------------------------------------


def tool_context() -> ToolContext:
    return ToolContext(
        tenant_id="t_sandbox",
        session_id="ses_sandbox",
        tool_use_id=f"toolu_{uuid.uuid4().hex[:8]}",
        # run_python never touches the database; an unbound factory proves it.
        session_factory=async_sessionmaker(),
        idempotency_key=f"idem-{uuid.uuid4().hex}",
    )


async def test_the_tool_runs_through_the_executor() -> None:
    arguments = validate_arguments(RUN_PYTHON_TOOL, {"code": "print(6 * 7)"})
    outcome = await execute(RUN_PYTHON_TOOL, arguments, tool_context())
    assert outcome.status == "succeeded"
    assert outcome.result["stdout"] == "42\n"
    assert outcome.result["limit"] is None
    assert outcome.content.startswith('<untrusted-data source="tool:run_python">')

    arguments = validate_arguments(
        RUN_PYTHON_TOOL, {"code": "import time; time.sleep(60)", "timeout_seconds": 1}
    )
    stopped = await execute(RUN_PYTHON_TOOL, arguments, tool_context())
    # The program was stopped; the tool itself worked and says which limit did it.
    assert stopped.status == "succeeded"
    assert stopped.result["limit"] == "wall_clock"
    assert stopped.attempts == 1


@pytest.mark.parametrize(
    "arguments",
    [
        {"code": "x" * 20_001},
        {"code": ""},
        {"code": "print(1)", "timeout_seconds": 31},
        {"code": "print(1)", "timeout_seconds": 0},
        {"code": "print(1)", "env": {"A": "1"}},
    ],
)
def test_the_tool_refuses_bad_input(arguments: dict[str, object]) -> None:
    with pytest.raises(ToolInputError):
        validate_arguments(RUN_PYTHON_TOOL, arguments)


def test_the_tool_is_offered_when_the_host_can_isolate_it() -> None:
    assert sandbox_tools() == [RUN_PYTHON_TOOL]
    assert RUN_PYTHON_TOOL.timeout_seconds > 30  # above the largest sandbox wall clock


def test_without_bwrap_the_tool_is_not_registered_and_the_reason_is_logged() -> None:
    probe = subprocess.run(
        [sys.executable, "-c", "from app.tools.sandbox import *; print(sandbox_tools())"],
        cwd=PROJECT_ROOT,
        env={"PATH": "/nonexistent"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert probe.stdout == "[]\n"
    assert "run_python is not registered: bubblewrap (bwrap) is not installed" in probe.stderr
