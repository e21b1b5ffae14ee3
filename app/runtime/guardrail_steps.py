"""The agent loop's guardrail steps (DESIGN.md §6), mixed into `SessionRun`: ruling on the
calls of a model response (policy, gates, taint, limits), writing approval requests and
parking the session, settling parked calls once reviewers decided, tainting the context
with untrusted output, the audit records of a run, and the credentials a tool call carries.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import asyncpg

from app.credentials import service as credentials
from app.db.payloads import compact_json
from app.hitl.service import arguments_hash, decided_for, request_approval
from app.llm.model import ModelResponse
from app.observability import metrics
from app.observability.audit import AuditAction, AuditRecord
from app.policy.injection import InjectionFlag, scan
from app.policy.rules import PolicySpec
from app.runtime.claim import Claimed, Lease, RunDeps, SessionEnded
from app.runtime.conversation import Conversation
from app.runtime.guard import Guard, Ruling, Taint
from app.runtime.store import LeaseLost, PlannedCall, ToolCallRecord
from app.sessions import transitions
from app.sessions.states import SessionStatus
from app.tools.spec import ToolSpec

# The agent's policy as it is now (its tenant's agent, else the platform-wide one).
_CURRENT_POLICY = """
SELECT (v.definition -> 'policy')::text FROM agents a
JOIN agent_versions v ON v.agent_id = a.agent_id AND v.version = a.latest_version
WHERE a.name = $1 AND (a.tenant_id = $2 OR a.tenant_id IS NULL)
ORDER BY a.tenant_id NULLS LAST LIMIT 1
"""


class DecidedAlready(Exception):
    """Every approval request of the step was decided before the session could park."""


class GuardrailSteps:
    """What `SessionRun` provides to these steps (it is a dataclass with these fields)."""

    claimed: Claimed
    lease: Lease
    deps: RunDeps
    tools: dict[str, ToolSpec]
    guard: Guard | None
    taint: Taint

    async def _credentials_for(self, spec: ToolSpec) -> dict[str, str]:
        """The agent's stored credential for the tool, read now: a rotation or revocation
        applies from the next call. Only the executor sees it."""
        cipher = self.deps.credential_cipher
        if not spec.accepts_credential or cipher is None:
            return {}
        secret = await credentials.resolve(
            self.deps.store.pool,
            cipher,
            tenant_id=self.claimed.tenant_id,
            agent=self.claimed.definition.name,
            tool=spec.name,
        )
        return {} if secret is None else {"credential": secret}

    async def _rule(
        self, calls: list[PlannedCall]
    ) -> tuple[list[tuple[PlannedCall, Ruling]], list[AuditRecord]]:
        """Policy, gates and limits on each call about to run: it stays `started`, becomes
        `denied` (the model gets the reason), or `awaiting_approval` (a reviewer decides)."""
        assert self.guard is not None
        gated: list[tuple[PlannedCall, Ruling]] = []
        audits: list[AuditRecord] = []
        for call in calls:
            if call.status != "started":  # not the agent's tool, or invalid input
                audits.append(
                    self._audit(
                        AuditAction.POLICY_DECISION,
                        {
                            "tool_use_id": call.tool_use_id,
                            "tool": call.tool,
                            "status": call.status,
                            "reason": call.error,
                        },
                    )
                )
                continue
            ruling = await self.guard.rule(call.tool, call.arguments, call.confidence, self.taint)
            audits.append(
                self._audit(
                    AuditAction.POLICY_DECISION,
                    {
                        "tool_use_id": call.tool_use_id,
                        "arguments": call.arguments,
                        **ruling.audit(),
                    },
                )
            )
            metrics.POLICY_DECISIONS.labels(call.tool, ruling.status).inc()
            call.status = ruling.status
            if ruling.status == "denied":
                call.error = ruling.reason
            elif ruling.status == "awaiting_approval":
                gated.append((call, ruling))
        return gated, audits

    async def _request_approval(
        self,
        connection: asyncpg.Connection,
        call: PlannedCall,
        ruling: Ruling,
        response: ModelResponse,
        conversation: Conversation,
    ) -> None:
        assert ruling.gate is not None
        gate = ruling.gate.settings
        context = [
            block.get("content")
            for message in conversation.messages[-3:]
            if message["role"] == "user"
            for block in message.get("content", [])
            if isinstance(block, dict) and block.get("type") == "tool_result"
        ]
        await request_approval(
            connection,
            tenant_id=self.claimed.tenant_id,
            session_id=self.claimed.session_id,
            subject=None,
            tool_use_id=call.tool_use_id,
            tool=call.tool,
            arguments=call.arguments,
            gate=ruling.gate.gate,
            reason=ruling.gate.reason,
            agent_reasoning=response.text or None,
            context={"tool_results": context[-5:]},
            timeout_seconds=gate.timeout_seconds,
            on_timeout=gate.on_timeout,
            reviewers_required=gate.reviewers_required,
        )

    async def _park_for_approval(self) -> None:
        """Hand the worker back while a reviewer decides (no lease, no slot held) — unless
        every request was decided already (a fast reviewer): then go on at once."""
        async with self.deps.store.pool.acquire() as connection, connection.transaction():
            locked = await connection.fetchval(
                "SELECT lease_epoch FROM sessions WHERE session_id = $1 FOR UPDATE",
                self.claimed.session_id,
            )
            if locked != self.lease.epoch:
                raise LeaseLost(self.claimed.session_id)
            pending = await connection.fetchval(
                "SELECT count(*) FROM approvals WHERE session_id = $1 AND status = 'pending'",
                self.claimed.session_id,
            )
            if not pending:
                raise DecidedAlready
            changed = await transitions.change(
                connection,
                self.claimed.session_id,
                SessionStatus.AWAITING_APPROVAL,
                epoch=self.lease.epoch,
                from_statuses=["running"],
            )
            if changed is None:
                raise LeaseLost(self.claimed.session_id)
        self.deps.store.announce(self.claimed.session_id)
        raise SessionEnded

    async def _approval_outcomes(
        self, awaiting: list[ToolCallRecord]
    ) -> tuple[list[ToolCallRecord], list[ToolCallRecord], bool]:
        """The parked calls' decisions: (approved — now `started` with the approved
        arguments, to run once; refused — settled `denied` with the reviewer's word; whether
        any is still pending)."""
        assert self.guard is not None
        async with self.deps.store.pool.acquire() as connection:
            decided = await decided_for(connection, self.claimed.session_id)
            current = await connection.fetchval(
                _CURRENT_POLICY, self.claimed.definition.name, self.claimed.tenant_id
            )
        current_policy = None if current is None else PolicySpec.model_validate_json(current)
        approved: list[ToolCallRecord] = []
        refused: list[ToolCallRecord] = []
        pending = False
        for record in awaiting:
            outcome = decided.get(record.tool_use_id)
            if outcome is None:
                pending = True
                continue
            arguments = outcome.arguments if outcome.arguments is not None else record.arguments
            reason: str | None
            if not outcome.approved:
                who = outcome.decided_by or "nobody (the request expired)"
                reason = f"A reviewer did not approve {record.tool} ({outcome.status} by {who})"
                reason += f": {outcome.comment}" if outcome.comment else "."
            elif outcome.arguments_hash != arguments_hash(arguments):
                reason = "the approved arguments do not match their hash; not run"
            else:
                ruling = await self.guard.rule_approved(record.tool, arguments, current_policy)
                reason = ruling.reason if ruling.status == "denied" else None
            if reason is not None:
                refused.append(
                    ToolCallRecord(
                        record.tool_use_id,
                        record.tool,
                        arguments,
                        "denied",
                        None,
                        reason,
                        record.attempts,
                        record.idempotent,
                    )
                )
                continue
            self.deps.crash_points.reached("before_approved_tool", record.tool)
            await self.deps.store.start_approved_call(
                self.claimed.session_id, self.lease.epoch, record.tool_use_id, arguments
            )
            approved.append(
                ToolCallRecord(
                    record.tool_use_id,
                    record.tool,
                    arguments,
                    "started",
                    None,
                    None,
                    record.attempts,
                    record.idempotent,
                )
            )
        return approved, refused, pending

    def _taint_with(self, record: ToolCallRecord) -> list[InjectionFlag]:
        """Note untrusted output entering the context; its injection flags, if any."""
        spec = self.tools.get(record.tool)
        if record.status != "succeeded" or (spec is not None and spec.trusted):
            return []
        self.taint.untrusted = True
        text = record.result if isinstance(record.result, str) else compact_json(record.result)
        flags = scan(text or "")
        if flags:
            self.taint.flagged = True
            for flag in flags:
                metrics.INJECTION_FLAGS.labels(flag.pattern).inc()
        return flags

    def _audit(self, action: AuditAction, payload: dict[str, Any]) -> AuditRecord:
        return AuditRecord(
            self.claimed.tenant_id,
            self.claimed.session_id,
            f"agent:{self.claimed.definition.name}",
            action,
            payload,
        )

    def _model_call_audit(self, response: ModelResponse, cost: Decimal) -> AuditRecord:
        return self._audit(
            AuditAction.MODEL_CALL,
            {
                "model": response.model or self.claimed.definition.model,
                "stop_reason": response.stop_reason,
                "usage": response.usage.to_json(),
                "cost_usd": str(cost),
                "cached": response.cached,
                "tool_calls": [block.get("name") for block in response.tool_uses],
            },
        )
