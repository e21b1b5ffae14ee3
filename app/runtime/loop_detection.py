"""Loop detection over a session's tool calls — the three shapes agents fall into:

- repeat: the same call (tool + arguments) at least `repeat_threshold` times in the last
  `window` calls;
- alternation: two different calls alternating, A B A B;
- retry spiral: the same tool failing `spiral_threshold` times in a row, whatever the
  (slightly changed) arguments.

Pure: feed it calls, ask it what it sees.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Call:
    tool: str
    arguments_key: str
    failed: bool

    @classmethod
    def of(cls, tool: str, arguments: dict[str, Any], failed: bool) -> Call:
        return cls(tool, json.dumps(arguments, sort_keys=True, default=str), failed)


@dataclass
class LoopDetector:
    window: int = 10
    repeat_threshold: int = 3
    spiral_threshold: int = 4
    calls: list[Call] = field(default_factory=list)

    def add(self, call: Call) -> None:
        self.calls.append(call)

    def detect(self) -> str | None:
        """A description of the loop the latest calls form, or None."""
        if not self.calls:
            return None
        recent = self.calls[-self.window :]
        last = recent[-1]
        same = [c for c in recent if (c.tool, c.arguments_key) == (last.tool, last.arguments_key)]
        if len(same) >= self.repeat_threshold:
            return f"the same call `{last.tool}` with the same arguments {len(same)} times in the last {len(recent)} calls"
        if len(recent) >= 4:
            a, b, c, d = ((x.tool, x.arguments_key) for x in recent[-4:])
            if a == c and b == d and a != b:
                return f"alternating between `{a[0]}` and `{b[0]}` calls"
        tail = self.calls[-self.spiral_threshold :]
        if (
            len(tail) == self.spiral_threshold
            and all(c.failed for c in tail)
            and len({c.tool for c in tail}) == 1
        ):
            return (
                f"`{last.tool}` failed {self.spiral_threshold} times in a row with varied arguments"
            )
        return None
