"""Webhooks (admin): the delivery log, replaying a delivery, the tenant's settings."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Query, status

from app.api.deps import AdminPrincipal, DbSession, Scope, SettingsDep, api_router
from app.webhooks import service as webhooks_service
from app.webhooks.schemas import (
    DeliveryList,
    DeliveryView,
    WebhookSettingsUpdate,
    WebhookSettingsView,
)

router = api_router(prefix="/v1/webhooks", tags=["webhooks"])


@router.get("/deliveries", summary="The delivery log, newest first")
async def list_deliveries(
    principal: AdminPrincipal,
    scope: Scope,
    status_filter: Annotated[
        Literal["pending", "delivered", "dead"] | None, Query(alias="status")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
) -> DeliveryList:
    return await webhooks_service.list_deliveries(
        scope, status=status_filter, cursor=cursor, limit=limit
    )


@router.post(
    "/deliveries/{delivery_id}/retry",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Deliver again (a dead delivery gets a fresh attempt budget)",
)
async def retry_delivery(delivery_id: str, principal: AdminPrincipal, scope: Scope) -> DeliveryView:
    return await webhooks_service.retry(scope, delivery_id)


@router.get("/settings", summary="The tenant's default webhook URL and signing secret")
async def get_webhook_settings(principal: AdminPrincipal, db: DbSession) -> WebhookSettingsView:
    return await webhooks_service.get_settings(db, principal.tenant)


@router.put("/settings", summary="Set the tenant's default webhook URL")
async def put_webhook_settings(
    body: WebhookSettingsUpdate, principal: AdminPrincipal, db: DbSession, settings: SettingsDep
) -> WebhookSettingsView:
    return await webhooks_service.update_settings(
        db, principal.tenant, body, settings.outbound_allowlist
    )
