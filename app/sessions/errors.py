from __future__ import annotations

from app.errors import Conflict, NotFound


class SessionNotFound(NotFound):
    code = "session-not-found"


class SessionFinished(Conflict):
    code = "session-finished"
    title = "Session already finished"


class SessionBusy(Conflict):
    code = "session-busy"
    title = "Session is still running or waiting"
