from __future__ import annotations

from app.errors import Conflict, Forbidden, Gone, NotFound


class ApprovalNotFound(NotFound):
    code = "approval-not-found"


class SelfApproval(Forbidden):
    code = "self-approval"
    title = "Nobody decides their own session's request"


class ApprovalDecided(Conflict):
    code = "approval-decided"
    title = "Approval already decided"


class ApprovalExpired(Gone):
    code = "approval-expired"
    title = "Approval request expired"
