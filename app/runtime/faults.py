"""Fault injection for crash tests: `RUNTIME_CRASH_AT=<point>[:<tool>]` makes the worker
SIGKILL itself at that point — the same as the machine dying there. With
`RUNTIME_CRASH_ONCE_FILE` it fires once across all workers (the file marks that it fired),
so the worker that takes over runs on. Refused in production by the settings."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from app.settings import RuntimeSettings

POINTS = ("before_tool", "after_tool_effect", "after_tool_record", "before_approved_tool")


class CrashPoints:
    def __init__(self, settings: RuntimeSettings) -> None:
        spec = settings.crash_at or ""
        point, _, tool = spec.partition(":")
        if point and point not in POINTS:
            raise ValueError(f"RUNTIME_CRASH_AT must be one of {POINTS} (optionally :tool)")
        self.point = point or None
        self.tool = tool or None
        self.once_file: Path | None = settings.crash_once_file

    def reached(self, point: str, tool: str) -> None:
        if self.point != point or (self.tool is not None and self.tool != tool):
            return
        if self.once_file is not None:
            try:
                descriptor = os.open(self.once_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return
            os.write(descriptor, f"{os.getpid()} {point} {tool}\n".encode())
            os.fsync(descriptor)
            os.close(descriptor)
        os.kill(os.getpid(), signal.SIGKILL)
