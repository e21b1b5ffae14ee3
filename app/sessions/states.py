"""The session lifecycle: an enum and its allowed transitions.

Only `app.sessions.transitions` writes the status column, and it checks every change
against `ALLOWED` (in SQL, so a stale writer cannot slip a forbidden change through).
"""

from __future__ import annotations

from enum import StrEnum


class SessionStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    AWAITING_APPROVAL = "awaiting_approval"
    AWAITING_INPUT = "awaiting_input"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL

    @property
    def is_waiting(self) -> bool:
        return self in (SessionStatus.AWAITING_APPROVAL, SessionStatus.AWAITING_INPUT)


S = SessionStatus
TERMINAL = frozenset({S.COMPLETED, S.FAILED, S.CANCELLED, S.TIMED_OUT})

ALLOWED: dict[SessionStatus, frozenset[SessionStatus]] = {
    S.QUEUED: frozenset({S.RUNNING, S.CANCELLED, S.FAILED, S.TIMED_OUT}),
    # running → queued: lease lost, released at shutdown, or a back-off
    S.RUNNING: frozenset(
        {
            S.QUEUED,
            S.AWAITING_APPROVAL,
            S.AWAITING_INPUT,
            S.COMPLETED,
            S.FAILED,
            S.CANCELLED,
            S.TIMED_OUT,
        }
    ),
    S.AWAITING_APPROVAL: frozenset({S.QUEUED, S.CANCELLED, S.FAILED, S.TIMED_OUT}),
    S.AWAITING_INPUT: frozenset({S.QUEUED, S.CANCELLED, S.TIMED_OUT}),
    # A finished conversation may be continued with new input (session delivery).
    S.COMPLETED: frozenset({S.QUEUED}),
    S.FAILED: frozenset({S.QUEUED}),
    S.CANCELLED: frozenset(),
    S.TIMED_OUT: frozenset(),
}


def sources_of(target: SessionStatus) -> list[str]:
    """The statuses a session may move to `target` from."""
    return sorted(source.value for source, targets in ALLOWED.items() if target in targets)
