from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

DeliveryStatus = Literal["pending", "delivered", "dead"]


class DeliveryView(BaseModel):
    delivery_id: str
    session_id: str | None
    event_type: str
    url: str
    status: DeliveryStatus
    attempts: int
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: datetime
    created_at: datetime
    delivered_at: datetime | None
    attempt_log: list[dict[str, Any]]


class DeliveryList(BaseModel):
    items: list[DeliveryView]
    next_cursor: str | None


class WebhookSettingsView(BaseModel):
    default_url: str | None = Field(description="Used for sessions created without webhook_url")
    secret: str = Field(
        description="`whsec_…`: verify deliveries with the standardwebhooks library"
    )


class WebhookSettingsUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    default_url: str | None = Field(default=None, max_length=2048)
