"""What a worker holds while it runs a session: the claimed row, its lease, and the
dependencies a run needs."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.agents.schemas import AgentDefinition
from app.credentials.service import CredentialCipher
from app.llm.pricing import PriceTable
from app.llm.providers import ModelResolver
from app.observability.audit_linking import ChainHead
from app.runtime.faults import CrashPoints
from app.runtime.store import RuntimeStore
from app.sessions.feed import DeltaForwarder
from app.tools.registry import ToolRegistry

LEASE_SAFETY_MARGIN_SECONDS = 1.0


@functools.lru_cache(maxsize=1024)
def _parsed_definition(agent_id: str, version: int, text: str | None) -> AgentDefinition:
    return AgentDefinition.model_validate(json.loads(text) if text else {})


def _definition(agent_id: str, version: int, text: str | None) -> AgentDefinition:
    """An agent version's definition, validated once per process (versions never change).
    A copy: a run may not change what other runs share."""
    return _parsed_definition(agent_id, version, text).model_copy()


@dataclass(frozen=True)
class RunDeps:
    store: RuntimeStore
    models: ModelResolver
    tools: ToolRegistry
    session_factory: async_sessionmaker[AsyncSession]
    crash_points: CrashPoints
    prices: PriceTable = field(default_factory=PriceTable)
    # A forwarder of one session's streamed text deltas to its followers (None: no Redis).
    deltas: Callable[[str], DeltaForwarder] | None = None
    # Stateful policy limits (calls per window, amounts); None: limits fail closed.
    redis: Redis | None = None
    credential_cipher: CredentialCipher | None = None  # None: tools get no stored credential


@dataclass
class Lease:
    """What this worker holds: the session, its fencing epoch, and (monotonic) expiry."""

    session_id: str
    epoch: int
    expires_at: float
    lost: bool = False

    def still_valid(self) -> bool:
        return not self.lost and time.monotonic() < self.expires_at - LEASE_SAFETY_MARGIN_SECONDS


class SessionEnded(Exception):
    """Internal signal: the session reached a final (or parked) status this step."""


@dataclass
class Claimed:
    session_id: str
    tenant_id: str
    epoch: int
    input: Any
    definition: AgentDefinition
    turns: int
    input_tokens: int
    output_tokens: int
    cost_usd: Decimal
    deadline_at: datetime | None
    cancel_requested: bool
    # First claim of a session never run before: its log holds only `queued` and `running`.
    fresh: bool = False
    created_by: str = ""  # the subject who started it (limits per subject; no self-approval)
    audit_head: ChainHead | None = None  # its audit chain's head after the claim's entry

    @classmethod
    def from_row(cls, row: Any) -> Claimed:
        return cls(
            session_id=row["session_id"],
            tenant_id=row["tenant_id"],
            epoch=row["lease_epoch"],
            input=json.loads(row["input"]) if row["input"] is not None else None,
            definition=_definition(row["agent_id"], row["agent_version"], row["agent_definition"]),
            turns=row["turns"],
            input_tokens=row["input_tokens"],
            output_tokens=row["output_tokens"],
            cost_usd=row["cost_usd"],
            deadline_at=row["deadline_at"],
            cancel_requested=row["cancel_requested_at"] is not None,
            fresh=row["event_seq"] == 2 and row["turns"] == 0,
            created_by=row["created_by"] or "",
            audit_head=ChainHead.parse(row["audit_head"]) if row["audit_head"] else None,
        )
