"""Webhook deliveries (list, replay) and a tenant's webhook settings (default URL, secret)."""

from __future__ import annotations

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import NotFound, ValidationFailed
from app.tenants.models import Tenant
from app.tenants.scoping import TenantScope
from app.tools import outbound
from app.webhooks import signing
from app.webhooks.models import WebhookOutbox
from app.webhooks.schemas import (
    DeliveryList,
    DeliveryView,
    WebhookSettingsUpdate,
    WebhookSettingsView,
)


def view(row: WebhookOutbox) -> DeliveryView:
    return DeliveryView(
        delivery_id=row.delivery_id,
        session_id=row.session_id,
        event_type=row.event_type,
        url=row.url,
        status=row.status,
        attempts=row.attempts,
        last_status_code=row.last_status_code,
        last_error=row.last_error,
        next_attempt_at=row.next_attempt_at,
        created_at=row.created_at,
        delivered_at=row.delivered_at,
        attempt_log=row.attempt_log,
    )


async def check_url(url: str, allowlist: list[str], field: str) -> None:
    """Webhook URLs pass the same outbound-address guard as HTTP tools (422 if refused)."""
    try:
        await outbound.resolve_and_check(url, allowlist)
    except ValidationFailed as exc:
        raise ValidationFailed(
            exc.detail,
            errors=[
                {
                    "field": field,
                    "location": "body",
                    "message": exc.detail,
                    "type": "outbound_refused",
                }
            ],
        ) from exc


async def list_deliveries(
    scope: TenantScope, *, status: str | None, cursor: str | None, limit: int
) -> DeliveryList:
    statement = (
        scope.select(WebhookOutbox).order_by(WebhookOutbox.delivery_id.desc()).limit(limit + 1)
    )
    if status is not None:
        statement = statement.where(WebhookOutbox.status == status)
    if cursor is not None:
        statement = statement.where(WebhookOutbox.delivery_id < cursor)
    rows = list((await scope.db.execute(statement)).scalars())
    next_cursor = rows[limit - 1].delivery_id if len(rows) > limit else None
    return DeliveryList(items=[view(row) for row in rows[:limit]], next_cursor=next_cursor)


async def retry(scope: TenantScope, delivery_id: str) -> DeliveryView:
    """Replay a delivery (typically a dead one): due now, with a fresh attempt budget; its
    attempt log is kept."""
    row = await scope.get(WebhookOutbox, WebhookOutbox.delivery_id, delivery_id, what="delivery")
    await scope.db.execute(
        update(WebhookOutbox)
        .where(WebhookOutbox.delivery_id == delivery_id)
        .values(status="pending", attempts=0, next_attempt_at=func.now())
    )
    await scope.db.refresh(row)
    return view(row)


async def _tenant(db: AsyncSession, tenant_id: str) -> Tenant:
    tenant = (
        await db.execute(select(Tenant).where(Tenant.tenant_id == tenant_id).with_for_update())
    ).scalar_one_or_none()
    if tenant is None:
        raise NotFound(f"tenant {tenant_id} not found")
    if tenant.webhook_secret is None:
        tenant.webhook_secret = signing.new_secret()
        await db.flush()
    return tenant


async def get_settings(db: AsyncSession, tenant_id: str) -> WebhookSettingsView:
    tenant = await _tenant(db, tenant_id)
    assert tenant.webhook_secret is not None
    return WebhookSettingsView(default_url=tenant.webhook_url, secret=tenant.webhook_secret)


async def update_settings(
    db: AsyncSession, tenant_id: str, body: WebhookSettingsUpdate, allowlist: list[str]
) -> WebhookSettingsView:
    if body.default_url is not None:
        await check_url(body.default_url, allowlist, "default_url")
    tenant = await _tenant(db, tenant_id)
    tenant.webhook_url = body.default_url
    await db.flush()
    assert tenant.webhook_secret is not None
    return WebhookSettingsView(default_url=tenant.webhook_url, secret=tenant.webhook_secret)
