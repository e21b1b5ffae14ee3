"""Group commit for statements: writes that wait together go out as one statement.

Under load a process makes dozens of small writes at once, each a statement and a commit
of its own — a round trip, a plan, a WAL flush each. A `StatementBatcher` takes the writes
of one kind that wait together: the first goes out at once (no added latency when the
process is quiet); while that statement runs, others queue, and the next statement takes
them all (at most `max_batch`, and one per `key`, so writes that must keep their order
keep it). Every caller still waits until its own write is durable and gets its own result.
How many writes each statement carried is in `agent_group_commit_writes{kind}`.

If the batch statement fails as a whole — PostgreSQL refused it, so nothing of it was
written — every write of the batch goes again on its own by the single-write path, which
knows how to report or retry its own failure. A failure of the connection reaches every
caller of the batch. Users: `app.runtime.batching.StepBatcher` (the steps of running
sessions), `app.sessions.creation.SessionCreator` (new sessions), and the rate limiter's
`_ScriptBatcher` (checks of concurrent requests as one Redis script call).
"""

from __future__ import annotations

import asyncio
import contextvars
from abc import ABC, abstractmethod
from collections.abc import Hashable, Sequence
from typing import Generic, TypeVar

import asyncpg

from app.observability import metrics

Item = TypeVar("Item")
Result = TypeVar("Result")


class StatementBatcher(ABC, Generic[Item, Result]):
    """Subclasses say how to write a batch and how to write one item alone."""

    def __init__(self, kind: str, max_batch: int = 64) -> None:
        self.kind = kind  # the `kind` label of `agent_group_commit_writes`
        self.max_batch = max_batch
        self._waiting: list[tuple[Item, asyncio.Future[Result]]] = []
        self._flushing: asyncio.Task[None] | None = None
        self.statements = 0  # batch statements that went through (for tests and figures)

    @abstractmethod
    async def write_batch(self, items: Sequence[Item]) -> Sequence[Result]:
        """Write `items` with one statement; their results, in order. Raise
        `asyncpg.PostgresError` only if nothing of it was written."""

    async def write_one(self, item: Item) -> Result:
        """Write `item` on its own (the path a batch falls back to): by default a batch of
        one; a subclass whose single write differs (retries, another statement) overrides it."""
        return (await self.write_batch([item]))[0]

    def key(self, item: Item) -> Hashable:
        """Items with the same key never share a statement (each waits for the one before)."""
        return id(item)

    def batchable(self, items: Sequence[Item]) -> bool:
        """Whether these may go as one statement (else each goes on its own)."""
        return True

    async def write(self, item: Item) -> Result:
        """Write `item` (with the others waiting) and return its result once durable."""
        written: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, written))
        if self._flushing is None or self._flushing.done():
            # A context of its own: it writes for many callers, not for the one whose write
            # happened to start it (its log lines carry no one request's or session's id).
            self._flushing = asyncio.create_task(self._flush(), context=contextvars.Context())
        # shielded: a caller that gives up does not cancel the statement of the others
        return await asyncio.shield(written)

    async def _flush(self) -> None:
        batch: list[tuple[Item, asyncio.Future[Result]]] = []
        try:
            while self._waiting:
                batch, later, keys = [], [], set()
                for entry in self._waiting:
                    key = self.key(entry[0])
                    if key in keys or len(batch) >= self.max_batch:
                        later.append(entry)
                    else:
                        keys.add(key)
                        batch.append(entry)
                self._waiting = later
                await self._write(batch)
        except BaseException as exc:  # cancelled (shutdown): nobody may wait forever
            for _, written in [*batch, *self._waiting]:
                if not written.done():
                    written.set_exception(exc)
            self._waiting = []
            raise

    async def _write(self, batch: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        items = [item for item, _ in batch]
        if len(batch) == 1 or not self.batchable(items):
            await self._one_by_one(batch)
            return
        try:
            results = await self.write_batch(items)
        except asyncpg.PostgresError:
            # Nothing of the statement was written: each item goes again on its own.
            await self._one_by_one(batch)
            return
        except Exception as exc:  # the connection: each caller learns it
            for _, written in batch:
                written.set_exception(exc)
            return
        self.statements += 1
        metrics.GROUP_COMMIT_WRITES.labels(self.kind).observe(len(batch))
        for (_, written), result in zip(batch, results, strict=True):
            written.set_result(result)

    async def _one_by_one(self, batch: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        for item, written in batch:
            metrics.GROUP_COMMIT_WRITES.labels(self.kind).observe(1)
            try:
                written.set_result(await self.write_one(item))
            except Exception as exc:  # handed to the item's caller
                written.set_exception(exc)
