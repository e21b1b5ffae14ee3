"""The agent loop's model responses (mixed into `SessionRun`): a response persisted with
its tool calls, their rulings and approval requests in one statement (or one transaction),
and a final answer checked against the agent's `output_schema` (re-asking, bounded) and
completed — with the completion in the same statement when nothing is queued behind it.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from app.llm.model import ModelResponse
from app.observability.audit import AuditRecord
from app.runtime.claim import SessionEnded
from app.runtime.conversation import Conversation
from app.runtime.guard import Ruling
from app.runtime.guardrail_steps import GuardrailSteps
from app.runtime.output import check_final_answer
from app.runtime.step_writes import StepWrites, input_tokens_of
from app.runtime.store import LeaseLost, PlannedCall
from app.sessions import transitions
from app.sessions.states import SessionStatus


class ResponseSteps(StepWrites, GuardrailSteps):
    output_retries: int

    async def _persist_response(
        self,
        response: ModelResponse,
        calls: list[PlannedCall],
        conversation: Conversation,
        audits: list[AuditRecord] | None = None,
        gated: list[tuple[PlannedCall, Ruling]] | None = None,
    ) -> None:
        """The model response, its tool calls, the policy decisions on them and any
        approval requests: one transaction."""
        await self._settle_writes()
        pending_in, pending_out, pending_cost = self._take_pending_usage()
        usage = response.usage
        call_cost = self._cost(response)
        cost = call_cost + pending_cost
        audits = [self._model_call_audit(response, call_cost), *(audits or [])]

        async def record(connection: asyncpg.Connection | None) -> None:
            self.claimed.turns = await self.deps.store.record_model_response(
                self.claimed.session_id,
                self.lease.epoch,
                self._response_json(response, call_cost),
                calls,
                input_tokens=input_tokens_of(usage) + pending_in,
                output_tokens=usage.output_tokens + pending_out,
                cost_usd=cost,
                connection=connection,
                audits=audits,
                chain=self.chain,
            )

        if not gated:  # one statement: the response, its calls, their rulings, the audit
            await record(None)
        else:
            async with self.deps.store.pool.acquire() as connection, connection.transaction():
                await record(connection)
                for call, ruling in gated:
                    await self._request_approval(connection, call, ruling, response, conversation)
            self.deps.store.announce(self.claimed.session_id)
        self.claimed.input_tokens += input_tokens_of(usage) + pending_in
        self.claimed.output_tokens += usage.output_tokens + pending_out
        self.claimed.cost_usd += cost
        conversation.messages.append({"role": "assistant", "content": response.content})
        conversation.assistant_turns += 1
        if calls:
            conversation.messages.append({"role": "user", "content": []})

    async def _finish_with(
        self, response: ModelResponse, conversation: Conversation, *, persisted: bool
    ) -> bool:
        """A final answer: check it against output_schema (re-asking, bounded) and complete."""
        definition = self.claimed.definition
        result, problem = check_final_answer(response.text, definition.output_schema)
        if problem is None:
            return await self._complete(None if persisted else response, result, conversation)
        if not persisted:
            await self._persist_response(response, [], conversation)
        if self.output_retries >= definition.limits.max_output_retries:
            await self._end(SessionStatus.FAILED, error=("output_invalid", problem))
        self.output_retries += 1
        note = f"Platform notice: {problem}. Answer again with only JSON that matches the schema."
        await self._note({"kind": "output_retry", "text": note})
        conversation.add_note(note)
        return False

    async def _complete(
        self, response: ModelResponse | None, result: Any, conversation: Conversation
    ) -> bool:
        """The final answer of this run: persist it (if not yet) and complete the session —
        unless input was queued behind the run, which becomes the next user turn (the run
        goes on; nothing is interleaved). One transaction, one commit; commonly one
        statement."""
        await self._settle_writes()
        if response is not None and await self._complete_at_once(response, result):
            raise SessionEnded
        async with self.deps.store.pool.acquire() as connection, connection.transaction():
            if response is not None:
                pending_in, pending_out, pending_cost = self._take_pending_usage()
                usage = response.usage
                call_cost = self._cost(response)
                await self.deps.store.record_model_response(
                    self.claimed.session_id,
                    self.lease.epoch,
                    self._response_json(response, call_cost),
                    [],
                    input_tokens=input_tokens_of(usage) + pending_in,
                    output_tokens=usage.output_tokens + pending_out,
                    cost_usd=call_cost + pending_cost,
                    connection=connection,
                    audits=[self._model_call_audit(response, call_cost)],
                )
            queued = await transitions.take_pending_inputs(
                connection, self.claimed.session_id, self.lease.epoch
            )
            if queued is None:
                raise LeaseLost(self.claimed.session_id)
            for session_input in queued:
                await transitions.append_user_message(
                    connection, self.claimed.session_id, session_input, epoch=self.lease.epoch
                )
            if not queued:
                changed = await transitions.change(
                    connection,
                    self.claimed.session_id,
                    SessionStatus.COMPLETED,
                    epoch=self.lease.epoch,
                    result=result,
                )
                if changed is None:
                    raise LeaseLost(self.claimed.session_id)
        self.deps.store.announce(self.claimed.session_id)
        if not queued:
            raise SessionEnded
        if response is not None:
            conversation.messages.append({"role": "assistant", "content": response.content})
            conversation.assistant_turns += 1
        for session_input in queued:
            conversation.add_user_input(session_input)
        return False

    async def _complete_at_once(self, response: ModelResponse, result: Any) -> bool:
        """The final response and the completion in one statement; False (nothing written)
        when input is queued behind the run or the lease is gone."""
        pending_in, pending_out, pending_cost = self._pending_usage
        call_cost = self._cost(response)
        changed = await transitions.complete_with_response(
            self.deps.store.pool,
            self.chain,
            epoch=self.lease.epoch,
            response=self._response_json(response, call_cost),
            input_tokens=input_tokens_of(response.usage) + pending_in,
            output_tokens=response.usage.output_tokens + pending_out,
            cost_usd=call_cost + pending_cost,
            result=result,
            model_call=self._model_call_audit(response, call_cost),
            batcher=self.deps.store.completions,
        )
        if changed is None:
            return False
        self._take_pending_usage()
        self.deps.store.announce(self.claimed.session_id)
        return True
