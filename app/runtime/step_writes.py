"""What every step of the agent loop shares (mixed into `SessionRun`): the run's fields,
the order of its writes (tool results committed behind the run are settled before any
other write), safe points, usage and cost bookkeeping, and the two ways a run stops —
ending the session or handing it back to the queue.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

from app.llm.model import ModelResponse, TokenUsage
from app.observability.audit_linking import SessionChain
from app.runtime.claim import Claimed, Lease, RunDeps, SessionEnded
from app.runtime.store import LeaseLost
from app.sessions import transitions
from app.sessions.states import SessionStatus


class StepWrites:
    """What `SessionRun` provides to its steps (it is a dataclass with these fields)."""

    claimed: Claimed
    lease: Lease
    deps: RunDeps
    cancel_event: asyncio.Event
    drain_event: asyncio.Event
    chain: SessionChain  # the session's audit chain, linked here under the lease
    # Usage of responses not persisted themselves (cut-off retries), added to the next one.
    _pending_usage: tuple[int, int, Decimal]
    # Tool results being committed while the run goes on (`ToolSteps._run_one`); every
    # later write waits for them first (`_settle_writes`), so the log keeps its order.
    _writing: list[asyncio.Future[None]]

    async def _settle_writes(self) -> None:
        """Wait for the tool results still being committed; the first failure (LeaseLost, a
        database error) is raised once all have finished."""
        if not self._writing:
            return
        writing, self._writing = self._writing, []
        if len(writing) == 1:  # the usual case, without gather's machinery
            await writing[0]
            return
        for outcome in await asyncio.gather(*writing, return_exceptions=True):
            if isinstance(outcome, BaseException):
                raise outcome

    async def _note(self, note: dict[str, Any]) -> None:
        """A `platform.note` event (after every write before it)."""
        await self._settle_writes()
        await self.deps.store.record_note(self.claimed.session_id, self.lease.epoch, note)

    async def _safe_point(self, *, before_side_effect: bool = False) -> None:
        if self.lease.lost:
            raise LeaseLost(self.claimed.session_id)
        if self.cancel_event.is_set():
            await self._end(SessionStatus.CANCELLED, error=("cancelled", "cancelled on request"))
        if self.drain_event.is_set() and not before_side_effect:
            # Draining lets the step in flight finish — its tools included — and hands the
            # session back between steps, so no tool is left `started` by a clean shutdown.
            await self._release("worker shutting down")
        if before_side_effect and not self.lease.still_valid():
            # Our lease may have expired while we were stalled: another worker may own the
            # session now. Never start a side effect without a live lease.
            raise LeaseLost(self.claimed.session_id)

    def _count_usage(self, response: ModelResponse) -> None:
        """Usage of a response that is not persisted itself (a cut-off retry)."""
        i, o, c = self._pending_usage
        self._pending_usage = (
            i + input_tokens_of(response.usage),
            o + response.usage.output_tokens,
            c + self._cost(response),
        )

    def _cost(self, response: ModelResponse) -> Decimal:
        """Priced by the model that really answered (a fallback may have)."""
        return self.deps.prices.cost(
            response.model or self.claimed.definition.model, response.usage
        )

    def _response_json(self, response: ModelResponse, cost: Decimal) -> dict[str, Any]:
        """The stored model-turn event: the message, its usage and what it cost."""
        data = response.to_json()
        if cost:
            data["cost_usd"] = str(cost)
        model = response.model or self.claimed.definition.model
        savings = self.deps.prices.cache_savings(model, response.usage)
        if savings:
            data["cache_savings_usd"] = str(savings)
        return data

    def _take_pending_usage(self) -> tuple[int, int, Decimal]:
        pending, self._pending_usage = self._pending_usage, (0, 0, Decimal(0))
        return pending

    async def _end(
        self,
        status: SessionStatus,
        *,
        result: Any = None,
        error: tuple[str, str] | None = None,
    ) -> None:
        """End the session (fenced) and stop this run. Tool calls recorded `started` that
        will now never run (a cancel between a response and its tools) become `cancelled`."""
        await self._settle_writes()
        async with self.deps.store.pool.acquire() as connection, connection.transaction():
            if status is SessionStatus.CANCELLED:
                await self.deps.store.cancel_unstarted_calls(
                    self.claimed.session_id, self.lease.epoch, connection=connection
                )
            changed = await transitions.change(
                connection,
                self.claimed.session_id,
                status,
                epoch=self.lease.epoch,
                result=result,
                error={"code": error[0], "message": error[1]} if error else None,
                from_statuses=["running"],
            )
        if changed is None:
            raise LeaseLost(self.claimed.session_id)
        self.deps.store.announce(self.claimed.session_id)
        raise SessionEnded

    async def _release(self, reason: str, delay_seconds: float = 0.0) -> None:
        """Give the session back to the queue (graceful shutdown, or a back-off: claimable
        again after `delay_seconds`); history is kept."""
        await self._settle_writes()
        async with self.deps.store.pool.acquire() as connection:
            await transitions.change(
                connection,
                self.claimed.session_id,
                SessionStatus.QUEUED,
                epoch=self.lease.epoch,
                delay_seconds=delay_seconds,
                detail={"reason": reason},
                from_statuses=["running"],
            )
        self.deps.store.announce(self.claimed.session_id)
        raise SessionEnded


def input_tokens_of(usage: TokenUsage) -> int:
    """Every input token of a call: uncached, written to and read from the prompt cache."""
    return usage.input_tokens + usage.cache_creation_input_tokens + usage.cache_read_input_tokens
