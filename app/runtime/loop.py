"""The agent loop: one claimed session, run one durable step at a time (DESIGN.md §3).

A step is durable before the next begins: the model response is persisted (with its tool
calls recorded `started`) before any tool runs; each tool's result is recorded when it
finishes. On a claim the conversation is rebuilt from the database (`conversation.py`), so
a session resumed after a crash neither asks the model again for a persisted response nor
re-runs a finished tool; a non-idempotent call found `started` is reported as `unknown`
rather than run again.

Safe points (before each model call and each tool) check cancellation, draining (graceful
shutdown) and the lease. Limits end the session with a distinct `error.code`.

The steps live beside this module, mixed into `SessionRun`: `model_calls.py` (asking the
model), `responses.py` (persisting responses, final answers), `tool_steps.py` (running and
recording tool calls), `guardrail_steps.py` (policy, approvals, taint, audit records) and
`step_writes.py` (write order, safe points, endings) which they all stand on.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from app.llm.model import ModelResponse
from app.observability.audit_linking import SessionChain
from app.observability.logging import session_id_var
from app.policy.limits import CallScope
from app.runtime.claim import Claimed, Lease, RunDeps, SessionEnded
from app.runtime.conversation import Conversation, rebuild
from app.runtime.guard import Guard, Taint
from app.runtime.guardrail_steps import DecidedAlready
from app.runtime.limits import limit_reached
from app.runtime.loop_detection import Call, LoopDetector
from app.runtime.model_calls import ModelCalls
from app.runtime.planning import plan_calls
from app.runtime.responses import ResponseSteps
from app.runtime.store import LeaseLost, ToolCallRecord
from app.runtime.tool_steps import ToolSteps
from app.sessions.states import SessionStatus
from app.tools.spec import ToolSpec

logger = logging.getLogger(__name__)


@dataclass
class SessionRun(ModelCalls, ToolSteps, ResponseSteps):
    claimed: Claimed
    lease: Lease
    deps: RunDeps
    cancel_event: asyncio.Event = field(default_factory=asyncio.Event)
    drain_event: asyncio.Event = field(default_factory=asyncio.Event)
    tools: dict[str, ToolSpec] = field(default_factory=dict)
    detector: LoopDetector = field(default_factory=LoopDetector)
    loop_warned: bool = False
    output_retries: int = 0
    model_backoffs: int = 0
    compacted: bool = False  # at most one compaction per run
    guard: Guard | None = None
    taint: Taint = field(default_factory=Taint)
    _pending_usage: tuple[int, int, Decimal] = (0, 0, Decimal(0))
    chain: SessionChain = field(init=False)
    _writing: list[asyncio.Future[None]] = field(default_factory=list)
    _model_call: asyncio.Future[ModelResponse] | None = None

    def __post_init__(self) -> None:
        self.chain = SessionChain(
            self.claimed.tenant_id, self.claimed.session_id, self.claimed.audit_head
        )

    # -- control from the pool ----------------------------------------------------------

    def request_cancel(self) -> None:
        self.cancel_event.set()
        self.interrupt_model_call()

    def request_drain(self) -> None:
        self.drain_event.set()

    # -- the run --------------------------------------------------------------------------

    async def run(self) -> None:
        token = session_id_var.set(self.claimed.session_id)
        try:
            if self.claimed.cancel_requested:
                self.cancel_event.set()
            while True:
                try:
                    await self._run()
                except DecidedAlready:
                    continue  # the reviewers were quicker than the park: settle from the top
        except SessionEnded:
            pass
        except LeaseLost:
            logger.warning(
                "lease lost; another worker owns the session now — stopping without writes"
            )
        except Exception as exc:  # the loop must never leave a session running silently
            logger.exception("session run crashed")
            try:
                await self._end(
                    SessionStatus.FAILED, error=("internal_error", f"{type(exc).__name__}: {exc}")
                )
            except (SessionEnded, LeaseLost):
                pass
            except Exception:
                # Not even the failure could be recorded: the lease expires and the reaper
                # hands the session to another worker, which resumes from the database.
                logger.exception("could not record the failure")
        finally:
            # nothing left running after the run (a failed write was reported above, or the
            # lease is gone and it wrote nothing)
            for writing in self._writing:
                writing.cancel()
            await asyncio.gather(*self._writing, return_exceptions=True)
            session_id_var.reset(token)

    async def _run(self) -> None:
        definition = self.claimed.definition
        self.detector, self.taint = LoopDetector(), Taint()
        builtins = self.deps.tools.builtins_of(definition.tools)
        if builtins is not None:
            self.tools = builtins
        else:
            async with self.deps.session_factory() as db:
                self.tools = await self.deps.tools.for_tenant(
                    db, self.claimed.tenant_id, definition.tools
                )
        events: list[tuple[str, dict[str, Any]]] = []
        ledger: dict[str, ToolCallRecord] = {}
        if not self.claimed.fresh:  # a fresh session has no history: skip the queries
            events, ledger = await self.deps.store.history(self.claimed.session_id)
        conversation = rebuild(self.claimed.input, events, ledger, self.tools)
        self.guard = Guard(
            definition,
            self.tools,
            self.deps.redis,
            CallScope(self.claimed.tenant_id, self.claimed.session_id, self.claimed.created_by),
        )
        for record in conversation.calls_in_order:
            self.detector.add(Call.of(record.tool, record.arguments, record.status != "succeeded"))
            if record.status == "succeeded":
                self._taint_with(record)
        self.loop_warned = any(
            data.get("kind") == "loop_warning" for kind, data in events if kind == "platform.note"
        )
        notes = [data.get("kind") for kind, data in events if kind == "platform.note"]
        self.output_retries = notes.count("output_retry")
        self.model_backoffs = notes.count("model_backoff")
        if conversation.unsettled:
            await self._settle_interrupted(conversation)
            await self._after_tools(conversation)
        elif (
            conversation.last_response is not None
            and conversation.last_response.get("stop_reason") != "tool_use"
        ):
            # The last durable step was a final answer whose completion did not commit.
            final = ModelResponse(
                content=conversation.last_response["content"],
                stop_reason=conversation.last_response["stop_reason"],
            )
            if await self._finish_with(final, conversation, persisted=True):
                return
        while True:
            await self._safe_point()
            limit = limit_reached(self.claimed, datetime.now(UTC))
            if limit is not None:
                status, code, message = limit
                await self._end(status, error=(code, message))
            response = await self._call_model(conversation)
            await self._handle(response, conversation)

    # -- steps ----------------------------------------------------------------------------

    async def _handle(self, response: ModelResponse, conversation: Conversation) -> None:
        stop = response.stop_reason
        if stop == "refusal":
            await self._persist_response(response, [], conversation)
            await self._end(
                SessionStatus.FAILED, error=("model_refused", "the model refused the request")
            )
        if stop == "model_context_window_exceeded":
            if not self.compacted and len(conversation.messages) >= 3:
                await self._compact(conversation)
                return
            await self._end(
                SessionStatus.FAILED,
                error=("context_window_exceeded", "the conversation no longer fits the model"),
            )
        if stop == "pause_turn":
            await self._persist_response(response, [], conversation)
            return
        if stop == "tool_use" and response.tool_uses:
            definition = self.claimed.definition
            confidence_gated = frozenset(
                name for name, gate in definition.gates.items() if gate.type == "confidence"
            )
            calls = plan_calls(response, self.tools, definition.tools, confidence_gated)
            gated, audits = await self._rule(calls)
            await self._persist_response(response, calls, conversation, audits, gated)
            await self._run_calls(calls, conversation)
            if gated:
                await self._settle_writes()  # the park comes after every tool result
                await self._park_for_approval()
            await self._after_tools(conversation)
            return
        await self._finish_with(response, conversation, persisted=False)

    async def _after_tools(self, conversation: Conversation) -> None:
        loop = self.detector.detect()
        if loop is None:
            return
        if self.loop_warned:
            await self._end(
                SessionStatus.FAILED, error=("loop_detected", f"the agent kept looping: {loop}")
            )
        self.loop_warned = True
        note = (
            f"Platform notice: you appear to be looping ({loop}). Repeating it will not help. "
            "Change your approach, or give your final answer now; if you go on, the session ends."
        )
        await self._note({"kind": "loop_warning", "text": note})
        conversation.add_note(note)
