"""The agent loop's tool calls (mixed into `SessionRun`): the calls of one response run
concurrently, each recorded `started` before (with its response) and settled after; the
result commits while the run goes on (`_writing`); calls a crashed worker left `started`
are re-run when idempotent and reported `unknown` otherwise.
"""

from __future__ import annotations

import asyncio
from typing import Any

from app.db.payloads import compact_json
from app.observability.audit import AuditAction
from app.runtime.conversation import Conversation, tool_result_block
from app.runtime.guardrail_steps import GuardrailSteps
from app.runtime.loop_detection import Call, LoopDetector
from app.runtime.step_writes import StepWrites
from app.runtime.store import PlannedCall, ToolCallRecord
from app.tools import executor
from app.tools.spec import ToolContext

EVENT_PREVIEW_CHARS = 120
AUDIT_PREVIEW_CHARS = 500


class ToolSteps(StepWrites, GuardrailSteps):
    detector: LoopDetector

    async def _run_calls(self, calls: list[PlannedCall], conversation: Conversation) -> None:
        """Run the calls of one response concurrently; every result goes into the one user
        message that answers the response, each under its `tool_use_id`."""
        records = [
            ToolCallRecord(
                c.tool_use_id, c.tool, c.arguments, c.status, None, c.error, 0, c.idempotent
            )
            for c in calls
        ]
        settled = [r for r in records if r.status not in ("started", "awaiting_approval")]
        for record in settled:
            self.detector.add(Call.of(record.tool, record.arguments, True))
        starting = [r for r in records if r.status == "started"]
        if len(starting) == 1:  # the usual case, without gather's machinery
            results = [await self._run_one(starting[0])]
        else:
            results = await asyncio.gather(*(self._run_one(r) for r in starting))
        by_id = {r.tool_use_id: r for r in [*settled, *results]}
        # Calls parked for a reviewer get their results when they settle (after the claim
        # that follows the decision); the others' results are in the ledger already.
        conversation.messages[-1]["content"] = [
            tool_result_block(by_id[c.tool_use_id], self.tools)
            for c in calls
            if c.tool_use_id in by_id
        ]

    async def _run_one(self, record: ToolCallRecord) -> ToolCallRecord:
        spec = self.tools[record.tool]
        await self._safe_point(before_side_effect=True)
        self.deps.crash_points.reached("before_tool", record.tool)
        context = ToolContext(
            tenant_id=self.claimed.tenant_id,
            session_id=self.claimed.session_id,
            tool_use_id=record.tool_use_id,
            session_factory=self.deps.session_factory,
            idempotency_key=f"{self.claimed.session_id}:{record.tool_use_id}",
            secrets=await self._credentials_for(spec),
        )
        outcome = await executor.execute(spec, record.arguments, context)
        self.deps.crash_points.reached("after_tool_effect", record.tool)
        settled = ToolCallRecord(
            record.tool_use_id,
            record.tool,
            record.arguments,
            outcome.status,
            outcome.result,
            outcome.error,
            outcome.attempts,
            record.idempotent,
        )
        recording = self._record_result(settled, outcome.duration_ms)
        if self.deps.crash_points.point is None:
            # Committed while the next step is prepared and the model called (its commit is
            # awaited before anything else is written); a crash before it lands is the same
            # as a crash just before recording: the ledger says `started`.
            self._writing.append(asyncio.ensure_future(recording))
        else:
            await recording  # crash tests kill the worker right after the record
        self.deps.crash_points.reached("after_tool_record", record.tool)
        self.detector.add(Call.of(record.tool, record.arguments, outcome.is_error))
        return settled

    async def _record_result(self, record: ToolCallRecord, duration_ms: float) -> None:
        # The event carries a short preview; the whole result is in the tool-call ledger.
        shown = record.error if record.result is None else record.result
        preview = shown if isinstance(shown, str) else compact_json(shown)
        event: dict[str, Any] = {
            "tool_use_id": record.tool_use_id,
            "tool": record.tool,
            "status": record.status,
            "preview": (preview or "")[:EVENT_PREVIEW_CHARS],
            "duration_ms": round(duration_ms, 2),
        }
        audits = [
            self._audit(
                AuditAction.TOOL_CALL,
                {
                    "tool_use_id": record.tool_use_id,
                    "tool": record.tool,
                    "arguments": record.arguments,
                    "status": record.status,
                    "attempts": record.attempts,
                    "duration_ms": round(duration_ms, 2),
                    "output_preview": (preview or "")[:AUDIT_PREVIEW_CHARS],
                },
            )
        ]
        flags = self._taint_with(record)
        if flags:
            event["injection_flags"] = [flag.pattern for flag in flags]
            audits.append(
                self._audit(
                    AuditAction.INJECTION_FLAGGED,
                    {
                        "tool_use_id": record.tool_use_id,
                        "tool": record.tool,
                        "flags": [{"pattern": f.pattern, "excerpt": f.excerpt} for f in flags],
                    },
                )
            )
        await self.deps.store.record_tool_result(
            self.claimed.session_id,
            self.lease.epoch,
            record.tool_use_id,
            status=record.status,
            result=record.result,
            error=record.error,
            attempts=record.attempts,
            event=event,
            audits=audits,
            chain=self.chain,
        )

    async def _settle_interrupted(self, conversation: Conversation) -> None:
        """Calls recorded `started` whose worker died: re-run the idempotent ones; report
        the others as `unknown` — never a silent second side effect."""
        settled: list[ToolCallRecord] = []
        to_rerun: list[ToolCallRecord] = []
        awaiting = [r for r in conversation.unsettled if r.status == "awaiting_approval"]
        still_pending = False
        if awaiting:
            approved, refused, still_pending = await self._approval_outcomes(awaiting)
            to_rerun += approved
            for record in refused:
                await self._record_result(record, 0.0)
                settled.append(record)
        for record in conversation.unsettled:
            if record.status == "awaiting_approval":
                continue
            if record.idempotent and record.tool in self.tools:
                to_rerun.append(record)
                continue
            message = (
                f"{record.tool} was interrupted by a worker crash after it started; it may or "
                "may not have taken effect, so it was not run again. Check before acting again."
            )
            unknown = ToolCallRecord(
                record.tool_use_id,
                record.tool,
                record.arguments,
                "unknown",
                None,
                message,
                record.attempts,
                record.idempotent,
            )
            await self._record_result(unknown, 0.0)
            settled.append(unknown)
        settled += await asyncio.gather(*(self._run_one(record) for record in to_rerun))
        answered = conversation.messages[-1]["content"]
        answered += [tool_result_block(record, self.tools) for record in settled]
        order = {
            block["id"]: i
            for i, block in enumerate(conversation.messages[-2]["content"])
            if block.get("type") == "tool_use"
        }
        answered.sort(key=lambda block: order.get(block.get("tool_use_id"), len(order)))
        conversation.unsettled = []
        if still_pending:
            await self._settle_writes()  # the park comes after every tool result
            await self._park_for_approval()
